"""The state machine over a real state.db: versions, CAS, batches, idempotency, reads."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from concordance.errors import (
    Compacted,
    InvalidKey,
    InvalidRequest,
    NotFound,
    VersionConflict,
)
from concordance.protocol.commands import (
    Batch,
    Check,
    Command,
    Delete,
    DeletePrefix,
    Op,
    Set,
)
from concordance.protocol.payloads import Change, Entry
from concordance.storage import db
from concordance.storage.db import prefix_end
from concordance.storage.fsm import Applied, ApplyGap, StateMachine
from tests.unit.shapes import error_of, plain, result_of

K = "tenant:acme/settings/theme"
T0 = 1_764_230_400_000


class Log:
    """Feeds commands to a state machine as consecutive committed entries."""

    def __init__(self, sm: StateMachine, origin: str = "n1") -> None:
        self.sm = sm
        self.origin = origin
        self.index = sm.applied_index
        self.request_id = 0

    def entry(self, op: Op, ts: int = T0, term: int = 1) -> tuple[int, int, bytes]:
        self.index += 1
        self.request_id += 1
        return self.index, term, Command(self.origin, self.request_id, ts, op).encode()

    def run(self, op: Op, ts: int = T0) -> Applied:
        [applied] = self.sm.apply([self.entry(op, ts)])
        return applied

    def ok(self, op: Op, ts: int = T0) -> Any:
        applied = self.run(op, ts)
        assert error_of(applied) is None, error_of(applied)
        return result_of(applied)


@pytest.fixture
def sm(tmp_path: Path) -> Any:
    with StateMachine(tmp_path / "state.db") as machine:
        yield machine


@pytest.fixture
def log(sm: StateMachine) -> Log:
    return Log(sm)


def change_rows(sm: StateMachine) -> int:
    return len(plain(sm.changes("tenant:acme/", 0, 10_000))["changes"])


# -- versions ---------------------------------------------------------------


def test_first_write_returns_the_entry(log: Log, sm: StateMachine) -> None:
    applied = log.run(Set(K, b'"dark"'))
    entry = Entry(K, b'"dark"', 1, 1, T0, T0, None)
    assert applied == Applied(
        index=1,
        origin="n1",
        request_id=1,
        outcome=entry,
        events=(Change("set", K, b'"dark"', 1, 1, T0),),
    )
    assert sm.get(K, T0) == entry
    assert (sm.applied_index, sm.applied_term, sm.revision) == (1, 1, 1)


def test_value_bytes_are_stored_verbatim(log: Log, sm: StateMachine) -> None:
    raw = b'{"z": 1, "a": [1.50, "\\u00e9", null]}'
    log.ok(Set(K, raw))
    assert plain(sm.get(K, T0))["value"] == raw  # type: ignore[index]


def test_update_bumps_version_and_keeps_created_at(log: Log, sm: StateMachine) -> None:
    log.ok(Set(K, b"1"), ts=T0)
    entry = log.ok(Set(K, b"2"), ts=T0 + 60_000)
    assert (entry["version"], entry["revision"]) == (2, 2)
    assert (entry["createdAt"], entry["updatedAt"]) == (T0, T0 + 60_000)
    assert plain(sm.get(K, T0 + 60_000)) == entry


def test_delete_keeps_the_version_and_a_recreate_continues(log: Log, sm: StateMachine) -> None:
    log.ok(Set(K, b"1"))
    log.ok(Set(K, b"2"))
    applied = log.run(Delete(K), ts=T0 + 5)
    assert result_of(applied) == {"key": K, "deleted": True, "version": 2, "revision": 3}
    assert plain(applied.events) == (
        {"type": "delete", "key": K, "version": 2, "revision": 3, "timestamp": T0 + 5},
    )
    assert plain(sm.get(K, T0 + 5)) is None
    again = log.ok(Set(K, b"3"), ts=T0 + 10)
    assert (again["version"], again["revision"]) == (3, 4)
    assert again["createdAt"] == T0 + 10  # a new life starts
    log.ok(Delete(K))
    assert log.ok(Set(K, b"4"))["version"] == 4


@pytest.mark.parametrize("deleted_first", [False, True])
def test_delete_of_an_absent_key_is_not_found_and_changes_nothing(
    log: Log, sm: StateMachine, deleted_first: bool
) -> None:
    if deleted_first:
        log.ok(Set(K, b"1"))
        log.ok(Delete(K))
    before = (sm.revision, sm.digest(), change_rows(sm))
    applied = log.run(Delete(K))
    assert error_of(applied) is not None and error_of(applied)["code"] == "not_found"
    assert plain(applied.events) == ()
    with pytest.raises(NotFound):
        applied.unwrap()
    assert (sm.revision, sm.digest(), change_rows(sm)) == before
    assert sm.applied_index == log.index  # the entry itself was still applied


# -- compare-and-swap ---------------------------------------------------------


def test_if_version_matching_applies(log: Log) -> None:
    log.ok(Set(K, b"1"))
    assert log.ok(Set(K, b"2", if_version=1))["version"] == 2
    assert log.ok(Delete(K, if_version=2))["version"] == 2


def test_if_version_mismatch_is_a_conflict_with_the_current_entry(
    log: Log, sm: StateMachine
) -> None:
    current = log.ok(Set(K, b"1"))
    for op in (Set(K, b"2", if_version=5), Set(K, b"2", if_version=0), Delete(K, if_version=9)):
        applied = log.run(op)
        with pytest.raises(VersionConflict) as info:
            applied.unwrap()
        assert plain(info.value.extra) == {"current": current}
        assert "index" not in error_of(applied)  # type: ignore[operator]
        assert plain(applied.events) == ()
    assert sm.revision == 1
    assert plain(sm.get(K, T0)) == current


def test_if_version_zero_means_only_if_absent(log: Log) -> None:
    assert log.ok(Set(K, b"1", if_version=0))["version"] == 1
    log.ok(Delete(K))
    # a tombstone is absent: ifVersion 0 succeeds, and the version continues
    assert log.ok(Set(K, b"2", if_version=0))["version"] == 2


def test_if_version_of_a_tombstone_does_not_match(log: Log) -> None:
    log.ok(Set(K, b"1"))
    log.ok(Delete(K))
    applied = log.run(Set(K, b"2", if_version=1))
    assert error_of(applied) == {
        "code": "version_conflict",
        "message": f"{K} is at version 0, not 1",
        "current": None,
    }


def test_conditional_delete_of_an_absent_key(log: Log) -> None:
    assert error_of(log.run(Delete(K, if_version=3)))["code"] == "version_conflict"  # type: ignore[index]
    assert error_of(log.run(Delete(K, if_version=0)))["code"] == "not_found"  # type: ignore[index]


def test_check_as_a_command_reads_through_the_log(log: Log, sm: StateMachine) -> None:
    entry = log.ok(Set(K, b"1"))
    assert log.ok(Check(K, 1)) == entry
    assert log.ok(Check("tenant:acme/nope", 0)) is None
    assert error_of(log.run(Check(K, 0)))["code"] == "version_conflict"  # type: ignore[index]
    assert sm.revision == 1


# -- batches ------------------------------------------------------------------


def test_batch_is_atomic_and_shares_one_revision(log: Log, sm: StateMachine) -> None:
    log.ok(Set("tenant:acme/a", b"1"))
    log.ok(Set("tenant:acme/b", b"1"))
    applied = log.run(
        Batch(
            (
                Check("tenant:acme/a", 1),
                Set("tenant:acme/a", b"2", if_version=1),
                Delete("tenant:acme/b"),
                Set("tenant:acme/c", b"3", if_version=0),
                Check("tenant:acme/none", 0),
            )
        )
    )
    result = result_of(applied)
    assert result["revision"] == 3
    a1, a2, b, c, none = result["results"]
    assert (a1["version"], a1["revision"]) == (1, 1)  # the check ran before the set
    assert (a2["version"], a2["revision"]) == (2, 3)
    assert b == {"key": "tenant:acme/b", "deleted": True, "version": 1, "revision": 3}
    assert (c["version"], c["revision"]) == (1, 3)
    assert none is None
    assert [(e["type"], e["key"], e["revision"]) for e in plain(applied.events)] == [
        ("set", "tenant:acme/a", 3),
        ("delete", "tenant:acme/b", 3),
        ("set", "tenant:acme/c", 3),
    ]
    assert sm.revision == 3
    assert plain(sm.changes("tenant:acme/", 2))["changes"] == list(plain(applied.events))


def test_failed_batch_applies_nothing_and_names_the_first_failing_op(
    log: Log, sm: StateMachine
) -> None:
    a = log.ok(Set("tenant:acme/a", b"1"))
    log.ok(Set("tenant:acme/b", b"1"))
    before = (sm.revision, sm.digest(), change_rows(sm))
    applied = log.run(
        Batch(
            (
                Set("tenant:acme/new", b"1"),
                Delete("tenant:acme/b", if_version=1),
                Check("tenant:acme/a", 7),  # fails
                Set("tenant:acme/a", b"9", if_version=3),  # fails too, but later
            )
        )
    )
    assert error_of(applied) == {
        "code": "version_conflict",
        "message": "tenant:acme/a is at version 1, not 7",
        "current": a,
        "index": 2,
    }
    assert plain(applied.events) == ()
    assert (sm.revision, sm.digest(), change_rows(sm)) == before
    assert plain(sm.get("tenant:acme/new", T0)) is None
    assert plain(sm.get("tenant:acme/b", T0)) is not None


def test_batch_ops_see_the_effects_of_earlier_ops(log: Log, sm: StateMachine) -> None:
    log.ok(Set("tenant:acme/a", b"1"))
    result = log.ok(
        Batch(
            (
                Set("tenant:acme/a", b"2", if_version=1),
                Check("tenant:acme/a", 2),
                Set("tenant:acme/a", b"3", if_version=2),
                Set("tenant:acme/n", b"1", if_version=0),
                Delete("tenant:acme/n", if_version=1),  # created and deleted in one batch
                Check("tenant:acme/n", 0),
            )
        )
    )
    check_a = result["results"][1]
    assert (check_a["version"], check_a["value"], check_a["revision"]) == (2, b"2", 2)
    assert result["results"][4] == {
        "key": "tenant:acme/n",
        "deleted": True,
        "version": 1,
        "revision": 2,
    }
    assert result["results"][5] is None
    assert plain(sm.get("tenant:acme/a", T0))["version"] == 3  # type: ignore[index]
    assert plain(sm.get("tenant:acme/n", T0)) is None
    # every write is an event, all at the batch's one revision
    events = plain(sm.changes("tenant:acme/", 1))["changes"]
    assert [(e["type"], e["key"], e["version"], e["revision"]) for e in events] == [
        ("set", "tenant:acme/a", 2, 2),
        ("set", "tenant:acme/a", 3, 2),
        ("set", "tenant:acme/n", 1, 2),
        ("delete", "tenant:acme/n", 1, 2),
    ]
    # a re-created key continues after the in-batch tombstone
    assert log.ok(Set("tenant:acme/n", b"1", if_version=0))["version"] == 2


def test_a_failing_op_reports_the_entry_it_saw(log: Log, sm: StateMachine) -> None:
    log.ok(Set("tenant:acme/a", b"1"))
    applied = log.run(Batch((Delete("tenant:acme/a"), Check("tenant:acme/a", 1))))
    assert error_of(applied) is not None
    assert (error_of(applied)["index"], error_of(applied)["current"]) == (1, None)
    assert plain(sm.get("tenant:acme/a", T0)) is not None


def test_batch_delete_of_an_absent_key_fails_the_batch(log: Log, sm: StateMachine) -> None:
    applied = log.run(Batch((Set("tenant:acme/a", b"1"), Delete("tenant:acme/nope"))))
    assert error_of(applied) is not None
    assert (error_of(applied)["code"], error_of(applied)["index"]) == ("not_found", 1)
    assert sm.revision == 0 and plain(sm.get("tenant:acme/a", T0)) is None


def test_batch_of_only_checks_takes_no_revision(log: Log, sm: StateMachine) -> None:
    entry = log.ok(Set(K, b"1"))
    result = log.ok(Batch((Check(K, 1), Check("tenant:acme/x", 0))))
    assert result == {"results": [entry, None], "revision": 1}
    assert sm.revision == 1


def test_batch_writes_to_one_key_apply_in_order(log: Log, sm: StateMachine) -> None:
    result = log.ok(Batch((Set(K, b"1"), Set(K, b"2"), Delete(K), Set(K, b"3"))))
    versions = [r["version"] for r in result["results"]]
    assert versions == [1, 2, 2, 3]
    assert {r["revision"] for r in result["results"]} == {1}
    assert plain(sm.get(K, T0))["value"] == b"3"  # type: ignore[index]
    events = plain(sm.changes("tenant:acme/", 0))["changes"]
    assert [(e["type"], e["version"]) for e in events] == [
        ("set", 1),
        ("set", 2),
        ("delete", 2),
        ("set", 3),
    ]


# -- delete prefix --------------------------------------------------------------


def test_delete_prefix_is_atomic_and_scoped(log: Log, sm: StateMachine) -> None:
    keys = ["tenant:acme/a/x", "tenant:acme/a/y/z", "tenant:acme/ab", "tenant:acme2/a/x"]
    for key in keys:
        log.ok(Set(key, b"1"))
    log.ok(Set("tenant:acme/a/y/z", b"2"))
    applied = log.run(DeletePrefix("tenant:acme/a/"))
    assert result_of(applied) == {"deleted": 2, "revision": 6}
    assert [(e["type"], e["key"], e["version"], e["revision"]) for e in plain(applied.events)] == [
        ("delete", "tenant:acme/a/x", 1, 6),
        ("delete", "tenant:acme/a/y/z", 2, 6),
    ]
    assert plain(sm.get("tenant:acme/a/x", T0)) is None
    assert plain(sm.get("tenant:acme/ab", T0)) is not None
    assert plain(sm.get("tenant:acme2/a/x", T0)) is not None
    # tombstones keep versions
    assert log.ok(Set("tenant:acme/a/y/z", b"3"))["version"] == 3


def test_delete_prefix_with_nothing_to_delete_takes_no_revision(log: Log, sm: StateMachine) -> None:
    log.ok(Set("tenant:other/a", b"1"))
    applied = log.run(DeletePrefix("tenant:acme/"))
    assert result_of(applied) == {"deleted": 0, "revision": 1}
    assert plain(applied.events) == () and sm.revision == 1


def test_delete_prefix_does_not_cross_tenants(log: Log, sm: StateMachine) -> None:
    log.ok(Set("tenant:a/x", b"1"))
    log.ok(Set("tenant:ab/x", b"1"))
    log.ok(Set("tenant:a.b/x", b"1"))
    assert log.ok(DeletePrefix("tenant:a/"))["deleted"] == 1
    assert plain(sm.get("tenant:ab/x", T0)) is not None
    assert plain(sm.get("tenant:a.b/x", T0)) is not None


# -- applying entries -------------------------------------------------------------


def test_reapplying_the_same_indexes_is_a_no_op(tmp_path: Path) -> None:
    sm = StateMachine(tmp_path / "state.db")
    log = Log(sm)
    entries = [log.entry(Set(f"tenant:acme/k{i}", b"1")) for i in range(5)]
    assert len(sm.apply(entries)) == 5
    digest, revision = sm.digest(), sm.revision
    assert sm.apply(entries) == []
    assert sm.apply(entries[2:]) == []
    assert (sm.digest(), sm.revision, sm.applied_index) == (digest, revision, 5)
    # a restarted storage role is re-sent entries it already has
    sm.close()
    sm = StateMachine(tmp_path / "state.db")
    assert (sm.applied_index, sm.applied_term, sm.revision) == (5, 1, 5)
    more = log.entry(Set("tenant:acme/k5", b"1"))
    applied = sm.apply([*entries, more])
    assert [a.index for a in applied] == [6]
    assert sm.digest() != digest and sm.revision == 6
    sm.close()


def test_no_op_entries_only_advance_the_applied_index(sm: StateMachine) -> None:
    assert sm.apply([(1, 1, None), (2, 2, b""), (3, 2, None)]) == []
    assert (sm.applied_index, sm.applied_term, sm.revision) == (3, 2, 0)


def test_a_gap_in_indexes_is_refused_and_applies_nothing(log: Log, sm: StateMachine) -> None:
    first = log.entry(Set(K, b"1"))
    log.index += 1  # skip one
    third = log.entry(Set(K, b"2"))
    with pytest.raises(ApplyGap) as info:
        sm.apply([first, third])
    assert (info.value.index, info.value.expected) == (3, 2)
    assert (sm.applied_index, sm.revision) == (0, 0)
    assert plain(sm.get(K, T0)) is None


def test_a_malformed_entry_does_not_stop_later_entries(log: Log, sm: StateMachine) -> None:
    good = log.entry(Set("tenant:acme/a", b"1"))
    log.index += 1
    garbage = (log.index, 1, b"\xc1 not a command")
    log.index += 1
    broken = (
        log.index,
        1,
        Command("n2", 99, T0, Set(K, b"1")).encode().replace(b"acme", b"ac\x00e"),
    )
    later = log.entry(Set("tenant:acme/b", b"1"))
    applied = sm.apply([good, garbage, broken, later])
    assert [a.index for a in applied] == [1, 2, 3, 4]
    assert error_of(applied[1])["code"] == "invalid_request"  # type: ignore[index]
    assert "malformed command" in error_of(applied[1])["message"]  # type: ignore[index]
    assert (applied[1].origin, applied[1].request_id) == ("", 0)
    # the envelope still decodes, so the proposer gets its answer
    assert (applied[2].origin, applied[2].request_id) == ("n2", 99)
    assert error_of(applied[2])["code"] == "invalid_request"  # type: ignore[index]
    assert result_of(applied[3])["revision"] == 2  # revisions stay contiguous
    assert sm.applied_index == 4


def test_an_io_failure_rolls_back_the_whole_batch(
    log: Log, sm: StateMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.ok(Set(K, b"0"))
    entries = [log.entry(Set(f"tenant:acme/k{i}", b"1")) for i in range(3)]

    def disk_full(self: StateMachine) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(StateMachine, "_prune", disk_full)
    with pytest.raises(sqlite3.OperationalError):
        sm.apply(entries)
    assert (sm.applied_index, sm.revision) == (1, 1)
    assert plain(sm.get("tenant:acme/k0", T0)) is None
    monkeypatch.undo()
    assert len(sm.apply(entries)) == 3  # consensus retries the same entries
    assert (sm.applied_index, sm.revision) == (4, 4)


def test_one_apply_call_is_one_transaction(tmp_path: Path) -> None:
    sm = StateMachine(tmp_path / "state.db")
    log = Log(sm)
    entries = [log.entry(Set(f"tenant:acme/k{i}", b"1"), term=i + 1) for i in range(50)]
    sm.apply(entries)
    # another connection sees all of it, including the applied position
    other = sqlite3.connect(tmp_path / "state.db")
    assert other.execute("SELECT count(*) FROM kv").fetchone() == (50,)
    assert other.execute("SELECT applied_index, applied_term, revision FROM meta").fetchone() == (
        50,
        50,
        50,
    )
    assert other.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    other.close()
    sm.close()


def _committed(path: Path) -> tuple[int, int]:
    """(kv rows, applied_index) as another connection (another process) sees state.db."""
    other = sqlite3.connect(path)
    try:
        rows = other.execute("SELECT count(*) FROM kv").fetchone()[0]
        applied = other.execute("SELECT applied_index FROM meta").fetchone()[0]
        return int(rows), int(applied)
    finally:
        other.close()


def test_uncommitted_batches_are_read_here_and_committed_together(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    sm = StateMachine(path)
    log = Log(sm)
    sm.apply([log.entry(Set("tenant:acme/k0", b"0"))])
    for i in (1, 2, 3):
        sm.apply([log.entry(Set(f"tenant:acme/k{i}", b"1"))], commit=False)
    # this connection (the storage role's reads) sees every batch at once ...
    assert (sm.applied_index, sm.committed_index, sm.revision) == (4, 1, 4)
    assert plain(sm.get("tenant:acme/k3", T0))["version"] == 1  # type: ignore[index]
    assert len(plain(sm.changes("tenant:acme/", 0))["changes"]) == 4
    # ... another connection only what was committed
    assert _committed(path) == (1, 1)
    sm.commit()
    assert sm.committed_index == 4
    assert _committed(path) == (4, 4)
    sm.commit()  # nothing open: nothing to do
    sm.close()


def test_a_crash_keeps_the_last_commit_and_the_resent_entries_apply_the_same(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    sm = StateMachine(path)
    log = Log(sm)
    first = [log.entry(Set(f"tenant:acme/k{i}", b"1")) for i in range(3)]
    sm.apply(first)
    later = [log.entry(Set("tenant:acme/k0", b"2")), log.entry(Delete("tenant:acme/k1"))]
    applied = sm.apply(later, commit=False)
    digest = sm.digest()
    sm.close(commit=False)  # a crash: the open transaction is gone
    sm = StateMachine(path)
    assert (sm.applied_index, sm.revision) == (3, 3)
    assert plain(sm.get("tenant:acme/k0", T0))["version"] == 1  # type: ignore[index]
    again = sm.apply([*first, *later])  # consensus resends from the committed index
    assert [plain(a) for a in again] == [plain(a) for a in applied]
    assert (sm.digest(), sm.applied_index, sm.revision) == (digest, 5, 5)
    sm.close()  # a clean close commits
    sm = StateMachine(path)
    assert (sm.applied_index, sm.digest()) == (5, digest)
    sm.close()


def test_a_failed_batch_leaves_the_uncommitted_ones_before_it(
    log: Log, sm: StateMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    sm.apply([log.entry(Set("tenant:acme/a", b"1"))], commit=False)
    entries = [log.entry(Set(f"tenant:acme/k{i}", b"1")) for i in range(3)]

    def disk_full(self: StateMachine) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(StateMachine, "_prune", disk_full)
    with pytest.raises(sqlite3.OperationalError):
        sm.apply(entries, commit=False)
    monkeypatch.undo()
    assert (sm.applied_index, sm.revision, sm.committed_index) == (1, 1, 0)
    assert plain(sm.get("tenant:acme/a", T0)) is not None
    assert plain(sm.get("tenant:acme/k0", T0)) is None
    assert len(sm.apply(entries)) == 3  # consensus retries the same entries
    assert (sm.applied_index, sm.revision, sm.committed_index) == (4, 4, 4)


def test_a_failed_commit_goes_back_to_the_last_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.db"
    sm = StateMachine(path)
    log = Log(sm)
    sm.apply([log.entry(Set("tenant:acme/a", b"1"))])
    resend = [log.entry(Set("tenant:acme/b", b"1")), log.entry(Set("tenant:acme/c", b"1"))]
    sm.apply(resend, commit=False)
    meta = "UPDATE meta SET applied_index"
    real = sm._conn

    class FailingCommit:
        """The connection, whose COMMIT fails as on a full disk."""

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith(meta):
                raise sqlite3.OperationalError("database or disk is full")
            return real.execute(sql, *args)

    monkeypatch.setattr(sm, "_conn", FailingCommit())
    with pytest.raises(sqlite3.OperationalError):
        sm.commit()
    monkeypatch.undo()
    assert (sm.applied_index, sm.revision, sm.committed_index) == (1, 1, 1)
    assert plain(sm.get("tenant:acme/b", T0)) is None
    with pytest.raises(ApplyGap):  # what comes next finds the gap: storage says hello
        sm.apply([log.entry(Set("tenant:acme/d", b"1"))])
    assert len(sm.apply(resend)) == 2
    sm.close()
    assert _committed(path) == (3, 3)


def test_reconcile_follows_a_transaction_sqlite_rolled_back_by_itself(tmp_path: Path) -> None:
    """SQLite rolls the open transaction back on its own on an I/O error or a full disk,
    even in a statement that only reads: the position must then be the last commit's."""
    sm = StateMachine(tmp_path / "state.db")
    log = Log(sm)
    sm.apply([log.entry(Set("tenant:acme/a", b"1"))])
    sm.apply([log.entry(Set("tenant:acme/b", b"1"))], commit=False)
    assert sm.reconcile() is False  # the transaction is there: nothing to do
    sm._conn.execute("ROLLBACK")  # what SQLite does by itself on SQLITE_IOERR or SQLITE_FULL
    assert sm.reconcile() is True
    assert (sm.applied_index, sm.revision, sm.committed_index) == (1, 1, 1)
    assert sm.reconcile() is False
    with pytest.raises(ApplyGap):
        sm.apply([log.entry(Set("tenant:acme/c", b"1"))])
    sm.close()


def test_a_database_of_another_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE foreign_thing (x)")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="schema"):
        StateMachine(path)


# -- list ----------------------------------------------------------------------

MULTIBYTE = [
    "tenant:acme/z",
    "tenant:acme/é",  # C3 A9
    "tenant:acme/日",  # E6 97 A5
    "tenant:acme/\ue000",  # EE 80 80: after 😀 in UTF-16 order, before it in UTF-8
    "tenant:acme/😀",  # F0 9F 98 80
    "tenant:acme/A",
    "tenant:acme/a/b",
    "tenant:acme/a-b",
    "tenant:acme/\U0010ffff",
]


def test_list_is_in_utf8_byte_order_and_pages_with_cursors(log: Log, sm: StateMachine) -> None:
    for key in MULTIBYTE:
        log.ok(Set(key, b"1"))
    log.ok(Set("tenant:acmf/a", b"1"))  # outside the prefix, right after it
    expected = sorted(MULTIBYTE, key=lambda k: k.encode("utf-8"))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = plain(sm.list("tenant:acme/", 2, cursor, T0))
        assert page["revision"] == sm.revision
        assert len(page["entries"]) <= 2
        seen += [e["key"] for e in page["entries"]]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == expected
    assert pages == 5
    whole = plain(sm.list("tenant:acme/", 100, None, T0))
    assert [e["key"] for e in whole["entries"]] == expected and whole["next"] is None


def test_list_page_that_ends_exactly_at_the_end_has_no_next(log: Log, sm: StateMachine) -> None:
    for i in range(4):
        log.ok(Set(f"tenant:acme/k{i}", b"1"))
    page = plain(sm.list("tenant:acme/", 4, None, T0))
    assert len(page["entries"]) == 4 and page["next"] is None


def test_list_prefix_ending_in_multibyte_characters(log: Log, sm: StateMachine) -> None:
    for key in ("tenant:acme/日", "tenant:acme/日本", "tenant:acme/日x", "tenant:acme/旦"):
        log.ok(Set(key, b"1"))
    keys = [e["key"] for e in plain(sm.list("tenant:acme/日", 10, None, T0))["entries"]]
    assert keys == ["tenant:acme/日", "tenant:acme/日x", "tenant:acme/日本"]


def test_list_hides_deleted_entries(log: Log, sm: StateMachine) -> None:
    log.ok(Set("tenant:acme/a", b"1"))
    log.ok(Set("tenant:acme/b", b"1"))
    log.ok(Delete("tenant:acme/a"))
    page = plain(sm.list("tenant:acme/", 10, None, T0))
    assert [e["key"] for e in page["entries"]] == ["tenant:acme/b"]


def test_list_rejects_bad_arguments(log: Log, sm: StateMachine) -> None:
    log.ok(Set("tenant:acme/a", b"1"))
    log.ok(Set("tenant:acme/b", b"1"))
    cursor = plain(sm.list("tenant:acme/", 1, None, T0))["next"]
    assert cursor is not None
    with pytest.raises(InvalidKey):
        plain(sm.list("tenant:acme", 10, None, T0))
    with pytest.raises(InvalidRequest):
        plain(sm.list("tenant:acme/", 0, None, T0))
    with pytest.raises(InvalidRequest, match="cursor"):
        plain(sm.list("tenant:acme/", 10, "!!not base64!!", T0))
    with pytest.raises(InvalidRequest, match="cursor"):
        plain(sm.list("tenant:other/", 10, cursor, T0))
    with pytest.raises(InvalidRequest, match="cursor"):
        plain(sm.list("tenant:acme/", 10, 12, T0))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        ("tenant:a/", "tenant:a0"),
        ("tenant:a/\ud7ff", "tenant:a/\ue000"),
        ("tenant:a/x\U0010ffff", "tenant:a/y"),
        ("tenant:a/x\U0010ffff\U0010ffff", "tenant:a/y"),
    ],
)
def test_prefix_end(prefix: str, end: str) -> None:
    assert prefix_end(prefix) == end


# -- changes ---------------------------------------------------------------------


def test_changes_since_in_revision_order(log: Log, sm: StateMachine) -> None:
    log.ok(Set("tenant:acme/a", b"1"), ts=T0 + 1)
    log.ok(Set("tenant:other/a", b"1"), ts=T0 + 2)
    log.ok(Delete("tenant:acme/a"), ts=T0 + 3)
    log.ok(Set("tenant:acme/b", b"2"), ts=T0 + 4)
    assert plain(sm.changes("tenant:acme/", 0)) == {
        "changes": [
            {
                "type": "set",
                "key": "tenant:acme/a",
                "value": b"1",
                "version": 1,
                "revision": 1,
                "timestamp": T0 + 1,
            },
            {
                "type": "delete",
                "key": "tenant:acme/a",
                "version": 1,
                "revision": 3,
                "timestamp": T0 + 3,
            },
            {
                "type": "set",
                "key": "tenant:acme/b",
                "value": b"2",
                "version": 1,
                "revision": 4,
                "timestamp": T0 + 4,
            },
        ],
        "revision": 4,
    }
    assert [c["revision"] for c in plain(sm.changes("tenant:acme/", 1))["changes"]] == [3, 4]
    assert plain(sm.changes("tenant:acme/", 4)) == {"changes": [], "revision": 4}
    # a caller that already saw a later revision elsewhere is not sent back
    assert plain(sm.changes("tenant:acme/", 9)) == {"changes": [], "revision": 9}


def test_changes_limit_pages_never_split_a_revision(log: Log, sm: StateMachine) -> None:
    log.ok(Set("tenant:acme/a", b"1"))  # rev 1
    log.ok(Batch(tuple(Set(f"tenant:acme/b{i}", b"1") for i in range(3))))  # rev 2 x3
    log.ok(Set("tenant:acme/c", b"1"))  # rev 3
    page = plain(sm.changes("tenant:acme/", 0, limit=2))
    assert [c["revision"] for c in page["changes"]] == [1]
    assert page["revision"] == 1
    page = plain(sm.changes("tenant:acme/", 1, limit=2))  # revision 2 alone exceeds the limit
    assert [c["key"] for c in page["changes"]] == [f"tenant:acme/b{i}" for i in range(3)]
    assert page["revision"] == 2
    page = plain(sm.changes("tenant:acme/", 2, limit=1))
    assert [c["revision"] for c in page["changes"]] == [3]
    assert page["revision"] == 3  # complete: the current revision
    # paging with a small limit gathers exactly the full history
    seen, since = [], 0
    while since < sm.revision:
        page = plain(sm.changes("tenant:acme/", since, limit=1))
        seen += page["changes"]
        since = page["revision"]
    assert seen == plain(sm.changes("tenant:acme/", 0))["changes"]


def test_pages_of_large_values_end_at_page_bytes_before_the_limit(
    log: Log, sm: StateMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of large values stops at ``PAGE_BYTES`` (a list at an entry, a change
    page at a revision's end) whatever ``limit`` allows, holds at least one entry
    or one whole revision, and paging still gathers everything exactly once."""
    monkeypatch.setattr(db, "PAGE_BYTES", 100)
    value = b'"' + b"x" * 38 + b'"'  # 40 bytes; with its 13-byte key, 53 a row
    for i in range(5):
        log.ok(Set(f"tenant:acme/k{i}", value))  # revisions 1-5
    log.ok(Batch(tuple(Set(f"tenant:acme/b{i}", value) for i in range(3))))  # rev 6 x3
    log.ok(Set("tenant:acme/z", value))  # revision 7

    page = plain(sm.list("tenant:acme/", 1000, None, T0))
    assert len(page["entries"]) == 2 and page["next"] is not None  # 106 >= 100 bytes
    keys, cursor = [], None
    while True:
        page = plain(sm.list("tenant:acme/", 1000, cursor, T0))
        keys += [e["key"] for e in page["entries"]]
        if (cursor := page["next"]) is None:
            break
    names = ["k0", "k1", "k2", "k3", "k4", "b0", "b1", "b2", "z"]
    assert keys == sorted(f"tenant:acme/{k}" for k in names)

    page = plain(sm.changes("tenant:acme/", 0, limit=1000))
    assert [c["revision"] for c in page["changes"]] == [1, 2] and page["revision"] == 2
    page = plain(sm.changes("tenant:acme/", 5, limit=1000))  # the batch: whole, 159 bytes
    assert [c["revision"] for c in page["changes"]] == [6, 6, 6] and page["revision"] == 6
    seen, since = [], 0
    while True:
        page = plain(sm.changes("tenant:acme/", since, limit=1000))
        seen += page["changes"]
        since = page["revision"]
        if not page["changes"] or since > page["changes"][-1]["revision"]:
            break  # complete: the answer reaches past its last event
    assert [c["revision"] for c in seen] == [1, 2, 3, 4, 5, 6, 6, 6, 7]
    monkeypatch.setattr(db, "PAGE_BYTES", 1 << 30)
    assert seen == plain(sm.changes("tenant:acme/", 0))["changes"]


def test_changes_of_every_key_with_the_empty_prefix(log: Log, sm: StateMachine) -> None:
    """``""``: the front's one read that repairs a lost batch for all its watches."""
    log.ok(Set("tenant:acme/a", b"1"))
    log.ok(Batch((Set("tenant:other/a", b"1"), Set("tenant:z/a", b"1"))))
    log.ok(Set("tenant:acme/b", b"1"))
    page = plain(sm.changes("", 0, limit=2))
    assert [c["key"] for c in page["changes"]] == ["tenant:acme/a"]  # revision 2 not split
    page = plain(sm.changes("", page["revision"]))
    assert [(c["revision"], c["key"]) for c in page["changes"]] == [
        (2, "tenant:other/a"), (2, "tenant:z/a"), (3, "tenant:acme/b"),
    ]  # fmt: skip
    assert page["revision"] == 3


def test_changes_beyond_retention_are_compacted(tmp_path: Path) -> None:
    sm = StateMachine(tmp_path / "state.db", retention=10)
    log = Log(sm)
    for i in range(40):
        log.ok(Set(f"tenant:acme/k{i % 3}", str(i).encode()))
    assert sm.revision == 40
    oldest = sm.oldest_revision
    assert 31 - 10 // 16 <= oldest <= 31  # at least the last 10 revisions are kept
    with pytest.raises(Compacted) as info:
        plain(sm.changes("tenant:acme/", oldest - 2))
    assert info.value.extra == {"oldest": oldest}
    assert info.value.http_status == 410
    answer = plain(sm.changes("tenant:acme/", oldest - 1))
    assert [c["revision"] for c in answer["changes"]] == list(range(oldest, 41))
    # the compaction point survives a restart
    sm.close()
    sm = StateMachine(tmp_path / "state.db", retention=10)
    assert sm.oldest_revision == oldest
    sm.close()


def test_changes_rejects_bad_arguments(sm: StateMachine) -> None:
    with pytest.raises(InvalidRequest):
        plain(sm.changes("tenant:acme/", -1))
    with pytest.raises(InvalidRequest):
        plain(sm.changes("tenant:acme/", 0, limit=0))
    with pytest.raises(InvalidKey):
        plain(sm.changes("tenant:", 0))


def test_revisions_are_contiguous_across_command_kinds(log: Log, sm: StateMachine) -> None:
    log.ok(Set("tenant:acme/a", b"1"))
    log.run(Set("tenant:acme/a", b"1", if_version=9))  # fails: no revision
    log.ok(Batch((Set("tenant:acme/b", b"1"), Set("tenant:acme/c", b"1"))))
    log.ok(DeletePrefix("tenant:acme/"))
    log.ok(Set("tenant:acme/a", b"2"))
    revisions = sorted({c["revision"] for c in plain(sm.changes("tenant:acme/", 0))["changes"]})
    assert revisions == [1, 2, 3, 4] == list(range(1, sm.revision + 1))
