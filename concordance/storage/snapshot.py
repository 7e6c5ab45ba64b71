"""Snapshot files of state.db: take, vet, install, and a digest for convergence checks.

A snapshot is a whole state.db copied with SQLite's online backup API, in
rollback-journal mode so that it is one self-contained file that consensus
can store, chunk and send. Installing one replaces state.db atomically: the
live connection is checkpointed and closed first (a stale ``-wal`` file next
to a replaced database would be replayed into it), the snapshot is copied and
fsynced beside state.db, then renamed over it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import msgpack  # type: ignore[import-untyped]

from concordance.durable import fsync_dir, fsync_path
from concordance.errors import RemoteProtocolError
from concordance.storage.schema import is_state_db

__all__ = ["digest", "install", "vet", "write"]


def write(conn: sqlite3.Connection, path: str | os.PathLike[str]) -> None:
    """Write a consistent copy of ``conn``'s database to ``path`` (durable on return).

    ``conn`` must not be inside a transaction.
    """
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    _unlink(tmp)
    dest = sqlite3.connect(tmp)
    try:
        conn.backup(dest)
        dest.execute("PRAGMA journal_mode=DELETE")
    finally:
        dest.close()
    fsync_path(tmp)
    os.replace(tmp, target)
    fsync_dir(target.parent, best_effort=True)


def vet(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(applied_index, applied_term)`` of a snapshot file, after checking it is one.

    Raises:
        RemoteProtocolError: the file is not a state.db of this schema version.
    """
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as e:
        raise RemoteProtocolError(f"snapshot {path} does not open: {e}") from e
    try:
        if not is_state_db(conn):
            raise RemoteProtocolError(f"snapshot {path} is not a state.db")
        if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
            raise RemoteProtocolError(f"snapshot {path} is corrupt")
        index, term = conn.execute("SELECT applied_index, applied_term FROM meta").fetchone()
        return int(index), int(term)
    except sqlite3.DatabaseError as e:
        raise RemoteProtocolError(f"snapshot {path} is unreadable: {e}") from e
    finally:
        conn.close()


def install(snapshot: str | os.PathLike[str], db_path: str | os.PathLike[str]) -> None:
    """Replace the (closed) database at ``db_path`` with a copy of ``snapshot``.

    The caller has checkpointed and closed every connection to ``db_path``.
    """
    target = Path(db_path)
    tmp = target.with_name(target.name + ".restore")
    shutil.copyfile(snapshot, tmp)
    fsync_path(tmp)
    for suffix in ("-wal", "-shm"):
        _unlink(target.with_name(target.name + suffix))
    os.replace(tmp, target)
    fsync_dir(target.parent, best_effort=True)


def digest(conn: sqlite3.Connection) -> str:
    """SHA-256 (hex) over every live entry in key order, expired-but-not-yet-deleted included.

    Two nodes at the same applied index have the same digest; it does not
    depend on the clock or on how much change history each node kept.
    """
    h = hashlib.sha256()
    rows = conn.execute(
        "SELECT k.key, c.value, k.version, k.revision, k.created_at, k.updated_at,"
        " k.expires_at FROM kv k LEFT JOIN changes c ON c.id = k.change_id"
        " WHERE k.deleted = 0 ORDER BY k.key"
    )
    for row in rows:
        h.update(msgpack.packb(row, use_bin_type=True))
    return h.hexdigest()


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
