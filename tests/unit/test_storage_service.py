"""The storage role in-process over real ipc sockets and a real state.db.

Consensus and front are played by the bench (``storage_service_harness``);
every wait is bounded. Tests about time (deadlines, heartbeats, the TTL
reaper) run over in-memory ends on a manual clock instead, so "nothing
happens for a while" is shown by advancing the clock, not by sleeping.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq.asyncio

from concordance import errors, ipc
from concordance.ipc import fronts
from concordance.protocol import payloads, wire
from concordance.protocol.commands import Command, Delete, Expire, Set
from concordance.raft.entries import EntryKind
from concordance.storage import snapshot
from concordance.storage.fsm import StateMachine
from concordance.storage.service import ServiceTimings
from concordance.storage.service_ttl import wall_ms
from concordance.testing.clock import ManualClock
from concordance.testing.memory_ipc import MemoryIpc
from concordance.testing.poll import until
from concordance.timing import ACK_EVERY, WATCHING_FRESH
from tests.unit.storage_service_harness import (
    FAST,
    T0,
    Writer,
    bench,
    next_of,
    run,
    short_tmp,
)

T = TypeVar("T")
K = "tenant:acme/settings/theme"


def test_hello_at_start_then_every_interval() -> None:
    timings = ServiceTimings(ack_delay=0.0, hello_interval=0.05, reaper=FAST.reaper)

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d, timings=timings, sync=False) as b:
            assert b.log.index == 0  # the bench's first hello said index 0
            await b.consensus.hello()  # each waits for the next periodic hello
            await b.consensus.hello()

    with short_tmp() as d:
        run(main)


def test_apply_publishes_changes_and_only_this_nodes_results_then_acks() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d) as b:
            log = b.log
            batch = [
                log.set(K, b'"dark"', origin="n1"),
                log.noop(),
                log.set(K + "2", b"[1,2]", origin="n2"),
                log.noop(EntryKind.CONFIG),
                log.set(K, b'"light"', origin="n1", if_version=7),  # CAS fails
                log.normal(Delete(K), origin="n1"),
            ]
            await b.consensus.apply(*batch)
            await b.consensus.acked(log.index)
            changes = await b.front.changes()
            events = changes.events
            assert [(e.type, e.key) for e in events] == [
                ("set", K),
                ("set", K + "2"),
                ("delete", K),
            ]
            assert events[0].value == b'"dark"'  # JSON text bytes, spliced by the front
            revisions = [e.revision for e in events]
            assert revisions == sorted(revisions) and changes.revision == revisions[-1]
            results = await b.front.results()  # one batch: n1's own; n2's front asks n2
            assert results.origin == "n1"
            ids = [e[3] for e in batch]
            n1 = results.items
            assert [item.request_id for item in n1] == [
                Command.decode(ids[i]).request_id for i in (0, 4, 5)
            ]
            first, conflict, deleted = (item.result for item in n1)
            assert isinstance(first, payloads.Entry) and (first.value, first.version) == (
                b'"dark"',
                1,
            )
            assert isinstance(conflict, payloads.Rejected) and conflict.code == "version_conflict"
            assert isinstance(deleted, payloads.Deleted)
            status = await b.front.request("storage_status", wire.StorageStatus())
            assert isinstance(status, wire.StorageStatusOk)
            assert (status.applied_index, status.applied_term, status.revision) == (
                log.index,
                1,
                revisions[-1],
            )
            assert sum(status.apply_counts) >= 1 and status.apply_total_us > 0  # timed

    with short_tmp() as d:
        run(main)


def test_reapplying_applied_entries_changes_nothing() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d) as b:
            entries = [b.log.set(K, b"1"), b.log.set(K, b"2")]
            await b.consensus.apply(*entries)
            await b.consensus.acked(b.log.index)
            await b.front.changes()
            await b.front.results()
            await b.consensus.apply(*entries)  # redelivered after a consensus restart
            await b.consensus.acked(b.log.index)
            got = await b.front.request("get", wire.Get(K, T0))
            assert got.entry.version == 2 and got.entry.value == b"2"
            with pytest.raises(TimeoutError):  # nothing new to announce
                await b.front.event(0.1)

    with short_tmp() as d:
        run(main)


def test_a_gap_drops_the_batch_and_says_hello_at_once() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d) as b:
            at = b.log.index
            b.log.index += 1  # entry at+1 never sent
            await b.consensus.apply(b.log.set(K), b.log.set(K))
            assert (await b.consensus.hello(timeout=2.0)).applied_index == at
            got = await b.front.request("get", wire.Get(K, T0))
            assert got.entry is None
            b.log.index = at
            await b.consensus.apply(b.log.set(K))  # resent from where storage stands
            await b.consensus.acked(at + 1)

    with short_tmp() as d:
        run(main)


def test_reads_over_ipc_get_list_changes_and_compacted() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d, change_retention=16) as b:
            keys = [f"tenant:acme/k{i:02d}" for i in range(40)]
            await b.consensus.apply(*(b.log.set(k, b"%d" % i) for i, k in enumerate(keys)))
            await b.consensus.acked(b.log.index)
            got = await b.front.request("get", wire.Get(keys[3], T0))
            assert got.entry.key == keys[3] and got.entry.value == b"3"
            assert (await b.front.request("get", wire.Get("tenant:acme/nope", T0))).entry is None
            page = await b.front.request("list", wire.List("tenant:acme/", 25, None, T0))
            assert [e.key for e in page.entries] == keys[:25] and page.next
            rest = await b.front.request("list", wire.List("tenant:acme/", 25, page.next, T0))
            assert [e.key for e in rest.entries] == keys[25:] and rest.next is None
            status = await b.front.request("storage_status", wire.StorageStatus())
            recent = await b.front.request(
                "changes", wire.Changes("tenant:acme/", status.revision - 3, 100)
            )
            assert [c.key for c in recent.changes] == keys[-3:]
            assert recent.revision == status.revision
            with pytest.raises(errors.Compacted) as caught:
                await b.front.request("changes", wire.Changes("tenant:acme/", 0, 100))
            assert caught.value.extra["oldest"] > 1
            with pytest.raises(errors.InvalidKey):
                await b.front.request("list", wire.List("tenant:acme", 10, None, T0))
            with pytest.raises(errors.InvalidRequest):  # not a storage request
                await b.front.request("status", wire.Status())

    with short_tmp() as d:
        run(main)


def test_wait_applied_answers_when_a_later_apply_lands_and_drops_at_deadline() -> None:
    timings = ServiceTimings(ack_delay=0.0, hello_interval=0.05, reaper=FAST.reaper)
    clock = ManualClock()

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(None, d, timings=timings, sockets=MemoryIpc(clock), clock=clock) as b:
            svc = b.service
            assert svc is not None
            now = b.log.index
            done = await b.front.request("wait_applied", wire.WaitApplied(now))
            assert done == wire.WaitAppliedOk(now)
            waiting = asyncio.ensure_future(
                b.front.request("wait_applied", wire.WaitApplied(now + 2), timeout=5.0)
            )
            given_up = asyncio.ensure_future(
                b.front.request("wait_applied", wire.WaitApplied(now + 50), timeout=0.1)
            )
            await clock.advance(0.1)
            with pytest.raises(errors.IpcTimeout):
                await given_up
            assert svc.waiting == 2  # not swept yet: its deadline is now, not before
            await b.consensus.apply(b.log.set(K))
            await b.consensus.acked(now + 1)
            assert not waiting.done()
            await b.consensus.apply(b.log.set(K))
            assert await asyncio.wait_for(waiting, 2.0) == wire.WaitAppliedOk(now + 2)
            assert svc.waiting == 1
            await clock.advance(timings.hello_interval)  # the heartbeat sweeps it
            assert svc.waiting == 0

    with short_tmp() as d:
        run(main)


def test_a_read_with_min_index_is_answered_once_that_index_is_applied() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d) as b:
            now = b.log.index
            get = asyncio.ensure_future(
                b.front.request("get", wire.Get(K, wall_ms(), min_index=now + 1), timeout=5.0)
            )
            listing = asyncio.ensure_future(
                b.front.request("list", wire.List(K, 10, None, wall_ms(), now + 1), timeout=5.0)
            )
            svc = b.service
            assert svc is not None
            await until(lambda: svc.waiting == 2, "both reads to park")
            assert not get.done() and not listing.done()  # nothing answered before the write
            await b.consensus.apply(b.log.set(K, b'"new"'))
            got = await asyncio.wait_for(get, 2.0)
            assert isinstance(got, wire.GetOk) and got.entry is not None
            assert got.entry.value == b'"new"'  # served after the write, not before
            page = await asyncio.wait_for(listing, 2.0)
            assert isinstance(page, wire.ListOk) and [e.key for e in page.entries] == [K]
            # Already applied: answered at once.
            got = await b.front.request("get", wire.Get(K, wall_ms(), min_index=now))
            assert isinstance(got, wire.GetOk) and got.entry is not None

    with short_tmp() as d:
        run(main)


def test_get_many_answers_each_key_in_order_and_waits_for_min_index() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d) as b:
            await b.consensus.apply(b.log.set(K, b"1"), b.log.set(K + "/b", b"2"))
            await b.consensus.acked(b.log.index)
            keys = (K + "/b", "tenant:acme/nope", K)
            got = await b.front.request("get_many", wire.GetMany(keys, wall_ms()))
            assert isinstance(got, wire.GetManyOk)
            assert [e and (e.key, e.value) for e in got.entries] == [
                (K + "/b", b"2"),
                None,
                (K, b"1"),
            ]
            later = asyncio.ensure_future(
                b.front.request(
                    "get_many", wire.GetMany((K,), wall_ms(), b.log.index + 1), timeout=5.0
                )
            )
            svc = b.service
            assert svc is not None
            await until(lambda: svc.waiting == 1, "the read to park")
            await b.consensus.apply(b.log.set(K, b"3"))
            got = await asyncio.wait_for(later, 2.0)
            assert isinstance(got, wire.GetManyOk) and got.entries[0] is not None
            assert got.entries[0].value == b"3"  # served after the write, not before

    with short_tmp() as d:
        run(main)


def test_restore_from_a_snapshot_of_another_state_machine() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        other = Writer(term=4)
        with StateMachine(os.path.join(d, "other.db")) as sm:
            sm.apply([e[:2] + e[3:] for e in (other.set(K, b'"x"'), other.set(K + "/b"))])
            sm.apply([(*other.noop()[:2], None)])
            snap = os.path.join(d, "snap.db")
            assert sm.snapshot_to(snap) == (3, 4)
        async with bench(ctx, d) as b:
            await b.consensus.send("restore", wire.Restore(snap, 3, 4))
            hello = await b.consensus.hello()
            assert (hello.applied_index, hello.applied_term) == (3, 4)
            got = await b.front.request("get", wire.Get(K, T0))
            assert got.entry.value == b'"x"'
            probe = await b.front.request("get", wire.Get("tenant:probe/p1", T0))
            assert probe.entry is None  # the old state is gone
            b.log = Writer(3, 4)
            await b.consensus.apply(b.log.set(K, b'"y"'))
            await b.consensus.acked(4)
            # a file that is not a snapshot changes nothing, and storage says where it is
            bad = os.path.join(d, "bad.db")
            with open(bad, "wb") as f:
                f.write(b"not sqlite")
            await b.consensus.send("restore", wire.Restore(bad, 9, 9))
            assert (await b.consensus.hello()).applied_index == 4

    with short_tmp() as d:
        run(main)


def test_take_snapshot_answers_snapshot_taken_with_a_readable_file() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d) as b:
            await b.consensus.apply(b.log.set(K, b'"s"'), b.log.noop())
            await b.consensus.acked(b.log.index)
            await b.consensus.send("take_snapshot", wire.TakeSnapshot())
            taken = await next_of(b.consensus.snapshots)
            assert (taken.index, taken.term) == (b.log.index, 1)
            assert taken.path.startswith(os.path.join(d, "state", "snapshots"))
            assert str(taken.index) in os.path.basename(taken.path)
            assert snapshot.vet(taken.path) == (taken.index, 1)
            copy = os.path.join(d, "copy.db")
            os.rename(taken.path, copy)  # consensus takes ownership
            with StateMachine(copy) as sm:
                entry = sm.get(K, T0)
                assert entry is not None and entry.value == b'"s"'

    with short_tmp() as d:
        run(main)


def test_checkpoint_answers_durable_once_the_applied_state_is_in_state_db_itself() -> None:
    """``durable {index}`` means the entries up to ``index`` survive without the WAL:
    a copy of state.db alone (no -wal file) holds them, and no snapshot was written."""

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d) as b:
            for i in range(20):
                await b.consensus.apply(b.log.set(f"tenant:acme/k{i}", b'"v"'))
            await b.consensus.acked(b.log.index)
            await b.consensus.send("checkpoint", wire.Checkpoint())
            durable = await next_of(b.consensus.durables)
            assert durable.index == b.log.index
            alone = os.path.join(d, "alone.db")
            with open(os.path.join(d, "state", "state.db"), "rb") as src:
                Path(alone).write_bytes(src.read())
            conn = sqlite3.connect(alone)
            assert conn.execute("SELECT applied_index FROM meta").fetchone() == (durable.index,)
            keys = conn.execute("SELECT count(*) FROM kv WHERE key LIKE 'tenant:acme/k%'")
            assert keys.fetchone() == (20,)
            conn.close()
            assert os.listdir(os.path.join(d, "state", "snapshots")) == []

    with short_tmp() as d:
        run(main)


async def _copy_during_writes(b: Any, copy: Callable[[], Awaitable[T]]) -> tuple[T, int]:
    """Fill state.db with ~20 MB (so a copy takes a while), then run ``copy`` while a
    writer applies and acknowledges one entry after another; returns what ``copy``
    returned and the last index acknowledged before it returned."""
    big = b'"' + b"x" * 100_000 + b'"'
    for start in range(0, 200, 50):
        await b.consensus.apply(
            *(b.log.set(f"tenant:big/{i}", big) for i in range(start, start + 50))
        )
    await b.consensus.acked(b.log.index)
    stop, acks_during = asyncio.Event(), []

    async def keep_writing() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await b.consensus.apply(b.log.set(f"tenant:w/{n}", b"%d" % n))
            await b.consensus.acked(b.log.index)
            acks_during.append(b.log.index)

    writer = asyncio.ensure_future(keep_writing())
    await until(lambda: len(acks_during) > 0, "the writer to get going")
    result = await copy()
    last_acked = acks_during[-1]
    stop.set()
    await writer
    return result, last_acked


def _assert_one_state_up_to_its_index(path: str) -> int:
    """Every entry set one new key at its own revision: the copy is exactly "up to index"."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        index, revision = conn.execute("SELECT applied_index, revision FROM meta").fetchone()
        rows = conn.execute("SELECT count(*), max(revision) FROM kv").fetchone()
    finally:
        conn.close()
    assert rows == (index, revision) == (revision, index)
    assert index > 200  # the big writes, at least
    return int(index)


@pytest.mark.slow
def test_backup_during_writes_is_one_consistent_state() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d) as b:
            dest = os.path.join(d, "backup.db")
            reply, acked = await _copy_during_writes(
                b, lambda: b.front.request("backup", wire.Backup(dest), timeout=30.0)
            )
            assert reply.path == dest and reply.bytes == os.path.getsize(dest)
            assert _assert_one_state_up_to_its_index(dest) == reply.index
            assert acked > reply.index, "no write was applied while the copy ran"
            with pytest.raises(errors.InvalidRequest):
                await b.front.request("backup", wire.Backup("relative.db"))
            with pytest.raises(errors.InvalidRequest):
                await b.front.request("backup", wire.Backup(str(b.service.db_path)))  # type: ignore[union-attr]

    with short_tmp() as d:
        run(main)


@pytest.mark.slow
def test_snapshot_during_writes_does_not_stall_them_and_is_one_consistent_state() -> None:
    """take_snapshot copies state.db on a worker thread: applies go on meanwhile."""

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d) as b:

            async def snapshot_now() -> wire.SnapshotTaken:
                await b.consensus.send("take_snapshot", wire.TakeSnapshot())
                return await next_of(b.consensus.snapshots)

            taken, acked = await _copy_during_writes(b, snapshot_now)
            assert _assert_one_state_up_to_its_index(taken.path) == taken.index
            assert acked > taken.index, "no write was applied while the snapshot was copied"
            assert snapshot.vet(taken.path) == (taken.index, 1)
            assert os.path.basename(taken.path) == f"{taken.index:020d}.snapshot"
            assert not list(Path(taken.path).parent.glob("*.tmp"))

    with short_tmp() as d:
        run(main)


def test_acks_cover_the_batches_of_ack_delay_and_go_at_once_past_ack_every() -> None:
    """``applied`` goes ``ack_delay`` after the first batch it covers (one message for
    many batches), at once when ``ACK_EVERY`` entries are unacknowledged, and at once
    in answer to a batch that applied nothing new (consensus is resending)."""
    clock = ManualClock()
    timings = dataclasses.replace(FAST, ack_delay=0.02)

    async def main(ctx: zmq.asyncio.Context) -> None:
        net = MemoryIpc(clock)  # subscribed at once: no probe writes (sync) needed
        async with bench(None, d, timings=timings, sockets=net, clock=clock, sync=False) as b:
            first = [b.log.set(K, b"1")]
            await b.consensus.apply(*first)
            await b.consensus.apply(b.log.set(K, b"2"))
            state = b.service.state  # type: ignore[union-attr]
            await until(lambda: state.applied_index == b.log.index, "both batches applied")
            await clock.settle()
            assert b.consensus.applied.empty()  # not before ack_delay
            await clock.advance(timings.ack_delay)
            await until(lambda: not b.consensus.applied.empty(), "the delayed ack")
            assert b.consensus.applied.get_nowait() == b.log.index  # both batches, one ack
            await b.consensus.apply(*first)  # a resend: answered at once
            await until(lambda: not b.consensus.applied.empty(), "the answer to a resend")
            assert b.consensus.applied.get_nowait() == b.log.index
            many = [b.log.set(f"{K}/{i}", b"0") for i in range(ACK_EVERY)]
            await b.consensus.apply(*many)
            await until(lambda: not b.consensus.applied.empty(), "the ack past ACK_EVERY")
            assert b.consensus.applied.get_nowait() == b.log.index

    with short_tmp() as d:
        run(main)


def test_change_batches_go_only_while_a_front_watches_or_has_gone_quiet() -> None:
    """A front that says ``front_watching`` False gets results but no change batches;
    its next True comes before its next request (one ordered socket), so a
    revision read after it is followed by every later batch. Silent for
    ``WATCHING_FRESH``, it gets them all again."""
    clock = ManualClock()

    async def main(ctx: zmq.asyncio.Context) -> None:
        net = MemoryIpc(clock)
        async with bench(None, d, sockets=net, clock=clock, sync=False) as b:
            front = net.client(ipc.endpoint(d, "storage"), fronts.routing_id(3))
            await front.send("front_watching", wire.FrontWatching(False))
            await front.request("storage_status", wire.StorageStatus(), 2.0)  # hello handled
            await b.consensus.apply(b.log.set(K, b"1"))
            assert isinstance((await b.front.event()).body, wire.Results)  # no changes
            await front.send("front_watching", wire.FrontWatching(True))
            status = await front.request("storage_status", wire.StorageStatus(), 2.0)
            await b.consensus.apply(b.log.set(K, b"2"))
            changes = await b.front.changes()
            assert changes.events[0].revision == status.revision + 1
            await b.front.results()
            await front.send("front_watching", wire.FrontWatching(False))
            await front.request("storage_status", wire.StorageStatus(), 2.0)
            await clock.advance(WATCHING_FRESH)  # no hello since: gone quiet
            await b.consensus.apply(b.log.set(K, b"3"))
            assert isinstance((await b.front.event()).body, wire.ChangeBatch)
            await front.close()

    with short_tmp() as d:
        run(main)


def test_leader_proposes_each_expired_entry_once_and_the_expiry_applies() -> None:
    clock = ManualClock()
    interval = FAST.reaper.interval

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(None, d, sockets=MemoryIpc(clock), clock=clock) as b:
            reaper = b.service._reaper  # type: ignore[union-attr]
            assert reaper is not None and reaper.leads()  # told so in answer to the hello
            now = clock.wall_ms()
            await b.consensus.apply(
                b.log.set(K, b'"t"', expires_at=now - 1, ts=now - 1000),
                b.log.set(K + "/later", expires_at=now + 3_600_000, ts=now),
            )
            await b.consensus.acked(b.log.index)
            await clock.advance(interval)
            await until(lambda: len(b.consensus.proposals) == 1, "the expire proposal")
            scans = reaper.scans
            await clock.advance(10 * interval)  # many scans later: still one (in flight)
            assert reaper.scans >= scans + 10 and len(b.consensus.proposals) == 1
            [cmd] = b.consensus.proposals
            assert cmd.origin == "n1" and cmd.op == Expire(K, 1, now - 1)
            assert cmd.timestamp_ms >= now
            # consensus commits it: the entry goes with an expire event
            await b.front.changes()  # of the sets
            await b.front.results()  # of the sets
            await b.consensus.apply(b.log.normal(cmd.op, ts=cmd.timestamp_ms))
            changes = await b.front.changes()
            assert [(e.type, e.key) for e in changes.events] == [("expire", K)]

    with short_tmp() as d:
        run(main)


def test_a_follower_never_proposes_expiries_and_never_asks_for_status() -> None:
    clock = ManualClock()
    interval = FAST.reaper.interval

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(None, d, sockets=MemoryIpc(clock), clock=clock) as b:
            reaper = b.service._reaper  # type: ignore[union-attr]
            assert reaper is not None
            await b.consensus.set_role("follower")  # pushed, as on a step-down
            await until(lambda: not reaper.leads(), "the push to land")
            now = clock.wall_ms()
            await b.consensus.apply(b.log.normal(Set(K, b"1", None, now - 1), ts=now - 1000))
            await b.consensus.acked(b.log.index)
            await clock.advance(20 * interval)
            assert reaper.scans >= 10  # it looked, and did not propose
            assert b.consensus.proposals == [] and b.consensus.status_asked == 0
            got = await b.front.request("get", wire.Get(K, clock.wall_ms()))
            assert got.entry is None  # hidden on reads all the same

    with short_tmp() as d:
        run(main)


def test_a_leading_push_is_trusted_for_three_hellos_only() -> None:
    """A consensus that goes silent stops the reaper: no hello answer, no belief."""
    clock = ManualClock()
    timings = ServiceTimings(ack_delay=0.0, hello_interval=1.0, reaper=FAST.reaper)

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(None, d, timings=timings, sockets=MemoryIpc(clock), clock=clock) as b:
            reaper = b.service._reaper  # type: ignore[union-attr]
            assert reaper is not None and reaper.leads()
            await clock.advance(2.5)  # hellos answered at 1 s and 2 s: still believed
            assert reaper.leads() and reaper.pushes >= 3
            await b.consensus.close()  # silent from now on
            await clock.advance(3.0)
            assert not reaper.leads()

    with short_tmp() as d:
        run(main)


LAZY = 0.02  # ack_delay of the tests below


def _with_lazy_commit(
    scenario: Callable[[Any, ManualClock, str], Awaitable[None]],
    after: Callable[[str], None] | None = None,
) -> None:
    """Run ``scenario(bench, clock, data_dir)`` over in-memory ends on a manual clock, with
    ``ack_delay`` 20 ms: what was applied stays uncommitted until the clock moves on;
    then ``after(data_dir)`` once the bench has stopped the service."""
    clock = ManualClock()
    timings = dataclasses.replace(FAST, ack_delay=LAZY)

    async def main(ctx: zmq.asyncio.Context) -> None:
        net = MemoryIpc(clock)
        async with bench(None, d, timings=timings, sockets=net, clock=clock, sync=False) as b:
            await scenario(b, clock, d)

    with short_tmp() as d:
        run(main)
        if after is not None:
            after(d)


def _committed_index(d: str) -> int:
    """state.db's applied index as another process sees it."""
    conn = sqlite3.connect(os.path.join(d, "state", "state.db"))
    try:
        return int(conn.execute("SELECT applied_index FROM meta").fetchone()[0])
    finally:
        conn.close()


def test_results_leave_before_the_commit_and_a_crash_resumes_from_the_last_commit() -> None:
    """A batch's results go out before state.db commits it, carrying the applied index
    the front's local reads wait for; the COMMIT comes with ``applied``, ``ack_delay``
    later. A crash before it loses that batch: the restarted storage says ``hello``
    from the last commit, and the resent entries apply to the same state."""

    async def scenario(b: Any, clock: ManualClock, d: str) -> None:
        first = b.log.set(K, b"1")
        await b.consensus.apply(first)
        await b.front.changes()
        assert (await b.front.results()).applied == first[0]
        assert _committed_index(d) == 0  # not committed yet ...
        await clock.advance(LAZY)
        await b.consensus.acked(first[0])  # ... until storage says applied
        assert _committed_index(d) == first[0]
        second = b.log.set(K, b"2")
        await b.consensus.apply(second)
        await b.front.changes()
        assert (await b.front.results()).applied == second[0]
        digest = b.service.state.digest()
        hello = await b.crash_and_restart()
        assert hello.applied_index == first[0] == _committed_index(d)
        await b.consensus.apply(first, second)  # consensus resends after the hello
        state = b.service.state
        await until(lambda: state.applied_index == second[0], "the resent entry applied")
        assert state.digest() == digest
        got = await b.front.request("get", wire.Get(K, T0, second[0]))
        assert isinstance(got, wire.GetOk) and got.entry is not None
        assert got.entry.version == 2

    _with_lazy_commit(scenario)


def test_a_storage_restarted_behind_what_it_published_holds_local_reads_until_resent() -> None:
    """The node's other roles may restart with storage (a front's read floor then starts
    at 0, a consensus's commit index at what it last noted): storage's applied mark,
    written before each batch's results go out, holds every local read (``min_index``
    0 here) until consensus has resent that far; and every ``changes`` read, whose
    events went out too (a watch repairing from it must not take them for none)."""

    async def scenario(b: Any, clock: ManualClock, d: str) -> None:
        first = b.log.set(K, b"1")
        await b.consensus.apply(first)
        await b.front.changes()
        await b.front.results()
        await clock.advance(LAZY)
        await b.consensus.acked(first[0])  # committed
        second = b.log.set(K, b"2")
        await b.consensus.apply(second)
        await b.front.changes()
        assert (await b.front.results()).applied == second[0]  # answered: version 2
        hello = await b.crash_and_restart()
        assert hello.applied_index == first[0]  # state.db holds version 1
        read = asyncio.ensure_future(b.front.request("get", wire.Get(K, T0)))
        listed = asyncio.ensure_future(
            b.front.request("list", wire.List("tenant:acme/", 10, None, T0))
        )
        changed = asyncio.ensure_future(b.front.request("changes", wire.Changes("", 0, 100)))
        for _ in range(50):
            await asyncio.sleep(0)
        assert not (read.done() or listed.done() or changed.done())  # not from version 1
        await b.consensus.apply(first, second)  # consensus resends after the hello
        got, page, log = await read, await listed, await changed
        assert isinstance(got, wire.GetOk) and got.entry is not None and got.entry.version == 2
        assert [e.version for e in page.entries if e.key == K] == [2]
        assert [c.key for c in log.changes][-2:] == [K, K]

    _with_lazy_commit(scenario)


async def _apply_one(b: Any, value: bytes) -> None:
    state = b.service.state
    await b.consensus.apply(b.log.set(K, value))
    await until(lambda: state.applied_index == b.log.index, "applied")


def test_checkpoint_backup_and_snapshot_commit_first() -> None:
    """What ``durable`` covers, and what a backup or snapshot copies, includes every batch
    applied before the request, though ``ack_delay`` has not come yet."""

    async def scenario(b: Any, clock: ManualClock, d: str) -> None:
        await _apply_one(b, b"1")
        await b.consensus.send("checkpoint", wire.Checkpoint())
        durable = await next_of(b.consensus.durables)
        assert durable.index == b.log.index == _committed_index(d)
        await _apply_one(b, b"2")
        backup = await b.front.request("backup", wire.Backup(os.path.join(d, "b.db")), 10.0)
        assert isinstance(backup, wire.BackupOk) and backup.index == b.log.index
        await _apply_one(b, b"3")
        await b.consensus.send("take_snapshot", wire.TakeSnapshot())
        taken = await next_of(b.consensus.snapshots)
        assert taken.index == b.log.index

    _with_lazy_commit(scenario)


def test_a_read_error_that_rolled_back_the_open_batches_is_told_as_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SQLite rolls the open transaction back by itself on an I/O error or a full disk,
    even in a read: storage goes back to its last commit and says ``hello`` from there
    as a new incarnation, so consensus resends the lost batches at once."""

    def failing_get(self: StateMachine, key: str, now_ms: int) -> Any:
        self._conn.execute("ROLLBACK")  # as SQLite does on SQLITE_IOERR
        raise sqlite3.OperationalError("disk I/O error")

    async def scenario(b: Any, clock: ManualClock, d: str) -> None:
        state, before = b.service.state, b.service._incarnation
        await _apply_one(b, b"1")
        with monkeypatch.context() as patch:
            patch.setattr(StateMachine, "get", failing_get)
            with pytest.raises(errors.Unavailable):
                await b.front.request("get", wire.Get(K, T0))
        hello = await b.consensus.hello()
        assert hello.applied_index == state.applied_index == state.committed_index == 0
        assert hello.incarnation == before + 1

    _with_lazy_commit(scenario)


def test_a_stop_commits_what_was_applied() -> None:
    """A stop (planned or not) commits what was applied, before its sockets close: the
    successor, which may open state.db as soon as they do, starts where this one ended."""
    applied: list[int] = []

    async def scenario(b: Any, clock: ManualClock, d: str) -> None:
        await b.consensus.apply(b.log.set(K, b"1"), b.log.set(K, b"2"))
        await until(lambda: b.service.state.applied_index == b.log.index, "applied")
        assert _committed_index(d) == 0
        applied.append(b.log.index)

    def after(d: str) -> None:  # the bench stopped the service on its way out
        assert applied == [_committed_index(d)]

    _with_lazy_commit(scenario, after)
