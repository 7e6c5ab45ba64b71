"""Snapshots of state.db: a consistent copy that restores to an identical state."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from concordance.errors import RemoteProtocolError
from concordance.protocol.commands import Batch, Command, Delete, Op, Set
from concordance.storage.fsm import StateMachine
from tests.unit.shapes import plain

T0 = 1_764_230_400_000


def entries(ops: list[Op], first: int, term: int = 3) -> list[tuple[int, int, bytes]]:
    return [
        (first + n, term, Command("n1", first + n, T0 + n, op).encode()) for n, op in enumerate(ops)
    ]


def history(n: int) -> list[Op]:
    ops: list[Op] = []
    for i in range(n):
        key = f"tenant:acme/k{i % 7}/日本{i % 3}"
        ops.append(Set(key, f'{{"i":{i}}}'.encode(), None, T0 + 10**6 if i % 5 == 0 else None))
        if i % 4 == 3:
            ops.append(Delete(key))
        if i % 9 == 0:
            ops.append(Batch((Set("tenant:acme/b1", b"1"), Set("tenant:acme/b2", b"2"))))
    return ops


def filled(path: Path, n: int = 40) -> StateMachine:
    sm = StateMachine(path)
    ops = history(n)
    sm.apply(entries(ops, 1))
    assert sm.applied_index == len(ops)
    return sm


def reads(sm: StateMachine) -> tuple[object, ...]:
    return (
        plain(sm.list("tenant:acme/", 1000, None, T0))["entries"],
        plain(sm.changes("tenant:acme/", 0))["changes"],
        plain(sm.get("tenant:acme/b1", T0)),
        sm.expired(T0 + 10**7),
    )


def test_snapshot_and_restore_give_an_identical_state(tmp_path: Path) -> None:
    source = filled(tmp_path / "a.db")
    assert source.snapshot_to(tmp_path / "snap.db") == (source.applied_index, 3)
    target = StateMachine(tmp_path / "b.db")
    assert target.restore_from(tmp_path / "snap.db") == source.applied_index
    assert target.digest() == source.digest()
    assert (target.applied_index, target.applied_term, target.revision) == (
        source.applied_index,
        source.applied_term,
        source.revision,
    )
    assert reads(target) == reads(source)
    # both continue identically from the snapshot's index; older entries are skipped
    more = entries(history(5), source.applied_index - 3)
    a, b = source.apply(more), target.apply(more)
    assert a == b and len(a) == len(more) - 4
    assert target.digest() == source.digest()
    source.close()
    target.close()


def test_restore_replaces_a_divergent_state_and_survives_reopen(tmp_path: Path) -> None:
    source = filled(tmp_path / "a.db", n=20)
    source.snapshot_to(tmp_path / "snap.db")
    target = StateMachine(tmp_path / "b.db")
    target.apply(entries([Set(f"tenant:other/x{i}", b"1") for i in range(300)], 1, term=1))
    assert (tmp_path / "b.db-wal").exists()  # uncheckpointed pages of the old state
    target.restore_from(tmp_path / "snap.db")
    assert target.get("tenant:other/x1", T0) is None
    target.close()
    reopened = StateMachine(tmp_path / "b.db")
    assert reopened.digest() == source.digest()
    assert reopened.applied_index == source.applied_index
    assert plain(reopened.get("tenant:other/x1", T0)) is None
    reopened.close()
    source.close()


def test_snapshot_is_one_self_contained_file(tmp_path: Path) -> None:
    source = filled(tmp_path / "a.db")
    (tmp_path / "snap.db").write_bytes(b"an older snapshot")
    source.snapshot_to(tmp_path / "snap.db")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("snap")) == ["snap.db"]
    conn = sqlite3.connect(tmp_path / "snap.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert conn.execute("SELECT applied_index FROM meta").fetchone() == (source.applied_index,)
    conn.close()
    # the copy does not follow later applies
    before = source.digest()
    source.apply(entries([Set("tenant:acme/new", b"1")], source.applied_index + 1))
    copy = StateMachine(tmp_path / "copy.db")
    copy.restore_from(tmp_path / "snap.db")
    assert copy.digest() == before != source.digest()
    copy.close()
    source.close()


def test_restoring_garbage_is_refused_and_the_state_kept(tmp_path: Path) -> None:
    sm = filled(tmp_path / "a.db")
    digest, index = sm.digest(), sm.applied_index
    (tmp_path / "junk").write_bytes(b"not a database at all" * 100)
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE kv (key TEXT)")
    other.commit()
    other.close()
    for bad in (tmp_path / "junk", tmp_path / "other.db", tmp_path / "missing.db"):
        with pytest.raises(RemoteProtocolError):
            sm.restore_from(bad)
        assert (sm.digest(), sm.applied_index) == (digest, index)
    assert not (tmp_path / "missing.db").exists()
    sm.apply(entries([Set("tenant:acme/still-works", b"1")], index + 1))
    assert sm.applied_index == index + 1
    sm.close()


def test_digest_tracks_entries_not_history(tmp_path: Path) -> None:
    ops = history(30)
    short = StateMachine(tmp_path / "short.db", retention=2)
    full = StateMachine(tmp_path / "full.db")
    short.apply(entries(ops, 1))
    full.apply(entries(ops, 1))
    assert short.digest() == full.digest()
    assert short.oldest_revision > full.oldest_revision == 1
    full.apply(entries([Set("tenant:acme/k0/日本0", b"0")], len(ops) + 1))
    assert short.digest() != full.digest()
    empty = StateMachine(tmp_path / "empty.db")
    assert empty.digest() != full.digest()
    for sm in (short, full, empty):
        sm.close()
