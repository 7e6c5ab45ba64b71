"""Local snapshots: when to ask storage for one, and what to do with the file it hands back.

Storage owns the state, so only storage can write a snapshot of it; consensus
owns the log, so only consensus may compact. The handshake:

1. every ``snapshot_every`` applied entries (or on ``snapshot_now``),
   consensus sends ``take_snapshot``; one request at a time, re-asked after
   ``ASK_TIMEOUT`` if storage never answered (it restarted);
2. storage answers ``snapshot_taken {index, term, path}``: the file is now
   ours (``FileSnapshotStore.save_from_file`` moves it);
3. the core checks the index (<= what it handed out, inside the log) and
   gives the metadata; the term must match the log's, else the file belongs
   to some other history and is deleted;
4. the file is made durable and recorded in raft.db, only then is the log
   compacted, to ``index - snapshot_trailing`` (entries kept for slow
   followers), and the core told; the two newest snapshot files are kept.

Runs on the task that owns the core (the gate in ``disk.py``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress

from concordance.consensus.disk import RaftDisk
from concordance.consensus.waiters import Waiters
from concordance.errors import ConcordanceError, IpcError, Unavailable
from concordance.raft.core import RaftCore
from concordance.wire import Body, Envelope, SnapshotNowOk, SnapshotTaken, TakeSnapshot

__all__ = ["SnapshotCoordinator"]

log = logging.getLogger("concordance.consensus")

ASK_TIMEOUT = 60.0  # seconds: storage restarted without answering take_snapshot

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
        clock: Callable[[], float] = time.monotonic,
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
        self.waiters = Waiters()
        self.taken = 0

    @property
    def asking(self) -> bool:
        return self._asked_at is not None and self._clock() - self._asked_at < ASK_TIMEOUT

    async def maybe_ask(self, applied: int | None) -> None:
        """Ask for a snapshot if storage applied ``snapshot_every`` entries since the last."""
        if applied is not None and applied - self.last_index >= self._every and not self.asking:
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
        self._asked_at = self._clock()
        return True

    async def adopt(self, core: RaftCore, body: SnapshotTaken) -> None:
        """Storage wrote a snapshot at ``body.path``: keep it, compact, answer waiters."""
        self._asked_at = None
        try:
            meta = core.snapshot_taken(body.index)
        except ValueError as e:
            await self._discard(body, f"{e} (log {core.log.first_index()}..{core.log.applied})")
            return
        if meta.term != body.term:
            await self._discard(body, f"term {body.term} != the log's {meta.term}")
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
        for waiter in self.waiters.pop_all():
            await self._reply(
                waiter.peer, waiter.request, SnapshotNowOk(meta.index, meta.term, size)
            )

    async def _discard(self, body: SnapshotTaken, why: str) -> None:
        log.warning("discarding storage's snapshot at %d: %s", body.index, why)
        with suppress(OSError):
            os.unlink(body.path)
        for waiter in self.waiters.pop_all():
            await self._reply(waiter.peer, waiter.request, Unavailable(f"snapshot failed: {why}"))
