"""Persistence boundaries of the Raft core, and their in-memory versions.

The core *reads* the durable log through :class:`LogStore` (like etcd's
``Storage``) and never writes: every write reaches the driver through
``Ready`` and the driver calls :meth:`RaftStore.persist`. The in-memory stores
here are real implementations with the same semantics as ``sqlite_store``
(the shared conformance tests in ``tests/raft/test_stores.py`` hold both to it);
the simulator uses them with a crash model layered on top.

Semantics every implementation must keep:

* ``first_index()`` is the first index still held; ``last_index()`` the last
  one (``first_index() - 1`` when the log is empty). ``term(i)`` is defined
  for ``first_index() - 1 <= i <= last_index()``: the boundary term comes from
  the compaction point or snapshot. Outside that range it raises
  :class:`LogCompacted` (too old) or :class:`LogUnavailable` (too new).
* ``persist(hs, entries, snapshot)`` is atomic and durable when it returns:
  first the snapshot (keep the log after ``snapshot.index`` only if the log
  holds that index with that term, else drop the whole log), then the entries
  (an entry at index i replaces every held entry >= i), then the hard state.
* ``compact(i)`` drops entries <= i (i <= last_index()); the term at i is kept
  as the boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from concordance.raft.entries import Entry, EntryKind, HardState, SnapshotMeta


class LogCompacted(LookupError):
    """The requested index was compacted away (send a snapshot instead)."""


class LogUnavailable(LookupError):
    """The requested index is past the end of the log."""


class LogStore(Protocol):
    """Read access to the durable log."""

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def term(self, index: int) -> int: ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in [lo, hi); with ``max_bytes``, stop once the sum passes it
        but always return at least one entry when lo < hi."""
        ...

    def config_entries(self) -> list[Entry]:
        """Every CONFIG entry still held, in index order (the core rebuilds its
        membership history from these on restart)."""
        ...


class RaftStore(LogStore, Protocol):
    """The durable state of one node's Raft: log, hard state, snapshot metadata."""

    def initial_state(self) -> tuple[HardState, SnapshotMeta | None]: ...

    def persist(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None: ...

    def record_snapshot(self, meta: SnapshotMeta) -> None:
        """Remember a locally taken snapshot as the latest one; the log is untouched."""
        ...

    def compact(self, index: int) -> None: ...


class SnapshotStore(Protocol):
    """Snapshot bytes: read by the leader core to send, written by the driver."""

    def has(self, meta: SnapshotMeta) -> bool:
        """Whether the whole snapshot ``meta`` is held (the log's base may have none)."""
        ...

    def size(self, meta: SnapshotMeta) -> int: ...

    def read_chunk(self, meta: SnapshotMeta, offset: int, size: int) -> bytes: ...


class MemoryRaftStore:
    """A :class:`RaftStore` held in memory."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot: SnapshotMeta | None = None
        self._base_index = 0  # index just before the first held entry
        self._base_term = 0
        self._log: list[Entry] = []

    # -- LogStore ---------------------------------------------------------
    def first_index(self) -> int:
        return self._base_index + 1

    def last_index(self) -> int:
        return self._base_index + len(self._log)

    def term(self, index: int) -> int:
        if index < self._base_index:
            raise LogCompacted(index)
        if index > self.last_index():
            raise LogUnavailable(index)
        if index == self._base_index:
            return self._base_term
        return self._log[index - self._base_index - 1].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo <= self._base_index:
            raise LogCompacted(lo)
        if hi > self.last_index() + 1:
            raise LogUnavailable(hi)
        # max(lo, hi): an inverted range is empty, not a negative (wrapping) slice.
        out = self._log[lo - self._base_index - 1 : max(lo, hi) - self._base_index - 1]
        return limit_size(out, max_bytes)

    def config_entries(self) -> list[Entry]:
        return [e for e in self._log if e.kind is EntryKind.CONFIG]

    # -- RaftStore --------------------------------------------------------
    def initial_state(self) -> tuple[HardState, SnapshotMeta | None]:
        return self._hard_state, self._snapshot

    def persist(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        if snapshot is not None:
            self._install(snapshot)
        if entries:
            first = entries[0].index
            if first <= self._base_index:
                raise ValueError(f"append at {first} overwrites compacted entries")
            if first > self.last_index() + 1:
                raise ValueError(f"append at {first} leaves a gap after {self.last_index()}")
            del self._log[first - self._base_index - 1 :]
            self._log.extend(entries)
        if hard_state is not None:
            self._hard_state = hard_state

    def record_snapshot(self, meta: SnapshotMeta) -> None:
        self._snapshot = meta

    def compact(self, index: int) -> None:
        if index <= self._base_index:
            return
        if index > self.last_index():
            raise LogUnavailable(index)
        term = self.term(index)
        del self._log[: index - self._base_index]
        self._base_index, self._base_term = index, term

    def _install(self, snap: SnapshotMeta) -> None:
        self._snapshot = snap
        keeps_suffix = (
            self._base_index <= snap.index <= self.last_index()
            and self.term(snap.index) == snap.term
        )
        if keeps_suffix:
            self.compact(snap.index)
        else:
            self._log.clear()
            self._base_index, self._base_term = snap.index, snap.term


class MemorySnapshotStore:
    """A :class:`SnapshotStore` keeping each snapshot's bytes by index."""

    def __init__(self) -> None:
        self._blobs: dict[tuple[int, int], bytes] = {}

    def put(self, meta: SnapshotMeta, data: bytes) -> None:
        self._blobs[(meta.index, meta.term)] = data

    def get(self, meta: SnapshotMeta) -> bytes:
        return self._blobs[(meta.index, meta.term)]

    def has(self, meta: SnapshotMeta) -> bool:
        return (meta.index, meta.term) in self._blobs

    def size(self, meta: SnapshotMeta) -> int:
        return len(self.get(meta))

    def read_chunk(self, meta: SnapshotMeta, offset: int, size: int) -> bytes:
        return self.get(meta)[offset : offset + size]


def limit_size(entries: list[Entry], max_bytes: int | None, spent: int = 0) -> list[Entry]:
    """The longest prefix of ``entries`` whose sizes, added to ``spent``, fit in ``max_bytes``.

    The one byte-budget cut of entry batches (log stores, the Raft log's
    unstable tail, consensus's apply batches). With nothing ``spent`` the first
    entry always goes, however large, so a batch is never empty; ``None`` is
    no limit.
    """
    if max_bytes is None or not entries:
        return entries
    total = spent
    for n, entry in enumerate(entries):
        total += entry.size()
        if total > max_bytes and (n > 0 or spent > 0):
            return entries[:n]
    return entries
