"""Rows of state.db and the local reads over them (get, list, changes).

The storage process is a single-purpose actor: it calls SQLite synchronously
on one connection, for applies and reads alike, one call at a time. Nothing
here blocks an event loop because no event loop shares the process's work.

Shapes returned: the typed records of ``concordance.protocol.payloads`` (entries,
change events) and the read replies of ``wire`` (list and change pages);
``value`` is the value's JSON text as ``bytes``: storage never parses values,
and only the front renders the API's JSON (PROTOCOL.md §3.7).
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
from collections.abc import Collection
from typing import Any, Final, NamedTuple

from concordance.errors import Compacted, InvalidRequest
from concordance.protocol import wire
from concordance.protocol.kv_keys import validate_prefix
from concordance.protocol.payloads import Change, Entry, new_change, new_entry

__all__ = [
    "PAGE_BYTES",
    "ROW_COLUMNS",
    "Row",
    "decode_cursor",
    "encode_cursor",
    "entry_of",
    "get_entry",
    "is_live",
    "list_changes",
    "list_entries",
    "load_row",
    "load_rows",
    "prefix_end",
]

# Key and value bytes after which a list or change page ends (before ``limit``): a
# page of 1,000 values of 1 MiB would otherwise be one reply of a gigabyte, held
# whole by storage, ZeroMQ and the front at once. A page holds one entry, or one
# revision, whatever its size.
PAGE_BYTES: Final = 4 << 20

# A ``kv`` row with its value, which lives in the ``changes`` row it points to.
ROW_COLUMNS: Final = (
    "k.key, c.value, k.version, k.revision, k.created_at, k.updated_at, k.expires_at,"
    " k.deleted, k.change_id"
)
_ROWS_FROM: Final = f"SELECT {ROW_COLUMNS} FROM kv k LEFT JOIN changes c ON c.id = k.change_id"


class Row(NamedTuple):
    """One ``kv`` row and its value; a tombstone has ``deleted`` set, ``value`` and
    ``change_id`` (the ``changes`` row holding the value) None."""

    key: str
    value: bytes | None
    version: int
    revision: int
    created_at: int
    updated_at: int
    expires_at: int | None
    deleted: int
    change_id: int | None


def is_live(row: Row | None, now_ms: int) -> bool:
    """True if ``row`` is an entry a read at ``now_ms`` may return (not deleted, not expired).

    An entry is expired from ``expires_at`` on (``expires_at <= now_ms``).
    """
    return (
        row is not None and not row.deleted and (row.expires_at is None or row.expires_at > now_ms)
    )


def entry_of(row: Row) -> Entry:
    """The entry of a live row (its value is never None)."""
    return new_entry(
        row.key,
        row.value,  # type: ignore[arg-type]  # a live row has a value
        row.version,
        row.revision,
        row.created_at,
        row.updated_at,
        row.expires_at,
    )


def load_row(conn: sqlite3.Connection, key: str) -> Row | None:
    """The row of ``key``, tombstone or expired included, or None if never written."""
    raw = conn.execute(f"{_ROWS_FROM} WHERE k.key = ?", (key,)).fetchone()
    return None if raw is None else Row(*raw)


def load_rows(conn: sqlite3.Connection, keys: Collection[str]) -> dict[str, Row]:
    """The rows of those of ``keys`` ever written (tombstones and expired included), in one
    statement: a batch of 128 ops paid 128 statements for them (a fifth of its apply)."""
    marks = ",".join("?" * len(keys))
    rows = conn.execute(f"{_ROWS_FROM} WHERE k.key IN ({marks})", tuple(keys))
    return {raw[0]: Row(*raw) for raw in rows}


def get_entry(conn: sqlite3.Connection, key: str, now_ms: int) -> Entry | None:
    """The entry of ``key`` as a read at ``now_ms`` sees it, or None."""
    row = load_row(conn, key)
    return entry_of(row) if row is not None and is_live(row, now_ms) else None


def list_entries(
    conn: sqlite3.Connection,
    prefix: str,
    limit: int,
    cursor: str | None,
    now_ms: int,
    revision: int,
) -> wire.ListOk:
    """One page of live keys under ``prefix``, at ``revision``.

    Keys come in UTF-8 byte order. ``next`` is an opaque cursor to pass back
    for the following page, or None on the last page. A page holds ``limit``
    entries, or fewer once its keys and values reach ``PAGE_BYTES``.

    Raises:
        InvalidKey: bad prefix.
        InvalidRequest: bad limit or cursor.
    """
    validate_prefix(prefix)
    _check_positive("limit", limit)
    lower, op = prefix, ">="
    if cursor is not None:
        lower, op = decode_cursor(cursor, prefix), ">"
    rows = conn.execute(
        f"{_ROWS_FROM} WHERE k.key {op} ? AND k.key < ? AND k.deleted = 0"
        " AND (k.expires_at IS NULL OR k.expires_at > ?)"
        " ORDER BY k.key LIMIT ?",
        (lower, prefix_end(prefix), now_ms, limit + 1),
    )
    entries: list[Entry] = []
    size, more = 0, False
    for raw in rows:  # row by row: a page stops at PAGE_BYTES without reading further
        if len(entries) == limit or size >= PAGE_BYTES:
            more = True
            break
        row = Row(*raw)
        entries.append(entry_of(row))
        size += len(row.key) + len(row.value or b"")
    next_cursor = encode_cursor(entries[-1].key) if more else None
    return wire.ListOk(tuple(entries), next_cursor, revision)


def list_changes(
    conn: sqlite3.Connection,
    prefix: str,
    since: int,
    limit: int,
    revision: int,
    compacted: int,
) -> wire.ChangesOk:
    """The change events under ``prefix`` after revision ``since``, and up to where the
    answer is complete.

    ``prefix`` ``""`` means every key: the front's watch hub repairs a lost
    change batch for all its subscriptions with one such read (clients'
    prefixes are validated by the front, and are never empty).

    Events come in (revision, seq) order. The answer always holds whole
    revisions, so the returned ``revision`` (pass it as the next ``since``)
    never splits an atomic batch: a page that would end inside a revision
    stops before it, and a single revision bigger than ``limit`` is returned
    whole. A page also ends at the first revision boundary past ``PAGE_BYTES``
    of keys and values, so fewer than ``limit`` events do not mean the end: the
    answer is complete only when ``revision`` is past its last event.

    Raises:
        Compacted: ``since`` is older than the retained history (``oldest`` is
            the first revision still held, so ``since = oldest - 1`` works).
        InvalidKey / InvalidRequest: bad prefix, ``since`` or ``limit``.
    """
    if prefix:
        validate_prefix(prefix)
    _check_positive("limit", limit)
    if type(since) is not int or since < 0:
        raise InvalidRequest("since must be a non-negative integer")
    if since < compacted:
        raise Compacted(
            f"changes before revision {compacted + 1} were compacted", oldest=compacted + 1
        )
    end = prefix_end(prefix) if prefix else _ABOVE_EVERY_KEY
    cursor = conn.execute(
        "SELECT revision, type, key, value, version, timestamp FROM changes"
        " WHERE revision > ? AND key >= ? AND key < ? ORDER BY revision, seq LIMIT ?",
        (since, prefix, end, limit + 1),
    )
    rows: list[tuple[Any, ...]] = []
    size, stop = 0, None  # stop: the first revision not (wholly) in the page
    for raw in cursor:  # row by row: a page of large values ends at PAGE_BYTES
        if len(rows) == limit or (size >= PAGE_BYTES and raw[0] != rows[-1][0]):
            stop = raw[0]
            break
        rows.append(raw)
        size += len(raw[2]) + len(raw[3] or b"")
    if stop is None:
        return wire.ChangesOk(tuple([_event_of(r) for r in rows]), max(revision, since))
    kept = [r for r in rows if r[0] < stop]
    if not kept:  # one revision with more events than ``limit``: send it whole
        kept = conn.execute(
            "SELECT revision, type, key, value, version, timestamp FROM changes"
            " WHERE revision = ? AND key >= ? AND key < ? ORDER BY seq",
            (stop, prefix, end),
        ).fetchall()
    return wire.ChangesOk(tuple([_event_of(r) for r in kept]), kept[-1][0])


_ABOVE_EVERY_KEY: Final = "\U0010ffff"  # every key starts with "tenant:"


def prefix_end(prefix: str) -> str:
    """The smallest string greater than every string that starts with ``prefix``.

    ``key >= prefix AND key < prefix_end(prefix)`` is an index range scan.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code == 0xD800:  # surrogates are not UTF-8: U+D7FF is followed by U+E000
            code = 0xE000
        if code <= 0x10FFFF:
            return "".join(chars) + chr(code)
    raise ValueError("prefix has no upper bound")  # unreachable for valid prefixes


def encode_cursor(last_key: str) -> str:
    """An opaque cursor that resumes a list after ``last_key``."""
    return base64.urlsafe_b64encode(last_key.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str, prefix: str) -> str:
    """The key a cursor resumes after.

    Raises:
        InvalidRequest: the cursor is not one this prefix's listing produced.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
    except (binascii.Error, UnicodeError, ValueError, AttributeError, TypeError) as e:
        raise InvalidRequest("malformed cursor") from e
    if not key.startswith(prefix):
        raise InvalidRequest("cursor does not belong to this prefix")
    return key


def _event_of(raw: tuple[Any, ...]) -> Change:
    revision, kind, key, value, version, timestamp = raw
    return new_change(kind, key, value if kind == "set" else None, version, revision, timestamp)


def _check_positive(name: str, value: int) -> None:
    if type(value) is not int or value < 1:
        raise InvalidRequest(f"{name} must be a positive integer")
