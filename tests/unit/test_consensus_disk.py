"""RaftDisk: bootstrap, the db thread, and the tail cache that must always agree with raft.db."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import pytest

from concordance.consensus.disk import RaftDisk, _Tail
from concordance.raft.entries import Entry, HardState, Membership, SnapshotMeta
from concordance.raft.ready import Ready
from concordance.raft.stores import LogCompacted, LogUnavailable, MemoryRaftStore
from tests.unit.consensus_harness import temp_dir

BOOT = Membership(("n1",), (), (("n1", "127.0.0.1:1"),))


def ready(
    entries: list[Entry] | None = None,
    hard: HardState | None = None,
    snapshot: SnapshotMeta | None = None,
) -> Ready:
    return Ready(None, hard, tuple(entries or ()), snapshot, (), (), (), ())


def test_tail_agrees_with_a_store_under_random_writes() -> None:
    rng = random.Random(7)
    store, tail = MemoryRaftStore(), _Tail(max_entries=40, max_bytes=10_000)
    term = 1
    for _ in range(2000):
        op = rng.random()
        last = store.last_index()
        if op < 0.6:
            first = rng.randint(store.first_index(), last + 1)
            term += rng.random() < 0.2
            batch = [
                Entry(term, first + n, data=b"x" * rng.randint(0, 50))
                for n in range(rng.randint(1, 8))
            ]
            store.persist(None, batch)
            tail.put(batch)
        elif op < 0.7 and last >= store.first_index():
            upto = rng.randint(store.first_index(), last)
            store.compact(upto)
            tail.drop_through(upto)
        elif op < 0.75:
            snap = SnapshotMeta(last + rng.randint(0, 5), term, BOOT)
            store.persist(None, [], snap)
            tail.clear()
        lo = rng.randint(store.first_index(), store.last_index() + 1)
        hi = rng.randint(lo, store.last_index() + 1)
        budget = rng.choice([None, 1, 60, 500])
        got = tail.get(lo, hi, budget)
        if got is not None:
            assert got == store.entries(lo, hi, budget)


def test_open_bootstraps_once_and_persists_in_its_own_thread() -> None:
    async def main(d: str) -> None:
        calls: list[str] = []

        def boot() -> Membership:
            calls.append(threading.current_thread().name)
            return BOOT

        disk = await RaftDisk.open(Path(d) / "raft", boot)
        assert disk.bootstrapped and calls and calls[0].startswith("raft-db")
        assert disk.initial_snapshot == SnapshotMeta(0, 0, BOOT)
        await disk.persist(ready([Entry(1, 1), Entry(1, 2)], HardState(1, "n1", 0)))
        await disk.persist(ready([], HardState(1, "n1", 2)))
        assert disk.fsyncs == 2
        await disk.persist(ready())  # nothing durable: no fsync, no thread hop
        assert disk.fsyncs == 2
        # The core's view reads on the loop thread; rows hop to the db thread if not cached.
        disk.tail.clear()
        assert disk.view.entries(1, 3) == [Entry(1, 1), Entry(1, 2)]
        assert disk.cache_misses == 1
        assert disk.view.config_entries() == []
        with pytest.raises(LogUnavailable):
            disk.view.entries(1, 4)
        await disk.close()

        disk = await RaftDisk.open(Path(d) / "raft", lambda: Membership(("other",)))
        assert not disk.bootstrapped
        assert disk.initial_hard_state == HardState(1, "n1", 2)
        assert disk.initial_snapshot == SnapshotMeta(0, 0, BOOT)
        assert disk.view.last_index() == 2 and disk.view.term(2) == 1
        await disk.close()
        await disk.close()  # idempotent

    with temp_dir() as d:
        asyncio.run(main(d))


def test_save_snapshot_keeps_two_files_and_leaves_the_log_alone() -> None:
    async def main(d: str) -> None:
        disk = await RaftDisk.open(Path(d) / "raft", lambda: BOOT)
        await disk.persist(ready([Entry(1, i) for i in range(1, 31)], HardState(1, "n1", 30)))
        for n, index in enumerate((10, 20, 30)):
            src = Path(d) / f"s{n}"
            src.write_bytes(b"state %d" % index)
            meta = SnapshotMeta(index, 1, BOOT)
            size = await disk.save_snapshot(meta, str(src))
            assert size == len(b"state %d" % index)
            assert not src.exists()
            assert disk.latest_snapshot() == meta
        assert disk.first_index() == 1
        assert len(list((Path(d) / "raft" / "snapshots").glob("*.snap"))) == 2
        await disk.close()

    with temp_dir() as d:
        asyncio.run(main(d))


def test_compact_behind_records_the_base_and_cuts_the_log_with_no_file() -> None:
    async def main(d: str) -> None:
        disk = await RaftDisk.open(Path(d) / "raft", lambda: BOOT)
        await disk.persist(ready([Entry(1, i) for i in range(1, 31)], HardState(1, "n1", 30)))
        assert await disk.compact_behind(SnapshotMeta(25, 1, BOOT)) == 25
        assert await disk.compact_behind(SnapshotMeta(20, 1, BOOT)) == 25  # never back
        assert disk.first_index() == 26 and disk.latest_snapshot() is None
        assert list((Path(d) / "raft" / "snapshots").iterdir()) == []
        with pytest.raises(LogCompacted):
            disk.view.entries(25, 27)
        assert [e.index for e in await disk.read_entries(26, 31, 1 << 20)] == list(range(26, 31))
        await disk.close()
        disk = await RaftDisk.open(Path(d) / "raft", lambda: BOOT)
        assert disk.initial_snapshot == SnapshotMeta(25, 1, BOOT)  # the restart point
        assert disk.first_index() == 26
        await disk.close()

    with temp_dir() as d:
        asyncio.run(main(d))
