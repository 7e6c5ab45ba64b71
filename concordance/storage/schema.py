"""The layout of state.db and how its one connection is opened.

Durability: state.db runs in WAL mode with ``synchronous=NORMAL``, so a
power cut may lose the last few committed transactions (never corrupt the
file). That is safe because state.db is not the durable source of truth, the
Raft log in raft.db (``synchronous=FULL``) is: ``applied_index`` is committed
in the same transaction as the changes it covers, so after a crash storage
reports an index that matches its data exactly, and consensus re-sends every
committed entry after it, or installs a snapshot when state.db is behind the
log's first index.

Tables:

* ``kv``: one row per key ever written. A deleted key stays as a tombstone
  (``deleted = 1``, value NULL) so its version survives and a re-created key
  continues at version + 1 (API.md §2). Keys are TEXT with the BINARY
  collation, which orders by UTF-8 bytes, the order API.md promises for lists.
* ``changes``: the change log, one row per event, keyed by (revision, seq);
  an atomic batch shares a revision and numbers its events with ``seq``.
* ``meta``: a single row: ``applied_index``/``applied_term`` of the last
  applied Raft entry, the current ``revision``, and ``compacted``, the highest
  revision whose change rows may have been pruned (0 = full history).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Final

__all__ = ["SCHEMA_VERSION", "connect", "ensure_schema", "is_state_db"]

SCHEMA_VERSION: Final = 1

_DDL: Final = """
CREATE TABLE kv (
    key        TEXT PRIMARY KEY,
    value      BLOB,
    version    INTEGER NOT NULL,
    revision   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER,
    deleted    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE changes (
    revision  INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    type      TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     BLOB,
    version   INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    PRIMARY KEY (revision, seq)
) WITHOUT ROWID;
CREATE TABLE meta (
    id            INTEGER PRIMARY KEY CHECK (id = 0),
    applied_index INTEGER NOT NULL,
    applied_term  INTEGER NOT NULL,
    revision      INTEGER NOT NULL,
    compacted     INTEGER NOT NULL
);
INSERT INTO meta VALUES (0, 0, 0, 0, 0);
"""


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open state.db (creating it if needed) as the storage role's one connection.

    Autocommit mode: the state machine issues BEGIN/COMMIT itself so that one
    Raft batch is exactly one transaction. ``check_same_thread`` is off so the
    actor may live on a dedicated thread; callers still use it one at a time.
    """
    conn = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-16000")  # 16 MiB
    ensure_schema(conn)
    return conn


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables in an empty database; refuse a foreign or newer one."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version != 0 or conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]:
        raise RuntimeError(f"state.db has schema version {version}, expected {SCHEMA_VERSION}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _DDL.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def is_state_db(conn: sqlite3.Connection) -> bool:
    """True if ``conn`` holds a state.db of this schema version (used to vet snapshots)."""
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            return False
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema")}
        if not {"kv", "changes", "meta"} <= tables:
            return False
        return bool(conn.execute("SELECT count(*) FROM meta WHERE id = 0").fetchone()[0] == 1)
    except sqlite3.DatabaseError:
        return False
