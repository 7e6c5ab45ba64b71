"""ApplyStream alone: its window, rewinds, pauses and restores, with a fake disk and clock."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from concordance.consensus import apply_stream
from concordance.consensus.apply_stream import ApplyStream
from concordance.errors import IpcError
from concordance.protocol import wire
from concordance.raft.entries import Entry, Membership, SnapshotMeta


class FakeDisk:
    """The slice of RaftDisk the stream uses: a log held in memory from ``first``."""

    def __init__(self, last: int, first: int = 1) -> None:
        self.first = first
        self.log = {i: Entry(1, i, data=b"d%d" % i) for i in range(first, last + 1)}
        self.latest: SnapshotMeta | None = None
        self.reads: list[tuple[int, int]] = []

    def first_index(self) -> int:
        return self.first

    def latest_snapshot(self) -> SnapshotMeta | None:
        return self.latest

    def snapshot_path(self, meta: SnapshotMeta) -> Path:
        return Path(f"/snap/{meta.index}")

    async def read_entries(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        assert lo >= self.first and lo < hi
        self.reads.append((lo, hi))
        return [self.log[i] for i in range(lo, hi)]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, last: int = 0, first: int = 1) -> None:
        self.disk = FakeDisk(last, first)
        self.clock = Clock()
        self.sent: list[tuple[str, wire.Body]] = []
        self.down = False
        self.stream = ApplyStream(self._send, self.disk, self.clock)  # type: ignore[arg-type]

    async def _send(self, type_: str, body: wire.Body) -> None:
        if self.down:
            raise IpcError("storage is not connected")
        self.sent.append((type_, body))

    def commit(self, lo: int, hi: int) -> None:
        """The core hands out entries lo..hi."""
        self.stream.committed_entries(
            [self.disk.log.setdefault(i, Entry(1, i)) for i in range(lo, hi + 1)]
        )

    def pump(self) -> list[tuple[int, int]]:
        """Pump; the (first, last) index of each apply sent, and restores as (-index, 0)."""
        before = len(self.sent)
        asyncio.run(self.stream.pump())
        out = []
        for _, body in self.sent[before:]:
            if isinstance(body, wire.Apply):
                out.append((body.entries[0][0], body.entries[-1][0]))
            else:
                assert isinstance(body, wire.Restore)
                out.append((-body.index, 0))
        return out


def test_nothing_before_hello_then_everything_in_order() -> None:
    h = Harness(last=10)
    h.commit(1, 10)
    assert h.pump() == []
    h.stream.on_hello(0)
    assert h.pump() == [(1, 10)]
    assert h.disk.reads == []  # served from the buffer of handed-out entries
    h.commit(11, 12)
    assert h.pump() == [(11, 12)]


def test_batches_and_window(monkeypatch: Any) -> None:
    monkeypatch.setattr(apply_stream, "BATCH_ENTRIES", 4)
    monkeypatch.setattr(apply_stream, "APPLY_WINDOW", 10)
    h = Harness()
    h.commit(1, 30)
    h.stream.on_hello(0)
    assert h.pump() == [(1, 4), (5, 8), (9, 10)]
    assert h.pump() == []  # window full
    h.stream.on_applied(6)
    assert h.pump() == [(11, 14), (15, 16)]


def test_storage_ahead_after_a_restart_skips_what_it_has() -> None:
    h = Harness(last=20)
    h.stream.on_hello(15)
    h.commit(5, 20)  # a restarted core hands out from its snapshot again
    assert h.pump() == [(16, 20)]


def test_hello_rewinds_on_regression_and_on_a_stale_window_only() -> None:
    h = Harness()
    h.commit(1, 10)
    h.stream.on_hello(0)
    assert h.pump() == [(1, 10)]
    h.commit(11, 12)
    assert h.pump() == [(11, 12)]
    h.stream.on_hello(5)  # periodic hello while a young window is in flight: no resend
    assert h.pump() == []
    h.clock.now += apply_stream.APPLY_STALL  # that window is now stale: it was lost
    h.stream.on_hello(5)
    assert h.pump() == [(6, 12)]
    h.stream.on_applied(12)
    h.stream.on_hello(3)  # storage went backwards (restarted from older state)
    assert h.pump() == [(4, 12)]


def test_a_new_storage_process_gets_what_was_in_flight_at_once() -> None:
    """A crashed storage loses its batches in flight and those it applied but had not
    committed (it commits when it acknowledges, PROTOCOL.md §3.8); its successor's
    ``hello`` may say the very index consensus last heard, with a young window in
    flight. A new ``incarnation`` rewinds at once; the same one does not."""
    h = Harness()
    h.commit(1, 10)
    h.stream.on_hello(0, incarnation=7)
    assert h.pump() == [(1, 10)]
    h.stream.on_applied(4)  # committed up to 4; 5-10 applied in memory, or in flight
    h.stream.on_hello(4, incarnation=7)  # the same process, periodically: no resend
    assert h.pump() == []
    h.stream.on_hello(4, incarnation=9)  # a new process at the last commit
    assert h.pump() == [(5, 10)]


def test_old_entries_come_from_disk_when_the_buffer_let_them_go() -> None:
    h = Harness(last=50)
    h.commit(1, 50)
    h.stream.on_hello(0)
    h.pump()
    h.stream.on_applied(50)  # acknowledged: the buffer forgets them
    h.stream.on_hello(20)  # and storage comes back older
    assert h.pump() == [(21, 50)]
    assert h.disk.reads == [(21, 51)]


def test_a_failed_send_pauses_until_hello() -> None:
    h = Harness()
    h.commit(1, 5)
    h.stream.on_hello(0)
    h.down = True
    assert h.pump() == []
    h.down = False
    h.commit(6, 6)
    assert h.pump() == []  # paused: storage is gone until it says hello
    h.stream.on_hello(0)
    assert h.pump() == [(1, 6)]


def test_storage_behind_the_log_is_restored_and_waits_for_it() -> None:
    h = Harness(last=40, first=31)  # entries <= 30 were compacted away
    h.disk.latest = SnapshotMeta(30, 1, Membership(("n1",)))
    h.commit(31, 40)
    h.stream.on_hello(10)
    assert h.pump() == [(-30, 0)]
    assert h.stream.idle
    h.stream.on_hello(10)  # its periodic hello while restoring changes nothing
    assert h.pump() == []
    h.stream.on_hello(30)  # restored
    assert h.pump() == [(31, 40)]


def test_a_restore_that_never_completes_is_sent_again() -> None:
    h = Harness(last=40, first=31)
    h.disk.latest = SnapshotMeta(30, 1, Membership(("n1",)))
    h.commit(31, 40)
    h.stream.on_hello(0)
    assert h.pump() == [(-30, 0)]
    h.clock.now += apply_stream.RESTORE_RETRY
    h.stream.on_hello(0)
    assert h.pump() == [(-30, 0)]


def test_a_new_storage_process_gets_the_restore_its_predecessor_lost_at_once() -> None:
    h = Harness(last=40, first=31)
    h.disk.latest = SnapshotMeta(30, 1, Membership(("n1",)))
    h.commit(31, 40)
    h.stream.on_hello(0, incarnation=1)
    assert h.pump() == [(-30, 0)]
    h.stream.on_hello(0, incarnation=1)  # the same process, still restoring: nothing
    assert h.pump() == []
    h.stream.on_hello(0, incarnation=2)  # it crashed, with the restore: send it again
    assert h.pump() == [(-30, 0)]


def test_a_snapshot_installed_from_the_leader_drops_the_buffer() -> None:
    h = Harness(last=5)
    h.commit(1, 5)
    h.stream.on_hello(5)
    h.pump()
    meta = SnapshotMeta(100, 2, Membership(("n1",)))
    h.disk.first, h.disk.latest = 101, meta
    h.stream.installed(meta)
    assert h.pump() == [(-100, 0)]
    h.stream.on_hello(100)
    h.commit(101, 103)
    assert h.pump() == [(101, 103)]


def test_buffer_is_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(apply_stream, "BUFFER_ENTRIES", 10)
    h = Harness()
    h.commit(1, 25)  # storage absent: the buffer keeps only the newest 10
    assert [e.index for e in h.stream._buffer] == list(range(16, 26))
    h.stream.on_hello(0)
    assert h.pump() == [(1, 15), (16, 25)]
    assert h.disk.reads == [(1, 16)]
