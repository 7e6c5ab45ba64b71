"""The storage role: one actor that owns state.db and speaks docs/PROTOCOL.md for it.

It wraps :class:`~concordance.storage.fsm.StateMachine` with three sockets:
the ``storage`` ROUTER (reads from the front), the ``events`` PUB (change
batches and write results) and a DEALER to ``consensus`` (committed entries
in; ``hello``, ``applied``, ``durable``, ``snapshot_taken`` and TTL proposals out).

Why SQLite is called synchronously, on the event loop, with no thread:

* state.db has exactly one writer, this process, and Raft hands it entries
  in order, so applies are sequential by nature; a thread would add locking
  and buy no parallelism;
* while an apply runs there is nothing else useful to do: a read must not see
  half a batch anyway, and the next ``apply`` depends on this one;
* reads are point lookups and index range scans on a local file, far
  shorter than the IPC round trip that carries them.

The exceptions are ``checkpoint`` (durability.py: an fsync of the WAL, which
consensus compacts its log behind) and ``backup`` and ``take_snapshot``,
which copy the whole file while writes must continue (a copy is taken only
when a member needs one, PROTOCOL.md §3.6): each runs in a worker thread on its own
read-only connection, inside one read transaction (WAL lets the writer go
on), so the copy is one consistent state whose ``applied_index`` (and term)
is read back from the copy itself. A snapshot taken on the loop stalled
every apply and read of the node for as long as the copy took (seconds for
a state.db of a few hundred MiB: large values kept in the change history).

Rules / theory of operation:

* Committed entries are applied in the order they arrive (with the ``apply``
  messages queued behind, apply_merge.py); entries at or below
  ``applied_index`` are skipped, and a gap drops the batch and sends
  ``hello`` at once so consensus rewinds. After each applied batch:
  ``change_batch`` (topic c), then one ``results`` per origin (topic r).
* The batches stay in state.db's open transaction until storage tells
  consensus ``applied``: ``ack_delay`` after the first batch it covers, or
  at once past ``ACK_EVERY`` entries. Then it commits them all, once, and
  ``applied`` says what is committed. So a write's result never waits for a
  COMMIT, and one COMMIT writes the pages that several batches dirtied (a
  COMMIT cost about 10 us per entry at 14 entries per batch). A crash of
  the process loses the uncommitted batches; the restarted storage says
  ``hello`` from its committed index and consensus resends them. Reads
  cannot see that step back: each ``results`` carries the applied index it
  was published at, and the front reads locally at least that far
  (``min_index``), so a read waits for the resent batches rather than miss
  a write the front has answered. ``checkpoint``, ``take_snapshot``,
  ``restore``, ``backup`` and a stop commit first. A failed COMMIT leaves
  the state at the last commit: on the task that takes consensus's messages
  (where the commit the delay calls for is queued too, ``_CommitDue``) it
  stops the service, as a failed apply does; on a backup the backup fails,
  and the next apply finds a gap, so consensus resends.
* Every one-way send may be lost (consensus down or restarting); the
  ``hello`` every second repairs all of them. Replies to vanished clients are
  dropped by ``RpcServer``; their requests time out and are retried.
* ``wait_applied`` requests park in a heap until an apply reaches their
  index, and are dropped at their deadline (the client has timed out).
* Restarts without failed requests: at start, storage waits (at most
  ``subscriber_wait``) for its front to subscribe to the results topic before
  the first ``hello``, so the results of the entries it applies first are not
  lost to a front that has not reconnected yet; and it says ``hello`` as soon
  as it sees consensus connect again (a restarted consensus resumes ``apply``
  at once, not at the next periodic ``hello``). A planned stop
  (:meth:`shutdown`, SIGTERM) tells the front ``stopping`` (it holds new
  requests), serves ``drain`` seconds more so requests already sent are
  answered, and leaves its last answers and events ``flush`` seconds to go
  out before the sockets close (they close with linger 0). An apply and the
  publication of its results run without a suspension point in between, so
  a stop never separates them.
* Failures of the state machine's storage during ``apply`` or its commit
  (I/O error, disk full) stop the service: the state machine rolled back,
  and a restarted process reopens state.db and resumes from its committed
  index.
  Errors of a single read or snapshot are reported and survived.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import zmq.asyncio

from concordance import ipc
from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.config import NodeConfig
from concordance.errors import (
    IpcError,
    Unavailable,
)
from concordance.ipc.fronts import Fronts
from concordance.ipc.sockets import Client, Publisher, Server, Sockets, ZmqSockets
from concordance.latency import LatencyCounts
from concordance.protocol import wire
from concordance.protocol.payloads import new_outcome
from concordance.raft.entries import EntryKind
from concordance.storage.applied_mark import AppliedMark
from concordance.storage.apply_merge import take_queued
from concordance.storage.fsm import Applied, ApplyGap, StateMachine
from concordance.storage.service_reads import FrontReads, _Waiter
from concordance.storage.service_snapshots import StorageSnapshots
from concordance.storage.service_ttl import TRUST_HELLOS, ExpiryReaper, ReaperTimings
from concordance.storage.service_waiters import AppliedWaiters
from concordance.timing import ACK_DELAY, ACK_EVERY, STORAGE_DRAIN, STORAGE_FLUSH, WATCHING_FRESH

__all__ = ["ServiceTimings", "StorageService"]

log = logging.getLogger(__name__)

_KINDS = frozenset(int(k) for k in EntryKind)


@dataclass(frozen=True, slots=True)
class _CommitDue(wire.Body):
    """Queued in storage's own inbox when ``ack_delay`` is up: commit and send ``applied``
    there (never sent over IPC)."""


_COMMIT_DUE = _CommitDue()

# A consensus message's handler (``StorageService._FROM_CONSENSUS``); it takes the
# body of its own key's type, hence Any here. The front's are in service_reads.py.
_ConsensusHandler = Callable[["StorageService", Any], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ServiceTimings:
    """The service's clocks (seconds); tests shorten them."""

    hello_interval: float = 1.0
    send_timeout: float = 0.5  # one-way sends to consensus; the next hello repairs a loss
    default_wait: float = 60.0  # a wait_applied that carries no deadline
    snapshots_kept: int = 2  # files left in state/snapshots/ for consensus to take
    reaper: ReaperTimings = field(default_factory=ReaperTimings)
    subscriber_wait: float = 1.0  # at start, for the front's subscription to results
    reconnect_poll: float = 0.05  # how often a lost consensus connection is looked for
    drain: float = STORAGE_DRAIN  # a planned stop serves this long after saying ``stopping``
    flush: float = STORAGE_FLUSH  # for the last answers and events to leave before closing
    # ``applied`` waits this long for more batches to ack with it (0: one per batch)
    ack_delay: float = ACK_DELAY


class StorageService(FrontReads, StorageSnapshots):
    """The storage role of one node. ``await run()`` serves until :meth:`stop`.

    The fronts' reads and backups (``service_reads.py``) and the snapshots and
    checkpoints (``service_snapshots.py``) are mixins that declare the state set here.

    Args:
        cfg: the node's configuration (data dir, node id, change retention).
        ctx: the ZeroMQ context; the process's shared one by default.
        timings: intervals and timeouts.
        clock: what those run on (the system clock; tests pass a manual one).
        sockets: opens its IPC ends (ZeroMQ on ``ctx``; tests may pass in-memory ones).
    """

    def __init__(
        self,
        cfg: NodeConfig,
        *,
        ctx: zmq.asyncio.Context | None = None,
        timings: ServiceTimings | None = None,
        clock: Clock = SYSTEM_CLOCK,
        sockets: Sockets | None = None,
    ) -> None:
        self.cfg = cfg
        self.apply_latency = LatencyCounts()  # applied batches, for /metrics
        self.state_dir = cfg.data / "state"
        self.db_path = self.state_dir / "state.db"
        self.snapshot_dir = self.state_dir / "snapshots"
        self._sockets = sockets or ZmqSockets(ctx)
        self._t = timings or ServiceTimings()
        self._clock = clock
        self._stop = asyncio.Event()
        self._planned = False  # a shutdown(): drain and flush before closing
        self._inbox: asyncio.Queue[wire.Envelope] = asyncio.Queue()
        self._held: deque[wire.Envelope] = deque()  # taken from the inbox by a merge, next
        self._waiters: AppliedWaiters[_Waiter] = AppliedWaiters()
        self._backups: set[asyncio.Task[None]] = set()  # backups and snapshots being copied
        self._backup_lock = asyncio.Lock()
        self._snapshotting: asyncio.Task[None] | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self.durable_index = 0  # the applied index the last checkpoint made durable
        self._sm: StateMachine | None = None
        self._server: Server | None = None
        self._fronts = Fronts()
        self._events: Publisher | None = None
        self._consensus: Client | None = None
        self._reaper: ExpiryReaper | None = None
        self._acked = 0  # the applied index consensus was last told (applied or hello)
        self._mark: AppliedMark | None = None
        self._mark_index = 0
        # front -> (its last ``front_watching``, when it came)
        self._watching: dict[bytes, tuple[bool, float]] = {}
        self._ack_later: asyncio.Task[None] | None = None
        # Names this process to consensus in ``hello`` (apply_stream.py): distinct across
        # restarts (the clock moved on), and deterministic under a simulated clock.
        self._incarnation = max(1, int(self._clock.monotonic() * 1_000_000))

    # -- lifecycle -------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to finish (safe from a signal handler on the loop)."""
        self._stop.set()

    def shutdown(self) -> None:
        """A planned stop (SIGTERM): tell the front, drain, flush, then stop."""
        self._planned = True
        self._stop.set()

    @property
    def state(self) -> StateMachine:
        """The open state machine (only while running)."""
        if self._sm is None:
            raise RuntimeError("the storage service is not running")
        return self._sm

    @property
    def waiting(self) -> int:
        """How many ``wait_applied`` requests are parked."""
        return len(self._waiters)

    async def run(self) -> None:
        """Bind, open state.db, serve until :meth:`stop`, then close everything.

        Raises:
            IpcError: a socket cannot be bound (another storage holds it).
            sqlite3.Error / OSError: state.db cannot be opened or written.
        """
        try:
            await self._open()
            await self._serve()
        finally:
            await self._close()

    async def _open(self) -> None:
        data, socks = self.cfg.data_dir, self._sockets
        # Bind first: a second copy of this role fails here, before touching state.db.
        self._server = await socks.server(ipc.endpoint(data, "storage"))
        self._events = await socks.publisher(ipc.endpoint(data, "events"))
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.snapshot_dir.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        self._sm = StateMachine(
            self.db_path,
            retention=self.cfg.change_retention,
            retention_bytes=self.cfg.change_retention_bytes,
        )
        self._mark = AppliedMark(self.db_path.with_name("applied.mark"))
        self._mark_index = self._mark.read()
        if self._mark_index > self._sm.applied_index:
            log.info(
                "storage %s: the last process had applied up to %d, state.db holds %d: local"
                " reads wait for consensus to resend the rest",
                self.cfg.node_id,
                self._mark_index,
                self._sm.applied_index,
            )
        self._consensus = socks.client(
            ipc.endpoint(data, "consensus"), "storage", on_message=self._inbox.put_nowait
        )
        self._reaper = ExpiryReaper(
            self.cfg.node_id,
            self._sm,
            self._consensus,
            self._t.reaper,
            trust=TRUST_HELLOS * self._t.hello_interval,
            clock=self._clock,
        )
        sm = self._sm
        log.info(
            "storage %s: state.db at applied index %d (term %d), revision %d",
            self.cfg.node_id,
            sm.applied_index,
            sm.applied_term,
            sm.revision,
        )

    async def _serve(self) -> None:
        assert self._reaper is not None
        loops = [
            asyncio.create_task(self._consensus_loop(), name="storage consensus"),
            asyncio.create_task(self._read_loop(), name="storage reads"),
            asyncio.create_task(self._heartbeat(), name="storage hello"),
            asyncio.create_task(self._reaper.run(), name="storage ttl"),
        ]
        stop = asyncio.create_task(self._stop.wait(), name="storage stop")
        try:
            done, _ = await asyncio.wait([*loops, stop], return_when=asyncio.FIRST_COMPLETED)
            if stop in done and self._planned:
                await self._drain()
        finally:
            for task in [*loops, stop]:
                task.cancel()
            await asyncio.gather(*loops, stop, return_exceptions=True)
        for task in done:
            if task is not stop and not task.cancelled():
                error = task.exception()
                if error is not None:
                    raise error
                raise RuntimeError(f"{task.get_name()} ended unexpectedly")
        log.info("storage %s: stopping", self.cfg.node_id)

    async def _drain(self) -> None:
        """Tell the front ``stopping`` and keep serving for ``drain`` seconds."""
        assert self._server is not None
        log.info(
            "storage %s: stopping (applied index %d)", self.cfg.node_id, self.state.applied_index
        )
        for front in self._fronts.all():  # during a front hand-over, both fronts
            try:
                await self._server.send(front, "stopping", wire.Stopping("storage"))
            except IpcError as e:
                log.debug("storage: cannot tell %r it is stopping: %s", front, e)
        await self._flush_ack()
        await self._send("stopping", wire.Stopping("storage"))  # consensus: no more apply
        await self._clock.sleep(self._t.drain)
        stopping = Unavailable("storage is stopping")  # the front asks the next one
        for peer, env in self._waiters.clear():
            await self._server.reply(peer, env, stopping)

    async def _flush_ack(self) -> None:
        """Send a delayed ``applied`` now."""
        if self._ack_later is not None:
            self._ack_later.cancel()
            self._ack_later = None
            await self._send_applied()

    async def _close(self) -> None:
        if self._sm is not None and self._stop.is_set():
            # A stop: commit what was applied now, before the sockets (and with them the
            # lock that keeps a successor from opening state.db) are let go.
            try:
                self._sm.commit()
            except sqlite3.Error as e:  # consensus resends it to the successor
                log.error("storage: the last commit failed: %s", e)
        elif self._sm is not None:
            # Not a stop but a failure (or a simulated crash): keep only what was
            # committed, and free state.db's write lock before anything else can run.
            self._sm.close(commit=False)
            self._sm = None
        if self._mark is not None:
            self._mark.close()
            self._mark = None
        if self._ack_later is not None:  # an unplanned stop: the next hello tells it
            self._ack_later.cancel()
        if self._planned and self._server is not None:
            await asyncio.sleep(self._t.flush)  # linger=0 would discard what is still queued
        if self._backups:  # their threads finish on their own; give them a moment
            await asyncio.wait(self._backups, timeout=5.0)
        for task in list(self._backups):
            task.cancel()
        self._waiters.clear()
        for sock in (self._consensus, self._server, self._events):
            if sock is not None:
                await sock.close()
        if self._sm is not None:
            self._sm.close(commit=False)  # committed above; a failed commit is not retried
        self._consensus = self._server = self._events = self._sm = self._reaper = None

    # -- consensus -> storage ----------------------------------------------------
    async def _consensus_loop(self) -> None:
        # Applies and the commits that follow them run here, in the order of the inbox.
        while True:
            env = self._held.popleft() if self._held else await self._inbox.get()
            if env.body is _COMMIT_DUE:  # queued by _ack_after_delay, not by consensus
                await self._send_applied()
                continue
            handler = self._FROM_CONSENSUS.get(type(env.body))
            if handler is None:
                log.warning("storage: dropping unexpected %s from consensus", env.type)
            else:
                await handler(self, env.body)

    async def _on_apply(self, body: wire.Body) -> None:
        """An ``apply`` with those queued behind it, in one transaction (apply_merge.py)."""
        assert isinstance(body, wire.Apply)
        await self._apply(take_queued(body, self._inbox, self._held))

    async def _on_take_snapshot(self, body: wire.Body) -> None:
        self.state.commit()  # the copy reads what is committed
        self._start_snapshot()

    async def _on_checkpoint(self, body: wire.Body) -> None:
        self.state.commit()  # what the checkpoint makes durable
        self._start_checkpoint()

    async def _on_leadership(self, body: wire.Body) -> None:
        assert self._reaper is not None and isinstance(body, wire.Leadership)
        self._reaper.on_leadership(body)

    async def _apply(self, body: wire.Apply) -> None:
        sm = self.state
        entries: list[tuple[int, int, bytes | None]] = []
        for index, term, kind, data in body.entries:
            if kind not in _KINDS:
                log.warning(
                    "storage: entry %d has unknown kind %d; applied as a no-op", index, kind
                )
            entries.append((index, term, data if kind == EntryKind.NORMAL else None))
        started = time.perf_counter()
        before = sm.applied_index
        try:
            applied = sm.apply(entries, commit=False)
        except ApplyGap as e:
            log.info("storage: dropping an apply batch (%s); saying hello", e)
            await self._hello()
            return
        self.apply_latency.observe(time.perf_counter() - started)
        if sm.applied_index > self._mark_index:  # first: it must cover every result out
            self._mark_index = sm.applied_index
            assert self._mark is not None
            self._mark.note(self._mark_index)
        await self._publish(applied)  # before the COMMIT: nothing is waiting for it
        await self._release_waiters()
        if sm.applied_index == before:  # all applied already: consensus is resending, so
            await self._send_applied(force=True)  # tell it at once where storage is
        else:
            await self._ack()

    async def _ack(self) -> None:
        """Commit and tell consensus how far storage applied, for many batches at once.

        Consensus uses ``applied`` only to pace the apply stream (a window of
        ``WINDOW`` entries, PROTOCOL.md) and to time snapshots, never on a
        request's path, and every ZeroMQ message wakes four threads; a COMMIT
        costs as much for one batch as for several. So both go ``ack_delay``
        after the first batch they cover, or at once when ``ACK_EVERY``
        entries are unacknowledged (far inside the window).
        """
        if self._t.ack_delay <= 0 or self.state.applied_index - self._acked >= ACK_EVERY:
            await self._send_applied()
        elif self._ack_later is None:
            self._ack_later = asyncio.create_task(self._ack_after_delay(), name="storage ack")

    async def _ack_after_delay(self) -> None:
        try:
            await self._clock.sleep(self._t.ack_delay)
        finally:
            if self._ack_later is asyncio.current_task():
                self._ack_later = None
        # The commit runs where applies run (_consensus_loop), after what is queued.
        self._inbox.put_nowait(wire.Envelope("commit_due", 0, _COMMIT_DUE))

    async def _send_applied(self, *, force: bool = False) -> None:
        """Commit what is applied, then say so (``applied`` is what a crash keeps)."""
        sm = self.state
        sm.commit()
        index = sm.committed_index
        if force or index > self._acked:
            self._acked = index
            await self._send("applied", wire.Applied(index))

    async def _publish(self, applied: list[Applied]) -> None:
        assert self._events is not None
        events = [event for a in applied for event in a.events]
        # Only this node's front waits for results here: other nodes' fronts hear
        # of their writes from their own storage (PROTOCOL.md §3.4).
        mine = self.cfg.node_id
        items = [new_outcome(a.request_id, a.outcome) for a in applied if a.origin == mine]
        try:
            # Changes first: the front has a change before the writer's result, so
            # no watcher can miss what a writer was told. (The front answers the
            # writer first and feeds its watchers on its next loop turn.)
            if events and self._changes_wanted():
                batch = wire.ChangeBatch(tuple(events), events[-1].revision)
                await self._events.publish("change_batch", batch)
            if items:
                results = wire.Results(mine, tuple(items), self.state.applied_index)
                await self._events.publish("results", results)
        except IpcError as e:  # the front repairs lost changes from the change log
            log.warning("storage: publish failed: %s", e)

    def _changes_wanted(self) -> bool:
        """Whether a front may need change batches: unless every front heard from in
        the last ``WATCHING_FRESH`` seconds said it has no watcher (``front_watching``
        comes every 0.2 s; one gone quiet, or none heard yet, gets them all)."""
        fresh = self._clock.monotonic() - WATCHING_FRESH
        said = [watching for watching, at in self._watching.values() if at > fresh]
        return not said or any(said)

    # -- storage -> consensus ------------------------------------------------------
    async def _heartbeat(self) -> None:
        assert self._events is not None and self._consensus is not None
        if not await self._events.wait_subscribed(b"r", self._t.subscriber_wait):
            log.info("storage: no front subscribed yet; its first results may be lost")
        while True:
            await self._hello()
            self._events.take_subscriptions()  # only the first one matters; do not pile up
            dropped = self._waiters.expire(self._clock.wall_ms())
            if dropped:
                log.debug("storage: %d wait_applied requests reached their deadline", dropped)
            due = self._clock.monotonic() + self._t.hello_interval
            was_connected = self._consensus.connected()
            while (left := due - self._clock.monotonic()) > 0:
                await self._clock.sleep(min(left, self._t.reconnect_poll))
                connected = self._consensus.connected()
                if connected and not was_connected:
                    break  # consensus (re)started: tell it where to resume at once
                was_connected = connected

    async def _lost_uncommitted(self) -> None:
        """state.db went back to its last commit under a running process: tell consensus as
        a new process would (a new incarnation), so it resends from there at once."""
        self._incarnation += 1
        await self._hello()

    async def _hello(self) -> None:
        sm = self.state
        self._acked = max(self._acked, sm.applied_index)  # a hello acknowledges too
        hello = wire.Hello(sm.applied_index, sm.applied_term, self._incarnation)
        await self._send("hello", hello)

    async def _send(self, type: str, body: wire.Body) -> None:
        assert self._consensus is not None
        try:
            await self._consensus.send(type, body, timeout=self._t.send_timeout)
        except IpcError as e:  # consensus is down or restarting; the next hello repairs this
            log.debug("storage: %s to consensus lost: %s", type, e)

    # What storage takes from consensus, by body type (PROTOCOL.md §3.2 to storage),
    # built once with the class: a dispatch is one dict lookup. The front's
    # (§3.3) are FrontReads' tables.
    _FROM_CONSENSUS: ClassVar[dict[type[wire.Body], _ConsensusHandler]] = {
        wire.Apply: _on_apply,
        wire.Restore: StorageSnapshots._restore,
        wire.TakeSnapshot: _on_take_snapshot,
        wire.Checkpoint: _on_checkpoint,
        wire.Leadership: _on_leadership,
    }
