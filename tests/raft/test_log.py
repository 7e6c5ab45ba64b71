"""RaftLog: the durable store plus the unstable tail, commit and applied."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from concordance.raft.entries import Entry, Membership, SnapshotMeta
from concordance.raft.log import RaftLog
from concordance.raft.stores import LogCompacted, LogUnavailable, MemoryRaftStore


def ents(first: int, terms: Sequence[int], data: bytes = b"") -> list[Entry]:
    return [Entry(t, first + k, data=data) for k, t in enumerate(terms)]


def rlog(
    stored: Sequence[int] = (), unstable: Sequence[int] = (), commit: int = 0, data: bytes = b""
) -> RaftLog:
    """A log whose store holds ``stored`` terms and whose tail holds ``unstable``."""
    store = MemoryRaftStore()
    store.persist(None, ents(1, stored, data))
    lg = RaftLog(store, commit=commit, applied=0)
    lg.append(ents(len(stored) + 1, unstable, data))
    return lg


def persist(lg: RaftLog) -> None:
    """What the driver does with the unstable tail: write it, then acknowledge."""
    assert isinstance(lg.store, MemoryRaftStore)
    lg.store.persist(None, lg.unstable)
    last = lg.unstable[-1]
    lg.stable_to(last.index, last.term)


def terms(lg: RaftLog) -> list[int]:
    return [lg.term(i) for i in range(lg.first_index(), lg.last_index() + 1)]


def test_empty_log() -> None:
    lg = rlog()
    assert (lg.first_index(), lg.last_index(), lg.last_term(), lg.term(0)) == (1, 0, 0, 0)
    assert lg.durable_last_index() == 0
    with pytest.raises(LogUnavailable):
        lg.term(1)


def test_unstable_tail_over_the_store() -> None:
    lg = rlog([1, 1, 2], [2, 3])
    assert (lg.first_index(), lg.last_index(), lg.last_term()) == (1, 5, 3)
    assert terms(lg) == [1, 1, 2, 2, 3]
    assert lg.unstable_offset == 4 and lg.durable_last_index() == 3
    assert [e.index for e in lg.slice(2, 6)] == [2, 3, 4, 5]
    persist(lg)
    assert (lg.unstable, lg.unstable_offset, lg.durable_last_index()) == ([], 6, 5)


def test_term_lookups_around_a_compaction_point() -> None:
    store = MemoryRaftStore()
    store.persist(None, ents(1, [1, 1, 2, 2, 3]))
    store.compact(3)
    lg = RaftLog(store, commit=3, applied=3)
    assert lg.first_index() == 4
    assert lg.term(3) == 2  # the boundary term survives compaction
    assert lg.term_or_zero(2) == 0
    with pytest.raises(LogCompacted):
        lg.term(2)
    with pytest.raises(LogUnavailable):
        lg.term(6)
    assert lg.matches(5, 3) and not lg.matches(2, 1) and not lg.matches(9, 3)
    with pytest.raises(LogCompacted):
        lg.slice(3, 5)


def test_append_overwrites_a_durable_suffix() -> None:
    lg = rlog([1, 1, 1])
    lg.append(ents(2, [2]))
    assert terms(lg) == [1, 2] and lg.unstable_offset == 2
    assert lg.durable_last_index() == 1  # durable 2 and 3 are shadowed
    persist(lg)
    assert lg.store.last_index() == 2 and terms(lg) == [1, 2]


def test_append_overwrites_inside_the_unstable_tail() -> None:
    lg = rlog([1], [1, 1, 1])
    lg.append(ents(3, [2, 2]))
    assert terms(lg) == [1, 1, 2, 2] and lg.unstable_offset == 2
    lg.append(ents(5, [2]))
    assert terms(lg) == [1, 1, 2, 2, 2]


def test_append_refuses_committed_rewrites_and_gaps() -> None:
    lg = rlog([1, 1, 1], commit=2)
    with pytest.raises(AssertionError):
        lg.append(ents(2, [2]))
    with pytest.raises(AssertionError):
        lg.append(ents(5, [1]))
    lg.append([])  # nothing to do
    assert terms(lg) == [1, 1, 1]


@pytest.mark.parametrize(
    ("prev", "new", "result", "after"),
    [
        ((3, 1), [2, 2], 5, [1, 1, 1, 2, 2]),  # entries 4, 5 already held: no truncation
        ((3, 1), [2], 4, [1, 1, 1, 2, 2]),  # a prefix of them: entry 5 stays
        ((2, 1), [1], 3, [1, 1, 1, 2, 2]),  # a stale prefix never truncates
        ((3, 1), [3], 4, [1, 1, 1, 3]),  # conflict at 4: truncate, then append
        ((5, 2), [2, 2], 7, [1, 1, 1, 2, 2, 2, 2]),  # plain append
        ((0, 0), [], 0, [1, 1, 1, 2, 2]),
        ((3, 2), [2], None, [1, 1, 1, 2, 2]),  # prev term mismatch
        ((6, 2), [2], None, [1, 1, 1, 2, 2]),  # prev beyond the end
    ],
)
def test_maybe_append(
    prev: tuple[int, int], new: list[int], result: int | None, after: list[int]
) -> None:
    lg = rlog([1, 1, 1, 2], [2], commit=2)
    assert lg.maybe_append(prev[0], prev[1], ents(prev[0] + 1, new)) == result
    assert terms(lg) == after


def test_maybe_append_never_rewrites_committed_entries() -> None:
    lg = rlog([1, 1, 1], commit=3)
    with pytest.raises(AssertionError):
        lg.maybe_append(1, 1, ents(2, [2, 2]))
    assert terms(lg) == [1, 1, 1]


def test_slice_with_max_bytes_across_store_and_unstable() -> None:
    lg = rlog([1, 1], [1, 1, 1], data=b"0123456789")  # 34 bytes each

    def index(es: list[Entry]) -> list[int]:
        return [e.index for e in es]

    assert index(lg.slice(1, 6)) == [1, 2, 3, 4, 5]
    assert index(lg.slice(1, 6, 100)) == [1, 2]  # stops inside the store
    assert index(lg.slice(2, 6, 100)) == [2, 3]  # crosses into the unstable tail
    assert index(lg.slice(2, 6, 68)) == [2, 3]  # exactly full
    assert index(lg.slice(2, 6, 67)) == [2]
    assert index(lg.slice(3, 6, 70)) == [3, 4]  # inside the unstable tail only
    assert index(lg.slice(4, 6, 1)) == [4]  # always at least one entry
    assert index(lg.slice(2, 6, 1)) == [2]
    assert lg.slice(4, 4) == [] and lg.slice(5, 3) == []


@pytest.mark.parametrize(
    ("term", "upto", "expected"),
    [
        (4, 7, 7),
        (5, 100, 7),  # clamped to the last index
        (3, 7, 5),
        (2, 7, 5),
        (1, 7, 2),
        (0, 7, 0),
        (2, 3, 3),
        (1, 4, 2),
        (4, 0, 0),
    ],
)
def test_last_index_of_term_at_most(term: int, upto: int, expected: int) -> None:
    lg = rlog([1, 1, 2, 2], [2, 4, 4])
    assert lg.last_index_of_term_at_most(term, upto) == expected


def test_last_index_of_term_at_most_stops_at_the_compaction_point() -> None:
    store = MemoryRaftStore()
    store.persist(None, ents(1, [1, 1, 2, 2, 2, 4, 4]))
    store.compact(3)
    lg = RaftLog(store, commit=3, applied=3)
    assert lg.last_index_of_term_at_most(2, 7) == 5
    assert lg.last_index_of_term_at_most(1, 7) == 3  # nothing older is known


def test_restore_replaces_the_log_until_persisted() -> None:
    lg = rlog([1, 1], [2, 2], commit=2)
    snap = SnapshotMeta(10, 3, Membership(("n1",)))
    lg.restore(snap)
    assert (lg.first_index(), lg.last_index(), lg.last_term()) == (11, 10, 3)
    assert (lg.commit, lg.applied, lg.unstable) == (10, 10, [])
    assert lg.term(10) == 3 and lg.durable_last_index() == 0
    with pytest.raises(LogCompacted):
        lg.term(9)
    with pytest.raises(LogUnavailable):
        lg.term(11)
    lg.append(ents(11, [3]))
    assert lg.last_index() == 11 and lg.term(11) == 3
    assert isinstance(lg.store, MemoryRaftStore)
    lg.store.persist(None, [], snap)
    lg.snapshot_persisted(snap)
    assert lg.pending_snapshot is None and lg.durable_last_index() == 10
    persist(lg)
    assert (lg.store.first_index(), lg.durable_last_index()) == (11, 11)


def test_stable_to_ignores_an_ack_for_a_rewritten_tail() -> None:
    lg = rlog([1], [1, 1])  # unstable 2, 3 at term 1
    lg.append(ents(2, [2]))  # rewritten before the driver acknowledged
    lg.stable_to(3, 1)
    assert [e.index for e in lg.unstable] == [2] and lg.unstable_offset == 2
    lg.stable_to(2, 1)  # wrong term: still ignored
    assert [e.index for e in lg.unstable] == [2]
    lg.stable_to(1, 1)  # below the tail: nothing to do
    assert lg.unstable_offset == 2


def test_commit_only_moves_forward_and_within_the_log() -> None:
    lg = rlog([1, 1, 1])
    assert lg.commit_to(2) and lg.commit == 2
    assert not lg.commit_to(1) and lg.commit == 2
    with pytest.raises(AssertionError):
        lg.commit_to(4)


def test_committed_to_apply_hands_out_only_durable_entries() -> None:
    lg = rlog([1, 1, 1], [1, 1])
    lg.commit_to(5)
    assert [e.index for e in lg.committed_to_apply(1 << 20)] == [1, 2, 3]
    lg.applied = 3
    assert lg.committed_to_apply(1 << 20) == []
    persist(lg)
    assert [e.index for e in lg.committed_to_apply(1 << 20)] == [4, 5]
    assert [e.index for e in lg.committed_to_apply(1)] == [4]  # bounded, never empty
    lg.applied = 5
    assert lg.committed_to_apply(1 << 20) == []


def test_committed_to_apply_stops_at_commit() -> None:
    lg = rlog([1, 1, 1, 1])
    lg.commit_to(2)
    assert [e.index for e in lg.committed_to_apply(1 << 20)] == [1, 2]


@pytest.mark.parametrize(
    ("last_index", "last_term", "ok"),
    [(3, 2, True), (4, 2, True), (2, 2, False), (9, 1, False), (1, 3, True), (0, 0, False)],
)
def test_is_up_to_date(last_index: int, last_term: int, ok: bool) -> None:
    assert rlog([1, 1, 2]).is_up_to_date(last_index, last_term) is ok
