"""The TTL reaper: on the leader only, turn expired entries into ``expire`` proposals.

Reads already hide an expired entry on every node (``db.is_live``), so the
reaper is not about correctness of reads but about making the deletion a
committed change: every node must emit the same ``expire`` event at the same
revision, so the deletion goes through the Raft log like any write. Only the
leader decides (API.md §2: the cluster deletes it), so followers never
propose, whatever their own clocks say; a stale or duplicate proposal is
harmless anyway because each ``Expire`` is conditional on the version and
expiry it saw.

How it knows this node leads: consensus pushes ``leadership`` (PROTOCOL.md
§3.2) when the node becomes leader or stops, and again in answer to every
``hello`` storage sends (every ``hello_interval``). Nothing is polled. A
``leading`` push is trusted for ``TRUST_HELLOS`` hello intervals only, and
that is the one fallback kept, for safety of a different kind than
correctness: if consensus goes silent (dead, wedged, restarting) storage
stops proposing within a few seconds instead of leaving expiries in flight
against nobody; a lost push is repaired by the next hello's answer well
inside the window. A stale ``leading`` costs at most proposals that the
cluster refuses or applies as no-ops (each ``Expire`` is conditional), so no
status request is needed to double-check it.

Proposals in flight are remembered by (key, version, expiresAt) for a few
seconds so that the next scan, 200 ms later, does not propose them again
before they are applied; an ``unavailable`` answer (certainly not appended)
forgets them at once so the next scan retries.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import time
from dataclasses import dataclass

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.errors import ConcordanceError, IpcError, Unavailable
from concordance.ipc.sockets import Client
from concordance.protocol.commands import Command, Expire
from concordance.protocol.wire import Leadership, Propose
from concordance.storage.fsm import StateMachine

__all__ = ["TRUST_HELLOS", "ExpiryReaper", "ReaperTimings", "wall_ms"]

log = logging.getLogger(__name__)

_Key = tuple[str, int, int]  # key, version, expires_at
TRUST_HELLOS = 3  # hello intervals a ``leading`` push is believed for


def wall_ms() -> int:
    """Epoch milliseconds: the clock expiry is judged by (API.md ``expiresAt``)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class ReaperTimings:
    """How often and how much the reaper works (seconds unless noted)."""

    interval: float = 0.2  # longest sleep between looks at ``next_expiry``
    propose_timeout: float = 3.0  # PROTOCOL.md §4
    remember: float = 5.0  # how long a proposal counts as in flight
    batch: int = 100  # expire commands per proposal


class ExpiryReaper:
    """Proposes ``Expire`` commands for ``state``'s expired entries while this node leads.

    Args:
        trust: seconds a ``leading`` push is believed (``TRUST_HELLOS`` hello intervals).
        clock: scans, in-flight memory and expiry run on it (wall time judges expiry).
    """

    def __init__(
        self,
        node_id: str,
        state: StateMachine,
        consensus: Client,
        timings: ReaperTimings | None = None,
        *,
        trust: float = TRUST_HELLOS * 1.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._node_id = node_id
        self._state = state
        self._consensus = consensus
        self._t = timings or ReaperTimings()
        self._trust = trust
        self._clock = clock
        self._request_ids = itertools.count(secrets.randbits(62))
        self._inflight: dict[_Key, float] = {}  # -> monotonic time to forget it
        self._leading_until: float | None = None  # monotonic; None: not told we lead
        self.pushes = 0  # leadership messages received
        self.scans = 0  # looks that found something expired

    @property
    def in_flight(self) -> int:
        """How many expiries are proposed and not yet forgotten."""
        return len(self._inflight)

    async def run(self) -> None:
        """Scan forever: at most every ``interval``, sooner when the next expiry is sooner."""
        while True:
            await self._clock.sleep(self._delay())
            await self.scan_once()

    def _delay(self) -> float:
        """Until the next expiry if that comes before the next regular look.

        Something already expired waits for the regular look too: it is in
        flight, or this node does not lead; either way there is nothing to do sooner.
        """
        nxt, now = self._state.next_expiry(), self._clock.wall_ms()
        if nxt is None or nxt <= now:
            return self._t.interval
        return min(self._t.interval, (nxt - now) / 1000)

    async def scan_once(self) -> int:
        """One look: propose what expired and is not in flight, if leader. Returns the count."""
        now = self._clock.wall_ms()
        nxt = self._state.next_expiry()
        if nxt is None or nxt > now:
            return 0
        self.scans += 1
        if not self.leads():
            return 0
        self._forget_old(self._clock.monotonic())
        # Ask past the ones already in flight, so a large backlog keeps moving.
        limit = min(self._t.batch + len(self._inflight), 10 * self._t.batch)
        fresh = [
            op
            for op in self._state.expired(self._clock.wall_ms(), limit)
            if (op.key, op.version, op.expires_at) not in self._inflight
        ][: self._t.batch]
        if fresh:
            await self._propose(fresh)
        return len(fresh)

    def on_leadership(self, pushed: Leadership) -> None:
        """Consensus said whether this node leads (on a change, and after each hello)."""
        self.pushes += 1
        was = self.leads()
        self._leading_until = self._clock.monotonic() + self._trust if pushed.leading else None
        if pushed.leading != was:
            log.info(
                "ttl: %s at term %d", "leading" if pushed.leading else "not leading", pushed.term
            )

    def leads(self) -> bool:
        """Whether the last push said this node leads, and is recent enough to believe."""
        until = self._leading_until
        return until is not None and self._clock.monotonic() < until

    async def _propose(self, ops: list[Expire]) -> None:
        now = self._clock.wall_ms()
        commands = tuple(
            Command(self._node_id, next(self._request_ids), now, op).encode() for op in ops
        )
        keys = [(op.key, op.version, op.expires_at) for op in ops]
        forget_at = self._clock.monotonic() + self._t.remember
        for key in keys:
            self._inflight[key] = forget_at
        try:
            await self._consensus.request("propose", Propose(commands), self._t.propose_timeout)
        except Unavailable as e:  # certainly not appended: the next scan retries
            log.info("ttl: %d expiries not proposed: %s", len(ops), e)
            self._forget(keys)
        except ConcordanceError as e:
            log.warning("ttl: %d expiries refused: %s", len(ops), e)
            self._forget(keys)
        except IpcError as e:  # outcome unknown: keep them in flight until forgotten
            log.info("ttl: proposing %d expiries: %s", len(ops), e)
        else:
            log.debug("ttl: proposed %d expiries", len(ops))

    def _forget(self, keys: list[_Key]) -> None:
        for key in keys:
            self._inflight.pop(key, None)

    def _forget_old(self, now: float) -> None:
        stale = [key for key, until in self._inflight.items() if until <= now]
        self._forget(stale)
