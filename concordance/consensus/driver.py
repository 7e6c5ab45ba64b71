"""The consensus driver: one asyncio task that owns a RaftCore and moves its inputs and outputs.

Rules / theory of operation
---------------------------

* **One owner.** Only the main task (:meth:`ConsensusDriver.run`) calls the
  core. A receive task drains the ``consensus`` socket into an inbox and a
  ticker counts ticks; both only wake the main task.
* **The loop.** Each turn feeds everything in the inbox to the core (IPC
  requests, frames from the peer links, storage reports, ticks), then handles at most
  one Ready in the order of the driver contract (``concordance.raft``):
  persist (on the db thread, see ``disk.py``) -> send -> restore/apply ->
  read states -> refused forwards (``dropped`` to the front) -> ``advance``.
  Then the apply stream and the snapshot policy get their turn.
* **Group commit.** While a Ready is being persisted the core is not touched
  (the gate in ``disk.py``); what arrives meanwhile waits in the inbox and
  goes into the next Ready, so one fsync covers every proposal that arrived
  during the previous one.
* **Never block on a peer role or a peer node.** Server-side sends never wait
  (``RpcServer``): ``apply`` to a dead storage pauses the apply stream until
  its next ``hello``. Raft messages go to the peer links (``peers.py``, owned
  here since PROTOCOL.md §6), whose sends never wait either: a dead or slow
  peer only fills its own bounded queue (Raft retransmits).
* **Planned stop** (:meth:`shutdown`, SIGTERM). A leader with other voters
  hands leadership to the most caught-up one first (the core refuses new
  proposals from then on, and sends ``TimeoutNow`` only once the target holds
  every entry this leader appended, so nothing appended is left behind), and
  waits to hear of the new leader. Then every role stops the same way: it
  tells the fronts ``stopping`` (a front holds new requests and peer frames
  from then on, and answers ``stopping_ack``: the last message it sends this
  process), keeps serving until every front's answer came in and what came
  before it was stepped (a forwarded proposal among the peer frames must be
  refused, not lost with the process), at most ``CONSENSUS_DRAIN``, answers
  what is left, and closes once each front acknowledged a last ``stopping``
  (it has read those answers; ``_flush_to_fronts``).
  The hand-over takes at most ``CONSENSUS_HAND_OVER`` (``concordance/timing.py``
  bounds the whole stop against the front's and the keeper's): a stop never hangs.
* **Where the code is.** This module is the loop and the handlers; the planned
  stop's steps are in ``planned_stop.py`` and the sends to peers, fronts and
  storage in ``outbound.py`` (mixins of :class:`ConsensusDriver`).
* **Failure is fatal.** An error while persisting leaves raft.db's state
  unknown (``StoreFailed``); the driver stops and :meth:`run` raises, so the
  process exits and supervisord restarts it from what is durable.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import astuple
from typing import ClassVar

from concordance import ipc
from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.config import NodeConfig
from concordance.consensus.apply_stream import ApplyStream
from concordance.consensus.disk import RaftDisk
from concordance.consensus.notices import CommitNotices
from concordance.consensus.outbound import STORAGE
from concordance.consensus.peers import Deliver, PeerTransport, peer_net
from concordance.consensus.planned_stop import PlannedStop
from concordance.consensus.promotion import Promoter, view_of
from concordance.consensus.snapshots import SnapshotCoordinator
from concordance.consensus.status import api_role, build_status
from concordance.consensus.waiters import Waiters
from concordance.errors import (
    ConcordanceError,
    InvalidRequest,
    RemoteProtocolError,
    Unavailable,
)
from concordance.ipc import fdpass
from concordance.ipc.fronts import Fronts
from concordance.ipc.sockets import Server, Sockets, ZmqSockets
from concordance.latency import LatencyCounts
from concordance.protocol import wire
from concordance.raft.config import RaftConfig
from concordance.raft.core import RaftCore
from concordance.raft.entries import ConfChange, ConfChangeOp, Membership
from concordance.raft.messages import Propose as RaftPropose
from concordance.raft.ready import Ready, Role
from concordance.timing import PEER_FLUSH

__all__ = ["ConsensusDriver", "boot_membership"]

log = logging.getLogger("concordance.consensus")

MAX_INBOX = 10_000  # messages received but not yet fed; beyond it, zmq pushes back on senders
NOTE_COMMIT_EVERY = 1.0  # seconds between two unsynced writes of the commit index

# A handler of one message type (``ConsensusDriver._HANDLERS``): (driver, sender, message).
_Handler = Callable[["ConsensusDriver", bytes, wire.Envelope], Awaitable[None]]


def boot_membership(cfg: NodeConfig) -> Membership:
    """The membership a brand-new raft.db starts with (ignored once it exists)."""
    if cfg.peers:
        return Membership(tuple(cfg.peers), (), tuple(cfg.peers.items()))
    if cfg.join:
        return Membership()  # a joiner waits to be added by the cluster
    return Membership((cfg.node_id,), (), ((cfg.node_id, cfg.listen),))


class ConsensusDriver(PlannedStop):
    """The consensus role of one node. Build with :meth:`open`, then ``await run()``.

    Its planned stop and outbound sends come from the :class:`PlannedStop` and
    ``Outbound`` mixins, which only declare the state set here."""

    def __init__(
        self,
        cfg: NodeConfig,
        disk: RaftDisk,
        server: Server,
        core: RaftCore,
        clock: Clock = SYSTEM_CLOCK,
        net: Callable[[Deliver], PeerTransport] | None = None,
    ) -> None:
        self.cfg = cfg
        self.disk = disk
        self.server = server
        self.core = core
        self.clock = clock
        # the peer links: ``consensus/peers.py`` unless a test joins drivers in memory
        self.peers = net(self._frame_in) if net else peer_net(cfg, self._frame_in, clock)
        self._frames_in: list[bytes] = []  # from peer links, stepped on the next turn
        self.notices = CommitNotices(clock, self._send_now)  # the commit broadcast, held back
        self._fds: fdpass.FdReceiver | None = None
        self.stream = ApplyStream(self._send_storage, disk, clock.monotonic, core.log.applied)
        self.snapshots = SnapshotCoordinator(
            disk,
            self._send_storage,
            self.server.reply,
            cfg.snapshot_every,
            cfg.snapshot_trailing,
            clock,
        )
        self.reads = Waiters(clock)
        self.promoter = Promoter() if cfg.auto_promote else None
        self.readies = 0
        self.fronts = Fronts()  # dropped and stopping go to all
        self.leader_changes = 0
        self.fsync_latency = LatencyCounts()
        self._inbox: deque[tuple[bytes, wire.Envelope]] = deque()
        self._deferred: list[tuple[bytes, wire.Envelope, wire.Body | ConcordanceError]] = []
        self._held_forwards: list[RaftPropose] = []  # see _holds_proposals
        self._held_requests: list[tuple[bytes, wire.Envelope]] = []
        self._ticks = 0
        self._commit_noted_at = -NOTE_COMMIT_EVERY
        self._wake = asyncio.Event()
        self._stopping = False
        self._shutdown_at: float | None = None  # when a planned stop was asked for
        self._drain_until: float | None = None  # set once the front was told ``stopping``
        self._unacked: set[bytes] = set()  # fronts told ``stopping`` that did not say hello yet
        self._fatal: BaseException | None = None
        self._addresses: dict[str, str] = dict(cfg.peers)
        self._remember_addresses(core.membership)
        self._role = Role.FOLLOWER  # every core starts as one; the first Ready says otherwise
        self._leader: str | None = None

    @classmethod
    async def open(
        cls,
        cfg: NodeConfig,
        sockets: Sockets | None = None,
        clock: Clock = SYSTEM_CLOCK,
        net: Callable[[Deliver], PeerTransport] | None = None,
        rng: random.Random | None = None,
    ) -> ConsensusDriver:
        """Bind the ``consensus`` socket, then open ``{data}/raft`` (bootstrapping a new one).

        The socket comes first: its name can be held by one process only, so
        a second copy of the role fails here, before touching raft.db.

        Args:
            sockets: opens the ``consensus`` server (ZeroMQ on the process's
                context by default; tests pass ``concordance.testing.memory_ipc``).
            clock: what the driver's ticks, deadlines and timers run on.
            net: the peer links (``consensus/peers.py`` by default).
            rng: the election timeouts' randomness (seeded from the OS by default;
                the node simulation passes one drawn from its seed).
        """
        endpoint = ipc.endpoint(cfg.data_dir, "consensus")
        server = await (sockets or ZmqSockets()).server(endpoint)
        try:
            disk = await RaftDisk.open(cfg.data / "raft", lambda: boot_membership(cfg))
        except BaseException:
            await server.close()
            raise
        try:
            core = RaftCore(
                cfg.node_id,
                disk.view,
                disk.initial_hard_state,
                disk.initial_snapshot,
                RaftConfig(election_ticks=cfg.election_ticks, heartbeat_ticks=cfg.heartbeat_ticks),
                rng or random.Random(int.from_bytes(os.urandom(8), "big")),
                snapshots=disk.snapshots,
            )
        except BaseException:
            await server.close()
            await disk.close()
            raise
        latest = disk.latest_snapshot()
        if latest is not None:
            core.snapshot_on_disk(latest)  # the base record may have no file; this one has
        if disk.bootstrapped:
            log.info("%s bootstrapped %s", cfg.node_id, core.membership)
        try:
            driver = cls(cfg, disk, server, core, clock, net)  # loads the peer TLS files
        except BaseException:
            await server.close()
            await disk.close()
            raise
        if core.membership.voters == (cfg.node_id,):
            core.campaign()  # a cluster of one leads at once
        return driver

    def summary(self) -> str:
        """Counters worth a log line at shutdown."""
        return (
            f"term {self.core.term}, commit {self.core.log.commit}, "
            f"{self.readies} readies, {self.disk.fsyncs} fsyncs, "
            f"{self.stream.batches_sent} apply batches, {self.snapshots.compactions} compactions, "
            f"{self.snapshots.taken} snapshots, "
            f"{self._peer_drops()} raft frames dropped"
        )

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Ask :meth:`run` to finish its current step and shut down (safe from a signal handler)."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Drive the core until :meth:`stop`; then close the socket and raft.db.

        Raises whatever made the driver fail (a persist error, a dead socket).
        """
        self.server.deliver_to(self._received, self._fail)
        self._fds = fdpass.FdReceiver(fdpass.socket_path(self.cfg.data_dir), self.peers.accept)
        members = self.core.membership.members
        self.peers.dial({m: self._addresses[m] for m in members if m in self._addresses})
        ticker = asyncio.create_task(self._tick_forever(), name="consensus-tick")
        try:
            await self._loop()
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            await self._refuse_pending()
            await self.close()
        if self._fatal is not None:
            raise self._fatal

    async def close(self) -> None:
        """Close the peer links, the socket and raft.db (idempotent; :meth:`run` calls it)."""
        if self._fds is not None:
            self._fds.close()
            self._fds = None
        self.notices.flush()
        await self.peers.close(flush=PEER_FLUSH)
        await self.server.close()
        await self.disk.close()

    async def _loop(self) -> None:
        while not self._stopping:
            if self._shutdown_at is not None:
                await self._shutdown_step(self.clock.monotonic())
                if self._stopping:
                    break
            busy = self._inbox or self._frames_in or self._ticks or self.core.has_ready()
            if not busy and self.stream.idle:
                self._note_commit(self.clock.monotonic())
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._feed()
            if self.core.has_ready():
                await self._handle_ready(self.core.ready(), self._send_deferred)
            await self._send_deferred()
            await self.stream.pump()
            await self.snapshots.maybe_ask(self.stream.acked)

    def _note_commit(self, now: float | None = None) -> None:
        """Write the commit index unsynced (``disk.note_commit``), at most every
        ``NOTE_COMMIT_EVERY`` seconds while running: it only spares a clean restart
        re-learning it, and one SQLite write per idle moment (per write, at one
        client) costs every node CPU. ``disk.close`` writes the last one."""
        if now is not None:
            if now - self._commit_noted_at < NOTE_COMMIT_EVERY:
                return
            self._commit_noted_at = now
        try:
            self.disk.note_commit()
        except Exception as e:
            self._fail(e)

    def _received(self, peer: bytes, env: wire.Envelope) -> None:
        """Called by the socket as each message arrives (no task switch per message)."""
        self.fronts.note(peer)
        self._inbox.append((peer, env))
        if len(self._inbox) >= MAX_INBOX:
            self.server.pause()
        self._wake.set()

    async def _tick_forever(self) -> None:
        clock = self.clock
        interval = self.cfg.tick_ms / 1000
        due = clock.monotonic()
        while True:
            due += interval
            await clock.sleep(max(0.0, due - clock.monotonic()))
            self._ticks += 1
            self._wake.set()

    def _fail(self, error: BaseException) -> None:
        log.critical("%s consensus driver failed: %r", self.cfg.node_id, error)
        self._fatal = self._fatal or error
        self.stop()

    # ------------------------------------------------------------------ inputs
    async def _feed(self) -> None:
        ticks, self._ticks = self._ticks, 0
        for _ in range(ticks):
            self.core.tick()
        if ticks:
            self.reads.expire()
            self.snapshots.waiters.expire()
            if self.promoter is not None and self.promoter.tick(ticks):
                self._maybe_promote()
        if self._frames_in:
            frames, self._frames_in = self._frames_in, []
            self._step_frames(frames)
        while self._inbox:
            peer, env = self._inbox.popleft()
            await self._dispatch(peer, env)
        self.server.resume()

    async def _dispatch(self, peer: bytes, env: wire.Envelope) -> None:
        """Hand one message to its handler (``_HANDLERS``: one dict lookup by body type)."""
        handler = self._HANDLERS.get(type(env.body))
        if handler is not None:
            await handler(self, peer, env)
        elif env.type in wire.REPLIES:  # a request of a type consensus does not serve
            await self.server.reply(
                peer, env, InvalidRequest(f"consensus does not serve {env.type}")
            )
        else:
            log.debug("ignoring %s from %r", env.type, peer)

    async def _on_propose(self, peer: bytes, env: wire.Envelope) -> None:
        assert isinstance(env.body, wire.Propose)
        if self._holds_proposals():
            self._held_requests.append((peer, env))
        else:
            # Answered after this turn's Ready: its appends leave first (they are on
            # the write's path; the answer only tells the front it was taken).
            self._deferred.append((peer, env, self._propose(env.body)))

    async def _on_status(self, peer: bytes, env: wire.Envelope) -> None:
        status = build_status(
            self.core, self.stream.acked or 0, self.leader_changes, self.fsync_latency
        )
        await self.server.reply(peer, env, status)

    async def _on_peer_links(self, peer: bytes, env: wire.Envelope) -> None:
        links = tuple(wire.PeerStatus(*astuple(c)) for c in self.peers.counters())
        ok = wire.PeerLinksOk(links, self.peers.unroutable, self.peers.refused)
        await self.server.reply(peer, env, ok)

    async def _on_snapshot_now(self, peer: bytes, env: wire.Envelope) -> None:
        await self.snapshots.snapshot_now(peer, env)

    async def _on_front_hello(self, peer: bytes, env: wire.Envelope) -> None:
        pass  # the sender was noted on receipt (``_received``)

    async def _on_stopping_ack(self, peer: bytes, env: wire.Envelope) -> None:
        self._unacked.discard(peer)  # during a drain: that front's last message

    async def _on_stopping(self, peer: bytes, env: wire.Envelope) -> None:
        if peer == STORAGE:
            self.stream.on_stopping()
            self.snapshots.on_storage_stopping()

    def _from_storage(self, peer: bytes, env: wire.Envelope) -> bool:
        """Whether ``peer`` may report storage's position (only storage does)."""
        if peer != STORAGE:
            log.warning("ignoring %s from %r: only storage reports its position", env.type, peer)
        return peer == STORAGE

    async def _on_hello(self, peer: bytes, env: wire.Envelope) -> None:
        assert isinstance(env.body, wire.Hello)
        if self._from_storage(peer, env):
            self.stream.on_hello(env.body.applied_index, env.body.incarnation)
            self.core.applied_elsewhere(env.body.applied_index, env.body.applied_term)
            self.snapshots.on_storage_hello()  # a successor: re-ask what the old one lost
            await self.snapshots.resend()
            await self._tell_leadership()  # repairs a lost push, tells a new storage

    async def _on_applied(self, peer: bytes, env: wire.Envelope) -> None:
        assert isinstance(env.body, wire.Applied)
        if self._from_storage(peer, env):
            self.stream.on_applied(env.body.index)

    async def _on_durable(self, peer: bytes, env: wire.Envelope) -> None:
        assert isinstance(env.body, wire.Durable)
        if self._from_storage(peer, env):
            await self.snapshots.on_durable(self.core, env.body)

    async def _on_snapshot_taken(self, peer: bytes, env: wire.Envelope) -> None:
        assert isinstance(env.body, wire.SnapshotTaken)
        if self._from_storage(peer, env):
            await self.snapshots.adopt(self.core, env.body)

    async def _on_conf_change(self, peer: bytes, env: wire.Envelope) -> None:
        assert isinstance(env.body, wire.ConfChange)
        await self.server.reply(peer, env, self._conf_change(env.body))

    async def _on_transfer(self, peer: bytes, env: wire.Envelope) -> None:
        assert isinstance(env.body, wire.Transfer)
        await self.server.reply(peer, env, self._transfer(env.body))

    async def _send_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for peer, env, result in deferred:
            await self.server.reply(peer, env, result)

    def _maybe_promote(self) -> None:
        """On the leader: propose ``add_voter`` for a learner that has caught up (promotion.py)."""
        assert self.promoter is not None
        change = self.promoter.check(view_of(self.core))
        if change is None:
            return
        try:
            index = self.core.propose_conf_change(change)
        except Unavailable as e:
            log.info("%s cannot promote %s yet: %s", self.cfg.node_id, change.node_id, e)
            return
        self.promoter.promoted += 1
        self.promoter.streaks.pop(change.node_id, None)
        log.info(
            "%s promoting learner %s to voter (entry %s)", self.cfg.node_id, change.node_id, index
        )

    def _not_member(self) -> Unavailable | None:
        """A node outside the membership (a joiner not added yet, a removed node) serves
        no writes or reads: its log may never advance again, so it would only time out."""
        if self.core.membership.contains(self.cfg.node_id):
            return None
        return Unavailable(f"{self.cfg.node_id} is not a member of the cluster")

    def _step_frames(self, frames: list[bytes]) -> None:
        for frame in frames:
            try:
                msg = wire.decode_raft(frame)
            except RemoteProtocolError as e:
                log.warning("dropping an undecodable raft frame: %s", e)
                continue
            if isinstance(msg, RaftPropose) and self._holds_proposals():
                self._held_forwards.append(msg)
                continue
            self.core.step(msg)

    def _propose(self, body: wire.Propose) -> wire.Body | ConcordanceError:
        if not body.commands:
            return InvalidRequest("propose carries no commands")
        if refused := self._not_member():
            return refused
        try:
            index = self.core.propose_batch(body.commands)
        except Unavailable as e:
            return e
        return wire.Proposed(index or 0, forwarded=index is None)

    def _conf_change(self, body: wire.ConfChange) -> wire.Body | ConcordanceError:
        try:
            op = ConfChangeOp(body.op)
        except ValueError:
            return InvalidRequest(f"unknown membership change {body.op!r}")
        if not body.node_id:
            return InvalidRequest("conf_change needs a node_id")
        if refused := self._not_member():
            return refused
        if body.address:
            self._addresses[body.node_id] = body.address
        try:
            index = self.core.propose_conf_change(ConfChange(op, body.node_id, body.address))
        except Unavailable as e:
            return e
        return wire.Proposed(index or 0, forwarded=index is None)

    def _transfer(self, body: wire.Transfer) -> wire.Body | ConcordanceError:
        try:
            self.core.transfer_leadership(body.to)
        except Unavailable as e:
            return e
        return wire.Ok()

    async def _read_index(self, peer: bytes, env: wire.Envelope) -> None:
        if refused := self._not_member():
            await self.server.reply(peer, env, refused)
            return
        ctx = self.reads.park(peer, env)
        try:
            self.core.read_index(ctx)
        except Unavailable as e:
            self.reads.pop(ctx)
            await self.server.reply(peer, env, e)

    # ------------------------------------------------------------------ Ready
    async def _handle_ready(
        self, rd: Ready, after_first: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Persist -> send -> restore/apply -> read states -> advance (raft/__init__.py).

        ``after_first`` runs once the leader's early messages are out (answers to
        proposals: the appends are on the write's path, the answers are not)."""
        self.readies += 1
        if rd.soft_state is not None:
            await self._note_soft_state(rd)
        # Committed entries are durable before their Ready (raft/__init__.py, step 3),
        # so storage gets them first: the leader's apply (the write's answer) waits
        # neither for the fsync of entries proposed since nor behind the followers'
        # work on the commit broadcast for the two cores, and a follower's storage
        # applies while its consensus syncs.
        applied_first = bool(rd.committed) and rd.snapshot is None
        if applied_first:
            self.stream.committed_entries(rd.committed)
            await self.stream.pump()
        await self._send_messages(rd.messages_first)  # a leader's appends overlap its fsync
        if after_first is not None:
            await after_first()
        started = time.perf_counter()
        try:
            await self.disk.persist(rd)
        except Exception as e:
            self._fail(e)
            raise
        if rd.must_sync:
            self.fsync_latency.observe(time.perf_counter() - started)
        await self._send_messages(rd.messages_after)
        if rd.snapshot is not None:
            self.stream.installed(rd.snapshot)
            self._remember_addresses(rd.snapshot.membership)
        if not applied_first:
            self.stream.committed_entries(rd.committed)
        for rs in rd.read_states:
            waiter = self.reads.pop(rs.ctx)
            if waiter is None:
                continue  # its asker gave up, or it was meant for an earlier incarnation
            answer: wire.Body | ConcordanceError = (
                wire.ReadIndexOk(rs.index)
                if rs.index
                else Unavailable("leadership could not be confirmed")
            )
            await self.server.reply(waiter.peer, waiter.request, answer)
        if rd.dropped:
            await self._report_dropped(rd.dropped)
        if rd.snapshot_wanted:
            await self.snapshots.want(rd.snapshot_wanted)
        self.core.advance(rd)
        self._remember_addresses(self.core.membership)

    async def _note_soft_state(self, rd: Ready) -> None:
        soft = rd.soft_state
        assert soft is not None
        if soft.leader_id != self._leader:
            if self._leader is not None and self._leader != self.cfg.node_id:
                await self._fail_forwarded_reads(self._leader)
            if soft.leader_id is not None:
                self.leader_changes += 1
            self._leader = soft.leader_id
        if soft.role is not self._role:
            log.info("%s became %s at term %d", self.cfg.node_id, api_role(soft.role), soft.term)
            was_leader = self._role is Role.LEADER
            if was_leader:
                log.info("%s stepped down; leader is now %s", self.cfg.node_id, soft.leader_id)
            self._role = soft.role
            if was_leader or soft.role is Role.LEADER:
                await self._tell_leadership(soft.term)

    async def _fail_forwarded_reads(self, old_leader: str) -> None:
        """Reads forwarded to a leader we no longer follow get ``unavailable`` now rather
        than at their deadline (the old leader may be gone; a late answer is ignored)."""
        for waiter in self.reads.pop_all():
            await self.server.reply(
                waiter.peer, waiter.request, Unavailable(f"leader {old_leader} was lost")
            )

    # Every message type consensus takes (PROTOCOL.md §3.1), built once with the
    # class: a dispatch is one dict lookup, as cheap as the first isinstance was.
    _HANDLERS: ClassVar[dict[type[wire.Body], _Handler]] = {
        wire.Propose: _on_propose,
        wire.ReadIndex: _read_index,
        wire.Status: _on_status,
        wire.PeerLinks: _on_peer_links,
        wire.ConfChange: _on_conf_change,
        wire.Transfer: _on_transfer,
        wire.SnapshotNow: _on_snapshot_now,
        wire.FrontHello: _on_front_hello,
        wire.StoppingAck: _on_stopping_ack,
        wire.Stopping: _on_stopping,
        wire.Hello: _on_hello,
        wire.Applied: _on_applied,
        wire.Durable: _on_durable,
        wire.SnapshotTaken: _on_snapshot_taken,
    }
