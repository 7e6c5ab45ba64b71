"""Expiry: hidden at once on reads, deleted through conditional Expire commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from concordance.errors import VersionConflict
from concordance.protocol.commands import (
    Batch,
    Check,
    Command,
    Delete,
    DeletePrefix,
    Expire,
    Op,
    Set,
)
from concordance.storage.fsm import Applied, StateMachine
from tests.unit.shapes import error_of, plain, result_of

K = "tenant:acme/sessions/s1"
T0 = 1_764_230_400_000
EXP = T0 + 30_000


class Log:
    """Feeds commands to a state machine as consecutive committed entries."""

    def __init__(self, sm: StateMachine) -> None:
        self.sm = sm
        self.index = sm.applied_index

    def run(self, op: Op, ts: int = T0) -> Applied:
        self.index += 1
        data = Command("n1", self.index, ts, op).encode()
        [applied] = self.sm.apply([(self.index, 1, data)])
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


def test_an_entry_is_hidden_from_its_expiry_on(log: Log, sm: StateMachine) -> None:
    entry = log.ok(Set(K, b"1", expires_at=EXP))
    assert entry["expiresAt"] == EXP
    assert plain(sm.get(K, EXP - 1)) == entry
    assert [e["key"] for e in plain(sm.list("tenant:acme/", 10, None, EXP - 1))["entries"]] == [K]
    assert plain(sm.get(K, EXP)) is None
    assert plain(sm.get(K, EXP + 1)) is None
    assert plain(sm.list("tenant:acme/", 10, None, EXP))["entries"] == []


def test_expired_lists_due_entries_as_expire_ops(log: Log, sm: StateMachine) -> None:
    log.ok(Set("tenant:acme/late", b"1", expires_at=EXP + 10))
    log.ok(Set("tenant:acme/b", b"1", expires_at=EXP))
    log.ok(Set("tenant:acme/a", b"1", expires_at=EXP))
    log.ok(Set("tenant:acme/a", b"2", expires_at=EXP))  # version 2
    log.ok(Set("tenant:acme/forever", b"1"))
    log.ok(Set("tenant:acme/gone", b"1", expires_at=EXP))
    log.ok(Delete("tenant:acme/gone"))
    assert sm.expired(EXP - 1) == []
    assert sm.expired(EXP) == [Expire("tenant:acme/a", 2, EXP), Expire("tenant:acme/b", 1, EXP)]
    assert sm.expired(EXP + 10, limit=2) == [
        Expire("tenant:acme/a", 2, EXP),
        Expire("tenant:acme/b", 1, EXP),
    ]
    assert len(sm.expired(EXP + 10)) == 3
    assert sm.next_expiry() == EXP


def test_next_expiry_is_none_without_expiring_entries(log: Log, sm: StateMachine) -> None:
    assert sm.next_expiry() is None
    log.ok(Set(K, b"1", expires_at=EXP))
    log.ok(Set(K, b"1"))
    assert sm.next_expiry() is None


def test_expire_deletes_with_an_expire_event(log: Log, sm: StateMachine) -> None:
    log.ok(Set(K, b"1"))
    log.ok(Set(K, b"2", expires_at=EXP))
    [op] = sm.expired(EXP + 5)
    applied = log.run(op, ts=EXP + 7)
    assert result_of(applied) == {"key": K, "expired": True, "version": 2, "revision": 3}
    assert plain(applied.events) == (
        {"type": "expire", "key": K, "version": 2, "revision": 3, "timestamp": EXP + 7},
    )
    assert plain(sm.changes("tenant:acme/", 2))["changes"] == list(plain(applied.events))
    assert sm.expired(EXP + 5) == [] and sm.next_expiry() is None
    assert plain(sm.get(K, T0)) is None  # gone at any time now
    # the tombstone keeps the version
    assert log.ok(Set(K, b"3"), ts=EXP + 9)["version"] == 3


def test_stale_or_duplicate_expire_changes_nothing(log: Log, sm: StateMachine) -> None:
    log.ok(Set(K, b"1", expires_at=EXP))
    [op] = sm.expired(EXP)
    renewed = log.ok(Set(K, b"2", expires_at=EXP + 60_000), ts=EXP - 1)  # renewed in time
    revision = sm.revision
    applied = log.run(op, ts=EXP + 1)
    with pytest.raises(VersionConflict) as info:
        applied.unwrap()
    assert plain(info.value.extra) == {"current": renewed}
    assert sm.revision == revision and plain(sm.get(K, EXP + 1)) == renewed
    # same version but another expiry: not the entry that was found expired
    assert error_of(log.run(Expire(K, 2, EXP))) is not None
    # a duplicate proposal after a successful expire
    good = Expire(K, 2, EXP + 60_000)
    assert error_of(log.run(good, ts=EXP + 60_000)) is None
    assert error_of(log.run(good, ts=EXP + 60_001))["code"] == "version_conflict"  # type: ignore[index]
    assert error_of(log.run(Expire("tenant:acme/never", 1, EXP))) is not None
    assert sm.revision == revision + 1


def test_a_write_without_expiry_clears_it(log: Log, sm: StateMachine) -> None:
    log.ok(Set(K, b"1", expires_at=EXP))
    entry = log.ok(Set(K, b"2"))
    assert entry["expiresAt"] is None
    assert plain(sm.get(K, EXP + 10**9)) == entry
    assert sm.expired(EXP + 10**9) == []


def test_a_write_can_move_the_expiry(log: Log, sm: StateMachine) -> None:
    log.ok(Set(K, b"1"))
    log.ok(Set(K, b"2", expires_at=EXP))
    assert plain(sm.get(K, EXP)) is None
    log.ok(Set(K, b"3", expires_at=EXP + 100), ts=T0 + 1)
    assert plain(sm.get(K, EXP))["value"] == b"3"  # type: ignore[index]


def test_commands_judge_expiry_at_their_own_timestamp(log: Log, sm: StateMachine) -> None:
    log.ok(Set(K, b"1", expires_at=EXP))
    # before the expiry (by the proposer's clock) the key exists
    assert error_of(log.run(Set(K, b"x", if_version=0), ts=EXP - 1)) is not None
    # from the expiry on it is absent: "only if absent" succeeds, the version goes on,
    # and a new life begins
    entry = log.ok(Set(K, b"2", if_version=0), ts=EXP)
    assert (entry["version"], entry["createdAt"], entry["expiresAt"]) == (2, EXP, None)


def test_an_expired_key_cannot_be_deleted_or_matched(log: Log, sm: StateMachine) -> None:
    log.ok(Set(K, b"1", expires_at=EXP))
    assert error_of(log.run(Delete(K), ts=EXP))["code"] == "not_found"  # type: ignore[index]
    assert error_of(log.run(Set(K, b"2", if_version=1), ts=EXP))["current"] is None  # type: ignore[index]
    assert log.ok(Batch((Check(K, 0),)), ts=EXP)["results"] == [None]
    # the Expire command still removes it, with its event
    assert log.ok(Expire(K, 1, EXP), ts=EXP)["expired"] is True


def test_delete_prefix_leaves_expired_entries_to_expire(log: Log, sm: StateMachine) -> None:
    log.ok(Set("tenant:acme/a", b"1", expires_at=EXP))
    log.ok(Set("tenant:acme/b", b"1"))
    assert log.ok(DeletePrefix("tenant:acme/"), ts=EXP) == {"deleted": 1, "revision": 3}
    assert sm.expired(EXP) == [Expire("tenant:acme/a", 1, EXP)]


def test_extreme_expiry_values_are_stored(log: Log, sm: StateMachine) -> None:
    far = 2**63 - 1
    assert log.ok(Set(K, b"1", expires_at=far))["expiresAt"] == far
    assert plain(sm.get(K, far - 1)) is not None and plain(sm.get(K, far)) is None
    assert log.ok(Set("tenant:acme/past", b"1", expires_at=-(2**63)))["version"] == 1
    assert plain(sm.get("tenant:acme/past", T0)) is None
    assert sm.expired(T0) == [Expire("tenant:acme/past", 1, -(2**63))]
