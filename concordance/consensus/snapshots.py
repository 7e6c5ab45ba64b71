"""Log compaction and snapshot files: when to ask storage for what, and what to do with it.

Storage owns the state, so only storage can make it durable or copy it;
consensus owns the log, so only consensus may compact. Compaction copies
nothing (raft/__init__.py, PROTOCOL.md §3.6):

1. every ``snapshot_every`` entries storage acknowledged, consensus sends
   ``checkpoint``; storage fsyncs what it applied and answers ``durable
   {index}``; one request at a time, asked again after ``ASK_TIMEOUT``;
2. the log's base becomes ``index - snapshot_trailing`` (entries kept for
   slow followers), clamped to what the core handed out, and on a leader to
   what a recently active follower still needs (``replication.still_needed``: a
   member receiving or just installed a snapshot, so it is not sent another
   because the log moved on meanwhile), but held back by at most
   ``HOLD_EVERY`` compactions' worth of entries (a follower slower than the
   writes cannot grow the log without end): it is recorded in raft.db, the
   entries up to it dropped, and the core told.

A full copy of the state is made only on demand: when the core wants a
snapshot (``Ready.snapshot_wanted``: a follower behind the log's base, no
file reaching it) or on ``snapshot_now``, consensus sends ``take_snapshot``;
storage answers ``snapshot_taken {index, term, path}`` and the file is ours
(``FileSnapshotStore.save_from_file`` moves it). It must be newer than the
latest file (else dropped and the latest reported), an entry the core handed
out at or past the log's base, and of the term the log has there (else it
belongs to some other history and is deleted); only then is it made durable
and the core told (the leader then streams it). The two newest files are kept.

Runs on the task that owns the core (the gate in ``disk.py``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from contextlib import suppress

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.consensus.disk import RaftDisk
from concordance.consensus.waiters import Waiters
from concordance.errors import ConcordanceError, IpcError, Unavailable
from concordance.protocol.wire import (
    Body,
    Checkpoint,
    Durable,
    Envelope,
    SnapshotNowOk,
    SnapshotTaken,
    TakeSnapshot,
)
from concordance.raft.core import RaftCore
from concordance.raft.ready import Role
from concordance.raft.replication import still_needed
from concordance.raft.stores import LogCompacted, LogUnavailable

__all__ = ["SnapshotCoordinator"]

log = logging.getLogger("concordance.consensus")

ASK_TIMEOUT = 60.0  # seconds: storage restarted without answering take_snapshot / checkpoint
HOLD_EVERY = 4  # a follower still catching up holds back at most this many compactions
RETRY_AFTER_DISCARD = 5.0  # seconds: do not ask again at once for what was just refused

Send = Callable[[str, Body], Awaitable[None]]
Reply = Callable[[bytes, Envelope, Body | ConcordanceError], Awaitable[None]]


class _Request:
    """One outstanding one-way request to storage, re-askable after ``ASK_TIMEOUT``."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._at: float | None = None

    @property
    def pending(self) -> bool:
        return self._at is not None and self._clock.monotonic() - self._at < ASK_TIMEOUT

    def sent(self) -> None:
        self._at = self._clock.monotonic()

    def answered(self) -> None:
        self._at = None


class SnapshotCoordinator:
    """Compacts the log behind storage's durable index; asks for snapshot files on demand."""

    def __init__(
        self,
        disk: RaftDisk,
        send: Send,
        reply: Reply,
        every: int,
        trailing: int,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._disk = disk
        self._send = send
        self._reply = reply
        self._every = every
        self._trailing = max(0, trailing)
        self._clock = clock
        self.checkpointed = disk.first_index() - 1  # storage's last durable index we know of
        self._checkpoint = _Request(clock)
        self._snapshot = _Request(clock)
        self._retry_at = 0.0  # no on-demand request before this (after a discarded file)
        self.waiters = Waiters(clock)
        self.taken = 0  # snapshot files adopted
        self.compactions = 0
        self._storage_stopped = False  # storage said ``stopping``; its successor not heard yet
        self._resend_snapshot = False  # a take_snapshot to ask again (on_storage_hello)

    @property
    def asking(self) -> bool:
        """Whether a ``take_snapshot`` is outstanding."""
        return self._snapshot.pending

    # -- storage restarts ---------------------------------------------------------
    def on_storage_stopping(self) -> None:
        """Storage is stopping (a planned restart): a ``checkpoint`` or ``take_snapshot``
        it has not answered may go down with it (one that arrives after its consensus
        loop stopped reading is never seen)."""
        self._storage_stopped = True

    def on_storage_hello(self) -> None:
        """Storage said ``hello``. The first one after its ``stopping`` comes from its
        successor: what the old process left unanswered is asked again now, not after
        ``ASK_TIMEOUT`` (a follower behind the log's base would wait that long for a
        snapshot file, and compaction as long for a checkpoint). An answer from the old
        process that still comes makes the new request redundant, never wrong: a second
        checkpoint only confirms, an older or equal snapshot file is dropped."""
        if self._storage_stopped:
            self._storage_stopped = False
            self._checkpoint.answered()
            if self._snapshot.pending:
                self._snapshot.answered()
                self._resend_snapshot = True

    async def resend(self) -> None:
        """Ask again for a snapshot the stopped storage never answered (see above)."""
        if self._resend_snapshot:
            self._resend_snapshot = False
            await self._ask()

    # -- compaction -------------------------------------------------------------
    async def maybe_ask(self, applied: int | None) -> None:
        """Ask storage for a checkpoint once it acknowledged ``snapshot_every`` more entries."""
        # An installed snapshot moves the base: count from there, not from before it.
        self.checkpointed = max(self.checkpointed, self._disk.first_index() - 1)
        if applied is None or applied - self.checkpointed < self._every:
            return
        if self._checkpoint.pending:
            return
        try:
            await self._send("checkpoint", Checkpoint())
        except IpcError as e:
            log.debug("cannot ask storage for a checkpoint: %s", e)
            return
        self._checkpoint.sent()

    async def on_durable(self, core: RaftCore, body: Durable) -> None:
        """Storage holds everything up to ``body.index`` durably: compact behind it."""
        self._checkpoint.answered()
        self.checkpointed = max(self.checkpointed, body.index)
        base = min(body.index, core.log.applied) - self._trailing
        needed = None
        if core.role is Role.LEADER:
            needed = still_needed(core.progress, core.id, core.log.last_index())
        if needed is not None:
            base = max(min(base, needed), base - HOLD_EVERY * self._every)
        if base <= self._disk.first_index() - 1:
            return
        meta = core.base_meta(base)
        now = await self._disk.compact_behind(meta)
        core.compacted(now)
        self.compactions += 1
        log.info("log compacted behind durable index %d: it starts after %d", body.index, now)

    # -- snapshot files -----------------------------------------------------------
    async def want(self, index: int) -> None:
        """The core needs a snapshot file at ``index`` or later (``Ready.snapshot_wanted``)."""
        latest = self._disk.latest_snapshot()
        if latest is not None and latest.index >= index:
            return  # the core will find it at its next probe
        if not self._snapshot.pending and self._clock.monotonic() >= self._retry_at:
            log.info("a follower needs a snapshot at >= %d: asking storage for one", index)
            await self._ask()

    async def snapshot_now(self, peer: bytes, request: Envelope) -> None:
        """Park a ``snapshot_now`` until the next snapshot is adopted."""
        ctx = self.waiters.park(peer, request)
        if not self._snapshot.pending and not await self._ask():
            self.waiters.pop(ctx)
            await self._reply(peer, request, Unavailable("storage is not connected"))

    async def _ask(self) -> bool:
        try:
            await self._send("take_snapshot", TakeSnapshot())
        except IpcError as e:
            log.debug("cannot ask storage for a snapshot: %s", e)
            return False
        self._snapshot.sent()
        return True

    async def adopt(self, core: RaftCore, body: SnapshotTaken) -> None:
        """Storage wrote a snapshot at ``body.path``: keep it, tell the core, answer waiters.

        Everything is checked before ``core.snapshot_taken``: once the core has
        the metadata it may start sending that snapshot to a follower, so its
        file must be the one we then adopt.
        """
        self._snapshot.answered()
        latest = self._disk.latest_snapshot()
        if latest is not None and body.index <= latest.index:
            self._drop_file(body, f"snapshot {latest.index} is at least as new")
            size = self._disk.snapshot_path(latest).stat().st_size
            await self._answer(SnapshotNowOk(latest.index, latest.term, size))
            return
        try:
            term = core.log.term(body.index)
        except (LogCompacted, LogUnavailable):
            term = -1
        if body.index > core.log.applied or term != body.term:
            why = (
                f"({body.index}, term {body.term}) is not an applied entry of this log"
                f" (applied {core.log.applied}, term there {term})"
            )
            await self._discard(body, why)
            return
        try:
            meta = core.snapshot_taken(body.index)
        except ValueError as e:
            await self._discard(body, str(e))
            return
        size = await self._disk.save_snapshot(meta, body.path)
        self.taken += 1
        log.info("snapshot file at index %d term %d (%d bytes)", meta.index, meta.term, size)
        await self._answer(SnapshotNowOk(meta.index, meta.term, size))

    async def _answer(self, answer: Body | ConcordanceError) -> None:
        for waiter in self.waiters.pop_all():
            await self._reply(waiter.peer, waiter.request, answer)

    def _drop_file(self, body: SnapshotTaken, why: str) -> None:
        log.info("not keeping storage's snapshot at %d: %s", body.index, why)
        with suppress(OSError):
            os.unlink(body.path)  # handed over to us; nobody else will remove it

    async def _discard(self, body: SnapshotTaken, why: str) -> None:
        log.warning("discarding storage's snapshot at %d: %s", body.index, why)
        self._drop_file(body, why)
        self._retry_at = self._clock.monotonic() + RETRY_AFTER_DISCARD
        await self._answer(Unavailable(f"snapshot failed: {why}"))
