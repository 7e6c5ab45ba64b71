"""When state.db's WAL is copied back into the database: beside the apply loop, not in it.

Why: SQLite's automatic checkpoint runs inside the COMMIT that takes the WAL
past ``wal_autocheckpoint`` pages (1,000), on the connection that commits:
the storage role's one writer. That checkpoint fsyncs the WAL, copies its
pages into state.db and fsyncs state.db, so every few batches an apply (and
every write waiting on it) waited for two fsyncs. Under a bulk load of
128-key batches (about 100 pages each) that was 40-60% of the apply's time
(3.5-4.5 ms of 6-8 ms per batch, measured in-process, the machine busy).

Now the writer never checkpoints (``wal_autocheckpoint=0``); the storage
service counts the pages its applies wrote, about, and once they reach
``EVERY_PAGES`` runs one passive checkpoint on a worker thread with its own
connection (:func:`concordance.storage.durability.checkpoint_once`), one at
a time. Applies and reads go on meanwhile (a passive checkpoint never blocks
the writer; the writer resumes at the start of the WAL once a checkpoint
copied it all). The WAL is thus bounded about as before, and nothing about
durability changes: commits were never fsynced (``synchronous=NORMAL``), and
what consensus may compact behind is still only what a ``checkpoint`` it
asked for answered (``durability.checkpoint``, PROTOCOL.md §3.6).

The estimate: a change dirties one leaf page of ``kv``, one of ``changes``
(several share one) and one of the revision index, so an entry costs its
events plus three pages and the transaction one more for ``meta``. It only
sets the pace; a low estimate lets the WAL grow a little longer, never
loses anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Protocol

__all__ = ["EVERY_PAGES", "PageCount"]

EVERY_PAGES: Final = 1000  # SQLite's own default wal_autocheckpoint, in estimated pages


class _Applied(Protocol):
    @property
    def events(self) -> Sequence[object]: ...


class PageCount:
    """Counts pages written since the last checkpoint began; says when one is due."""

    def __init__(self, every: int = EVERY_PAGES) -> None:
        if every < 1:
            raise ValueError("every must be at least 1")
        self.every = every
        self.pages = 0  # written since the last checkpoint began (estimated)
        self.running = False  # one checkpoint at a time

    def applied(self, applied: Sequence[_Applied]) -> bool:
        """Count one committed apply; whether a checkpoint should start now."""
        self.pages += 1 + sum(len(a.events) + 3 for a in applied)
        return not self.running and self.pages >= self.every

    def started(self) -> None:
        self.running = True
        self.pages = 0

    def finished(self) -> None:
        self.running = False
