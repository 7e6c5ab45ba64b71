"""The TTL scan: which entries are past ``expiresAt`` and still in state.db.

Reads hide an expired entry at once on every node (``db.is_live``); the
deletion itself must go through the Raft log so that every node emits the
same ``expire`` change at the same revision. So the leader's storage asks
:func:`expired` now and then and proposes the :class:`Expire` commands it
returns. Each is conditional on the version and expiry it saw, so a stale scan
or a duplicate proposal changes nothing.
"""

from __future__ import annotations

import sqlite3

from concordance.protocol.commands import Expire

__all__ = ["expired", "next_expiry"]


def expired(conn: sqlite3.Connection, now_ms: int, limit: int) -> list[Expire]:
    """Up to ``limit`` entries expired at ``now_ms``, earliest expiry first."""
    rows = conn.execute(
        "SELECT key, version, expires_at FROM kv"
        " WHERE expires_at IS NOT NULL AND expires_at <= ? AND deleted = 0"
        " ORDER BY expires_at, key LIMIT ?",
        (now_ms, limit),
    ).fetchall()
    return [Expire(key, version, expires_at) for key, version, expires_at in rows]


def next_expiry(conn: sqlite3.Connection) -> int | None:
    """The earliest ``expiresAt`` of any entry, so the scanner can sleep until then."""
    row = conn.execute(
        "SELECT min(expires_at) FROM kv WHERE expires_at IS NOT NULL AND deleted = 0"
    ).fetchone()
    return None if row is None else row[0]
