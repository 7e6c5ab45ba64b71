"""The state machine over state.db: apply committed commands, serve local reads.

The storage process is a single-purpose actor that calls SQLite synchronously
on one connection (applies and reads alike, one call at a time); nothing here
is async and nothing may run concurrently on one :class:`StateMachine`.

Rules / theory of operation:

* Consensus hands over committed entries in index order. ``apply`` writes a
  whole batch of them, all or nothing, together with the change rows; the
  COMMIT writes ``applied_index`` with them, so state.db is always exactly
  "the log up to applied_index". ``apply(commit=False)`` leaves the batch in
  the open transaction for a later :meth:`~StateMachine.commit`, so several
  batches share one COMMIT (about 10 us per entry saved on this machine at
  14 entries per batch; the storage service commits when it acknowledges,
  docs/PROTOCOL.md ``applied``): reads on this connection see it at once,
  other connections and a restarted process only after the commit.
  Entries at or below ``applied_index`` are skipped, which makes
  re-delivery after a restart harmless; a gap is a caller bug.
* Everything that must agree across nodes comes from the entry itself
  (timestamp, expiry, value bytes), never from this node's clock. Expiry
  during apply is judged at the command's timestamp, as reads judge it at now.
* Every committed change takes the next revision; one atomic command (batch,
  delete-prefix) shares one, its events numbered by ``seq``. A command that
  fails (condition, not found, malformed) changes nothing, takes no revision
  and gets an error result; it never stops the entries after it.
* A batch runs its ops in order, each seeing the effects of the ones before
  it (as in a Consul txn), on a working copy of the rows it touches; only if
  every op succeeds (conditions hold, deleted keys exist) is the copy
  written. A failure reports the first failing op's ``index`` and the entry
  that op saw as ``current``.
* Only errors of the command itself become results. Any other exception
  (I/O, disk full) rolls the whole batch back and propagates: recording it as
  a result would make this node diverge from the others. The batches applied
  before it in the open transaction stay, unless SQLite rolled the whole
  transaction back (then the position is the last commit's again).
* Change history is kept by revisions (``retention``) and by bytes
  (``retention_bytes``: key + value bytes of the history): after an apply,
  history is pruned to the last ``retention`` revisions, and further, oldest
  revision first, while it holds more than ``retention_bytes`` (in steps of a
  sixteenth, so not on every apply; the newest revision is always kept).
  The decision is taken after each entry, never per batch (batches differ
  from node to node), so ``oldest`` is a function of the applied entries
  and the two settings: nodes with the same settings agree on it at every
  applied index.
* A value is stored once, in its ``set`` change row; the key's ``kv`` row
  points to it (``schema``). Pruning keeps a row some key still points to,
  and the write that supersedes such a row (below ``compacted``) deletes it.
* state.db commits with ``synchronous=NORMAL``: a power cut may lose the
  last transactions, never tear one; consensus then re-sends from the
  ``applied_index`` that survived (see ``schema``).
* Versions never go back: a delete leaves a tombstone with the version, a
  re-create continues at version + 1 with a fresh ``createdAt``.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from concordance.errors import (
    ConcordanceError,
    InvalidRequest,
    NotFound,
    RemoteProtocolError,
    VersionConflict,
)
from concordance.protocol import wire
from concordance.protocol.commands import (
    Batch,
    BatchOp,
    Check,
    Command,
    Delete,
    DeletePrefix,
    Expire,
    Op,
    Set,
    peek_request,
)
from concordance.protocol.payloads import (
    BatchDone,
    BatchItem,
    Change,
    Deleted,
    Entry,
    Expired,
    PrefixDeleted,
    Rejected,
    WriteResult,
    new_change,
)
from concordance.storage import db, snapshot, ttl
from concordance.storage.db import Row, entry_of, is_live, load_row, load_rows
from concordance.storage.migrate import HISTORY_SIZE_SQL
from concordance.storage.schema import connect

__all__ = ["Applied", "ApplyGap", "StateMachine"]

_INSERT_ROW = "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_INSERT_CHANGE = "INSERT INTO changes VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
_PRELOAD = 500  # keys per statement when an apply call reads its rows (under SQLite's limit)
_UNREFERENCED = (
    "NOT EXISTS (SELECT 1 FROM kv WHERE kv.key = changes.key AND kv.change_id = changes.id)"
)
_LIVE_UNDER = "key >= ? AND key < ? AND deleted = 0 AND (expires_at IS NULL OR expires_at > ?)"


# What an apply moves and a rollback must put back (StateMachine._position).
_POSITION = (
    "_applied_index",
    "_applied_term",
    "_revision",
    "_compacted",
    "_history_bytes",
    "_next_change_id",
)
_Position: TypeAlias = tuple[int, int, int, int, int, int]


class ApplyGap(ValueError):
    """``apply`` got an entry that does not follow ``applied_index``; nothing was applied.

    The storage process drops the batch and reports its unchanged
    ``applied_index`` (``hello``) so consensus rewinds (docs/PROTOCOL.md §3.2).
    """

    def __init__(self, index: int, expected: int) -> None:
        super().__init__(f"got entry {index} where entry {expected} was expected")
        self.index = index
        self.expected = expected


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of one applied NORMAL entry, for its proposer and for watchers.

    ``outcome`` is the command's result, or the :class:`Rejected` error its
    writer gets (rebuild it with :meth:`unwrap`). ``events`` are the change
    events in seq order (empty when nothing changed). Values inside are JSON
    text bytes.
    """

    index: int
    origin: str
    request_id: int
    outcome: WriteResult | Rejected | None  # None: a lone check of an absent key
    events: tuple[Change, ...] = ()

    def unwrap(self) -> WriteResult | None:
        """The result, or raise the error it carries as a :class:`ConcordanceError`."""
        if isinstance(self.outcome, Rejected):
            raise self.outcome.to_exception()
        return self.outcome


class StateMachine:
    """state.db: the key-value state, its change log, and the applied Raft position.

    Args:
        path: the state.db file (created if missing).
        retention: how many recent revisions of change history to keep at most.
        retention_bytes: how many bytes (keys + values) of change history to
            keep at most; the newest revision is kept whatever its size.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        retention: int = 100_000,
        retention_bytes: int = 1 << 30,
    ) -> None:
        if retention < 1 or retention_bytes < 1:
            raise ValueError("retention and retention_bytes must be at least 1")
        self._path = os.fspath(path)
        self._retention = retention
        self._retention_bytes = retention_bytes
        self._prune_slack = retention // 16  # prune in steps, not on every apply
        self._conn = connect(self._path)
        self._applied_index = self._applied_term = self._revision = self._compacted = 0
        self._history_bytes = 0
        self._next_change_id = 1
        self._committed: _Position = (0, 0, 0, 0, 0, 1)  # set by _load_meta
        self._load_meta()
        # Within one apply call: the change rows and kv rows it wrote, flushed to SQLite
        # together (at its end, and before any statement that reads those tables), and
        # every row it read or wrote, value included (read once, with one statement).
        self._pending: list[tuple[Any, ...]] = []
        self._kv_pending: dict[str, tuple[Any, ...]] = {}
        self._rows: dict[str, Row | None] = {}

    # -- position -----------------------------------------------------------
    @property
    def applied_index(self) -> int:
        """Index of the last applied Raft entry (0 = none)."""
        return self._applied_index

    @property
    def applied_term(self) -> int:
        """Term of the last applied Raft entry (0 = none)."""
        return self._applied_term

    @property
    def revision(self) -> int:
        """The current revision: that of the last committed change (0 = none)."""
        return self._revision

    @property
    def history_bytes(self) -> int:
        """Key + value bytes of the change history held (revisions after ``compacted``)."""
        return self._history_bytes

    @property
    def oldest_revision(self) -> int:
        """The first revision whose changes are still held (``since = oldest - 1`` works)."""
        return self._compacted + 1

    @property
    def committed_index(self) -> int:
        """The applied index state.db holds for other connections and after a crash of
        this process (``applied_index`` less what :meth:`apply` left uncommitted)."""
        return self._committed[0]

    def close(self, *, commit: bool = True) -> None:
        """Close the connection, committing what ``apply`` left open, or with ``commit=False``
        (a crash) discarding it."""
        try:
            if self._conn.in_transaction:
                if commit:
                    self.commit()
                else:
                    self._conn.execute("ROLLBACK")
                    self._set_position(self._committed)
        finally:
            self._conn.close()

    def __enter__(self) -> StateMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- apply --------------------------------------------------------------
    def apply(
        self, entries: Sequence[tuple[int, int, bytes | None]], *, commit: bool = True
    ) -> list[Applied]:
        """Apply committed entries ``(index, term, data)``, all or nothing.

        ``data`` None or empty marks a no-op or config entry: it only advances
        ``applied_index``. Entries at or below ``applied_index`` are skipped.
        Returns one :class:`Applied` per NORMAL entry actually applied now.
        ``commit=False`` leaves them in the open transaction (see :meth:`commit`).

        Raises:
            ApplyGap: an index would leave a gap after ``applied_index``
                (nothing is applied).
            sqlite3.Error: the writes failed; nothing of ``entries`` is applied.
        """
        fresh = [e for e in entries if e[0] > self._applied_index]
        if not fresh:
            return []
        for expected, (index, _, _) in enumerate(fresh, self._applied_index + 1):
            if index != expected:
                raise ApplyGap(index, expected)
        saved = self._position()
        out: list[Applied] = []
        conn = self._conn
        began = not conn.in_transaction
        if began:
            conn.execute("BEGIN IMMEDIATE")
        conn.execute("SAVEPOINT batch")
        try:
            commands = [(i, t, _decode(data) if data else None) for i, t, data in fresh]
            self._preload(commands)
            for index, term, cmd in commands:
                self._applied_index, self._applied_term = index, term
                if cmd is not None:
                    out.append(self._apply_entry(index, cmd))
                    self._prune()  # after each entry, so batching cannot change "oldest"
            self._flush()
            conn.execute("RELEASE batch")
        except BaseException:
            if began and conn.in_transaction:  # nothing else was in it
                conn.execute("ROLLBACK")
                self._set_position(saved)
            elif conn.in_transaction:  # only this batch is undone
                conn.execute("ROLLBACK TO batch")
                conn.execute("RELEASE batch")
                self._set_position(saved)
            else:  # SQLite rolled the whole transaction back (I/O error, disk full)
                self._set_position(self._committed)
            raise
        finally:
            self._pending.clear()
            self._kv_pending.clear()
            self._rows.clear()
        if commit:
            self.commit()
        return out

    def commit(self) -> None:
        """Commit what :meth:`apply` left open, with the applied position (no-op if nothing).

        Not fsynced (``synchronous=NORMAL``): it survives a crash of this process,
        not a power cut; ``storage.durability.checkpoint`` makes it durable.

        Raises:
            sqlite3.Error: the commit failed; the position is the last commit's again.
        """
        conn = self._conn
        if not conn.in_transaction:
            return
        try:
            conn.execute(
                "UPDATE meta SET applied_index = ?, applied_term = ?, revision = ?,"
                " compacted = ?, history_bytes = ?",
                (
                    self._applied_index,
                    self._applied_term,
                    self._revision,
                    self._compacted,
                    self._history_bytes,
                ),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._set_position(self._committed)
            raise
        self._committed = self._position()

    def reconcile(self) -> bool:
        """After an error on this connection: if SQLite rolled the open transaction back
        by itself (it does on an I/O error or a full disk, even in a read), go back to
        the last commit's position, which is what state.db holds; True if it did."""
        if self._conn.in_transaction or self._position() == self._committed:
            return False
        self._set_position(self._committed)
        return True

    def _position(self) -> _Position:
        return tuple(getattr(self, name) for name in _POSITION)

    def _set_position(self, position: _Position) -> None:
        for name, value in zip(_POSITION, position, strict=True):
            setattr(self, name, value)

    def _preload(self, commands: Sequence[tuple[int, int, Command | Applied | None]]) -> None:
        """Read the rows of every key the commands name, in statements of ``_PRELOAD`` keys
        (one per entry cost about 4 us each)."""
        keys: set[str] = set()
        for _, _, cmd in commands:
            if isinstance(cmd, Command):
                op = cmd.op
                if isinstance(op, Batch):
                    keys.update(o.key for o in op.ops)
                elif not isinstance(op, DeletePrefix):
                    keys.add(op.key)
        wanted = list(keys)  # self._rows is empty: each call starts afresh
        for start in range(0, len(wanted), _PRELOAD):
            chunk = wanted[start : start + _PRELOAD]
            found = load_rows(self._conn, chunk)
            for key in chunk:
                self._rows[key] = found.get(key)

    def _row(self, key: str) -> Row | None:
        """``key``'s row as this apply call has it (its own writes included)."""
        try:
            return self._rows[key]
        except KeyError:
            row = self._rows[key] = load_row(self._conn, key)
            return row

    def _write_row(self, row: Row) -> None:
        self._kv_pending[row.key] = _kv_values(row)
        self._rows[row.key] = row

    def _apply_entry(self, index: int, cmd: Command | Applied) -> Applied:
        if isinstance(cmd, Applied):  # malformed: the error its writer gets
            return Applied(index, cmd.origin, cmd.request_id, cmd.outcome)
        events: list[Change] = []
        try:
            result = self._run(cmd.op, cmd.timestamp_ms, events)
        except ConcordanceError as e:  # raised before any write of this command
            return Applied(index, cmd.origin, cmd.request_id, Rejected.of(e))
        return Applied(index, cmd.origin, cmd.request_id, result, tuple(events))

    def _run(self, op: Op, ts: int, events: list[Change]) -> WriteResult | None:
        if isinstance(op, Batch):
            results = self._ops(op.ops, ts, events, in_batch=True)
            return BatchDone(tuple(results), self._revision)
        if isinstance(op, Set | Delete | Check):
            return self._ops((op,), ts, events, in_batch=False)[0]
        if isinstance(op, DeletePrefix):
            return self._delete_prefix(op.prefix, ts, events)
        return self._expire(op, ts, events)

    def _ops(
        self, ops: Sequence[BatchOp], ts: int, events: list[Change], *, in_batch: bool
    ) -> list[BatchItem]:
        """Run ``ops`` in order on a working copy; write it only if every op succeeded."""
        rev = self._revision + 1  # shared by every write, taken only if there is one
        rows: dict[str, Row | None] = {}
        before: dict[str, Row | None] = {}  # each key's row as the command found it
        dirty: dict[str, Row] = {}  # key -> final row, in first-write order
        changes: list[tuple[str, str, bytes | None, int]] = []
        results: list[BatchItem] = []
        for i, op in enumerate(ops):
            key = op.key
            if key in rows:
                row = rows[key]
            else:
                row = before[key] = self._row(key)
            live = row if row is not None and is_live(row, ts) else None
            have = live.version if live is not None else 0
            want = op.version if isinstance(op, Check) else op.if_version
            where = {"index": i} if in_batch else {}
            if want is not None and have != want:
                current = entry_of(live) if live is not None else None
                raise VersionConflict(
                    f"{key} is at version {have}, not {want}", current=current, **where
                )
            if isinstance(op, Check):
                rows[key] = row
                results.append(entry_of(live) if live is not None else None)
                continue
            if isinstance(op, Set):
                version = (row.version if row is not None else 0) + 1
                created = live.created_at if live is not None else ts
                new = Row(key, op.value_json, version, rev, created, ts, op.expires_at, 0, None)
                changes.append(("set", key, op.value_json, version))
                results.append(entry_of(new))
            else:
                if live is None:
                    raise NotFound(f"{key} does not exist", **where)
                new = live._replace(
                    value=None,
                    revision=rev,
                    updated_at=ts,
                    expires_at=None,
                    deleted=1,
                    change_id=None,
                )
                changes.append(("delete", key, None, live.version))
                results.append(Deleted(key, live.version, rev))
            rows[key] = dirty[key] = new
        if changes:
            self._revision = rev
            holder: dict[str, int] = {}  # key -> the change row of its last set
            for kind, key, value, version in changes:
                change_id = self._emit(events, kind, key, value, version, rev, ts)
                if kind == "set":
                    holder[key] = change_id
            for key, old in before.items():
                if key in dirty and old is not None:
                    self._drop_superseded(old)
            for k, row in dirty.items():
                self._write_row(row._replace(change_id=None if row.deleted else holder[k]))
        return results

    def _delete_prefix(self, prefix: str, ts: int, events: list[Change]) -> PrefixDeleted:
        self._flush()  # the statements below read and write kv and changes directly
        self._rows.clear()
        bounds = (prefix, db.prefix_end(prefix), ts)
        victims = self._conn.execute(
            f"SELECT key, version FROM kv WHERE {_LIVE_UNDER} ORDER BY key", bounds
        ).fetchall()
        if not victims:
            return PrefixDeleted(0, self._revision)
        self._revision += 1
        rev = self._revision
        self._conn.execute(  # values below the history horizon live only in kv's rows
            "DELETE FROM changes WHERE id IN (SELECT change_id FROM kv"
            f" WHERE {_LIVE_UNDER} AND revision <= ?)",
            (*bounds, self._compacted),
        )
        self._conn.execute(
            "UPDATE kv SET change_id = NULL, revision = ?, updated_at = ?, expires_at = NULL,"
            f" deleted = 1 WHERE {_LIVE_UNDER}",
            (rev, ts, *bounds),
        )
        for key, version in victims:
            self._emit(events, "delete", key, None, version, rev, ts)
        return PrefixDeleted(len(victims), rev)

    def _expire(self, op: Expire, ts: int, events: list[Change]) -> Expired:
        row = self._row(op.key)
        if (
            row is None
            or row.deleted
            or row.version != op.version
            or row.expires_at != op.expires_at
        ):
            current = entry_of(row) if row is not None and is_live(row, ts) else None
            raise VersionConflict(f"{op.key} changed since it expired", current=current)
        self._revision += 1
        self._tombstone(row, self._revision, ts)
        self._emit(events, "expire", op.key, None, row.version, self._revision, ts)
        return Expired(op.key, row.version, self._revision)

    def _tombstone(self, row: Row, rev: int, ts: int) -> Row:
        self._drop_superseded(row)
        dead = row._replace(
            value=None, revision=rev, updated_at=ts, expires_at=None, deleted=1, change_id=None
        )
        self._write_row(dead)
        return dead

    def _drop_superseded(self, old: Row) -> None:
        """Delete ``old``'s value row if history no longer holds it (it is replaced now).

        A value row above ``compacted`` stays: it is history until pruned.
        """
        if old.change_id is not None and old.revision <= self._compacted:
            self._conn.execute("DELETE FROM changes WHERE id = ?", (old.change_id,))

    def _emit(
        self,
        events: list[Change],
        kind: str,
        key: str,
        value: bytes | None,
        version: int,
        rev: int,
        ts: int,
    ) -> int:
        """Queue one change row and its event; return the row's id."""
        change_id = self._next_change_id
        self._next_change_id += 1
        self._history_bytes += len(key.encode()) + len(value or b"")
        self._pending.append((change_id, rev, len(events), kind, key, value, version, ts))
        events.append(new_change(kind, key, value, version, rev, ts))
        return change_id

    def _prune(self) -> None:
        """Drop history beyond ``retention`` revisions or ``retention_bytes`` (in the transaction).

        Cost: the rows dropped (found by the revision index), plus, when bytes
        are over, one scan of the revisions that will be dropped.
        """
        horizon = self._compacted
        by_count = self._revision - self._retention
        if by_count - self._compacted > self._prune_slack:
            horizon = by_count
        if self._history_bytes > self._retention_bytes:
            self._flush()  # the scan below must see this transaction's rows
            horizon = max(horizon, self._byte_horizon())
        if horizon <= self._compacted:
            return
        self._flush()  # the statements below must see this transaction's rows
        span = (self._compacted, horizon)
        freed = self._conn.execute(
            f"SELECT coalesce(sum({HISTORY_SIZE_SQL}), 0) FROM changes"
            " WHERE revision > ? AND revision <= ?",
            span,
        ).fetchone()[0]
        self._conn.execute(
            f"DELETE FROM changes WHERE revision > ? AND revision <= ? AND {_UNREFERENCED}", span
        )
        self._history_bytes -= int(freed)
        self._compacted = horizon

    def _flush(self) -> None:
        """Write the queued change rows and kv rows (one statement each)."""
        if self._pending:
            self._conn.executemany(_INSERT_CHANGE, self._pending)
            self._pending.clear()
        if self._kv_pending:
            self._conn.executemany(_INSERT_ROW, self._kv_pending.values())
            self._kv_pending.clear()

    def _byte_horizon(self) -> int:
        """The lowest revision to compact up to so that history fits in ``retention_bytes``
        less a sixteenth (never the newest revision)."""
        target = self._retention_bytes - self._retention_bytes // 16
        held = self._history_bytes
        horizon = self._compacted
        rows = self._conn.execute(
            f"SELECT revision, sum({HISTORY_SIZE_SQL}) FROM changes"
            " WHERE revision > ? AND revision < ? GROUP BY revision ORDER BY revision",
            (self._compacted, self._revision),
        )
        for revision, size in rows:
            if held <= target:
                break
            held -= int(size)
            horizon = int(revision)
        return horizon

    def _load_meta(self) -> None:
        row = self._conn.execute(
            "SELECT applied_index, applied_term, revision, compacted, history_bytes FROM meta"
        ).fetchone()
        index, term, revision, compacted, history = (int(v) for v in row)
        self._applied_index, self._applied_term = index, term
        self._revision, self._compacted, self._history_bytes = revision, compacted, history
        last = self._conn.execute("SELECT max(id) FROM changes").fetchone()[0]
        self._next_change_id = int(last or 0) + 1
        self._committed = self._position()

    # -- reads --------------------------------------------------------------
    def get(self, key: str, now_ms: int) -> Entry | None:
        """The entry of ``key`` as seen at ``now_ms`` (deleted or expired: None)."""
        return db.get_entry(self._conn, key, now_ms)

    def list(self, prefix: str, limit: int, cursor: str | None, now_ms: int) -> wire.ListOk:
        """One page of live entries: see :func:`db.list_entries`."""
        return db.list_entries(self._conn, prefix, limit, cursor, now_ms, self._revision)

    def changes(self, prefix: str, since: int, limit: int = 1000) -> wire.ChangesOk:
        """One page of change events: see :func:`db.list_changes` (raises ``Compacted``)."""
        return db.list_changes(self._conn, prefix, since, limit, self._revision, self._compacted)

    # -- TTL ----------------------------------------------------------------
    def expired(self, now_ms: int, limit: int = 100) -> builtins.list[Expire]:
        """Entries expired at ``now_ms`` (earliest first), as the Expire ops to propose."""
        return ttl.expired(self._conn, now_ms, limit)

    def next_expiry(self) -> int | None:
        """The earliest ``expiresAt`` still in the state, or None."""
        return ttl.next_expiry(self._conn)

    # -- snapshots ----------------------------------------------------------
    def snapshot_to(self, path: str | os.PathLike[str]) -> tuple[int, int]:
        """Write a consistent copy of state.db to ``path``; return (applied_index, applied_term)."""
        self.commit()
        snapshot.write(self._conn, path)
        return self._applied_index, self._applied_term

    def restore_from(self, path: str | os.PathLike[str]) -> int:
        """Replace the whole state with a snapshot's; return the new ``applied_index``.

        Raises:
            RemoteProtocolError: the file is not a valid snapshot (state unchanged).
        """
        snapshot.vet(path)
        self.commit()  # a checkpoint cannot run inside a transaction
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()
        try:
            snapshot.install(path, self._path)
        finally:
            self._conn = connect(self._path)
            self._load_meta()
        return self._applied_index

    def digest(self) -> str:
        """A hash of every live entry, equal on nodes at the same applied index."""
        return snapshot.digest(self._conn)


def _decode(data: bytes) -> Command | Applied:
    """The command in entry ``data``, or (malformed) the rejection its writer gets, as an
    :class:`Applied` whose index the caller sets."""
    try:
        return Command.decode(data)
    except RemoteProtocolError as e:
        origin, request_id = peek_request(data) or ("", 0)
        return Applied(
            0, origin, request_id, Rejected.of(InvalidRequest(f"malformed command: {e}"))
        )


def _kv_values(row: Row) -> tuple[Any, ...]:
    """``row`` in the column order of ``kv`` (its value lives in ``changes``)."""
    return (
        row.key,
        row.change_id,
        row.version,
        row.revision,
        row.created_at,
        row.updated_at,
        row.expires_at,
        row.deleted,
    )
