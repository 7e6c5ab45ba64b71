"""state.db of schema 1 (WITHOUT ROWID tables, values in kv and changes) opens as schema 2."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from concordance.errors import Compacted
from concordance.protocol.commands import Command, Set
from concordance.storage.fsm import StateMachine
from concordance.storage.schema import SCHEMA_VERSION
from tests.unit.shapes import error_of, plain, result_of

# The schema 1 layout exactly as the first release wrote it.
V1_DDL = """
CREATE TABLE kv (
    key TEXT PRIMARY KEY, value BLOB, version INTEGER NOT NULL, revision INTEGER NOT NULL,
    created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, expires_at INTEGER,
    deleted INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE changes (
    revision INTEGER NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, key TEXT NOT NULL,
    value BLOB, version INTEGER NOT NULL, timestamp INTEGER NOT NULL,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 0), applied_index INTEGER NOT NULL,
    applied_term INTEGER NOT NULL, revision INTEGER NOT NULL, compacted INTEGER NOT NULL
);
PRAGMA user_version = 1;
"""
T = 1_764_230_400_000
FAR = T + 10**9
# key, value, version, revision, created_at, updated_at, expires_at, deleted
KV = [
    ("tenant:x/a", b'"A"', 1, 1, T + 1, T + 1, None, 0),  # its set row is compacted
    ("tenant:x/b", b'"B2"', 2, 3, T + 3, T + 3, None, 0),  # set twice in one batch
    ("tenant:x/c", None, 1, 4, T + 2, T + 4, None, 1),  # a tombstone
    ("tenant:x/d", b'"D"', 1, 5, T + 5, T + 5, FAR, 0),  # with an expiry
    ("tenant:x/e", b'"E"', 1, 2, T + 2, T + 2, None, 0),  # two keys of a compacted batch
    ("tenant:x/f", b'"F"', 1, 2, T + 2, T + 2, None, 0),
    ("tenant:x/g", b'"G"', 1, 6, T + 6, T + 6, None, 0),
]
# revision, seq, type, key, value, version, timestamp (revisions 1-2 compacted)
CHANGES = [
    (3, 0, "set", "tenant:x/b", b'"B1"', 1, T + 3),
    (3, 1, "set", "tenant:x/b", b'"B2"', 2, T + 3),
    (4, 0, "delete", "tenant:x/c", None, 1, T + 4),
    (5, 0, "set", "tenant:x/d", b'"D"', 1, T + 5),
    (6, 0, "set", "tenant:x/g", b'"G"', 1, T + 6),
]


def make_v1(path: Path, kv: list[Any] = KV, changes: list[Any] = CHANGES) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(V1_DDL)
    conn.executemany("INSERT INTO kv VALUES (?, ?, ?, ?, ?, ?, ?, ?)", kv)
    conn.executemany("INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?, ?)", changes)
    conn.execute("INSERT INTO meta VALUES (0, 12, 2, 6, 2)")
    conn.commit()
    conn.close()


def v1_digest(path: Path) -> str:
    """The digest schema 1 computed: every live row in key order."""
    conn = sqlite3.connect(path)
    h = hashlib.sha256()
    for row in conn.execute(
        "SELECT key, value, version, revision, created_at, updated_at, expires_at"
        " FROM kv WHERE deleted = 0 ORDER BY key"
    ):
        h.update(msgpack.packb(row, use_bin_type=True))
    conn.close()
    return h.hexdigest()


def version_of(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_a_schema_1_file_keeps_every_key_version_revision_and_change(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make_v1(path)
    before = v1_digest(path)
    with StateMachine(path) as sm:
        assert version_of(path) == SCHEMA_VERSION == 2
        assert (sm.applied_index, sm.applied_term, sm.revision, sm.oldest_revision) == (12, 2, 6, 3)
        assert sm.digest() == before
        for key, value, version, revision, created, updated, expires, deleted in KV:
            entry = plain(sm.get(key, T + 100))
            if deleted:
                assert entry is None
                continue
            assert entry == {
                "key": key,
                "value": value,
                "version": version,
                "revision": revision,
                "createdAt": created,
                "updatedAt": updated,
                "expiresAt": expires,
            }
        events = plain(sm.changes("tenant:x/", 2))["changes"]
        assert [
            (e["revision"], e["type"], e["key"], e.get("value"), e["version"]) for e in events
        ] == [
            (r, kind, key, value if kind == "set" else None, version)
            for r, _, kind, key, value, version, _ in CHANGES
        ]
        with pytest.raises(Compacted) as info:
            plain(sm.changes("tenant:x/", 1))
        assert info.value.to_dict()["oldest"] == 3
        assert sm.history_bytes == sum(len(c[3]) + len(c[4] or b"") for c in CHANGES)


def test_the_migration_runs_once_and_the_file_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    make_v1(path)
    with StateMachine(path) as sm:
        digest = sm.digest()
    with StateMachine(path) as sm:  # a second open is a no-op
        assert sm.digest() == digest
        # tenant:x/a's value row sat below the history horizon; overwriting it drops it.
        [applied] = sm.apply(
            [(13, 2, Command("n1", 1, T + 7, Set("tenant:x/a", b'"A2"')).encode())]
        )
        assert error_of(applied) is None
        assert result_of(applied)["version"] == 2 and result_of(applied)["revision"] == 7
        assert plain(sm.get("tenant:x/a", T + 100))["value"] == b'"A2"'
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM changes WHERE key = 'tenant:x/a'").fetchall() == [
        (b'"A2"',)
    ]
    conn.close()


def test_a_schema_1_file_that_does_not_add_up_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.db"
    # t/g is live at revision 6 (not compacted) but its set row is missing.
    make_v1(path, changes=CHANGES[:-1])
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="no value row"):
        StateMachine(path)
    assert version_of(path) == 1  # the transaction rolled back: still schema 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM kv").fetchone() == (len(KV),)
    assert {r[0] for r in conn.execute("SELECT name FROM sqlite_schema")} >= {
        "kv",
        "changes",
        "meta",
    }
    conn.close()
    assert len(path.read_bytes()) == len(before)
