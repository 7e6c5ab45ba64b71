"""The TTL reaper: on the leader only, turn expired entries into ``expire`` proposals.

Reads already hide an expired entry on every node (``db.is_live``), so the
reaper is not about correctness of reads but about making the deletion a
committed change: every node must emit the same ``expire`` event at the same
revision, so the deletion goes through the Raft log like any write. Only the
leader decides (API.md §2: the cluster deletes it), so followers never
propose, whatever their own clocks say; a stale or duplicate proposal is
harmless anyway because each ``Expire`` is conditional on the version and
expiry it saw.

Why it asks consensus instead of being told: storage has no other use for
the Raft role, and one ``status`` request per half second while something is
expired is cheaper than a new push message in the IPC contract. Nothing is
asked while nothing is expired.

Proposals in flight are remembered by (key, version, expiresAt) for a few
seconds so that the next scan, 200 ms later, does not propose them again
before they are applied; an ``unavailable`` answer (certainly not appended)
forgets them at once so the next leader check retries.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from concordance.commands import Command, Expire
from concordance.errors import ConcordanceError, IpcError, Unavailable
from concordance.ipc import RpcClient
from concordance.storage.fsm import StateMachine
from concordance.wire import Propose, Status, StatusOk

__all__ = ["ExpiryReaper", "ReaperTimings", "wall_ms"]

log = logging.getLogger(__name__)

_Key = tuple[str, int, int]  # key, version, expires_at


def wall_ms() -> int:
    """Epoch milliseconds: the clock expiry is judged by (API.md ``expiresAt``)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class ReaperTimings:
    """How often and how much the reaper works (seconds unless noted)."""

    interval: float = 0.2  # longest sleep between looks at ``next_expiry``
    leader_ttl: float = 0.5  # how long a ``status`` answer is trusted
    status_timeout: float = 1.0
    propose_timeout: float = 3.0  # PROTOCOL.md §4
    remember: float = 5.0  # how long a proposal counts as in flight
    batch: int = 100  # expire commands per proposal


class ExpiryReaper:
    """Proposes ``Expire`` commands for ``state``'s expired entries while this node leads."""

    def __init__(
        self,
        node_id: str,
        state: StateMachine,
        consensus: RpcClient,
        timings: ReaperTimings | None = None,
        *,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self._node_id = node_id
        self._state = state
        self._consensus = consensus
        self._t = timings or ReaperTimings()
        self._now_ms = now_ms
        self._request_ids = itertools.count(secrets.randbits(62))
        self._inflight: dict[_Key, float] = {}  # -> monotonic time to forget it
        self._leader: tuple[bool, float] = (False, 0.0)  # answer, monotonic expiry

    @property
    def in_flight(self) -> int:
        """How many expiries are proposed and not yet forgotten."""
        return len(self._inflight)

    async def run(self) -> None:
        """Scan forever: at most every ``interval``, sooner when the next expiry is sooner."""
        while True:
            await asyncio.sleep(self._delay())
            await self.scan_once()

    def _delay(self) -> float:
        """Until the next expiry if that comes before the next regular look.

        Something already expired waits for the regular look too: it is in
        flight, or this node does not lead; either way there is nothing to do sooner.
        """
        nxt, now = self._state.next_expiry(), self._now_ms()
        if nxt is None or nxt <= now:
            return self._t.interval
        return min(self._t.interval, (nxt - now) / 1000)

    async def scan_once(self) -> int:
        """One look: propose what expired and is not in flight, if leader. Returns the count."""
        now = self._now_ms()
        nxt = self._state.next_expiry()
        if nxt is None or nxt > now:
            return 0
        if not await self.is_leader():
            return 0
        self._forget_old(time.monotonic())
        # Ask past the ones already in flight, so a large backlog keeps moving.
        limit = min(self._t.batch + len(self._inflight), 10 * self._t.batch)
        fresh = [
            op
            for op in self._state.expired(self._now_ms(), limit)
            if (op.key, op.version, op.expires_at) not in self._inflight
        ][: self._t.batch]
        if fresh:
            await self._propose(fresh)
        return len(fresh)

    async def is_leader(self) -> bool:
        """Whether consensus says this node leads; answers are cached for ``leader_ttl``."""
        answer, until = self._leader
        now = time.monotonic()
        if now < until:
            return answer
        try:
            status = await self._consensus.request("status", Status(), self._t.status_timeout)
        except (IpcError, ConcordanceError) as e:
            log.debug("ttl: no status from consensus: %s", e)
            answer = False
        else:
            answer = isinstance(status, StatusOk) and status.role == "leader"
        self._leader = (answer, time.monotonic() + self._t.leader_ttl)
        return answer

    async def _propose(self, ops: list[Expire]) -> None:
        now = self._now_ms()
        commands = tuple(
            Command(self._node_id, next(self._request_ids), now, op).encode() for op in ops
        )
        keys = [(op.key, op.version, op.expires_at) for op in ops]
        forget_at = time.monotonic() + self._t.remember
        for key in keys:
            self._inflight[key] = forget_at
        try:
            await self._consensus.request("propose", Propose(commands), self._t.propose_timeout)
        except Unavailable as e:  # certainly not appended: retry after the next leader check
            log.info("ttl: %d expiries not proposed: %s", len(ops), e)
            self._forget(keys)
            self._leader = (False, 0.0)
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
