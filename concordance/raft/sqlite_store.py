"""raft.db: the durable :class:`~concordance.raft.stores.RaftStore`, on SQLite.

Rules / theory of operation
---------------------------

Raft is only safe if a node never forgets what it told others: its term and
vote before it sends a vote, and the entries it acknowledges before it sends
the acknowledgement. The driver therefore calls :meth:`SqliteRaftStore.persist`
and sends nothing that depends on it until it returns. Hence:

* ``journal_mode=WAL`` + ``synchronous=FULL``: a commit appends the
  transaction's pages to the write-ahead log and fsyncs it once. Recovery
  replays frames only up to the last checksummed commit frame, so a torn
  write is discarded whole. (``synchronous=NORMAL`` would skip that fsync and
  lose the last commits on power loss; Raft cannot take that.)
* One ``persist()`` is one ``BEGIN IMMEDIATE ... COMMIT``: the snapshot
  boundary, every entry and the hard state land together or not at all, for
  one fsync whatever the batch size. ``compact()`` and ``record_snapshot()``
  are one transaction each.
* Everything is validated before the transaction starts, and the in-memory
  view (terms cache, boundary, hard state) is updated only after COMMIT
  returns, so a rejected call changes nothing.
* A failed write transaction (I/O error, disk full, failed fsync) leaves the
  file's durable contents unknown, and a failed fsync cannot simply be retried.
  The store then refuses further use (:class:`StoreFailed`): the process
  should exit and reopen, which reads whatever actually survived.

When the file is created its directory is fsynced too, so the name of
``raft.db`` itself survives a power cut.

Layout: ``entries(idx INTEGER PRIMARY KEY, term, kind, data)`` with a partial
index on CONFIG entries, and a one-row ``meta`` table holding the hard state,
the compaction boundary (``base_index``/``base_term``: the index just before
the first held entry and its term) and the latest snapshot's metadata.

The terms of held entries are cached in an ``array`` (8 bytes each), so
``term()``, ``first_index()`` and ``last_index()`` never touch the disk;
``entries()`` and ``config_entries()`` read from it. One owner (the consensus
driver) uses a store from one thread; it is not safe to share.
"""

from __future__ import annotations

import os
import sqlite3
from array import array
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from types import TracebackType

from concordance.durable import fsync_dir
from concordance.raft.entries import Entry, EntryKind, HardState, Membership, SnapshotMeta
from concordance.raft.stores import LogCompacted, LogUnavailable

__all__ = ["CorruptStore", "SqliteRaftStore", "StoreFailed"]

_SCHEMA_VERSION = 1
_CONFIG = int(EntryKind.CONFIG)

# Applied in one transaction together with ``PRAGMA user_version``.
_SCHEMA = f"""
CREATE TABLE entries (
    idx  INTEGER PRIMARY KEY,
    term INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX entries_config ON entries (idx) WHERE kind = {_CONFIG};
CREATE TABLE meta (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    hs_term         INTEGER NOT NULL,
    hs_vote         TEXT,
    hs_commit       INTEGER NOT NULL,
    base_index      INTEGER NOT NULL,
    base_term       INTEGER NOT NULL,
    snap_index      INTEGER,
    snap_term       INTEGER,
    snap_membership BLOB
);
INSERT INTO meta VALUES (1, 0, NULL, 0, 0, 0, NULL, NULL, NULL);
PRAGMA user_version = {_SCHEMA_VERSION};
"""

_SELECT_ENTRIES = "SELECT idx, term, kind, data FROM entries"


class StoreFailed(RuntimeError):
    """A write transaction failed; the store must be reopened to learn what is durable."""


class CorruptStore(RuntimeError):
    """raft.db cannot be used as it is: a gap in the log, an unknown schema, no WAL."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """What one persist() will do, decided and validated before any write."""

    base_index: int
    base_term: int
    drop_through: int  # delete entries with idx <= this (base_index when nothing)
    drop_all: bool  # the snapshot does not match the log: delete every entry
    truncate_from: int | None  # delete entries with idx >= this before inserting


class SqliteRaftStore:
    """A :class:`~concordance.raft.stores.RaftStore` in one SQLite file (``raft.db``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = os.fspath(path)
        self._db: sqlite3.Connection | None = None
        self._failed: BaseException | None = None
        created = not os.path.exists(self._path)
        # Used from one thread at a time, not always the same one (consensus/disk.py).
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise CorruptStore(f"{self._path}: cannot use WAL (journal_mode={mode})")
            db.execute("PRAGMA synchronous=FULL")
            self._init_schema(db)
            (
                self._hard_state,
                self._snapshot,
                self._base_index,
                self._base_term,
            ) = self._load_meta(db)
            self._terms = self._load_terms(db, self._base_index)
            if created:
                fsync_dir(os.path.dirname(os.path.abspath(self._path)))
        except BaseException:
            db.close()
            raise
        self._db = db

    # -- lifecycle --------------------------------------------------------
    def close(self) -> None:
        """Close the file; every persisted change is already durable. Idempotent."""
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> SqliteRaftStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- LogStore ---------------------------------------------------------
    def first_index(self) -> int:
        return self._base_index + 1

    def last_index(self) -> int:
        return self._base_index + len(self._terms)

    def term(self, index: int) -> int:
        if index < self._base_index:
            raise LogCompacted(index)
        if index > self.last_index():
            raise LogUnavailable(index)
        if index == self._base_index:
            return self._base_term
        return self._terms[index - self._base_index - 1]

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo <= self._base_index:
            raise LogCompacted(lo)
        if hi > self.last_index() + 1:
            raise LogUnavailable(hi)
        if lo >= hi:
            return []
        out: list[Entry] = []
        total = 0
        cursor = self._conn().execute(
            f"{_SELECT_ENTRIES} WHERE idx >= ? AND idx < ? ORDER BY idx", (lo, hi)
        )
        try:
            for row in cursor:
                entry = _entry(row)
                total += entry.size()
                if max_bytes is not None and out and total > max_bytes:
                    return out  # the byte budget is spent; at least one entry went out
                out.append(entry)
        finally:
            cursor.close()
        if len(out) != hi - lo:
            raise CorruptStore(f"{self._path}: entries in [{lo}, {hi}) are missing on disk")
        return out

    def config_entries(self) -> list[Entry]:
        # The literal kind matches the partial index ``entries_config``.
        rows = self._conn().execute(f"{_SELECT_ENTRIES} WHERE kind = {_CONFIG} ORDER BY idx")
        return [_entry(row) for row in rows]

    # -- RaftStore --------------------------------------------------------
    def initial_state(self) -> tuple[HardState, SnapshotMeta | None]:
        return self._hard_state, self._snapshot

    def persist(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: SnapshotMeta | None = None,
    ) -> None:
        """Make the snapshot boundary, then the entries, then the hard state
        durable, atomically, in one transaction (one fsync).

        Raises:
            ValueError: the entries would leave a gap, overwrite compacted
                entries, or are not consecutive; nothing is changed.
        """
        if hard_state is None and not entries and snapshot is None:
            return
        plan = self._plan(entries, snapshot)
        with self._transaction() as db:
            if snapshot is not None:
                if plan.drop_all:
                    db.execute("DELETE FROM entries")
                elif plan.drop_through > self._base_index:
                    db.execute("DELETE FROM entries WHERE idx <= ?", (plan.drop_through,))
                db.execute(
                    "UPDATE meta SET base_index = ?, base_term = ?,"
                    " snap_index = ?, snap_term = ?, snap_membership = ?",
                    (plan.base_index, plan.base_term, *_snapshot_row(snapshot)),
                )
            if plan.truncate_from is not None:
                db.execute("DELETE FROM entries WHERE idx >= ?", (plan.truncate_from,))
                db.executemany(
                    "INSERT INTO entries (idx, term, kind, data) VALUES (?, ?, ?, ?)",
                    [(e.index, e.term, int(e.kind), e.data) for e in entries],
                )
            if hard_state is not None:
                db.execute(
                    "UPDATE meta SET hs_term = ?, hs_vote = ?, hs_commit = ?",
                    (hard_state.term, hard_state.vote, hard_state.commit),
                )
        # Committed: bring the in-memory view along (nothing here can fail).
        if snapshot is not None:
            self._snapshot = snapshot
            if plan.drop_all:
                del self._terms[:]
            else:
                del self._terms[: plan.drop_through - self._base_index]
            self._base_index, self._base_term = plan.base_index, plan.base_term
        if plan.truncate_from is not None:
            del self._terms[plan.truncate_from - self._base_index - 1 :]
            self._terms.extend(e.term for e in entries)
        if hard_state is not None:
            self._hard_state = hard_state

    def record_snapshot(self, meta: SnapshotMeta) -> None:
        """Remember a locally taken snapshot as the latest one; the log is untouched."""
        with self._transaction() as db:
            db.execute(
                "UPDATE meta SET snap_index = ?, snap_term = ?, snap_membership = ?",
                _snapshot_row(meta),
            )
        self._snapshot = meta

    def compact(self, index: int) -> None:
        """Drop entries <= index, keeping term(index) as the boundary."""
        if index <= self._base_index:
            return
        if index > self.last_index():
            raise LogUnavailable(index)
        term = self.term(index)
        with self._transaction() as db:
            db.execute("DELETE FROM entries WHERE idx <= ?", (index,))
            db.execute("UPDATE meta SET base_index = ?, base_term = ?", (index, term))
        del self._terms[: index - self._base_index]
        self._base_index, self._base_term = index, term

    # -- internals --------------------------------------------------------
    def _plan(self, entries: Sequence[Entry], snapshot: SnapshotMeta | None) -> _Plan:
        base, base_term, last = self._base_index, self._base_term, self.last_index()
        drop_through, drop_all = base, False
        if snapshot is not None:
            if base <= snapshot.index <= last and self.term(snapshot.index) == snapshot.term:
                drop_through = snapshot.index
            else:
                drop_all, last = True, snapshot.index
            base, base_term = snapshot.index, snapshot.term
        truncate_from = None
        if entries:
            first = entries[0].index
            if first <= base:
                raise ValueError(f"append at {first} overwrites compacted entries")
            if first > last + 1:
                raise ValueError(f"append at {first} leaves a gap after {last}")
            for n, entry in enumerate(entries):
                if entry.index != first + n:
                    raise ValueError(f"entry {entry.index} does not follow {first + n - 1}")
            truncate_from = first
        return _Plan(base, base_term, drop_through, drop_all, truncate_from)

    def _conn(self) -> sqlite3.Connection:
        if self._failed is not None:
            raise StoreFailed(f"{self._path}: an earlier write failed") from self._failed
        if self._db is None:
            raise StoreFailed(f"{self._path}: store is closed")
        return self._db

    def note_commit(self, hard_state: HardState) -> None:
        """Write a hard state that differs from the durable one only in ``commit``,
        without an fsync (``Ready.commit_only``).

        A crash may lose it, which Raft allows: the commit index is re-learned
        from the leader. It is written at all so that a clean restart resumes
        with the commit index it had; it becomes durable with the next fsync.
        """
        if (hard_state.term, hard_state.vote) != (self._hard_state.term, self._hard_state.vote):
            raise ValueError("note_commit cannot change term or vote: persist them")
        db = self._conn()
        db.execute("PRAGMA synchronous=OFF")
        try:
            with self._transaction() as tx:
                tx.execute("UPDATE meta SET hs_commit = ?", (hard_state.commit,))
        finally:
            if self._db is not None:
                db.execute("PRAGMA synchronous=FULL")
        self._hard_state = hard_state

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                with suppress(sqlite3.Error):  # the original error is the one to report
                    db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                self._failed = exc
                self.close()
            raise

    @staticmethod
    def _init_schema(db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
            elif version != _SCHEMA_VERSION:
                raise CorruptStore(f"unknown raft.db schema version {version}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _load_meta(
        db: sqlite3.Connection,
    ) -> tuple[HardState, SnapshotMeta | None, int, int]:
        row = db.execute(
            "SELECT hs_term, hs_vote, hs_commit, base_index, base_term,"
            " snap_index, snap_term, snap_membership FROM meta WHERE id = 1"
        ).fetchone()
        if row is None:
            raise CorruptStore("raft.db has no meta row")
        hs_term, vote, commit, base_index, base_term, snap_index, snap_term, members = row
        snapshot = None
        if snap_index is not None:
            snapshot = SnapshotMeta(snap_index, snap_term, Membership.decode(members))
        return HardState(hs_term, vote, commit), snapshot, base_index, base_term

    @staticmethod
    def _load_terms(db: sqlite3.Connection, base_index: int) -> array[int]:
        terms: array[int] = array("q")
        expected = base_index + 1
        for idx, term in db.execute("SELECT idx, term FROM entries ORDER BY idx"):
            if idx != expected:
                raise CorruptStore(f"raft.db: entry {idx} found where {expected} was expected")
            terms.append(term)
            expected += 1
        return terms


def _entry(row: tuple[int, int, int, bytes]) -> Entry:
    idx, term, kind, data = row
    return Entry(term, idx, EntryKind(kind), data)


def _snapshot_row(meta: SnapshotMeta) -> tuple[int, int, bytes]:
    return meta.index, meta.term, meta.membership.encode()
