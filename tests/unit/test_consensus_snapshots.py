"""Compaction behind storage's durable index (no copy) on one node; snapshot files on demand;
restore for a storage left behind the log."""

from __future__ import annotations

from pathlib import Path

import pytest

from concordance import errors
from concordance.protocol import wire
from concordance.testing.memory_ipc import MemoryIpc
from concordance.testing.poll import until
from tests.unit.consensus_harness import (
    FakeFront,
    FakeStorage,
    Node,
    make_cfg,
    run,
    running,
    temp_dir,
    wait_leader,
)


def snap_files(data_dir: str) -> list[Path]:
    return sorted((Path(data_dir) / "raft" / "snapshots").glob("*.snap"))


def test_compaction_cuts_the_log_behind_the_durable_index_and_copies_nothing() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            cfg = make_cfg(d, snapshot_every=20, snapshot_trailing=5)
            async with running(cfg, net) as node:
                front, storage = FakeFront(net, d), FakeStorage(net, d)
                await wait_leader(front)
                await storage.hello()
                last = 0
                for n in range(100):
                    last = (await front.propose(b"v%d" % n)).index
                await until(lambda: storage.applied >= last)
                disk, policy = node.driver.disk, node.driver.snapshots
                await until(lambda: policy.compactions >= 3, "compactions")
                await until(lambda: disk.first_index() - 1 >= last - 5 - 20, "log cut")
                # Cut behind what storage reported durable, less the trailing entries.
                assert disk.first_index() - 1 <= policy.checkpointed - 5
                assert storage.checkpoints >= 3
                # No copy of the state anywhere: storage never asked, no file kept.
                assert storage.snapshots_written == [] and snap_files(d) == []
                assert node.driver.snapshots.taken == 0
                # raft.db records the base, the restart point.
                base = disk.store.initial_state()[1]
                assert base is not None and base.index == disk.first_index() - 1
                await front.close()
                await storage.close()

    run(main)


def test_the_log_is_not_cut_without_a_durable_answer() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            cfg = make_cfg(d, snapshot_every=10, snapshot_trailing=0)
            async with running(cfg, net) as node:
                front, storage = FakeFront(net, d), FakeStorage(net, d)
                storage.durable_answers = False  # applied, but never made durable
                await wait_leader(front)
                await storage.hello()
                for n in range(40):
                    last = (await front.propose(b"u%d" % n)).index
                await until(lambda: storage.applied >= last)
                await until(lambda: storage.checkpoints >= 1, "a checkpoint request")
                assert node.driver.disk.first_index() == 1
                # A durable report for an index lets the log go up to it, no further.
                await storage.client.send("durable", wire.Durable(25))
                await until(lambda: node.driver.disk.first_index() == 26, "cut at 25")
                await front.close()
                await storage.close()

    run(main)


def test_storage_behind_a_compacted_log_gets_a_restore_then_entries() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            cfg = make_cfg(d, snapshot_every=10, snapshot_trailing=0)
            async with running(cfg, net) as node:
                front, storage = FakeFront(net, d), FakeStorage(net, d)
                await wait_leader(front)
                await storage.hello()
                for n in range(40):
                    last = (await front.propose(b"w%d" % n)).index
                await until(lambda: storage.applied >= last, "every entry applied")
                await until(lambda: node.driver.disk.first_index() > 31, "compaction")
                # Compaction made no file; an operator's snapshot_now makes one.
                assert snap_files(d) == []
                reply = await front.request("snapshot_now", wire.SnapshotNow(), timeout=10)
                assert isinstance(reply, wire.SnapshotNowOk) and reply.index == last
                await storage.close()
                # A new storage with an empty state: the log no longer starts at 1.
                fresh = FakeStorage(net, d)
                await fresh.hello()
                await until(lambda: fresh.restores, "restore")
                restore = fresh.restores[0]
                latest = node.driver.disk.latest_snapshot()
                assert latest is not None and restore.index == latest.index == last
                assert Path(restore.path) == node.driver.disk.snapshot_path(latest)
                tail = (await front.propose(b"tail")).index
                await until(lambda: fresh.applied >= tail)
                assert min(fresh.entries) == restore.index + 1
                assert fresh.commands()[-1] == b"tail"
                await front.close()
                await fresh.close()

    run(main)


def test_snapshot_now_answers_with_index_term_and_size() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), net) as node:
                front = FakeFront(net, d)
                await wait_leader(front)
                with pytest.raises(errors.Unavailable):  # no storage connected
                    await front.request("snapshot_now", wire.SnapshotNow())
                storage = FakeStorage(net, d)
                await storage.hello()
                last = (await front.propose(b"a", b"b", b"c")).index
                await until(lambda: storage.applied >= last)
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
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), net) as node:
                front, storage = FakeFront(net, d), FakeStorage(net, d)
                await wait_leader(front)
                await storage.hello()
                last = (await front.propose(b"a")).index
                await until(lambda: storage.applied >= last)
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
                await until(lambda: not bogus.exists() and not beyond.exists())
                assert node.driver.snapshots.taken == 0 and snap_files(d) == []
                assert node.driver.disk.first_index() == 1
                await front.close()
                await storage.close()

    run(main)


def test_restart_after_compaction_resumes_from_the_log_base() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            cfg = make_cfg(d, snapshot_every=10, snapshot_trailing=2)
            node = await Node.start(cfg, net)
            front, storage = FakeFront(net, d), FakeStorage(net, d)
            await wait_leader(front)
            await storage.hello()
            for n in range(35):
                last = (await front.propose(b"r%d" % n)).index
            await until(lambda: storage.applied >= last)
            await until(lambda: node.driver.snapshots.compactions >= 2)
            await node.stop()
            first = node.driver.disk.first_index()  # as closed (a compaction may land until then)
            node = await Node.start(cfg, net)
            assert node.driver.disk.first_index() == first > 1
            base = node.driver.core.snapshot
            assert base is not None and base.index == first - 1  # a base with no file
            assert snap_files(d) == []
            await wait_leader(front)
            await storage.hello()
            more = (await front.propose(b"more")).index
            await until(lambda: storage.applied >= more)
            assert storage.commands()[-1] == b"more"
            assert sorted(storage.entries) == list(range(1, more + 1))
            await node.stop()
            await front.close()
            await storage.close()

    run(main)


def test_a_restarted_driver_knows_the_snapshot_file_on_its_disk() -> None:
    """A log compacted behind a checkpoint starts, after a restart, from a base record
    with no file; the newest snapshot file on disk (taken before the stop) is what
    a follower behind that base needs. The core must know of it: before, it knew
    only the base, wanted a snapshot, and the driver asked for none (a file reaching
    the index exists), so that follower stayed behind for good."""

    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            cfg = make_cfg(d, snapshot_every=10, snapshot_trailing=2)
            node = await Node.start(cfg, net)
            front, storage = FakeFront(net, d), FakeStorage(net, d)
            await wait_leader(front)
            await storage.hello()
            for n in range(25):
                last = (await front.propose(b"r%d" % n)).index
            await until(lambda: storage.applied >= last)
            await until(lambda: node.driver.snapshots.compactions >= 1)
            reply = await front.request("snapshot_now", wire.SnapshotNow(), timeout=10)
            assert isinstance(reply, wire.SnapshotNowOk)
            await node.stop()
            base = node.driver.disk.first_index() - 1
            assert reply.index > base
            node = await Node.start(cfg, net)
            known = node.driver.core.snapshot
            assert known is not None and known.index == reply.index
            assert node.driver.disk.snapshots.has(known)
            await node.stop()
            await front.close()
            await storage.close()

    run(main)
