"""The ``apply`` stream: committed entries to the storage role, in order, never too far ahead.

Storage is another process that may restart at any time, so consensus cannot
simply fire each committed entry once (as the core hands it out) and forget
it. Instead it keeps storage's position and resends from there:

* ``acked`` is storage's applied index, from ``hello`` (start, every second,
  and at once on a gap) and ``applied`` (at most ``ack_delay`` after a batch,
  one for all the batches of that time, see storage's ``_ack``). Before the first
  ``hello`` nothing is sent.
* ``sent`` is the last index handed to the socket. Entries after it up to
  ``committed`` (the last one the core handed out, durable by contract) go
  out in ``apply`` batches of at most ``BATCH_ENTRIES`` / ``BATCH_BYTES``,
  while ``sent - acked`` stays within ``APPLY_WINDOW`` (keeps the ROUTER pipe far
  below its high-water mark; PROTOCOL.md §4).
* Entries come from a buffer of what the core handed out, else from raft.db
  (a restarted storage that is behind). If storage is behind the log's first
  index (compacted away), it gets ``restore`` with the latest snapshot file
  instead, and entries wait until it reports the snapshot's index.
* A failed send (storage down: ``IpcError``) stops the stream until the next
  ``hello``. A ``hello`` rewinds ``sent`` to storage's applied index when
  storage went backwards or when the oldest unacknowledged batch is older than
  ``APPLY_STALL`` (lost with a restarted storage); a young in-flight window is left
  alone so a periodic ``hello`` does not duplicate it. Storage skips indexes
  it already applied, so a resend is only wasted work, never wrong.

Runs on the task that owns the core; ``pump`` reads raft.db through the disk
(the gate in ``disk.py``).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

from concordance.clock import SYSTEM_CLOCK
from concordance.consensus.disk import RaftDisk
from concordance.errors import IpcError
from concordance.protocol.wire import Apply, Body, Restore
from concordance.raft.entries import Entry, SnapshotMeta
from concordance.raft.stores import limit_size
from concordance.timing import APPLY_STALL, APPLY_WINDOW

__all__ = ["ApplyStream"]

log = logging.getLogger("concordance.consensus")

BATCH_ENTRIES = 1000
BATCH_BYTES = 4 << 20
RESTORE_RETRY = 10.0  # seconds before a restore that storage never confirmed is sent again
BUFFER_ENTRIES = 50_000  # committed entries kept in memory for a slow or absent storage
BUFFER_BYTES = 64 << 20

Send = Callable[[str, Body], Awaitable[None]]


class ApplyStream:
    """Storage's position and the entries still to send it."""

    def __init__(
        self,
        send: Send,
        disk: RaftDisk,
        clock: Callable[[], float] = SYSTEM_CLOCK.monotonic,
        committed: int = 0,
    ):
        """``committed``: what is committed before any entry is handed out, the core's
        applied index at start (its log's base after a restart): a storage behind it
        gets the snapshot file at once, not at the next commit (node simulation, 1405320)."""
        self._send = send
        self._disk = disk
        self._clock = clock
        self.acked: int | None = None  # storage's applied index; None before the first hello
        self._incarnation: int | None = None  # of the storage process that said it
        self.sent = 0
        self.committed = committed
        self._connected = False
        self._inflight: deque[tuple[int, float]] = deque()  # (last index of a batch, sent at)
        self._restoring: tuple[int, float] | None = None  # (snapshot index, sent at)
        self._buffer: list[Entry] = []  # committed entries, contiguous, ending at .committed
        self._buffer_bytes = 0
        self.batches_sent = 0

    # -- inputs ---------------------------------------------------------------
    def committed_entries(self, entries: Sequence[Entry]) -> None:
        """The core handed these out (durable, committed, in order)."""
        if not entries:
            return
        if self._buffer and entries[0].index != self._buffer[-1].index + 1:
            self._drop_buffer()
        self._buffer.extend(entries)
        self._buffer_bytes += sum(e.size() for e in entries)
        self.committed = max(self.committed, entries[-1].index)
        self._trim_buffer()

    def installed(self, meta: SnapshotMeta) -> None:
        """The core installed a snapshot from the leader: the log restarts after it."""
        self._drop_buffer()
        self.committed = max(self.committed, meta.index)

    def on_hello(self, applied_index: int, incarnation: int = 0) -> None:
        """Storage is up and at ``applied_index`` (PROTOCOL.md ``hello``); ``incarnation``
        names its process: a new one (a crash and restart) lost whatever was in flight
        to the old one and what that one had applied but not committed, so the stream
        rewinds at once, not ``APPLY_STALL`` later (and a restore it was given goes
        again now, not ``RESTORE_RETRY`` later)."""
        self._connected = True
        restarted = incarnation != self._incarnation and self._incarnation is not None
        self._incarnation = incarnation
        now = self._clock()
        restore_failed = False
        if self._restoring is not None:
            index, at = self._restoring
            if applied_index < index and now - at < RESTORE_RETRY and not restarted:
                return  # still restoring; its periodic hello must not restart the restore
            restore_failed = applied_index < index
            self._restoring = None
        previous = self.acked
        self.acked = applied_index  # hello and applied share one ordered pipe: hello is current
        self._ack_inflight()
        stale = bool(self._inflight) and now - self._inflight[0][1] >= APPLY_STALL
        behind = previous is None or applied_index < previous or restore_failed or restarted
        if behind or stale or self.sent < applied_index:
            self._rewind(applied_index)
        self._trim_buffer()

    def on_stopping(self) -> None:
        """Storage is stopping (a planned restart): send nothing more, and resume
        from whatever its successor's ``hello`` says, at once (not after ``APPLY_STALL``):
        batches sent to the old process after it stopped reading are lost with it."""
        self._connected = False
        self.acked = None

    def on_applied(self, index: int) -> None:
        if self.acked is None:
            return  # not before a hello: the position is unknown
        self.acked = max(self.acked, index)
        if self._restoring is not None and self.acked >= self._restoring[0]:
            self._restoring = None
        self._ack_inflight()
        self._trim_buffer()

    @property
    def idle(self) -> bool:
        """Nothing could be sent right now."""
        return (
            not self._connected
            or self.acked is None
            or self._restoring is not None
            or self.sent >= self.committed
            or self.sent - self.acked >= APPLY_WINDOW
        )

    # -- output ---------------------------------------------------------------
    async def pump(self) -> None:
        """Send what the window allows (one or more ``apply``, or one ``restore``)."""
        while not self.idle:
            assert self.acked is not None
            lo = self.sent + 1
            if lo < self._disk.first_index() and not self._buffered(lo):
                await self._restore()
                return
            budget = min(BATCH_ENTRIES, APPLY_WINDOW - (self.sent - self.acked))
            hi = min(self.committed, lo + budget - 1) + 1
            batch = self._from_buffer(lo, hi)
            if batch is None:
                upto = min(hi, self._buffer[0].index) if self._buffer else hi
                batch = await self._disk.read_entries(lo, max(upto, lo + 1), BATCH_BYTES)
            body = Apply(tuple((e.index, e.term, int(e.kind), e.data) for e in batch))
            try:
                await self._send("apply", body)
            except IpcError as e:
                self._disconnected(e)
                return
            self.sent = batch[-1].index
            self._inflight.append((self.sent, self._clock()))
            self.batches_sent += 1

    async def _restore(self) -> None:
        meta = self._disk.latest_snapshot()
        base = self._disk.first_index() - 1
        if meta is None or meta.index < self.sent or meta.index < base:
            # The log is cut only behind storage's durable index, so this is a
            # state.db lost or replaced: OPERATIONS.md §11 (replace the node).
            log.error(
                "storage is at %d, behind the log's base %d, and no snapshot file reaches it",
                self.sent,
                base,
            )
            self._connected = False
            return
        body = Restore(str(self._disk.snapshot_path(meta)), meta.index, meta.term)
        try:
            await self._send("restore", body)
        except IpcError as e:
            self._disconnected(e)
            return
        log.info("storage is at %d, before the log: restoring snapshot %d", self.sent, meta.index)
        self.sent = meta.index
        self._inflight.clear()
        self._restoring = (meta.index, self._clock())

    # -- internals ------------------------------------------------------------
    def _disconnected(self, error: IpcError) -> None:
        log.debug("apply stream paused until storage says hello: %s", error)
        self._connected = False

    def _rewind(self, applied_index: int) -> None:
        self.sent = applied_index
        self._inflight.clear()

    def _ack_inflight(self) -> None:
        acked = self.acked or 0
        while self._inflight and self._inflight[0][0] <= acked:
            self._inflight.popleft()

    def _buffered(self, index: int) -> bool:
        return bool(self._buffer) and self._buffer[0].index <= index <= self._buffer[-1].index

    def _from_buffer(self, lo: int, hi: int) -> list[Entry] | None:
        if not self._buffered(lo):
            return None
        start = lo - self._buffer[0].index
        return limit_size(self._buffer[start : start + (hi - lo)], BATCH_BYTES)

    def _drop_buffer(self) -> None:
        self._buffer, self._buffer_bytes = [], 0

    def _trim_buffer(self) -> None:
        """Forget what storage acknowledged, and the oldest entries past the memory bound
        (raft.db still has them)."""
        if not self._buffer:
            return
        n = min(max(0, (self.acked or 0) - self._buffer[0].index + 1), len(self._buffer))
        remaining = self._buffer_bytes - sum(e.size() for e in self._buffer[:n])
        while n < len(self._buffer) and (
            len(self._buffer) - n > BUFFER_ENTRIES or remaining > BUFFER_BYTES
        ):
            remaining -= self._buffer[n].size()
            n += 1
        if n:
            del self._buffer[:n]
            self._buffer_bytes = remaining
