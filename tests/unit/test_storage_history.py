"""state.db's layout and change history: values stored once and inline, history bounded
by revisions and by bytes, the same ``oldest`` on every node."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from concordance.errors import Compacted
from concordance.protocol.commands import Batch, Command, Delete, DeletePrefix, Expire, Op, Set
from concordance.storage.fsm import StateMachine
from tests.unit.shapes import error_of, plain

T = 1_764_230_400_000
KIB_VALUE = b'"' + b"v" * 1022 + b'"'  # 1 KiB of JSON text


def entries(ops: list[Op], start: int = 1) -> list[tuple[int, int, bytes]]:
    return [
        (start + i, 1, Command("n1", start + i, T + start + i, op).encode())
        for i, op in enumerate(ops)
    ]


def oldest(sm: StateMachine) -> int:
    with pytest.raises(Compacted) as info:
        plain(sm.changes("tenant:a/", 0))
    return int(info.value.to_dict()["oldest"])


def value_rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(
            conn.execute("SELECT count(*) FROM changes WHERE value IS NOT NULL").fetchone()[0]
        )
    finally:
        conn.close()


def test_a_kib_value_is_stored_once_and_inline(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateMachine(path) as sm:
        sm.apply(entries([Set(f"tenant:a/k{i:04d}", KIB_VALUE) for i in range(300)]))
    assert value_rows(path) == 300  # not once in kv and again in the history
    conn = sqlite3.connect(path)
    overflow = conn.execute(
        "SELECT count(*) FROM dbstat WHERE name IN ('kv', 'changes') AND pagetype = 'overflow'"
    ).fetchone()[0]
    leaf_bytes = conn.execute(
        "SELECT sum(pgsize), sum(unused) FROM dbstat WHERE name = 'changes' AND pagetype = 'leaf'"
    ).fetchone()
    conn.close()
    assert overflow == 0
    size, unused = leaf_bytes
    assert unused / size < 0.15  # seven 1 KiB rows to an 8 KiB page


def test_history_is_bounded_by_bytes_and_compacted_beyond(tmp_path: Path) -> None:
    limit = 20 * 1024
    with StateMachine(tmp_path / "state.db", retention=100_000, retention_bytes=limit) as sm:
        sm.apply(entries([Set(f"tenant:a/k{i % 7}", KIB_VALUE) for i in range(200)]))
        assert sm.history_bytes <= limit
        first = oldest(sm)
        assert first > 150  # about 20 revisions of 1 KiB are kept, not 200
        assert len(plain(sm.changes("tenant:a/", first - 1))["changes"]) == 200 - first + 1
        for i in range(7):  # every current value survives its history
            assert plain(sm.get(f"tenant:a/k{i}", T))["value"] == KIB_VALUE
    assert value_rows(tmp_path / "state.db") <= 200 - first + 1 + 7


def test_the_newest_revision_is_kept_whatever_its_size(tmp_path: Path) -> None:
    with StateMachine(tmp_path / "state.db", retention_bytes=1000) as sm:
        sm.apply(entries([Batch((Set("tenant:a/x", KIB_VALUE), Set("tenant:a/y", KIB_VALUE)))]))
        sm.apply(entries([Set("tenant:a/z", KIB_VALUE)], start=2))
        assert oldest(sm) == 2
        assert [e["key"] for e in plain(sm.changes("tenant:a/", 1))["changes"]] == ["tenant:a/z"]


def test_values_below_the_horizon_are_dropped_by_the_write_that_replaces_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    with StateMachine(path, retention=16) as sm:
        keys = [f"tenant:a/p/{i}" for i in range(4)]
        ops: list[Op] = [
            Set(k, b"1", expires_at=T + 10**6 if k.endswith("3") else None) for k in keys
        ]
        ops += [Set("tenant:a/filler", b"2")] * 40  # pushes the four below the horizon
        sm.apply(entries(ops))
        assert oldest(sm) > 4
        assert value_rows(path) == 4 + 40 - (oldest(sm) - 5)
        before = value_rows(path)
        n = len(ops)
        sm.apply(
            entries(
                [
                    Set(keys[0], b"3"),  # overwrite
                    Delete(keys[1]),  # delete
                    DeletePrefix("tenant:a/p/2"),  # delete-prefix
                    Expire(keys[3], 1, T + 10**6),  # TTL expiry
                ],
                start=n + 1,
            )
        )
        # three superseded values gone, one new value row; the pruning of the
        # filler rows is the only other change
        assert plain(sm.get(keys[0], T))["value"] == b"3"
        assert all(plain(sm.get(k, T)) is None for k in keys[1:])
        assert value_rows(path) <= before - 3 + 1


def test_every_node_compacts_to_the_same_oldest(tmp_path: Path) -> None:
    """Pruning is a function of the applied entries: a node that restarts midway, or
    applies in other batch sizes, ends at the same ``oldest`` and history bytes."""
    ops: list[Op] = [
        Set(f"tenant:a/k{i % 5}", b'"' + b"x" * (50 + 37 * (i % 11)) + b'"') for i in range(300)
    ]
    log = entries(ops)
    results: list[tuple[int, int, str]] = []
    for n, batch in enumerate((1, 7, 300)):
        path = tmp_path / f"n{n}.db"
        for lo in range(0, len(log), batch):
            with StateMachine(path, retention=120, retention_bytes=8000) as sm:  # reopened
                sm.apply(log[lo : lo + batch])
        with StateMachine(path, retention=120, retention_bytes=8000) as sm:
            results.append((oldest(sm), sm.history_bytes, sm.digest()))
    assert results[0] == results[1] == results[2]
    assert results[0][1] <= 8000


def test_history_bytes_match_the_rows_held(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateMachine(path, retention=50, retention_bytes=5000) as sm:
        ops: list[Op] = [
            Set(f"tenant:a/k{i % 9}", b'"' + b"y" * (i % 300) + b'"') for i in range(400)
        ]
        sm.apply(entries(ops))
        held = sm.history_bytes
        first = oldest(sm)
    conn = sqlite3.connect(path)
    counted: Any = conn.execute(
        "SELECT sum(length(CAST(key AS BLOB)) + coalesce(length(value), 0)) FROM changes"
        " WHERE revision >= ?",
        (first,),
    ).fetchone()[0]
    conn.close()
    assert counted == held


def test_an_entry_sees_the_values_the_entries_before_it_in_the_same_apply_wrote(
    tmp_path: Path,
) -> None:
    """Values live in change rows: an entry must read those of earlier entries of the
    same transaction (a conflict reports the current value, a delete-prefix and a
    batch see it)."""
    with StateMachine(tmp_path / "state.db") as sm:
        out = sm.apply(
            entries(
                [
                    Set("tenant:a/k", b'"one"'),
                    Set("tenant:a/k", b'"two"', if_version=7),  # conflicts
                    Batch((Set("tenant:a/j", b'"j"'),)),
                ]
            )
        )
        assert error_of(out[1]) is not None
        assert error_of(out[1])["current"]["value"] == b'"one"'
        assert plain(sm.get("tenant:a/k", T))["value"] == b'"one"'
        assert plain(sm.get("tenant:a/j", T))["value"] == b'"j"'
