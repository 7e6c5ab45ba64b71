"""One conformance suite for every RaftStore: MemoryRaftStore and SqliteRaftStore.

Each test states one rule of the ``concordance.raft.stores`` docstring and runs
against both implementations; the SQLite-only tests at the end cover what only
a file can do (reopen, atomicity of a rejected call, one transaction per persist).
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from concordance.raft.entries import Entry, EntryKind, HardState, Membership, SnapshotMeta
from concordance.raft.sqlite_store import CorruptStore, SqliteRaftStore, StoreFailed
from concordance.raft.stores import LogCompacted, LogUnavailable, MemoryRaftStore, RaftStore

MEMBERS = Membership(("n1", "n2", "n3"), ("n4",), (("n1", "10.0.0.1:4100"), ("n4", "h4:1")))


def ents(term: int, lo: int, hi: int, kind: EntryKind = EntryKind.NORMAL) -> list[Entry]:
    """Entries lo..hi-1 at ``term``; the data names both so any mix-up shows."""
    return [Entry(term, i, kind, f"t{term}/i{i}".encode()) for i in range(lo, hi)]


def snap(index: int, term: int) -> SnapshotMeta:
    return SnapshotMeta(index, term, MEMBERS)


def state(store: RaftStore) -> tuple[Any, ...]:
    """Everything a reader can observe through the public API."""
    first, last = store.first_index(), store.last_index()
    return (
        first,
        last,
        store.term(first - 1),
        [store.term(i) for i in range(first, last + 1)],
        store.entries(first, last + 1),
        store.config_entries(),
        store.initial_state(),
    )


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RaftStore]:
    if request.param == "memory":
        yield MemoryRaftStore()
        return
    db = SqliteRaftStore(tmp_path / "raft.db")
    try:
        yield db
    finally:
        db.close()


# -- empty store ----------------------------------------------------------------
def test_empty_store(store: RaftStore) -> None:
    assert (store.first_index(), store.last_index(), store.term(0)) == (1, 0, 0)
    assert store.entries(1, 1) == []
    assert store.config_entries() == []
    assert store.initial_state() == (HardState(), None)
    with pytest.raises(LogUnavailable):
        store.term(1)
    with pytest.raises(LogUnavailable):
        store.entries(1, 2)


# -- append and overwrite ---------------------------------------------------------
def test_append_in_batches(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 4))
    store.persist(None, ents(2, 4, 6))
    assert (store.first_index(), store.last_index()) == (1, 5)
    assert [store.term(i) for i in range(1, 6)] == [1, 1, 1, 2, 2]
    assert store.entries(1, 6) == ents(1, 1, 4) + ents(2, 4, 6)
    assert store.entries(2, 4) == ents(1, 2, 4)


def test_entry_at_i_replaces_every_entry_from_i(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 8))
    store.persist(None, ents(3, 4, 5))
    assert store.last_index() == 4
    assert store.entries(1, 5) == ents(1, 1, 4) + ents(3, 4, 5)
    with pytest.raises(LogUnavailable):
        store.term(5)
    with pytest.raises(LogUnavailable):
        store.entries(4, 6)


def test_overwrite_from_the_first_index_replaces_the_whole_log(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 5))
    store.persist(None, ents(2, 1, 3))
    assert store.entries(1, 3) == ents(2, 1, 3)
    assert store.last_index() == 2


def test_overwrite_with_a_longer_suffix(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 4))
    store.persist(None, ents(2, 2, 9))
    assert store.entries(1, 9) == ents(1, 1, 2) + ents(2, 2, 9)


def test_append_leaving_a_gap_is_rejected_and_changes_nothing(store: RaftStore) -> None:
    store.persist(HardState(1, "n1", 0), ents(1, 1, 4))
    before = state(store)
    with pytest.raises(ValueError, match="gap"):
        store.persist(HardState(9, "n9", 3), ents(1, 5, 6))
    assert state(store) == before


def test_append_over_compacted_entries_is_rejected(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 6))
    store.compact(3)
    before = state(store)
    with pytest.raises(ValueError, match="compacted"):
        store.persist(None, ents(2, 3, 5))
    assert state(store) == before
    store.persist(None, ents(2, 4, 5))  # right after the boundary is fine
    assert store.entries(4, 5) == ents(2, 4, 5)


# -- term() and entries() bounds ---------------------------------------------------
def test_term_bounds_after_compaction(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 3) + ents(2, 3, 7))
    store.compact(4)
    assert store.first_index() == 5
    assert store.term(4) == 2  # the boundary term is kept
    assert [store.term(i) for i in (5, 6)] == [2, 2]
    with pytest.raises(LogCompacted):
        store.term(3)
    with pytest.raises(LogUnavailable):
        store.term(7)


def test_entries_bounds(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 7))
    store.compact(2)
    with pytest.raises(LogCompacted):
        store.entries(2, 4)  # the boundary itself is no longer an entry
    with pytest.raises(LogUnavailable):
        store.entries(3, 8)
    assert store.entries(3, 7) == ents(1, 3, 7)
    assert store.entries(5, 5) == []
    assert store.entries(7, 7) == []  # an empty range at the end is fine
    assert store.entries(5, 3) == []  # inverted: empty, never a wrapped slice
    assert store.entries(4, 1) == []


def test_max_bytes_limits_but_always_returns_one_entry(store: RaftStore) -> None:
    log = [Entry(1, i, data=b"x" * 10) for i in range(1, 6)]  # size() == 34 each
    store.persist(None, log)
    assert store.entries(1, 6, max_bytes=0) == log[:1]
    assert store.entries(1, 6, max_bytes=33) == log[:1]
    assert store.entries(1, 6, max_bytes=34) == log[:1]
    assert store.entries(1, 6, max_bytes=67) == log[:1]
    assert store.entries(1, 6, max_bytes=68) == log[:2]
    assert store.entries(2, 6, max_bytes=3 * 34) == log[1:4]
    assert store.entries(1, 6, max_bytes=10_000) == log
    assert store.entries(1, 6, max_bytes=None) == log
    assert store.entries(3, 3, max_bytes=0) == []


def test_max_bytes_with_one_oversized_entry(store: RaftStore) -> None:
    log = [Entry(1, 1, data=b"big" * 100), Entry(1, 2, data=b"s")]
    store.persist(None, log)
    assert store.entries(1, 3, max_bytes=50) == log[:1]
    assert store.entries(2, 3, max_bytes=50) == log[1:]


# -- compaction ------------------------------------------------------------------
def test_compact_is_idempotent_and_bounded(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 6))
    store.compact(3)
    before = state(store)
    store.compact(3)
    store.compact(1)
    assert state(store) == before
    with pytest.raises(LogUnavailable):
        store.compact(6)
    assert state(store) == before


def test_compact_everything_then_append(store: RaftStore) -> None:
    store.persist(None, ents(2, 1, 5))
    store.compact(4)
    assert (store.first_index(), store.last_index(), store.term(4)) == (5, 4, 2)
    assert store.entries(5, 5) == []
    store.persist(None, ents(3, 5, 7))
    assert store.entries(5, 7) == ents(3, 5, 7)


def test_compact_leaves_hard_state_and_snapshot_alone(store: RaftStore) -> None:
    store.persist(HardState(4, "n2", 3), ents(1, 1, 6))
    store.record_snapshot(snap(3, 1))
    store.compact(5)
    assert store.initial_state() == (HardState(4, "n2", 3), snap(3, 1))


# -- persist with a snapshot -------------------------------------------------------
def test_snapshot_matching_the_log_keeps_the_suffix(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 4) + ents(2, 4, 9))
    store.persist(None, [], snap(5, 2))
    assert (store.first_index(), store.last_index(), store.term(5)) == (6, 8, 2)
    assert store.entries(6, 9) == ents(2, 6, 9)
    assert store.initial_state()[1] == snap(5, 2)


def test_snapshot_with_another_term_drops_the_whole_log(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 9))
    store.persist(None, [], snap(5, 3))
    assert (store.first_index(), store.last_index(), store.term(5)) == (6, 5, 3)
    assert store.entries(6, 6) == []
    with pytest.raises(LogCompacted):
        store.term(4)


def test_snapshot_past_the_end_drops_the_whole_log(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 4))
    store.persist(None, [], snap(20, 2))
    assert (store.first_index(), store.last_index(), store.term(20)) == (21, 20, 2)


def test_snapshot_at_the_last_index_empties_the_log(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 4))
    store.persist(None, [], snap(3, 1))
    assert (store.first_index(), store.last_index(), store.term(3)) == (4, 3, 1)


def test_snapshot_at_the_boundary_changes_no_entries(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 6))
    store.compact(2)
    store.persist(None, [], snap(2, 1))
    assert (store.first_index(), store.last_index()) == (3, 5)
    assert store.entries(3, 6) == ents(1, 3, 6)


def test_snapshot_entries_and_hard_state_in_one_persist(store: RaftStore) -> None:
    store.persist(HardState(1, "n1", 2), ents(1, 1, 4))
    store.persist(HardState(3, "n3", 10), ents(3, 11, 13), snap(10, 3))
    assert (store.first_index(), store.last_index(), store.term(10)) == (11, 12, 3)
    assert store.entries(11, 13) == ents(3, 11, 13)
    assert store.initial_state() == (HardState(3, "n3", 10), snap(10, 3))


def test_entries_after_a_snapshot_are_checked_against_the_new_boundary(
    store: RaftStore,
) -> None:
    store.persist(None, ents(1, 1, 9))
    with pytest.raises(ValueError, match="compacted"):
        store.persist(None, ents(2, 8, 9), snap(8, 2))


def test_record_snapshot_leaves_the_log_alone(store: RaftStore) -> None:
    store.persist(None, ents(1, 1, 6))
    before = state(store)[:-1]
    store.record_snapshot(snap(4, 1))
    assert state(store)[:-1] == before
    assert store.initial_state() == (HardState(), snap(4, 1))
    store.record_snapshot(snap(5, 1))
    assert store.initial_state()[1] == snap(5, 1)


# -- config entries and hard state -------------------------------------------------
def test_config_entries_in_index_order(store: RaftStore) -> None:
    c1 = Entry(1, 2, EntryKind.CONFIG, MEMBERS.encode())
    c2 = Entry(1, 5, EntryKind.CONFIG, Membership(("n1",)).encode())
    log = [*ents(1, 1, 2), c1, *ents(1, 3, 5, EntryKind.NOOP), c2, *ents(1, 6, 8)]
    store.persist(None, log)
    assert store.config_entries() == [c1, c2]
    store.persist(None, ents(2, 5, 6))  # overwriting drops c2
    assert store.config_entries() == [c1]
    store.compact(2)  # compaction drops c1
    assert store.config_entries() == []


def test_hard_state_round_trip(store: RaftStore) -> None:
    store.persist(HardState(3, "n2", 0), [])
    assert store.initial_state() == (HardState(3, "n2", 0), None)
    store.persist(None, ents(3, 1, 3))  # None leaves the hard state alone
    assert store.initial_state()[0] == HardState(3, "n2", 0)
    store.persist(HardState(4, None, 2), [])
    assert store.initial_state()[0] == HardState(4, None, 2)


def test_persist_nothing_is_a_no_op(store: RaftStore) -> None:
    store.persist(HardState(2, "n1", 1), ents(2, 1, 3))
    before = state(store)
    store.persist(None, [])
    assert state(store) == before


# -- the two implementations agree on random histories -----------------------------
def _random_op(rng: random.Random, store: RaftStore, term: list[int]) -> tuple[Any, ...]:
    first, last = store.first_index(), store.last_index()
    roll = rng.random()
    if roll < 0.45:
        lo = rng.randint(first, last + 1) if rng.random() < 0.3 else last + 1
        if lo <= last:
            term[0] += 1
        kinds = list(EntryKind)
        batch = [
            Entry(term[0], i, rng.choice(kinds), rng.randbytes(rng.randint(0, 40)))
            for i in range(lo, lo + rng.randint(1, 6))
        ]
        return ("persist", HardState(term[0], rng.choice([None, "n1"]), 0), batch, None)
    if roll < 0.55:
        return ("persist", None, ents(term[0], last + rng.randint(2, 3), last + 4), None)
    if roll < 0.7:
        return ("compact", rng.randint(first - 2, last + 1))
    if roll < 0.85:
        index = rng.randint(first - 1, last + 3)
        matching = first - 1 <= index <= last and rng.random() < 0.6
        t = store.term(index) if matching else term[0]
        return ("persist", None, [], snap(index, t))
    return ("record", snap(rng.randint(0, last + 1), term[0]))


def _apply(store: RaftStore, op: tuple[Any, ...]) -> str:
    try:
        if op[0] == "persist":
            store.persist(op[1], op[2], op[3])
        elif op[0] == "compact":
            store.compact(op[1])
        else:
            store.record_snapshot(op[1])
    except (ValueError, LookupError) as exc:
        return type(exc).__name__
    return "ok"


@pytest.mark.parametrize("seed", range(4))
def test_memory_and_sqlite_agree_on_random_histories(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    memory, path = MemoryRaftStore(), tmp_path / "raft.db"
    sqlite, term = SqliteRaftStore(path), [1]
    try:
        for step in range(150):
            op = _random_op(rng, memory, term)
            assert _apply(memory, op) == _apply(sqlite, op), (seed, step, op)
            assert state(memory) == state(sqlite), (seed, step, op)
            if step % 25 == 0:
                sqlite.close()
                sqlite = SqliteRaftStore(path)
                assert state(memory) == state(sqlite), (seed, step, "reopen")
    finally:
        sqlite.close()


# -- SQLite only -----------------------------------------------------------------
def test_sqlite_reopen_restores_everything(tmp_path: Path) -> None:
    path = tmp_path / "raft.db"
    config = Entry(2, 9, EntryKind.CONFIG, MEMBERS.encode())
    with SqliteRaftStore(path) as db:
        db.persist(HardState(1, "n1", 0), ents(1, 1, 8))
        db.persist(HardState(2, "n3", 6), [*ents(2, 5, 9), config, *ents(2, 10, 12)])
        db.compact(3)
        db.persist(None, [], snap(4, 1))
        db.record_snapshot(snap(6, 2))
        before = state(db)
    with SqliteRaftStore(path) as db:
        assert state(db) == before
        assert before[:3] == (5, 11, 1)
        hard_state, snapshot = db.initial_state()
        assert (hard_state, snapshot) == (HardState(2, "n3", 6), snap(6, 2))
        assert snapshot is not None and snapshot.membership.address_of("n1") == "10.0.0.1:4100"
        db.persist(None, ents(3, 12, 13))
        assert db.entries(12, 13) == ents(3, 12, 13)


def test_sqlite_reopen_after_dropping_the_log(tmp_path: Path) -> None:
    path = tmp_path / "raft.db"
    with SqliteRaftStore(path) as db:
        db.persist(None, ents(1, 1, 4))
        db.persist(None, [], snap(30, 5))
    with SqliteRaftStore(path) as db:
        assert (db.first_index(), db.last_index(), db.term(30)) == (31, 30, 5)
        assert db.initial_state() == (HardState(), snap(30, 5))


def test_sqlite_rejected_persist_changes_nothing_even_with_a_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "raft.db"
    with SqliteRaftStore(path) as db:
        db.persist(HardState(1, "n1", 0), ents(1, 1, 6))
        before = state(db)
        with pytest.raises(ValueError):
            db.persist(HardState(5, "n5", 5), ents(5, 12, 13), snap(10, 5))
        with pytest.raises(ValueError, match="does not follow"):
            db.persist(None, [*ents(1, 6, 7), *ents(1, 8, 9)])
        assert state(db) == before
    with SqliteRaftStore(path) as db:
        assert state(db) == before


def test_sqlite_persist_is_one_transaction(tmp_path: Path) -> None:
    """However many entries, persist() commits once (one WAL fsync)."""
    with SqliteRaftStore(tmp_path / "raft.db") as db:
        statements: list[str] = []
        db._conn().set_trace_callback(statements.append)
        db.persist(HardState(1, "n1", 0), ents(1, 1, 500), None)
        db.persist(HardState(2, "n2", 9), ents(2, 200, 300), snap(100, 1))
        db._conn().set_trace_callback(None)
        verbs = [
            s.split()[0].upper()
            for s in statements
            if s.split()[0].upper() in ("BEGIN", "COMMIT", "ROLLBACK")
        ]
        assert verbs == ["BEGIN", "COMMIT", "BEGIN", "COMMIT"]


def test_sqlite_file_uses_wal_and_full_sync(tmp_path: Path) -> None:
    path = tmp_path / "raft.db"
    with SqliteRaftStore(path) as db:
        assert db._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        plan = (
            db._conn()
            .execute(
                f"EXPLAIN QUERY PLAN SELECT idx FROM entries WHERE kind = {int(EntryKind.CONFIG)}"
            )
            .fetchall()
        )
        assert "entries_config" in str(plan)
    other = sqlite3.connect(path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_sqlite_refuses_a_log_with_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "raft.db"
    with SqliteRaftStore(path) as db:
        db.persist(None, ents(1, 1, 6))
    other = sqlite3.connect(path)
    try:
        other.execute("DELETE FROM entries WHERE idx = 3")
        other.commit()
    finally:
        other.close()
    with pytest.raises(CorruptStore, match="entry 4"):
        SqliteRaftStore(path)


def test_sqlite_closed_store_refuses_writes(tmp_path: Path) -> None:
    db = SqliteRaftStore(tmp_path / "raft.db")
    db.persist(None, ents(1, 1, 3))
    db.close()
    db.close()  # idempotent
    with pytest.raises(StoreFailed):
        db.persist(None, ents(1, 3, 4))
    with pytest.raises(StoreFailed):
        db.entries(1, 3)
