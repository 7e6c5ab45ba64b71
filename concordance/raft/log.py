"""The core's view of the log: the durable store plus an unstable tail.

Theory of operation (as etcd's raftLog):

* Entries the core appended (as leader, or received as follower) sit in the
  *unstable* tail until the driver persists them and calls ``advance``; the
  store holds everything durable. An unstable entry at index i shadows any
  durable entry >= i (the store truncates them when the tail is persisted).
* A snapshot received from the leader is *pending* until persisted; while
  pending it replaces the whole log.
* ``commit`` never decreases. ``applied`` is what the core has handed to the
  driver for application; only durable entries are ever handed out.
"""

from __future__ import annotations

from collections.abc import Sequence

from concordance.raft.entries import Entry, SnapshotMeta
from concordance.raft.stores import LogCompacted, LogStore, LogUnavailable, limit_size


class RaftLog:
    """Durable store + unstable tail, with commit and applied indexes."""

    def __init__(self, store: LogStore, commit: int, applied: int) -> None:
        self.store = store
        self.unstable: list[Entry] = []
        self.unstable_offset = store.last_index() + 1
        self.pending_snapshot: SnapshotMeta | None = None
        self.commit = commit
        self.applied = applied

    # -- reading ------------------------------------------------------------
    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index + 1
        return self.store.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.unstable[-1].index
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index
        return self.store.last_index()

    def durable_last_index(self) -> int:
        """The last index known to be on disk (what may be applied or acked)."""
        if self.pending_snapshot is not None:
            return 0
        return min(self.store.last_index(), self.unstable_offset - 1)

    def term(self, index: int) -> int:
        """Term of ``index``; raises LogCompacted / LogUnavailable outside the log."""
        snap = self.pending_snapshot
        if snap is not None:
            if index == snap.index:
                return snap.term
            if index < snap.index:
                raise LogCompacted(index)
        if self.unstable and index >= self.unstable_offset:
            pos = index - self.unstable_offset
            if pos >= len(self.unstable):
                raise LogUnavailable(index)
            return self.unstable[pos].term
        if snap is not None:
            raise LogUnavailable(index)
        return self.store.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except (LogCompacted, LogUnavailable):
            return 0

    def last_term(self) -> int:
        return self.term_or_zero(self.last_index())

    def matches(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except (LogCompacted, LogUnavailable):
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Paper §5.4.1: a candidate's log at least as up to date as ours."""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in [lo, hi), at least one if lo < hi, bounded by ``max_bytes``."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise LogCompacted(lo)
        out: list[Entry] = []
        if lo < self.unstable_offset:
            out = self.store.entries(lo, min(hi, self.unstable_offset), max_bytes)
            if len(out) < min(hi, self.unstable_offset) - lo:
                return out
        if hi > self.unstable_offset:
            start = max(lo, self.unstable_offset) - self.unstable_offset
            tail = self.unstable[start : hi - self.unstable_offset]
            spent = 0 if max_bytes is None else sum(e.size() for e in out)
            out.extend(limit_size(tail, max_bytes, spent))
        return out

    def last_index_of_term_at_most(self, term: int, upto: int) -> int:
        """Largest index <= ``upto`` whose term is <= ``term`` (terms never
        decrease along a log, so this is a binary search); used for fast
        backtracking on both sides of a rejected AppendEntries."""
        lo, hi = self.first_index() - 1, min(upto, self.last_index())
        if hi < lo:
            return lo
        if self.term_or_zero(hi) <= term:
            return hi
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.term_or_zero(mid) <= term:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def conflict_hint(self, prev_index: int) -> tuple[int, int]:
        """Where a leader whose AppendEntries at ``prev_index`` we reject should
        retry, and our term there (0 if our log is too short): the first index
        of that term, so the leader skips the whole conflicting term at once."""
        if prev_index > self.last_index():
            return self.last_index() + 1, 0
        hint_term = self.term_or_zero(prev_index)
        return self.last_index_of_term_at_most(hint_term - 1, prev_index) + 1, hint_term

    # -- writing ------------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> None:
        """Append ``entries``; the first one's index may rewrite a suffix."""
        if not entries:
            return
        first = entries[0].index
        if first <= self.commit:
            raise AssertionError(f"rewriting committed index {first} (commit {self.commit})")
        if first == self.last_index() + 1 and (self.unstable or first == self.unstable_offset):
            self.unstable.extend(entries)
        elif first <= self.unstable_offset:
            self.unstable = list(entries)
            self.unstable_offset = first
        elif first <= self.last_index() + 1:
            del self.unstable[first - self.unstable_offset :]
            self.unstable.extend(entries)
        else:
            raise AssertionError(f"gap: append at {first} after {self.last_index()}")

    def maybe_append(self, prev_index: int, prev_term: int, entries: Sequence[Entry]) -> int | None:
        """Follower side of AppendEntries (paper §5.3): returns the index of the
        last new entry, or None if the consistency check fails."""
        if not self.matches(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        for pos, entry in enumerate(entries):
            if not self.matches(entry.index, entry.term):
                if entry.index <= self.commit:
                    raise AssertionError(
                        f"conflict at committed index {entry.index} (commit {self.commit})"
                    )
                self.append(entries[pos:])
                break
        return last_new

    def commit_to(self, index: int) -> bool:
        if index > self.commit:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond last index {self.last_index()}")
            self.commit = index
            return True
        return False

    def restore(self, snap: SnapshotMeta) -> None:
        """Replace the log with a received snapshot (pending until persisted)."""
        self.pending_snapshot = snap
        self.unstable = []
        self.unstable_offset = snap.index + 1
        self.commit = max(self.commit, snap.index)
        self.applied = snap.index

    # -- handing out ----------------------------------------------------------
    def committed_to_apply(self, max_bytes: int) -> list[Entry]:
        """Durable committed entries not yet handed out."""
        hi = min(self.commit, self.durable_last_index())
        if hi <= self.applied:
            return []
        return self.slice(self.applied + 1, hi + 1, max_bytes)

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to (index, term)."""
        if not self.unstable or index < self.unstable_offset:
            return
        if self.matches(index, term):
            del self.unstable[: index + 1 - self.unstable_offset]
            self.unstable_offset = index + 1

    def snapshot_persisted(self, snap: SnapshotMeta) -> None:
        if self.pending_snapshot == snap:
            self.pending_snapshot = None
