"""The storage role's snapshots and checkpoints: state.db copied or synced beside the loop.

``take_snapshot`` copies state.db into ``state/snapshots/`` on a worker thread
(applies and reads go on; the copy is one read transaction), ``checkpoint``
syncs the WAL and answers ``durable``, both on ``background``'s workers of
lower CPU priority; ``restore`` replaces state.db with a snapshot consensus
received (PROTOCOL.md §3.6). A mixin of
:class:`~concordance.storage.service.StorageService`, which owns the state
declared below; :func:`copy_database` serves backups too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from concordance.durable import fsync_dir
from concordance.errors import (
    RemoteProtocolError,
)
from concordance.protocol import wire
from concordance.storage import background, durability, snapshot
from concordance.storage.fsm import StateMachine

if TYPE_CHECKING:
    from concordance.storage.service import ServiceTimings

log = logging.getLogger("concordance.storage.service")  # the log name it always had

_SNAPSHOT_NAME = re.compile(r"^\d{20}\.snapshot$")


class StorageSnapshots:
    """Snapshots, checkpoints and restores (state set by the service's ``__init__``)."""

    db_path: Path
    snapshot_dir: Path
    durable_index: int
    _t: ServiceTimings
    _backups: set[asyncio.Task[None]]
    _backup_lock: asyncio.Lock
    _snapshotting: asyncio.Task[None] | None
    _checkpointing: asyncio.Task[None] | None

    if TYPE_CHECKING:  # the service's and FrontReads'

        @property
        def state(self) -> StateMachine: ...

        async def _send(self, type: str, body: wire.Body) -> None: ...

        async def _hello(self) -> None: ...

        async def _release_waiters(self) -> None: ...

    async def _restore(self, body: wire.Restore) -> None:
        if self._backups:  # a backup reads the file about to be replaced: let it finish
            await asyncio.wait(self._backups)
        try:
            index = self.state.restore_from(body.path)
        except (RemoteProtocolError, OSError) as e:
            log.error("storage: cannot restore from %s: %s", body.path, e)
        else:
            if index != body.index:
                log.warning(
                    "storage: snapshot %s holds index %d, not %d", body.path, index, body.index
                )
            log.info("storage: restored %s at applied index %d", body.path, index)
            await self._release_waiters()
        await self._hello()

    def _start_checkpoint(self) -> None:
        """Make what is applied durable beside the loop, then answer ``durable``."""
        if self._checkpointing is not None and not self._checkpointing.done():
            return  # that one answers
        task = asyncio.create_task(self._checkpoint())
        self._checkpointing = task
        self._backups.add(task)  # a restore or a stop waits for it
        task.add_done_callback(self._backups.discard)

    async def _checkpoint(self) -> None:
        index = self.state.committed_index  # in the WAL the checkpoint syncs
        try:
            await background.run(durability.checkpoint, self.db_path)
        except (OSError, sqlite3.Error, durability.CheckpointIncomplete) as e:
            log.warning("storage: checkpoint failed (consensus will ask again): %s", e)
            return
        self.durable_index = max(self.durable_index, index)
        await self._send("durable", wire.Durable(index))

    def _start_snapshot(self) -> None:
        """Copy state.db beside the loop; applies and reads go on meanwhile."""
        if self._snapshotting is not None and not self._snapshotting.done():
            log.info("storage: a snapshot is already being written; take_snapshot ignored")
            return  # consensus asks one at a time; this one answers it
        task = asyncio.create_task(self._take_snapshot())
        self._snapshotting = task
        self._backups.add(task)  # a restore or a stop waits for it
        task.add_done_callback(self._backups.discard)

    async def _take_snapshot(self) -> None:
        staging = self.snapshot_dir / "taking.snapshot.tmp"  # swept at start if left over
        try:
            async with self._backup_lock:
                _, index, term = await background.run(copy_database, self.db_path, staging)
            path = self.snapshot_dir / f"{index:020d}.snapshot"
            os.replace(staging, path)
            fsync_dir(self.snapshot_dir, best_effort=True)
        except (OSError, sqlite3.Error, RemoteProtocolError) as e:
            log.error("storage: snapshot in %s failed: %s", self.snapshot_dir, e)
            return
        self._prune_snapshots()
        log.info("storage: snapshot at index %d written to %s", index, path)
        await self._send("snapshot_taken", wire.SnapshotTaken(index, term, str(path)))

    def _prune_snapshots(self) -> None:
        """Keep the newest few snapshot files; consensus moves or copies what it needs."""
        names = sorted(p.name for p in self.snapshot_dir.iterdir() if _SNAPSHOT_NAME.match(p.name))
        for name in names[: -self._t.snapshots_kept]:
            (self.snapshot_dir / name).unlink(missing_ok=True)


def copy_database(
    db_path: str | os.PathLike[str], dest: str | os.PathLike[str]
) -> tuple[int, int, int]:
    """Copy a live state.db to ``dest`` as one consistent file; return (bytes,
    applied_index, applied_term).

    Runs on a worker thread with its own read-only connection. The whole copy
    is one backup step, i.e. one read transaction: in WAL mode the writer is
    not blocked, and the copy cannot restart halfway because of its writes.
    ``dest`` appears atomically, complete and fsynced.
    """
    uri = Path(db_path).resolve().as_uri() + "?mode=ro"
    src = sqlite3.connect(uri, uri=True)
    try:
        snapshot.write(src, dest)
    finally:
        src.close()
    index, term = snapshot.vet(dest)
    return os.path.getsize(dest), index, term
