"""A consensus role's planned stop (SIGTERM): hand leadership over, drain, answer, close.

See the driver's rules (``driver.py``, "Planned stop"). A leader with other
voters hands leadership over first, keeping proposals aside meanwhile
(``_holds_proposals``), then every role tells the fronts ``stopping``, steps
what they sent before their ``stopping_ack``, answers what is left and makes
sure the fronts read it (``_flush_to_fronts``), all bounded by the timing
pairs in ``concordance.timing``. A mixin of
:class:`~concordance.consensus.driver.ConsensusDriver`, which owns the state
declared below and runs these steps on its main task.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from concordance.clock import Clock
from concordance.consensus.outbound import Outbound
from concordance.consensus.snapshots import SnapshotCoordinator
from concordance.consensus.waiters import Waiters
from concordance.errors import Unavailable
from concordance.protocol import wire
from concordance.raft.messages import Propose as RaftPropose
from concordance.raft.ready import Role
from concordance.timing import CONSENSUS_DRAIN, CONSENSUS_FLUSH, CONSENSUS_HAND_OVER

log = logging.getLogger("concordance.consensus")

MAX_HELD_PROPOSALS = 10_000  # proposals kept aside during a planned hand-over at most


class PlannedStop(Outbound):
    """The steps of a planned stop (state set by the driver's ``__init__``)."""

    clock: Clock
    reads: Waiters
    snapshots: SnapshotCoordinator
    _inbox: deque[tuple[bytes, wire.Envelope]]
    _stopping: bool
    _shutdown_at: float | None
    _drain_until: float | None
    _unacked: set[bytes]
    _held_forwards: list[RaftPropose]
    _held_requests: list[tuple[bytes, wire.Envelope]]

    if TYPE_CHECKING:  # the driver's, called from here

        async def _dispatch(self, peer: bytes, env: wire.Envelope) -> None: ...

        async def _send_deferred(self) -> None: ...

    def shutdown(self) -> None:
        """Ask for a planned stop: hand leadership over, drain, stop (safe from a signal
        handler; the steps run on the main task, the only one that touches the core)."""
        if self._shutdown_at is None:
            self._shutdown_at = self.clock.monotonic()
        self._wake.set()

    async def _shutdown_step(self, now: float) -> None:
        """One look at a planned stop's progress (called every turn, at least every tick)."""
        assert self._shutdown_at is not None
        if self._drain_until is not None:
            settled = (
                not self._unacked
                and not self._inbox
                and not self._frames_in
                and self.peers.drained()
                and not self.core.has_ready()
            )
            if self._unacked and now >= self._drain_until:
                log.warning(
                    "%s consensus stops without the acknowledgement of %d front(s): what they "
                    "sent after it is lost",
                    self.cfg.node_id,
                    len(self._unacked),
                )
            if settled or now >= self._drain_until:
                self._stopping = True
            return
        core = self.core
        in_time = now - self._shutdown_at < CONSENSUS_HAND_OVER
        others = [v for v in core.membership.voters if v != self.cfg.node_id]
        if core.role is not Role.LEADER and (self._held_forwards or self._held_requests):
            await self._release_proposals()
        if in_time and core.role is Role.LEADER and others:
            if core.lead_transferee is None:  # again if an earlier attempt timed out
                try:
                    core.transfer_leadership()
                except Unavailable as e:
                    log.info("%s cannot hand leadership over: %s", self.cfg.node_id, e)
                    await self._start_drain(now)
            return
        if in_time and core.role is not Role.LEADER and core.leader_id is None and others:
            return  # an election (maybe the one we started) is on: wait to learn its winner
        await self._start_drain(now)

    async def _start_drain(self, now: float) -> None:
        self._drain_until = now + CONSENSUS_DRAIN
        await self._release_proposals()
        log.info(
            "%s consensus stopping (leader %s)", self.cfg.node_id, self.core.leader_id or "unknown"
        )
        await self._to_fronts("stopping", wire.Stopping("consensus"))
        self.peers.drain()  # peers stop sending here; what they sent is still stepped
        self._unacked = set(self.fronts.all())  # those told: a gone one was forgotten

    async def _refuse_pending(self) -> None:
        """Answer parked and queued requests ``unavailable`` rather than let them time out."""
        stopping = Unavailable("consensus is stopping")
        parked = self.reads.pop_all() + self.snapshots.waiters.pop_all()
        queued = [(peer, env) for peer, env in self._inbox if env.type in wire.REPLIES]
        self._inbox.clear()
        refused = [(w.peer, w.request) for w in parked] + queued
        for peer, env in refused:
            await self.server.reply(peer, env, stopping)
        await self._send_deferred()  # proposals appended before the stop keep their answer
        if refused or self.server.sent_within(CONSENSUS_FLUSH):
            await self._flush_to_fronts()

    async def _flush_to_fronts(self) -> None:
        """Before closing: make sure the fronts have read what was sent to them.

        Sockets close with linger=0 (PROTOCOL.md §5), and a front's socket
        (``IMMEDIATE``) discards what it received but had not read yet when the
        connection goes, so the last answers (and ``dropped`` reports) need the
        front to have read them. A last ``stopping`` goes to each front, which
        answers every ``stopping`` with ``stopping_ack`` once it has read all
        sent before (ZeroMQ keeps order); wait for those, at most
        ``CONSENSUS_FLUSH`` on the driver's clock (a deadline: the fronts
        are other processes, or other roles of a simulated node). It used to
        sleep that long on every planned stop."""
        await self._to_fronts("stopping", wire.Stopping("consensus"))
        waiting = set(self.fronts.all())
        clock = self.clock
        deadline = clock.monotonic() + CONSENSUS_FLUSH
        stopping = Unavailable("consensus is stopping")
        while waiting and (left := deadline - clock.monotonic()) > 0:
            self._wake.clear()
            inbox, self._inbox = self._inbox, deque()
            for peer, env in inbox:
                if isinstance(env.body, wire.StoppingAck):
                    waiting.discard(peer)
                elif env.type in wire.REPLIES:  # a front that was not told (not planned)
                    await self.server.reply(peer, env, stopping)
            if waiting:
                try:
                    async with clock.timeout(left):
                        await self._wake.wait()
                except TimeoutError:
                    break

    def _holds_proposals(self) -> bool:
        """Whether proposals are kept aside: this leader is handing leadership over
        before a planned stop. Refused now, their writers would retry against a
        leader still busy handing over, and give up (503) if that took long; kept
        until the hand-over ends, they are refused (or taken) then, and the refusal
        names the new leader. Bounded by ``CONSENSUS_HAND_OVER`` and ``MAX_HELD_PROPOSALS``."""
        return (
            self._shutdown_at is not None
            and self._drain_until is None
            and self.core.role is Role.LEADER
            and len(self._held_forwards) + len(self._held_requests) < MAX_HELD_PROPOSALS
        )

    async def _release_proposals(self) -> None:
        """The hand-over is over (or abandoned): step what was kept aside."""
        forwards, self._held_forwards = self._held_forwards, []
        requests, self._held_requests = self._held_requests, []
        for msg in forwards:
            self.core.step(msg)
        for peer, env in requests:
            await self._dispatch(peer, env)
