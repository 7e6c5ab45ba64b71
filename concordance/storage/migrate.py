"""Upgrade an older state.db to the current schema, in place, on open.

Rules:

* One transaction per upgrade: the new tables are built from the old ones,
  the old ones dropped and ``user_version`` set in the same commit, so a
  crash at any point leaves either the old file or the new one, never a mix;
  running it again after a crash simply starts over. A file already at the
  current version is left alone (idempotent).
* Nothing is lost: every key with its version, revision, timestamps, expiry
  and tombstone, every change row still held, and the meta row
  (``applied_index``/``applied_term``/``revision``/``compacted``) carry over;
  digests (``snapshot.digest``) before and after are equal.
* After the commit the freed pages are given back to the file system
  (``VACUUM``) when they are most of the file: a one-off cost at the first
  start after an upgrade, so the smaller layout shows on disk at once.

Version 1 -> 2: ``kv`` and ``changes`` were WITHOUT ROWID tables holding the
value in both; 2 keeps each value once, in a rowid ``changes`` table, and
``kv`` points to it (see :mod:`concordance.storage.schema`). A live key whose
``set`` row was already pruned from history gets one back, at its own
revision (below ``compacted``, so it is never served as history).
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Final

from concordance.storage.schema import SCHEMA_VERSION, create_tables

__all__ = ["HISTORY_SIZE_SQL", "upgrade"]

log = logging.getLogger(__name__)

# What one change row costs the history, in bytes (key + value), as SQL; the
# state machine counts ``len(key.encode()) + len(value or b"")`` the same way.
HISTORY_SIZE_SQL: Final = "length(CAST(key AS BLOB)) + coalesce(length(value), 0)"

_V1_TO_V2: Final = (
    "DROP INDEX kv_expires_at",
    "ALTER TABLE kv RENAME TO kv_v1",
    "ALTER TABLE changes RENAME TO changes_v1",
    "ALTER TABLE meta RENAME TO meta_v1",
    None,  # create_tables
    "INSERT INTO changes (revision, seq, type, key, value, version, timestamp)"
    " SELECT revision, seq, type, key, value, version, timestamp FROM changes_v1"
    " ORDER BY revision, seq",
    # Live keys whose set row history already dropped: their value needs a row.
    "INSERT INTO changes (revision, seq, type, key, value, version, timestamp)"
    " SELECT revision, row_number() OVER (PARTITION BY revision ORDER BY key) - 1,"
    " 'set', key, value, version, updated_at FROM kv_v1"
    " WHERE deleted = 0 AND revision <= (SELECT compacted FROM meta_v1)"
    " ORDER BY revision, key",
    "INSERT INTO kv SELECT k.key,"
    " CASE WHEN k.deleted THEN NULL ELSE (SELECT c.id FROM changes c"
    "  WHERE c.revision = k.revision AND c.key = k.key AND c.type = 'set'"
    "  ORDER BY c.seq DESC LIMIT 1) END,"
    " k.version, k.revision, k.created_at, k.updated_at, k.expires_at, k.deleted"
    " FROM kv_v1 k",
    "INSERT INTO meta SELECT id, applied_index, applied_term, revision, compacted,"
    f" (SELECT coalesce(sum({HISTORY_SIZE_SQL}), 0) FROM changes"
    "   WHERE revision > meta_v1.compacted)"
    " FROM meta_v1",
    "DROP TABLE kv_v1",
    "DROP TABLE changes_v1",
    "DROP TABLE meta_v1",
)


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring ``conn``'s database to ``SCHEMA_VERSION`` (no-op if it is there).

    ``conn`` is in autocommit mode and outside a transaction.

    Raises:
        RuntimeError: an unknown version, or a version 1 file whose rows do
            not add up (a live key without its value); nothing is changed.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            conn.execute("ROLLBACK")
            return
        if version != 1:
            raise RuntimeError(f"state.db schema version {version} cannot be migrated")
        log.info("state.db: migrating schema 1 -> %d", SCHEMA_VERSION)
        for statement in _V1_TO_V2:
            if statement is None:
                create_tables(conn)
            else:
                conn.execute(statement)
        orphans = conn.execute(
            "SELECT count(*) FROM kv WHERE deleted = 0 AND change_id IS NULL"
        ).fetchone()[0]
        if orphans:
            raise RuntimeError(f"state.db schema 1: {orphans} live keys have no value row")
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    _give_back_free_pages(conn)
    log.info("state.db: now at schema %d", SCHEMA_VERSION)


def _give_back_free_pages(conn: sqlite3.Connection) -> None:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    if free * 2 > pages:
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
