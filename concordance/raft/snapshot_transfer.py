"""InstallSnapshot in chunks: the leader's sending side and the follower's receiving side.

Rules (paper §7, Fig. 13, with the offsets of the figure):

* A leader sends a snapshot to a follower whose next entry it has compacted.
  Compaction does not make one (the log is cut behind the state machine's
  durable index, with no copy): when the latest snapshot is missing or older
  than the log's base, ``start`` says so and the core asks its driver for one
  (``Ready.snapshot_wanted``); the next probe of that follower starts it.
  While the transfer runs the follower's progress is SNAPSHOT and nothing
  else is sent to it; one chunk is in flight at a time, and the follower's
  answer names the offset it wants next, so a lost or repeated chunk only
  costs a resend from that offset.
* A transfer that hears nothing for ``resend_ticks`` resends its current chunk.
* The follower writes each accepted chunk through ``Ready.snapshot_chunks``
  and restores the log only once the last chunk (``done``) has arrived.
  Chunks of a snapshot it is not receiving, or at the wrong offset, are
  answered with the offset it wants; a snapshot at or below its commit index
  is answered "done" at once (it holds all of it already).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from concordance.raft.entries import SnapshotMeta
from concordance.raft.messages import InstallSnapshot, InstallSnapshotResponse, Message
from concordance.raft.progress import Progress, ProgressState
from concordance.raft.ready import SnapshotChunk
from concordance.raft.stores import SnapshotStore

log = logging.getLogger("concordance.raft")


class SnapshotSender:
    """The leader's side: which chunk goes to which follower, and when."""

    __slots__ = ("_chunk_bytes", "_id", "_resend_ticks", "_send", "_store")

    def __init__(
        self,
        node_id: str,
        store: SnapshotStore | None,
        chunk_bytes: int,
        resend_ticks: int,
        send: Callable[[Message], None],
    ) -> None:
        self._id = node_id
        self._store = store
        self._chunk_bytes = chunk_bytes
        self._resend_ticks = resend_ticks
        self._send = send

    def start(
        self, term: int, peer: str, pr: Progress, meta: SnapshotMeta | None, floor: int
    ) -> bool:
        """Begin sending ``meta`` (the latest snapshot) to ``peer``; False if there is
        no snapshot to send that reaches the log (held, and at index >= ``floor``)."""
        if meta is None or self._store is None or meta.index < floor or not self._store.has(meta):
            log.debug("%s needs a snapshot at >= %d for %s", self._id, floor, peer)
            return False
        pr.become_snapshot(meta.index)
        self._send_chunk(term, peer, pr, meta)
        return True

    def on_response(
        self, term: int, msg: InstallSnapshotResponse, pr: Progress, meta: SnapshotMeta | None
    ) -> bool:
        """Handle the follower's answer; True when it now holds the whole snapshot
        (its progress is back to PROBE and the caller should resume appends)."""
        if pr.state is not ProgressState.SNAPSHOT or msg.index != pr.snapshot_index:
            return False
        if msg.done:
            pr.update_match(msg.index)
            pr.become_probe()
            return True
        pr.snapshot_offset = msg.next_offset
        self._send_chunk(term, msg.src, pr, meta)
        return False

    def tick(self, term: int, progress: Mapping[str, Progress], meta: SnapshotMeta | None) -> None:
        """Resend the current chunk to followers whose transfer stalled."""
        for peer, pr in progress.items():
            if pr.state is ProgressState.SNAPSHOT and peer != self._id:
                pr.snapshot_idle_ticks += 1
                if pr.snapshot_idle_ticks >= self._resend_ticks:
                    self._send_chunk(term, peer, pr, meta)

    def _send_chunk(self, term: int, peer: str, pr: Progress, meta: SnapshotMeta | None) -> None:
        assert meta is not None and self._store is not None
        if pr.snapshot_index != meta.index:
            pr.become_snapshot(meta.index)  # a newer snapshot replaced the one in flight
        size = self._store.size(meta)
        data = self._store.read_chunk(meta, pr.snapshot_offset, self._chunk_bytes)
        done = pr.snapshot_offset + len(data) >= size
        pr.snapshot_idle_ticks = 0
        self._send(InstallSnapshot(term, self._id, peer, meta, pr.snapshot_offset, data, done))


class SnapshotReceiver:
    """The follower's side: reassembles one snapshot at a time, in order."""

    __slots__ = ("_receiving",)

    def __init__(self) -> None:
        self._receiving: tuple[SnapshotMeta, int] | None = None  # (meta, next offset)

    def on_chunk(
        self, msg: InstallSnapshot, term: int, node_id: str, commit: int
    ) -> tuple[InstallSnapshotResponse, SnapshotChunk | None]:
        """The answer to send, and the chunk to hand the driver if it was accepted.

        A returned chunk with ``done`` set completes the snapshot: the caller
        installs it (or fast-forwards) before sending the answer.
        """
        meta = msg.meta

        def answer(offset: int, done: bool = False) -> InstallSnapshotResponse:
            return InstallSnapshotResponse(term, node_id, msg.src, meta.index, offset, done)

        if meta.index <= commit:
            self._receiving = None
            return answer(msg.offset, done=True), None
        if msg.offset == 0:
            self._receiving = (meta, 0)
        if self._receiving is None or self._receiving[0] != meta:
            return answer(0), None
        expected = self._receiving[1]
        if msg.offset != expected:
            return answer(expected), None
        chunk = SnapshotChunk(meta, msg.offset, msg.data, msg.done)
        expected += len(msg.data)
        if not msg.done:
            self._receiving = (meta, expected)
            return answer(expected), chunk
        self._receiving = None
        return answer(expected, done=True), chunk
