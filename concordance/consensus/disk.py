"""raft.db and the snapshot files: the Ready write on the loop, slow file work on one thread.

``SqliteRaftStore`` and ``FileSnapshotStore`` are single-user objects: never
two calls at once. The Ready write (one small transaction, one fsync, well
under a millisecond on an SSD) runs on the loop thread itself: handing it to a
thread and waking the loop afterwards cost more than the write, and the
driver has nothing else to do until it is durable anyway (the core must not
be touched meanwhile, see the gate). Everything that may take long -- opening,
adopting snapshot files, compacting, reading old entries, closing -- runs on one
dedicated worker thread, ``raft-db``.

The core still reads the log synchronously through a ``LogStore``.
:class:`LogView` gives it one on the loop thread: ``first_index``,
``last_index`` and ``term`` come from the store's in-memory index; entries
come from a tail cache of recently persisted entries, else from a blocking
hop to the db thread (rare: a follower far behind, a restart).

Rule (the gate): the driver never calls into the core while a job of this
module runs on the db thread. The store's in-memory index is then never read
while it changes, and a blocking hop never queues behind an fsync. Inputs
that arrive meanwhile wait in the driver's inbox (or, during a Ready write on
the loop, in the socket) and are fed to the core afterwards -- which is
exactly the group commit: one fsync for everything that arrived during the
previous one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from concordance.raft.entries import Entry, HardState, Membership, SnapshotMeta
from concordance.raft.ready import Ready
from concordance.raft.snapshot_files import FileSnapshotStore
from concordance.raft.sqlite_store import SqliteRaftStore
from concordance.raft.stores import LogCompacted, LogUnavailable, limit_size

__all__ = ["LogView", "RaftDisk"]

log = logging.getLogger("concordance.consensus")

_T = TypeVar("_T")

TAIL_ENTRIES = 16_384  # recently persisted entries kept in memory for the core's reads
TAIL_BYTES = 32 << 20


class _Tail:
    """The last persisted entries, contiguous, exactly as they are in raft.db."""

    def __init__(self, max_entries: int = TAIL_ENTRIES, max_bytes: int = TAIL_BYTES) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._first = 0  # index of _entries[0]
        self._entries: list[Entry] = []
        self._bytes = 0

    def put(self, entries: Sequence[Entry]) -> None:
        """Mirror ``store.persist(..., entries)``: entry i replaces every held entry >= i."""
        if not entries:
            return
        first = entries[0].index
        held_last = self._first + len(self._entries) - 1
        if not self._entries or first < self._first or first > held_last + 1:
            self._entries, self._first, self._bytes = [], first, 0
        else:
            dropped = self._entries[first - self._first :]
            self._bytes -= sum(e.size() for e in dropped)
            del self._entries[first - self._first :]
        self._entries.extend(entries)
        self._bytes += sum(e.size() for e in entries)
        self._trim()

    def drop_through(self, index: int) -> None:
        """Mirror ``store.compact(index)``."""
        n = min(max(0, index - self._first + 1), len(self._entries))
        if n:
            self._bytes -= sum(e.size() for e in self._entries[:n])
            del self._entries[:n]
            self._first += n

    def clear(self) -> None:
        self._entries, self._first, self._bytes = [], 0, 0

    def get(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry] | None:
        """Entries in [lo, hi) with the LogStore size rule, or None if not all held."""
        if not self._entries or lo < self._first or hi > self._first + len(self._entries):
            return None
        return limit_size(self._entries[lo - self._first : hi - self._first], max_bytes)

    def _trim(self) -> None:
        # Trim in chunks (to 3/4 of the bound) so deleting from the front stays amortized.
        if len(self._entries) <= self._max_entries and self._bytes <= self._max_bytes:
            return
        keep_entries, keep_bytes = self._max_entries * 3 // 4, self._max_bytes * 3 // 4
        n = 0
        while n < len(self._entries) - 1 and (
            len(self._entries) - n > keep_entries or self._bytes > keep_bytes
        ):
            self._bytes -= self._entries[n].size()
            n += 1
        del self._entries[:n]
        self._first += n


class LogView:
    """The core's ``LogStore``, on the loop thread, over a store owned by the db thread."""

    def __init__(self, disk: RaftDisk) -> None:
        self._disk = disk

    def first_index(self) -> int:
        return self._disk.store.first_index()

    def last_index(self) -> int:
        return self._disk.store.last_index()

    def term(self, index: int) -> int:
        return self._disk.store.term(index)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        store = self._disk.store
        if lo <= store.first_index() - 1:
            raise LogCompacted(lo)
        if hi > store.last_index() + 1:
            raise LogUnavailable(hi)
        if lo >= hi:
            return []
        cached = self._disk.tail.get(lo, hi, max_bytes)
        if cached is not None:
            return cached
        self._disk.cache_misses += 1
        return self._disk.call_blocking(store.entries, lo, hi, max_bytes)

    def config_entries(self) -> list[Entry]:
        return self._disk.call_blocking(self._disk.store.config_entries)


class RaftDisk:
    """One node's durable Raft state (``{data}/raft``): raft.db, snapshot files, the db thread.

    Build with :meth:`open`; every coroutine here runs its file work on the db
    thread and must be awaited by the task that owns the core (see the gate).
    """

    def __init__(
        self,
        pool: concurrent.futures.ThreadPoolExecutor,
        store: SqliteRaftStore,
        snapshots: FileSnapshotStore,
        hard_state: HardState,
        snapshot: SnapshotMeta | None,
        bootstrapped: bool,
    ) -> None:
        self._pool = pool
        self.store = store
        self.snapshots = snapshots  # the core reads chunks from it (files only, no shared state)
        self.initial_hard_state = hard_state
        self.initial_snapshot = snapshot
        self.bootstrapped = bootstrapped
        self.tail = _Tail()
        self.view = LogView(self)
        self.fsyncs = 0  # durable writes of Ready batches (one store.persist each)
        self.cache_misses = 0
        self._closed = False
        self._commit_to_note: HardState | None = None

    @classmethod
    async def open(cls, directory: Path, boot: Callable[[], Membership]) -> RaftDisk:
        """Open (or create) ``directory``/raft.db and ``directory``/snapshots.

        A brand-new raft.db (no hard state, no snapshot, no entries) records
        ``SnapshotMeta(0, 0, boot())`` as its starting membership; an existing
        one keeps what it has.
        """
        pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="raft-db")

        def work() -> RaftDisk:
            directory.mkdir(parents=True, exist_ok=True)
            store = SqliteRaftStore(directory / "raft.db")
            try:
                snapshots = FileSnapshotStore(directory / "snapshots")
                hard, snap = store.initial_state()
                fresh = snap is None and hard == HardState() and store.last_index() == 0
                if fresh:
                    snap = SnapshotMeta(0, 0, boot())
                    store.record_snapshot(snap)
            except BaseException:
                store.close()
                raise
            return cls(pool, store, snapshots, hard, snap, fresh)

        try:
            return await asyncio.get_running_loop().run_in_executor(pool, work)
        except BaseException:
            pool.shutdown(wait=False)
            raise

    # -- helpers --------------------------------------------------------------
    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def call_blocking(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run ``fn`` on the db thread and wait for it (the gate keeps that thread idle)."""
        return self._pool.submit(fn, *args).result()

    # -- the Ready write ------------------------------------------------------
    async def persist(self, rd: Ready) -> None:
        """Step 1 of the driver contract: snapshot chunks, then hard state +
        entries + snapshot metadata in one transaction (one fsync). Returns once
        durable. A commit-only hard state is left for :meth:`note_commit`."""
        if not rd.snapshot_chunks and not rd.must_sync:
            if rd.hard_state is not None:
                self._commit_to_note = rd.hard_state  # written when idle: see note_commit
            return
        self._commit_to_note = None  # this write carries the newest hard state
        if rd.snapshot_chunks:
            await self._run(self._persist_sync, rd)  # up to a MiB of snapshot bytes
        else:
            self._persist_sync(rd)
        if rd.must_sync:
            self.fsyncs += 1
        if rd.snapshot is not None:
            self.tail.clear()
        self.tail.put(rd.entries)

    def note_commit(self) -> None:
        """Write the newest commit-only hard state, without an fsync (``Ready.commit_only``).

        Off the write path on purpose: the driver calls it when it has nothing
        else to do, so an apply never waits for it. Losing it is harmless (the
        commit index is re-learned from the leader); writing it at all lets a
        clean restart resume with the commit index it had.
        """
        hard, self._commit_to_note = self._commit_to_note, None
        if hard is not None:
            self.store.note_commit(hard)

    def _persist_sync(self, rd: Ready) -> None:
        for chunk in rd.snapshot_chunks:
            self.snapshots.write_chunk(chunk.meta, chunk.offset, chunk.data)
            if chunk.done:
                self.snapshots.finish(chunk.meta)
        if rd.must_sync:
            self.store.persist(rd.hard_state, rd.entries, rd.snapshot)

    # -- reads for the apply stream -------------------------------------------
    async def read_entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Durable entries in [lo, hi) (at least one), from the tail cache or raft.db."""
        cached = self.tail.get(lo, hi, max_bytes)
        if cached is not None:
            return cached
        return await self._run(self.store.entries, lo, hi, max_bytes)

    def first_index(self) -> int:
        return self.store.first_index()

    def latest_snapshot(self) -> SnapshotMeta | None:
        """The newest complete snapshot file (not the bootstrap record, which has no file)."""
        return self.snapshots.latest()

    def snapshot_path(self, meta: SnapshotMeta) -> Path:
        return self.snapshots.path(meta)

    # -- compaction and local snapshots -----------------------------------------
    async def compact_behind(self, meta: SnapshotMeta) -> int:
        """Record ``meta`` as the log's base, then drop the entries up to it.

        The caller made sure the state machine holds ``meta.index`` durably.
        No snapshot is written: the record is the restart point. Returns the
        index the log now starts after."""
        base = await self._run(self._compact_sync, meta)
        self.tail.drop_through(base)
        return base

    def _compact_sync(self, meta: SnapshotMeta) -> int:
        if meta.index > self.store.first_index() - 1:
            self.store.record_snapshot(meta)  # first: a crash between the two keeps more log
            self.store.compact(meta.index)
        return self.store.first_index() - 1

    async def save_snapshot(self, meta: SnapshotMeta, src: str) -> int:
        """Adopt storage's snapshot file (moved, made durable) and keep the two newest
        files. The log is not touched. Returns the snapshot's size in bytes."""
        return await self._run(self._save_sync, meta, src)

    def _save_sync(self, meta: SnapshotMeta, src: str) -> int:
        path = self.snapshots.save_from_file(meta, src)
        self.snapshots.retain(2)
        return path.stat().st_size

    # -- lifecycle ------------------------------------------------------------
    async def close(self) -> None:
        """Close raft.db and the snapshot store on their thread, then stop the thread."""
        if self._closed:
            return
        self._closed = True

        def work() -> None:
            try:
                self.note_commit()  # a clean stop keeps the newest commit index
            except Exception as e:  # closing goes on: the commit is re-learned anyway
                log.warning("raft.db: cannot record the commit index: %s", e)
            try:
                self.snapshots.close()
            finally:
                self.store.close()

        try:
            await self._run(work)
        finally:
            self._pool.shutdown(wait=True)
