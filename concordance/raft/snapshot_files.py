"""Snapshot files on disk: the durable :class:`~concordance.raft.stores.SnapshotStore`.

Rules / theory of operation
---------------------------

A snapshot with metadata ``(index, term, membership)`` is two files in one
directory::

    {index:020d}-{term:020d}.snap   the state machine's bytes, opaque here
    {index:020d}-{term:020d}.meta   JSON sidecar: index, term, size, membership

Raft may compact its log once a snapshot exists, so a snapshot must never be
reported that a crash could take away, and a half-written one must never be
mistaken for a whole one. Hence the write order, the same for a file handed
over (:meth:`FileSnapshotStore.save_from_file`) and one received in chunks
(:meth:`~FileSnapshotStore.write_chunk` then :meth:`~FileSnapshotStore.finish`):

1. the bytes go to a ``*.partial`` name (or are the caller's file) and are fsynced;
2. they are renamed to ``.snap`` and the directory is fsynced;
3. the sidecar is written to ``*.partial``, fsynced, renamed to ``.meta`` and
   the directory fsynced again.

The sidecar is the commit record: a snapshot is *complete* only when its
``.meta`` exists and its ``.snap`` has the recorded size. ``*.partial`` files,
a ``.snap`` without a sidecar and a sidecar without its ``.snap`` are leftovers
of a crash; they are ignored and :meth:`~FileSnapshotStore.retain` deletes them.
A received snapshot cannot be resumed after a restart (its unsynced tail may be
garbage), so the in-progress receive lives in memory only: the leader starts
again from offset 0.

``latest()`` is the complete snapshot with the highest (index, term). Snapshots
only ever cover committed entries, so a higher index is always the newer state,
and the answer is the same before and after a restart.

Used by the consensus driver from one thread; not safe to share.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from concordance.durable import fsync_dir, fsync_path
from concordance.raft.entries import Membership, SnapshotMeta

__all__ = ["FileSnapshotStore"]

_PARTIAL = ".partial"
_COMPLETE_NAME = re.compile(r"^(\d{20})-(\d{20})\.meta$")
_OUR_NAME = re.compile(r"^\d{20}-\d{20}\.")

_Key = tuple[int, int]


@dataclass(slots=True)
class _Receive:
    """A snapshot arriving in chunks: its partial file, open, and the next offset."""

    path: Path
    file: BinaryIO
    offset: int


class FileSnapshotStore:
    """Snapshots as files in ``directory`` (created if missing)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._receiving: dict[_Key, _Receive] = {}
        complete = self._complete()
        self._latest = max(complete, key=_key) if complete else None

    # -- reading (SnapshotStore) --------------------------------------------
    def path(self, meta: SnapshotMeta) -> Path:
        """Where the bytes of ``meta`` live once complete (they may not exist)."""
        return self._dir / f"{_stem(meta)}.snap"

    def latest(self) -> SnapshotMeta | None:
        """The newest complete snapshot, or None."""
        return self._latest

    def has(self, meta: SnapshotMeta) -> bool:
        """Whether ``meta`` is complete here (its sidecar, the commit record, exists)."""
        return (self._dir / f"{_stem(meta)}.meta").exists()

    def size(self, meta: SnapshotMeta) -> int:
        return self.path(meta).stat().st_size

    def read_chunk(self, meta: SnapshotMeta, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (fewer at the end, b"" past it)."""
        if offset < 0 or size < 0:
            raise ValueError(f"bad chunk offset={offset} size={size}")
        with self.path(meta).open("rb") as f:
            f.seek(offset)
            return f.read(size)

    # -- writing ------------------------------------------------------------
    def save_from_file(self, meta: SnapshotMeta, src_path: str | os.PathLike[str]) -> Path:
        """Take ownership of a finished snapshot file produced elsewhere.

        The file is fsynced and renamed into place (copied, then removed, when
        it lives on another filesystem). On return the snapshot is complete and
        durable; ``src_path`` no longer exists.
        """
        src = Path(src_path)
        final = self.path(meta)
        fsync_path(src)
        self._invalidate(meta)
        try:
            os.replace(src, final)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self._copy_into_place(src, final)
            src.unlink()
        else:
            if src.parent.resolve() != self._dir.resolve():
                fsync_dir(src.parent)  # the old name is gone for good too
        fsync_dir(self._dir)
        self._commit(meta, final.stat().st_size)
        return final

    def write_chunk(self, meta: SnapshotMeta, offset: int, data: bytes) -> None:
        """Append one received chunk; chunks must arrive in order.

        Offset 0 starts a fresh partial file for ``meta`` and abandons any other
        snapshot being received (a newer leader's snapshot supersedes it).

        Raises:
            ValueError: ``offset`` is not where the partial file ends (see
                :meth:`next_offset`); nothing is written.
        """
        if offset == 0:
            self._abandon_receives()
            partial = self._dir / f"{_stem(meta)}.snap{_PARTIAL}"
            self._receiving[_key(meta)] = _Receive(partial, partial.open("wb"), 0)
        expected = self.next_offset(meta)
        if offset != expected:
            raise ValueError(f"snapshot {_stem(meta)}: chunk at {offset}, expected {expected}")
        receive = self._receiving[_key(meta)]
        receive.file.write(data)
        receive.offset += len(data)

    def next_offset(self, meta: SnapshotMeta) -> int:
        """The offset the next chunk of ``meta`` must have (0 when none is in progress)."""
        receive = self._receiving.get(_key(meta))
        return 0 if receive is None else receive.offset

    def finish(self, meta: SnapshotMeta) -> Path:
        """Make the received snapshot durable and complete; it becomes latest().

        Raises:
            ValueError: no snapshot ``meta`` is being received.
        """
        receive = self._receiving.pop(_key(meta), None)
        if receive is None:
            raise ValueError(f"snapshot {_stem(meta)} is not being received")
        try:
            receive.file.flush()
            os.fsync(receive.file.fileno())
        finally:
            receive.file.close()
        self._invalidate(meta)
        final = self.path(meta)
        os.replace(receive.path, final)
        fsync_dir(self._dir)
        self._commit(meta, receive.offset)
        return final

    def retain(self, n: int) -> None:
        """Keep the ``n`` newest complete snapshots; delete older ones and crash leftovers.

        ``n`` must be at least 1: the log may already be compacted past the
        latest snapshot, which is then the only copy of that state.
        """
        if n < 1:
            raise ValueError("retain() must keep at least one snapshot")
        keep = sorted(self._complete(), key=_key, reverse=True)[:n]
        wanted = {f"{_stem(m)}{suffix}" for m in keep for suffix in (".snap", ".meta")}
        wanted |= {receive.path.name for receive in self._receiving.values()}
        doomed = [p for p in self._dir.iterdir() if p.is_file() and p.name not in wanted]
        # Sidecars first: a crash midway must not leave a sidecar whose data is gone.
        doomed.sort(key=lambda p: not p.name.endswith(".meta"))
        for path in doomed:
            if _is_ours(path.name):
                path.unlink()
        fsync_dir(self._dir)

    def close(self) -> None:
        """Abandon any snapshot being received (its partial file stays until retain())."""
        for receive in self._receiving.values():
            receive.file.close()
        self._receiving.clear()

    # -- internals ----------------------------------------------------------
    def _abandon_receives(self) -> None:
        for receive in self._receiving.values():
            receive.file.close()
            receive.path.unlink(missing_ok=True)
        self._receiving.clear()

    def _copy_into_place(self, src: Path, final: Path) -> None:
        tmp = final.with_name(f"{final.name}.copy{_PARTIAL}")
        with src.open("rb") as fin, tmp.open("wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, final)

    def _invalidate(self, meta: SnapshotMeta) -> None:
        """Before replacing the bytes of ``meta``, withdraw its old sidecar (if any)."""
        sidecar = self._dir / f"{_stem(meta)}.meta"
        if sidecar.exists():
            sidecar.unlink()
            fsync_dir(self._dir)
            if self._latest is not None and _key(self._latest) == _key(meta):
                complete = self._complete()
                self._latest = max(complete, key=_key) if complete else None

    def _commit(self, meta: SnapshotMeta, size: int) -> None:
        """Write the sidecar that makes ``meta`` complete (its bytes are durable already)."""
        body = {
            "index": meta.index,
            "term": meta.term,
            "size": size,
            "membership": json.loads(meta.membership.encode()),
        }
        tmp = self._dir / f"{_stem(meta)}.meta{_PARTIAL}"
        with tmp.open("wb") as f:
            f.write(json.dumps(body, sort_keys=True).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._dir / f"{_stem(meta)}.meta")
        fsync_dir(self._dir)
        if self._latest is None or _key(meta) >= _key(self._latest):
            self._latest = meta

    def _complete(self) -> list[SnapshotMeta]:
        """Every snapshot whose sidecar is readable and whose bytes have the recorded size."""
        found = []
        for sidecar in self._dir.iterdir():
            match = _COMPLETE_NAME.match(sidecar.name)
            if match is None:
                continue
            meta = _read_sidecar(sidecar, int(match[1]), int(match[2]))
            if meta is not None:
                found.append(meta)
        return found


def _read_sidecar(sidecar: Path, index: int, term: int) -> SnapshotMeta | None:
    """The snapshot a sidecar describes, or None if it or its bytes are not intact."""
    try:
        body = json.loads(sidecar.read_bytes())
        data_size = sidecar.with_suffix(".snap").stat().st_size
        if (body["index"], body["term"], body["size"]) != (index, term, data_size):
            return None
        membership = Membership.decode(json.dumps(body["membership"]).encode())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return SnapshotMeta(index, term, membership)


def _is_ours(name: str) -> bool:
    """Only files this store names are ever deleted from the directory."""
    return _OUR_NAME.match(name) is not None


def _key(meta: SnapshotMeta) -> _Key:
    """Identity and order of snapshots: (index, term)."""
    return meta.index, meta.term


def _stem(meta: SnapshotMeta) -> str:
    return f"{meta.index:020d}-{meta.term:020d}"
