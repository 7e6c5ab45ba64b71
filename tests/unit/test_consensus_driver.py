"""The consensus driver on one node: real zmq, real raft.db, storage and front played by doubles."""

from __future__ import annotations

import asyncio

import pytest

from concordance import errors
from concordance.consensus import ConsensusDriver, boot_membership
from concordance.protocol import wire
from concordance.raft import messages as rm
from concordance.raft.entries import EntryKind
from concordance.raft.sqlite_store import StoreFailed
from concordance.testing.memory_ipc import MemoryIpc
from concordance.testing.poll import until, until_answered
from concordance.timing import CONSENSUS_DRAIN, CONSENSUS_FLUSH
from tests.unit.consensus_harness import (
    FakeFront,
    FakeStorage,
    Node,
    make_cfg,
    manual,
    run,
    running,
    temp_dir,
    wait_leader,
    wait_status,
)


def test_single_node_leads_and_applies_proposals_in_order() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), net):
                front, storage = FakeFront(net, d), FakeStorage(net, d)
                status = await wait_leader(front)
                assert status.leader_id == "n1" and status.term >= 1
                await storage.hello()
                last = 0
                for n in range(20):
                    reply = await front.propose(b"cmd-%d" % n)
                    assert not reply.forwarded and reply.index > last
                    last = reply.index
                await until(lambda: storage.applied >= last, "apply")
                assert storage.commands() == [b"cmd-%d" % n for n in range(20)]
                # Every index arrives once and in order: NOOP first, then the commands.
                assert sorted(storage.entries) == list(range(1, last + 1))
                assert storage.entries[1][1] == EntryKind.NOOP
                await wait_status(front, lambda s: s.applied >= last)
                await front.close()
                await storage.close()

    run(main)


def test_nothing_is_applied_before_hello_and_batches_follow_it() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), net) as node:
                front, storage = FakeFront(net, d), FakeStorage(net, d)
                await wait_leader(front)
                reply = await front.propose(*[b"c%d" % n for n in range(50)])
                await until(lambda: node.driver.core.log.applied >= reply.index)
                assert storage.batches == []  # no hello yet: nothing sent
                await storage.hello()
                await until(lambda: storage.applied >= reply.index)
                assert len(storage.commands()) == 50
                await until(lambda: node.driver.stream.acked == reply.index)
                await front.close()
                await storage.close()

    run(main)


def test_concurrent_proposals_share_fsyncs() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), net) as node:
                front, storage = FakeFront(net, d), FakeStorage(net, d)
                await wait_leader(front)
                await storage.hello()
                before = node.driver.disk.fsyncs
                rounds, per_round = 5, 50
                for r in range(rounds):
                    replies = await asyncio.gather(
                        *[front.propose(b"r%d-%d" % (r, n)) for n in range(per_round)]
                    )
                    assert len({p.index for p in replies}) == per_round
                total = rounds * per_round
                last = max(p.index for p in replies)
                await until(lambda: storage.applied >= last)
                fsyncs = node.driver.disk.fsyncs - before
                assert fsyncs < total / 4, f"{fsyncs} fsyncs for {total} proposals"
                assert len(storage.commands()) == total
                await front.close()
                await storage.close()

    run(main)


def test_read_index_covers_acknowledged_proposals() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), net):
                front = FakeFront(net, d)
                await wait_leader(front)
                for n in range(5):
                    proposed = await front.propose(b"x%d" % n)
                    # The read index may be served once committed: it covers the write.
                    index = await wait_read_index_at_least(front, proposed.index)
                    assert index >= proposed.index
                await front.close()

    run(main)


async def wait_read_index_at_least(front: FakeFront, index: int) -> int:
    return await until_answered(front.read_index, lambda got: got >= index, f"read index {index}")


def test_read_index_is_never_below_commit_at_request_time() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), net) as node:
                front = FakeFront(net, d)
                await wait_leader(front)
                proposed = await front.propose(b"a", b"b")
                await until(lambda: node.driver.core.log.commit >= proposed.index)
                assert await front.read_index() >= proposed.index
                await front.close()

    run(main)


def test_status_fields() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            cfg = make_cfg(d, listen="127.0.0.1:4555")
            async with running(cfg, net) as node:
                front, storage = FakeFront(net, d), FakeStorage(net, d)
                await wait_leader(front)
                await storage.hello()
                proposed = await front.propose(b"s")
                await until(lambda: storage.applied >= proposed.index)
                await until(lambda: node.driver.stream.acked == proposed.index)
                status = await front.status()
                assert status.node_id == "n1"
                assert status.role == "leader"
                assert status.leader_id == "n1"
                assert status.commit == proposed.index
                assert status.applied == proposed.index
                assert status.term == node.driver.core.term
                assert status.members == (
                    wire.MemberStatus("n1", "127.0.0.1:4555", True, proposed.index),
                )
                await front.close()
                await storage.close()

    run(main)


def test_restart_keeps_log_and_resumes_apply_where_storage_is() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            cfg = make_cfg(d)
            node = await Node.start(cfg, net)
            front, storage = FakeFront(net, d), FakeStorage(net, d)
            await wait_leader(front)
            await storage.hello()
            last = 0
            for n in range(10):
                last = (await front.propose(b"p%d" % n)).index
            await until(lambda: storage.applied >= last)
            term, commit = node.driver.core.term, node.driver.core.log.commit
            await node.stop()
            await storage.close()

            # A storage that had applied only up to index 4 (say it lost its tail).
            node = await Node.start(make_cfg(d, peers={}, join=None), net)
            core = node.driver.core
            assert core.term >= term and core.log.commit >= commit
            assert core.log.last_index() >= last
            assert not node.driver.disk.bootstrapped
            storage2 = FakeStorage(net, d, applied=4, applied_term=term)
            await wait_leader(front)
            await storage2.hello()
            await until(lambda: storage2.applied >= last)
            assert min(storage2.entries) == 5  # resumed right after storage's index
            assert storage2.batches[0][0] == 5
            assert (
                storage2.commands() == [b"p%d" % n for n in range(10)][-len(storage2.commands()) :]
            )
            more = (await front.propose(b"after")).index
            await until(lambda: storage2.applied >= more)
            assert storage2.commands()[-1] == b"after"
            await node.stop()
            await front.close()
            await storage2.close()

    run(main)


def test_storage_hello_with_older_index_gets_entries_again() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), net):
                front, storage = FakeFront(net, d), FakeStorage(net, d)
                await wait_leader(front)
                await storage.hello()
                last = (await front.propose(*[b"e%d" % n for n in range(30)])).index
                await until(lambda: storage.applied >= last)
                # Storage restarts from an older state.db: it says so with hello.
                storage.applied = 3
                storage.entries = {i: e for i, e in storage.entries.items() if i <= 3}
                await storage.hello()
                await until(lambda: storage.applied >= last)
                assert sorted(storage.entries) == list(range(1, last + 1))
                await front.close()
                await storage.close()

    run(main)


def test_a_gap_makes_storage_say_hello_and_the_stream_recovers() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), net) as node:
                front, storage = FakeFront(net, d), FakeStorage(net, d, auto_ack=False)
                await wait_leader(front)
                await storage.hello()
                first = (await front.propose(b"g1")).index
                await until(lambda: storage.applied >= first)
                # Pretend the next batch was lost on the way: storage never saw it.
                second = (await front.propose(b"g2")).index
                await until(lambda: storage.applied >= second)
                storage.applied = first
                del storage.entries[second]
                # A stale window is resent on the next hello (STALL is 1 s).
                node.driver.stream._inflight[0] = (second, 0.0)
                await storage.hello()
                await until(lambda: second in storage.entries)
                await front.close()
                await storage.close()

    run(main)


def test_join_mode_node_is_not_leader_and_refuses() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d, join="127.0.0.1:4200"), net) as node:
                front = FakeFront(net, d)
                assert node.driver.core.membership.voters == ()
                with pytest.raises(errors.Unavailable):
                    await front.propose(b"nope")
                with pytest.raises(errors.Unavailable):
                    await front.read_index()
                with pytest.raises(errors.Unavailable):
                    await front.request("transfer", wire.Transfer())
                status = await front.status()
                assert status.role == "learner" and status.leader_id is None
                assert status.members == ()
                await front.close()

    run(main)


def test_bad_requests_and_garbage_frames_do_not_hurt() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), net) as node:
                front = FakeFront(net, d)
                await wait_leader(front)
                node.hub.inject("n1", [b"\xc1garbage", b""])
                with pytest.raises(errors.InvalidRequest):
                    await front.request("propose", wire.Propose(()))
                with pytest.raises(errors.InvalidRequest):
                    await front.request("conf_change", wire.ConfChange("promote", "n9"))
                with pytest.raises(errors.InvalidRequest):
                    await front.request("get", wire.Get("tenant:a/k", 0))
                # Storage reports from the front are ignored.
                await front.client.send("hello", wire.Hello(99, 9))
                assert (await front.propose(b"still fine")).index > 0
                assert node.driver.stream.acked is None
                await front.close()

    run(main)


def test_boot_membership() -> None:
    with temp_dir() as d:
        single = boot_membership(make_cfg(d, listen="127.0.0.1:4001"))
        assert single.voters == ("n1",) and single.address_of("n1") == "127.0.0.1:4001"
        peers = {"n1": "127.0.0.1:1", "n2": "127.0.0.1:2"}
        multi = boot_membership(make_cfg(d, peers=peers))
        assert multi.voters == ("n1", "n2") and multi.address_of("n2") == "127.0.0.1:2"
        joiner = boot_membership(make_cfg(d, join="127.0.0.1:9"))
        assert joiner.voters == () and joiner.learners == ()


def test_peers_are_ignored_once_raft_db_exists() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            driver = await ConsensusDriver.open(make_cfg(d), net)
            assert driver.disk.bootstrapped
            await driver.close()
            peers = {"n1": "127.0.0.1:1", "n2": "127.0.0.1:2"}
            driver = await ConsensusDriver.open(make_cfg(d, peers=peers), net)
            assert not driver.disk.bootstrapped
            assert driver.core.membership.voters == ("n1",)
            await driver.close()

    run(main)


def test_a_failed_persist_stops_the_driver_with_the_error() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            node = await Node.start(make_cfg(d), net)
            front = FakeFront(net, d)
            await wait_leader(front)
            disk = node.driver.disk
            disk.call_blocking(disk.store.close)  # the next write fails like a dead disk
            # The proposal's own persist or the driver's unsynced commit-index write,
            # whichever comes first, meets the dead store: the answer may be lost.
            doomed = asyncio.ensure_future(front.propose(b"doomed"))
            with pytest.raises(StoreFailed):
                await node.finished()
            doomed.cancel()
            await asyncio.gather(doomed, return_exceptions=True)
            await front.close()

    run(main)


def test_messages_for_peers_go_to_the_peer_links_with_the_membership_addresses() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            peers = {"n1": "127.0.0.1:1", "n2": "127.0.0.1:2", "n3": "127.0.0.1:3"}
            async with running(make_cfg(d, peers=peers), net) as node:
                sent = node.hub.sent
                # its election timeout passes: it campaigns, to both peers
                await manual(net).advance_until(
                    lambda: {dst for _, dst, _, _ in sent} == {"n2", "n3"}, "a campaign to both"
                )
                for src, dst, address, frames in sent:
                    assert src == "n1" and address == peers[dst]
                    assert all(wire.decode_raft(f).dst == dst for f in frames)
                front = FakeFront(net, d)
                assert (await front.status()).role in ("follower", "candidate")
                with pytest.raises(errors.Unavailable):
                    await front.propose(b"no leader")
                await front.close()

    run(main)


def test_refused_forwards_are_reported_to_the_front_and_forwards_are_refused() -> None:
    """Both halves of ProposeRefused through the real driver: a ProposeRefused from a
    peer becomes ``dropped`` to the front; a Propose reaching a node that is not the
    leader is answered with ProposeRefused (to the peer) instead of being lost."""

    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            peers = {"n1": "127.0.0.1:1", "n2": "127.0.0.1:2", "n3": "127.0.0.1:3"}
            async with running(make_cfg(d, peers=peers), net) as node:
                front = FakeFront(net, d)
                await wait_status(front, lambda s: s.role != "leader")
                refused = rm.ProposeRefused(0, "n2", "n1", (b"cmd-a", b"cmd-b"), "transfer")
                forward = rm.Propose(0, "n3", "n1", (b"cmd-c",))
                node.hub.inject("n1", [wire.encode_raft(refused), wire.encode_raft(forward)])
                await until(lambda: front.dropped, "dropped")
                assert front.dropped == [b"cmd-a", b"cmd-b"]

                def answer() -> rm.ProposeRefused | None:
                    for _, _, _, frames in node.hub.sent:
                        for frame in frames:
                            msg = wire.decode_raft(frame)
                            if isinstance(msg, rm.ProposeRefused):
                                return msg
                    return None

                back = await until(answer, "ProposeRefused to n3")
                assert (back.src, back.dst, back.data) == ("n1", "n3", (b"cmd-c",))
                await front.close()

    run(main)


def test_snapshot_now_without_new_entries_reports_the_latest() -> None:
    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            async with running(make_cfg(d), net) as node:
                front, storage = FakeFront(net, d), FakeStorage(net, d)
                await wait_leader(front)
                await storage.hello()
                last = (await front.propose(b"a")).index
                await until(lambda: storage.applied >= last)
                first = await front.request("snapshot_now", wire.SnapshotNow(), timeout=10)
                again = await front.request("snapshot_now", wire.SnapshotNow(), timeout=10)
                assert first == again
                assert node.driver.snapshots.taken == 1
                await front.close()
                await storage.close()

    run(main)


@pytest.mark.parametrize("acks", [True, False])
def test_a_planned_stop_drains_until_the_front_acknowledges(acks: bool) -> None:
    """After ``stopping`` consensus serves on until the front's ``stopping_ack`` (the
    last message the front sends it: all sent before it has been handled), and
    stops then; a front that never answers is waited for ``CONSENSUS_DRAIN`` of the
    driver's clock at most."""

    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            clock = manual(net)
            driver = await ConsensusDriver.open(make_cfg(d), net, clock=clock)
            task = asyncio.create_task(driver.run())
            front, storage = FakeFront(net, d), FakeStorage(net, d)
            try:
                await until(lambda: driver.core.role.name == "LEADER", "a leader")
                await until(lambda: driver.fronts.current is not None, "the front's hello")
                front.acks_stopping = acks
                driver.shutdown()
                await until(lambda: front.stopping, "stopping")
                if acks:
                    await asyncio.wait_for(task, 10)  # no drain time had to pass
                    # and a last ``stopping`` before the close: its ack says the front
                    # read every answer (a socket that goes drops what is unread)
                    assert front.stopping == 2
                else:
                    await clock.advance(CONSENSUS_DRAIN * 0.9)
                    assert not task.done()  # still draining, waiting for the front
                    # then the last ``stopping`` goes unanswered too: its wait is bounded
                    # (on the driver's clock; plus a tick, the step the drain is seen ending)
                    await clock.advance(CONSENSUS_DRAIN * 0.1 + CONSENSUS_FLUSH + 0.1)
                    await asyncio.wait_for(task, 10)  # closing raft.db: real I/O
            finally:
                if not task.done():
                    driver.stop()
                    await task
                await front.close()
                await storage.close()

    run(main)


def test_what_arrives_between_bind_and_run_is_served() -> None:
    """A restarted consensus binds its socket before it opens raft.db (a second copy
    must fail before touching it), and a front sends the proposals it held as soon as
    it can connect: they arrive before the driver runs. They are served once it does;
    before the fix they waited in a queue nobody read, and the write ended in a 504
    and was never applied (issue 21)."""

    async def main(net: MemoryIpc) -> None:
        with temp_dir() as d:
            driver = await ConsensusDriver.open(make_cfg(d), net)
            front = FakeFront(net, d)
            task: asyncio.Task[None] | None = None
            try:
                early = asyncio.ensure_future(front.propose(b"held across a restart", timeout=5))
                await until(lambda: driver.server.queued, "the proposal at the socket")
                task = asyncio.create_task(driver.run())
                proposed = await asyncio.wait_for(early, 5)
                assert proposed.index >= 1 and not proposed.forwarded
            finally:
                if task is None:
                    await driver.close()
                else:
                    driver.stop()
                    await task
                await front.close()

    run(main)
