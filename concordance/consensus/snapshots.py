"""Local snapshots: when to ask storage for one, and what to do with the file it hands back.

Storage owns the state, so only storage can write a snapshot of it; consensus
owns the log, so only consensus may compact. The handshake:

1. every ``snapshot_every`` applied entries (or on ``snapshot_now``),
   consensus sends ``take_snapshot``; one request at a time, re-asked after
   ``ASK_TIMEOUT`` if storage never answered (it restarted);
2. storage answers ``snapshot_taken {index, term, path}``: the file is now
   ours (``FileSnapshotStore.save_from_file`` moves it);
3. the index must be newer than the latest snapshot (else the file is
   dropped and the latest one reported), an entry the core handed out, and
   the term the log's there (else the file belongs to some other history and
   is deleted); only then does the core hand out the metadata;
4. the file is made durable and recorded in raft.db, only then is the log
   compacted, to ``index - snapshot_trailing`` (entries kept for slow
   followers), and the core told; the two newest snapshot files are kept.

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
from concordance.raft.core import RaftCore
from concordance.raft.stores import LogCompacted, LogUnavailable
from concordance.wire import Body, Envelope, SnapshotNowOk, SnapshotTaken, TakeSnapshot

__all__ = ["SnapshotCoordinator"]

log = logging.getLogger("concordance.consensus")

ASK_TIMEOUT = 60.0  # seconds: storage restarted without answering take_snapshot
RETRY_AFTER_DISCARD = 5.0  # seconds: do not ask again at once for what was just refused

Send = Callable[[str, Body], Awaitable[None]]
Reply = Callable[[bytes, Envelope, Body | ConcordanceError], Awaitable[None]]


class SnapshotCoordinator:
    """Asks storage for snapshots and adopts them; answers ``snapshot_now``."""

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
        latest = disk.latest_snapshot()
        recorded = disk.initial_snapshot
        self.last_index = max(latest.index if latest else 0, recorded.index if recorded else 0)
        self._asked_at: float | None = None
        self._retry_at = 0.0  # no periodic request before this (after a discarded snapshot)
        self.waiters = Waiters(clock)
        self.taken = 0

    @property
    def asking(self) -> bool:
        return self._asked_at is not None and self._clock.monotonic() - self._asked_at < ASK_TIMEOUT

    async def maybe_ask(self, applied: int | None) -> None:
        """Ask for a snapshot if storage applied ``snapshot_every`` entries since the last.

        "The last" includes a snapshot installed from the leader: right after one,
        storage's state IS that snapshot, and asking would only produce a copy
        that ``adopt`` drops (before this check, on every loop turn until the
        next entry was applied).
        """
        latest = self._disk.latest_snapshot()
        if latest is not None and latest.index > self.last_index:
            self.last_index = latest.index
        if applied is None or applied - self.last_index < self._every or self.asking:
            return
        if self._clock.monotonic() >= self._retry_at:
            await self._ask()

    async def snapshot_now(self, peer: bytes, request: Envelope) -> None:
        """Park a ``snapshot_now`` until the next snapshot is adopted."""
        ctx = self.waiters.park(peer, request)
        if not self.asking and not await self._ask():
            self.waiters.pop(ctx)
            await self._reply(peer, request, Unavailable("storage is not connected"))

    async def _ask(self) -> bool:
        try:
            await self._send("take_snapshot", TakeSnapshot())
        except IpcError as e:
            log.debug("cannot ask storage for a snapshot: %s", e)
            return False
        self._asked_at = self._clock.monotonic()
        return True

    async def adopt(self, core: RaftCore, body: SnapshotTaken) -> None:
        """Storage wrote a snapshot at ``body.path``: keep it, compact, answer waiters.

        Everything is checked before ``core.snapshot_taken``: once the core has
        the metadata it may start sending that snapshot to a follower, so its
        file must be the one we then adopt.
        """
        self._asked_at = None
        latest = self._disk.latest_snapshot()
        if latest is not None and body.index <= latest.index:
            self.last_index = max(self.last_index, latest.index)
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
        size, base = await self._disk.save_snapshot(meta, body.path, body.index - self._trailing)
        core.compacted(base)
        self.last_index = max(self.last_index, meta.index)
        self.taken += 1
        log.info(
            "snapshot at index %d term %d (%d bytes); log starts after %d",
            meta.index,
            meta.term,
            size,
            base,
        )
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
