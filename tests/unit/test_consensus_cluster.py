"""Three consensus drivers in one process, joined by a relay standing in for their fronts."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from concordance import errors
from concordance.clock import SYSTEM_CLOCK
from concordance.protocol import wire
from concordance.raft.ready import Ready
from concordance.testing.memory_ipc import MemoryIpc
from concordance.testing.poll import until
from tests.unit.consensus_harness import FakeStorage, cluster, run


def applied_at_least(storage: FakeStorage, index: int) -> Callable[[], bool]:
    return lambda: storage.applied >= index


def holds(storage: FakeStorage, command: bytes) -> Callable[[], bool]:
    return lambda: command in storage.commands()


def test_three_nodes_elect_replicate_and_survive_the_leader() -> None:
    async def main(net: MemoryIpc) -> None:
        async with cluster(net, 3) as c:
            leader = await c.wait_one_leader()
            term = c.nodes[leader].driver.core.term
            front = c.fronts[leader]
            last = 0
            for n in range(20):
                reply = await front.propose(b"k%d" % n)
                assert not reply.forwarded
                last = reply.index
            for nid, storage in c.storages.items():
                await until(applied_at_least(storage, last), f"apply on {nid}", clock=net.clock)
                assert storage.commands() == [b"k%d" % n for n in range(20)]
            status = await front.status()
            assert status.role == "leader" and len(status.members) == 3
            assert all(m.voter and m.match >= last for m in status.members)
            assert {m.address for m in status.members} == {
                "127.0.0.1:4101",
                "127.0.0.1:4102",
                "127.0.0.1:4103",
            }

            await c.stop_node(leader)
            new_leader = await c.wait_one_leader()
            assert new_leader != leader
            assert c.nodes[new_leader].driver.core.term > term
            after = (await c.fronts[new_leader].propose(b"after")).index
            for nid in c.nodes:
                await until(
                    applied_at_least(c.storages[nid], after), f"apply on {nid}", clock=net.clock
                )

            # The old leader comes back as a follower and catches up.
            await c.start_node(leader)
            old = c.storages[leader]
            await until(lambda: old.applied >= after, "catch-up", clock=net.clock)
            assert old.commands()[-1] == b"after"
            assert c.nodes[leader].driver.core.leader_id == new_leader

    run(main)


def test_committed_entries_go_to_storage_before_the_fsync_of_newer_ones() -> None:
    """A Ready that writes new entries and hands out older committed ones (a follower
    taking an append that carries the previous commit; a leader with acks and new
    proposals in one turn) sends the committed ones to storage first: they are durable
    already (the driver contract), so neither a follower's storage nor a write's answer
    waits for the fsync of the entries behind them."""

    async def main(net: MemoryIpc) -> None:
        async with cluster(net, 3) as c:
            leader = await c.wait_one_leader()
            seen: list[tuple[str, int, int]] = []  # (node, last committed, sent) at the fsync
            for nid, node in c.nodes.items():
                driver, persist = node.driver, node.driver.disk.persist

                async def recording(
                    rd: Ready, nid: str = nid, driver: Any = driver, persist: Any = persist
                ) -> None:
                    if rd.entries and rd.committed and rd.snapshot is None:
                        seen.append((nid, rd.committed[-1].index, driver.stream.sent))
                    await persist(rd)

                driver.disk.persist = recording
            last = 0
            for n in range(30):
                last = (await c.fronts[leader].propose(b"k%d" % n)).index
            for nid, storage in c.storages.items():
                await until(applied_at_least(storage, last), f"apply on {nid}", clock=net.clock)
            assert seen, "no Ready wrote entries and handed out committed ones"
            assert all(sent >= committed for _, committed, sent in seen), seen

    run(main)


def test_followers_forward_proposals_and_read_index_to_the_leader() -> None:
    async def main(net: MemoryIpc) -> None:
        async with cluster(net, 3) as c:
            leader = await c.wait_one_leader()
            follower = next(nid for nid in c.nodes if nid != leader)
            front = c.fronts[follower]
            reply = await front.propose(b"via-follower")
            assert reply.forwarded and reply.index == 0
            storage = c.storages[follower]
            await until(lambda: b"via-follower" in storage.commands(), clock=net.clock)
            applied = storage.applied
            index = await front.read_index()
            assert index >= applied
            status = await front.status()
            assert status.role == "follower" and status.leader_id == leader
            mine = next(m for m in status.members if m.node_id == follower)
            assert mine.match >= applied
            assert all(m.match == 0 for m in status.members if m.node_id != follower)

    run(main)


def test_leadership_transfer() -> None:
    async def main(net: MemoryIpc) -> None:
        async with cluster(net, 3) as c:
            leader = await c.wait_one_leader()
            target = next(nid for nid in sorted(c.nodes) if nid != leader)
            await c.fronts[leader].propose(b"before")
            await until(
                lambda: all(
                    s.applied >= c.nodes[leader].driver.core.log.commit for s in c.storages.values()
                ),
                clock=net.clock,
            )
            assert isinstance(
                await c.fronts[leader].request("transfer", wire.Transfer(target)), wire.Ok
            )
            await until(lambda: c.leaders() == [target], "transfer", clock=net.clock)
            assert await c.wait_one_leader() == target

    run(main)


def test_a_write_forwarded_during_a_transfer_comes_back_dropped() -> None:
    """The bug this guards: a follower's write forwarded while the leader is
    transferring leadership was swallowed, and the follower's front waited for
    its deadline (504). Now the leader refuses it, the follower's consensus
    tells its front ``dropped``, and the command is never applied anywhere."""

    async def main(net: MemoryIpc) -> None:
        # 50 ticks of 10 ms: the leader keeps a stalled transfer pending for 0.5 s.
        async with cluster(net, 3, election_ticks=50) as c:
            leader = await c.wait_one_leader()
            target, other = (nid for nid in sorted(c.nodes) if nid != leader)
            await c.stop_node(target)  # it misses the next entry: the transfer must wait
            await c.fronts[leader].propose(b"target-misses-this")
            reply = await c.fronts[leader].request("transfer", wire.Transfer(target))
            assert isinstance(reply, wire.Ok)
            assert (await c.fronts[other].propose(b"during-transfer")).forwarded
            await until(lambda: c.fronts[other].dropped, "dropped", timeout=5, clock=net.clock)
            assert c.fronts[other].dropped == [b"during-transfer"]
            # The transfer times out; the leader accepts writes again.
            await until(
                lambda: c.nodes[leader].driver.core.lead_transferee is None,
                timeout=5,
                clock=net.clock,
            )
            await c.fronts[other].propose(b"after")
            for storage in (c.storages[leader], c.storages[other]):
                await until(holds(storage, b"after"), timeout=5, clock=net.clock)
                assert b"during-transfer" not in storage.commands()

    run(main)


def test_a_follower_far_behind_gets_a_snapshot_made_on_demand_in_bounded_chunks() -> None:
    """Compaction made no snapshot; the leader has one made when the lagger needs it,
    streams it in chunks of at most ``snapshot_chunk_bytes`` (1 MiB), one in flight,
    and the lagger restores from a byte-identical file."""

    async def main(net: MemoryIpc) -> None:
        async with cluster(net, 3, snapshot_every=10, snapshot_trailing=0) as c:
            leader = await c.wait_one_leader()
            lagger = next(nid for nid in sorted(c.nodes) if nid != leader)
            c.storages[leader].snapshot_padding = (5 << 20) // 2  # 2.5 MiB: three chunks
            await c.stop_node(lagger)
            driver = c.nodes[leader].driver
            # Until CheckQuorum marks the lagger inactive, the leader's compaction keeps
            # the entries it still needs (replication.still_needed); wait that out, or
            # 60 quick proposals never get the log cut past 20.
            progress = driver.core.progress
            await until(
                lambda: not progress[lagger].recent_active, "lagger inactive", clock=net.clock
            )
            for n in range(60):
                last = (await c.fronts[leader].propose(b"s%d" % n)).index
            await until(
                lambda: driver.disk.first_index() > 20, "leader compaction", clock=net.clock
            )
            assert driver.snapshots.taken == 0 and c.storages[leader].snapshots_written == []
            await c.start_node(lagger)
            storage = c.storages[lagger]
            await until(
                lambda: storage.restores, "restore on the lagger", timeout=20, clock=net.clock
            )
            restore = storage.restores[-1]
            assert restore.index > 20  # beyond what the leader still has in its log
            assert driver.snapshots.taken == 1  # made on demand, once
            latest = driver.disk.latest_snapshot()
            assert latest is not None and latest.index == restore.index
            sent = driver.disk.snapshot_path(latest).read_bytes()
            assert Path(restore.path).read_bytes() == sent  # restored from the same bytes
            chunks = sorted({(o, n) for to, o, n in c.snapshot_chunks if to == lagger})
            assert [o for o, _ in chunks] == [0, 1 << 20, 2 << 20]
            assert all(n <= 1 << 20 for _, n in chunks) and sum(n for _, n in chunks) == len(sent)
            # The lagger's log restarted after the snapshot (it may have compacted since).
            assert c.nodes[lagger].driver.disk.first_index() > 20
            await until(lambda: storage.applied >= last, "lagger catches up", clock=net.clock)
            after = (await c.fronts[leader].propose(b"end")).index
            await until(lambda: storage.applied >= after, clock=net.clock)
            assert storage.commands()[-1] == b"end"
            assert min(i for i in storage.entries if i > restore.index) == restore.index + 1

    # The system clock: the snapshot is made, saved and read in chunks on the db threads
    # (real I/O), and a manual clock moved meanwhile would let elections overtake it.
    run(main, clock=SYSTEM_CLOCK)


def test_stopping_answers_parked_reads_unavailable() -> None:
    async def main(net: MemoryIpc) -> None:
        async with cluster(net, 3) as c:
            leader = await c.wait_one_leader()
            await c.fronts[leader].propose(b"x")
            for nid in [n for n in c.nodes if n != leader]:
                await c.stop_node(nid)
            # Without a quorum the read cannot be confirmed: it waits, then fails fast
            # (the leader steps down, or is stopped) instead of timing out.
            read = asyncio.ensure_future(c.fronts[leader].read_index(timeout=5))
            await until(lambda: len(c.nodes[leader].driver.reads) or read.done(), clock=net.clock)
            await c.stop_node(leader)
            with pytest.raises(errors.Unavailable):
                await read

    run(main)


def test_a_joiner_is_added_as_learner_then_promoted() -> None:
    async def main(net: MemoryIpc) -> None:
        # Promotion by hand: the leader's automatic promotion is off here.
        async with cluster(net, 3, joiners=1, auto_promote=False) as c:
            leader = await c.wait_one_leader()
            front = c.fronts[leader]
            joiner = c.nodes["n4"].driver
            assert (await c.fronts["n4"].status()).role == "learner"
            await front.propose(b"before")
            added = await front.request(
                "conf_change", wire.ConfChange("add_learner", "n4", "127.0.0.1:4104")
            )
            assert isinstance(added, wire.Proposed) and added.index > 0
            storage = c.storages["n4"]
            await until(
                lambda: b"before" in storage.commands(), "learner catches up", clock=net.clock
            )
            assert joiner.core.leader_id == leader
            status = await c.fronts["n4"].status()
            assert status.role == "learner"
            assert {m.node_id: m.voter for m in status.members}["n4"] is False
            await until(
                lambda: c.nodes[leader].driver.core.log.commit >= added.index, clock=net.clock
            )
            promoted = await front.request("conf_change", wire.ConfChange("add_voter", "n4"))
            assert isinstance(promoted, wire.Proposed)
            await until(lambda: joiner.core.membership.is_voter("n4"), "promotion", clock=net.clock)
            await until(lambda: joiner.core.role.value == "follower", clock=net.clock)
            leader_view = await front.status()
            n4 = next(m for m in leader_view.members if m.node_id == "n4")
            assert n4.voter and n4.address == "127.0.0.1:4104"
            with pytest.raises(errors.Unavailable):  # one change at a time, or already a voter
                await front.request("conf_change", wire.ConfChange("add_voter", "n4"))
            last = (await front.propose(b"after")).index
            await until(lambda: storage.applied >= last, clock=net.clock)

    run(main)
