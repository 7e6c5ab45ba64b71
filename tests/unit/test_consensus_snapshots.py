"""Local snapshots and compaction on one node, and restore for a storage left behind the log."""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq.asyncio

from concordance import errors, wire
from tests.unit.consensus_harness import (
    FakeFront,
    FakeStorage,
    Node,
    make_cfg,
    run,
    running,
    temp_dir,
    wait_for,
    wait_leader,
)


def snap_files(data_dir: str) -> list[Path]:
    return sorted((Path(data_dir) / "raft" / "snapshots").glob("*.snap"))


def test_snapshots_every_n_entries_compact_the_log_and_keep_two_files() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        with temp_dir() as d:
            cfg = make_cfg(d, snapshot_every=20, snapshot_trailing=5)
            async with running(cfg, ctx) as node:
                front, storage = FakeFront(ctx, d), FakeStorage(ctx, d)
                await wait_leader(front)
                await storage.hello()
                last = 0
                for n in range(100):
                    last = (await front.propose(b"v%d" % n)).index
                await wait_for(lambda: storage.applied >= last)
                disk, core = node.driver.disk, node.driver.core
                await wait_for(lambda: node.driver.snapshots.taken >= 4, what="snapshots")
                # The core learns of a snapshot once its file is adopted: wait for the two
                # to agree (another snapshot may be on its way while this test looks).
                await wait_for(lambda: core.snapshot == disk.latest_snapshot(), what="adopted")
                latest = disk.latest_snapshot()
                assert latest is not None and latest.index >= 60
                # Compacted to index - trailing, never past the snapshot.
                await wait_for(lambda: disk.first_index() > 1)
                assert disk.first_index() - 1 <= latest.index
                assert disk.first_index() - 1 >= node.driver.snapshots.last_index - 5 - 20
                assert disk.store.initial_state()[1] is not None
                # A save may be between writing its file and pruning the oldest one.
                await wait_for(lambda: len(snap_files(d)) <= 2, what="two snapshot files kept")

                # Storage's files were adopted (moved), not copied.
                def left_behind() -> list[str]:
                    return [p for p in storage.snapshots_written if Path(p).exists()]

                await wait_for(lambda: left_behind() == [], what="every snapshot adopted")
                await front.close()
                await storage.close()

    run(main)


def test_storage_behind_a_compacted_log_gets_a_restore_then_entries() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        with temp_dir() as d:
            cfg = make_cfg(d, snapshot_every=10, snapshot_trailing=0)
            async with running(cfg, ctx) as node:
                front, storage = FakeFront(ctx, d), FakeStorage(ctx, d)
                await wait_leader(front)
                await storage.hello()
                for n in range(40):
                    last = (await front.propose(b"w%d" % n)).index
                await wait_for(lambda: node.driver.disk.first_index() > 11, what="compaction")
                # Let the snapshot of the last entries land first: one still being taken
                # when the restore is chosen would make "the latest" move under the assertion.
                await wait_for(lambda: storage.applied >= last, what="every entry applied")

                def no_snapshot_due() -> bool:
                    latest = node.driver.disk.latest_snapshot()
                    return latest is not None and last - latest.index < cfg.snapshot_every

                await wait_for(no_snapshot_due, what="the last snapshot")
                await storage.close()
                # A new storage with an empty state: the log no longer starts at 1.
                fresh = FakeStorage(ctx, d)
                await fresh.hello()
                await wait_for(lambda: fresh.restores, what="restore")
                restore = fresh.restores[0]
                latest = node.driver.disk.latest_snapshot()
                assert latest is not None and restore.index == latest.index
                assert restore.term == latest.term
                assert Path(restore.path) == node.driver.disk.snapshot_path(latest)
                last = (await front.propose(b"tail")).index
                await wait_for(lambda: fresh.applied >= last)
                assert min(fresh.entries) == restore.index + 1
                assert fresh.commands()[-1] == b"tail"
                await front.close()
                await fresh.close()

    run(main)


def test_snapshot_now_answers_with_index_term_and_size() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), ctx) as node:
                front = FakeFront(ctx, d)
                await wait_leader(front)
                with pytest.raises(errors.Unavailable):  # no storage connected
                    await front.request("snapshot_now", wire.SnapshotNow())
                storage = FakeStorage(ctx, d)
                await storage.hello()
                last = (await front.propose(b"a", b"b", b"c")).index
                await wait_for(lambda: storage.applied >= last)
                reply = await front.request("snapshot_now", wire.SnapshotNow(), timeout=10)
                assert isinstance(reply, wire.SnapshotNowOk)
                assert reply.index == last
                assert reply.term == node.driver.core.term
                assert reply.bytes == len(b"state up to %d\n" % last)
                assert snap_files(d)
                await front.close()
                await storage.close()

    run(main)


def test_a_snapshot_from_another_history_is_discarded() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), ctx) as node:
                front, storage = FakeFront(ctx, d), FakeStorage(ctx, d)
                await wait_leader(front)
                await storage.hello()
                last = (await front.propose(b"a")).index
                await wait_for(lambda: storage.applied >= last)
                bogus = Path(d) / "bogus.snap"
                bogus.write_bytes(b"x")
                wrong_term = node.driver.core.term + 5
                await storage.client.send(
                    "snapshot_taken", wire.SnapshotTaken(last, wrong_term, str(bogus))
                )
                beyond = Path(d) / "beyond.snap"
                beyond.write_bytes(b"y")
                await storage.client.send(
                    "snapshot_taken", wire.SnapshotTaken(last + 50, 1, str(beyond))
                )
                await wait_for(lambda: not bogus.exists() and not beyond.exists())
                assert node.driver.snapshots.taken == 0 and snap_files(d) == []
                assert node.driver.disk.first_index() == 1
                await front.close()
                await storage.close()

    run(main)


def test_restart_after_compaction_resumes_from_the_snapshot() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        with temp_dir() as d:
            cfg = make_cfg(d, snapshot_every=10, snapshot_trailing=2)
            node = await Node.start(cfg, ctx)
            front, storage = FakeFront(ctx, d), FakeStorage(ctx, d)
            await wait_leader(front)
            await storage.hello()
            for n in range(35):
                last = (await front.propose(b"r%d" % n)).index
            await wait_for(lambda: storage.applied >= last)
            await wait_for(lambda: node.driver.snapshots.taken >= 2)
            await node.stop()
            first = node.driver.disk.first_index()  # as closed (a snapshot may land until then)
            node = await Node.start(cfg, ctx)
            assert node.driver.disk.first_index() == first
            assert node.driver.core.snapshot is not None
            assert node.driver.core.snapshot.index >= first - 1
            await wait_leader(front)
            await storage.hello()
            more = (await front.propose(b"more")).index
            await wait_for(lambda: storage.applied >= more)
            assert storage.commands()[-1] == b"more"
            assert sorted(storage.entries) == list(range(1, more + 1))
            await node.stop()
            await front.close()
            await storage.close()

    run(main)
