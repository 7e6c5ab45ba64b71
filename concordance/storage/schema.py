"""The layout of state.db and how its one connection is opened.

Durability: state.db runs in WAL mode with ``synchronous=NORMAL``, so a
power cut may lose the last few committed transactions (never corrupt the
file). That is safe because state.db is not the durable source of truth, the
Raft log in raft.db (``synchronous=FULL``) is: ``applied_index`` is committed
in the same transaction as the changes it covers, so after a crash storage
reports an index that matches its data exactly, and consensus re-sends every
committed entry after it. Consensus cuts its log only behind an index storage
reported after a checkpoint (``durability.py``), which fsyncs the WAL, so the
entries a power cut may take from state.db are always still in the log.

Tables (schema version 2; ``PRAGMA user_version`` holds the version, and
:mod:`concordance.storage.migrate` upgrades an older file on open):

* ``changes``: the change log, one row per event, in a rowid table so that a
  ~1 KiB value is stored inline (3 to a 4 KiB page) rather than on an
  overflow page of its own, as an index b-tree would (WITHOUT ROWID tables
  spill anything over ~1 KiB). ``(revision, seq)`` is unique: an atomic batch
  shares a revision and numbers its events with ``seq``. A ``set`` row holds
  the value; that row is also where the key's current value lives, so every
  value is stored once (as etcd keeps one copy per revision).
* ``kv``: one small row per key ever written, no value: ``change_id`` points
  to the ``changes`` row of the key's last ``set`` (NULL for a tombstone). A
  deleted key stays as a tombstone (``deleted = 1``) so its version survives
  and a re-created key continues at version + 1 (API.md §2). Keys are TEXT
  with the BINARY collation, which orders by UTF-8 bytes, the order API.md
  promises for lists.
* ``meta``: a single row: ``applied_index``/``applied_term`` of the last
  applied Raft entry, the current ``revision``, ``compacted`` (the highest
  revision whose history is gone; 0 = full history) and ``history_bytes``
  (key + value bytes of the change rows above ``compacted``).

History below ``compacted`` is pruned except the ``set`` rows some key still
points to (its current value); those are never served as history, and the
write that supersedes one deletes it.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Final

__all__ = [
    "KNOWN_VERSIONS",
    "SCHEMA_VERSION",
    "connect",
    "create_tables",
    "ensure_schema",
    "is_state_db",
]

SCHEMA_VERSION: Final = 2
PAGE_SIZE: Final = 8192
KNOWN_VERSIONS: Final = frozenset({1, 2})  # what ensure_schema can open (migrating to 2)

DDL: Final = """
CREATE TABLE changes (
    id        INTEGER PRIMARY KEY,
    revision  INTEGER NOT NULL,
    seq       INTEGER NOT NULL,
    type      TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     BLOB,
    version   INTEGER NOT NULL,
    timestamp INTEGER NOT NULL
);
CREATE UNIQUE INDEX changes_revision ON changes (revision, seq);
CREATE TABLE kv (
    key        TEXT PRIMARY KEY,
    change_id  INTEGER,
    version    INTEGER NOT NULL,
    revision   INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER,
    deleted    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX kv_expires_at ON kv (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE meta (
    id            INTEGER PRIMARY KEY CHECK (id = 0),
    applied_index INTEGER NOT NULL,
    applied_term  INTEGER NOT NULL,
    revision      INTEGER NOT NULL,
    compacted     INTEGER NOT NULL,
    history_bytes INTEGER NOT NULL
)
"""


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """Open state.db (creating or migrating it if needed) as the storage role's one connection.

    Autocommit mode: the state machine issues BEGIN/COMMIT itself so that one
    Raft batch is exactly one transaction. ``check_same_thread`` is off so the
    actor may live on a dedicated thread; callers still use it one at a time.
    """
    conn = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
    # Only a new file takes this (an existing one keeps its page size): 8 KiB pages
    # hold seven ~1 KiB change rows where 4 KiB pages hold three (25% unused).
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute("PRAGMA cache_size=-16000")  # 16 MiB
    try:
        ensure_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def create_tables(conn: sqlite3.Connection) -> None:
    """Run the current DDL (inside the caller's transaction)."""
    for statement in DDL.split(";"):
        if statement.strip():
            conn.execute(statement)


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the tables in an empty database, migrate an older one; refuse anything else.

    Raises:
        RuntimeError: a foreign database or a newer schema version.
    """
    from concordance.storage import migrate  # migrate imports this module

    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    empty = not conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
    if version == 0 and empty:
        conn.execute("BEGIN IMMEDIATE")
        try:
            create_tables(conn)
            conn.execute("INSERT INTO meta VALUES (0, 0, 0, 0, 0, 0)")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return
    if version in KNOWN_VERSIONS:
        migrate.upgrade(conn)
        return
    raise RuntimeError(
        f"state.db has schema version {version}, expected {SCHEMA_VERSION}"
        " (written by a newer Concordance, or not a state.db)"
    )


def is_state_db(conn: sqlite3.Connection) -> bool:
    """True if ``conn`` holds a state.db this version can open (used to vet snapshots).

    An older schema version counts: it is migrated when it is opened.
    """
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] not in KNOWN_VERSIONS:
            return False
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema")}
        if not {"kv", "changes", "meta"} <= tables:
            return False
        return bool(conn.execute("SELECT count(*) FROM meta WHERE id = 0").fetchone()[0] == 1)
    except sqlite3.DatabaseError:
        return False
