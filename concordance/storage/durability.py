"""Making what storage applied durable, so consensus may cut its log behind it.

state.db commits with ``synchronous=NORMAL`` in WAL mode: a commit is not
fsynced (an fsync per apply batch would sit on every write's path). What is
durable is what a checkpoint covered. SQLite fsyncs the WAL before it copies
any frame back into the database, and fsyncs the database after a complete
checkpoint; so once a checkpoint has copied every frame of the WAL
(``checkpointed == log``), every transaction committed before it began is on
disk, whatever comes after.

A passive checkpoint never blocks the writer, but it copies only the frames
no reader still needs: a long read (a snapshot or backup copy on a worker
thread) can leave frames behind, and then nothing may be claimed, since a
checkpoint that copies nothing may not fsync either. :func:`checkpoint` then
waits and tries again. Runs on a worker thread with its own connection.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

__all__ = ["CheckpointIncomplete", "checkpoint"]

RETRY = 0.05  # seconds between passive checkpoints while a reader holds frames back


class CheckpointIncomplete(RuntimeError):
    """Readers held WAL frames back until the deadline: nothing new is known durable."""


def checkpoint(db_path: str | os.PathLike[str], timeout: float = 120.0) -> None:
    """Checkpoint the whole WAL of ``db_path`` into the database (durable on return).

    Raises:
        CheckpointIncomplete: frames were still held back by readers at ``timeout``.
        sqlite3.Error: the database cannot be opened or checkpointed.
    """
    uri = Path(db_path).resolve().as_uri() + "?mode=rw"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        deadline = time.monotonic() + timeout
        while True:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy and frames == copied:
                return
            if time.monotonic() > deadline:
                raise CheckpointIncomplete(
                    f"checkpoint of {db_path}: {copied} of {frames} WAL frames copied (busy={busy})"
                )
            time.sleep(RETRY)
    finally:
        conn.close()
