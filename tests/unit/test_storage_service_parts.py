"""The storage service's parts: the wait_applied heap, the TTL reaper's rules, a second copy."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import zmq.asyncio

from concordance import errors, ipc
from concordance.protocol import wire
from concordance.protocol.commands import Expire
from concordance.storage.service import ServiceTimings, StorageService
from concordance.storage.service_ttl import ExpiryReaper, ReaperTimings, wall_ms
from concordance.storage.service_waiters import AppliedWaiters
from concordance.testing.clock import ManualClock
from concordance.testing.memory_ipc import MemoryIpc
from concordance.testing.poll import until
from tests.unit.storage_service_harness import (
    FAST,
    T0,
    FakeConsensus,
    bench,
    node_config,
    run,
    short_tmp,
)

# --------------------------------------------------------------------------- waiters


def test_waiters_release_in_index_order_and_skip_the_expired() -> None:
    w: AppliedWaiters[str] = AppliedWaiters()
    assert w.park(5, 100, "a") and w.park(3, 100, "b") and w.park(3, 10, "late")
    assert w.park(3, 100, "c") and w.park(9, 100, "d")
    assert w.release(2, now_ms=50) == []
    assert w.release(5, now_ms=50) == ["b", "c", "a"]  # "late" dropped: past its deadline
    assert len(w) == 1 and w.release(9, now_ms=50) == ["d"] and len(w) == 0


def test_waiters_expire_sweeps_and_limit_refuses() -> None:
    w: AppliedWaiters[int] = AppliedWaiters(limit=3)
    assert w.park(1, 10, 1) and w.park(2, 30, 2) and w.park(3, 20, 3)
    assert not w.park(4, 99, 4)
    assert w.expire(now_ms=25) == 2 and len(w) == 1
    assert w.park(4, 99, 4)
    assert sorted(w.clear()) == [2, 4] and len(w) == 0


# --------------------------------------------------------------------------- reaper


class _ExpiredState:
    """Stands in for a StateMachine holding one long-expired entry."""

    def __init__(self) -> None:
        self.looks = 0

    def next_expiry(self) -> int:
        self.looks += 1
        return 1

    def expired(self, now_ms: int, limit: int) -> list[Expire]:
        return [Expire("tenant:a/k", 1, 1)]


class _NoConsensus:
    """A follower is never told it leads, so it never asks consensus anything."""

    async def request(self, type: str, body: Any, timeout: float) -> Any:
        raise AssertionError(f"the reaper asked consensus for {type}")


def test_the_reaper_does_not_spin_on_an_expired_entry_it_may_not_delete() -> None:
    state = _ExpiredState()
    clock = ManualClock()
    timings = ReaperTimings(interval=0.02)
    reaper = ExpiryReaper("n1", state, _NoConsensus(), timings, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        task = asyncio.ensure_future(reaper.run())
        await clock.advance(0.1)  # five intervals; a busy loop would look every loop turn
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert reaper.scans == 5 and state.looks <= 12  # about 2 per interval


def test_the_reaper_believes_a_leading_push_for_its_trust_window() -> None:
    clock = ManualClock()
    reaper = ExpiryReaper("n1", _ExpiredState(), _NoConsensus(), trust=3.0, clock=clock)  # type: ignore[arg-type]

    async def main() -> None:
        assert not reaper.leads()
        reaper.on_leadership(wire.Leadership(True, 4))
        await clock.advance(2.9)
        assert reaper.leads()
        await clock.advance(0.1)
        assert not reaper.leads()  # consensus went silent: stop proposing
        reaper.on_leadership(wire.Leadership(True, 4))
        reaper.on_leadership(wire.Leadership(False, 5))
        assert not reaper.leads()

    asyncio.run(main())


def test_an_unavailable_proposal_is_retried_and_a_lost_one_after_remember() -> None:
    interval, remember = 0.02, 0.3
    timings = ServiceTimings(
        hello_interval=30.0,
        ack_delay=0.0,
        reaper=ReaperTimings(interval=interval, propose_timeout=1.0, remember=remember),
    )
    clock = ManualClock()

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(None, d, timings=timings, sockets=MemoryIpc(clock), clock=clock) as b:
            b.consensus.propose_error = errors.Unavailable("no leader")
            now = clock.wall_ms()
            await b.consensus.apply(b.log.set("tenant:a/k", expires_at=now - 1, ts=now - 9))
            await b.consensus.acked(b.log.index)
            await clock.advance(interval)
            assert len(b.consensus.proposals) == 1 and b.reaper_in_flight() == 0
            await clock.advance(interval)  # certainly not appended: the next scan retries
            assert len(b.consensus.proposals) == 2
            b.consensus.propose_error = None
            await clock.advance(interval)
            assert b.consensus.proposed_ok == 1 and b.reaper_in_flight() == 1
            count = len(b.consensus.proposals)
            await clock.advance(remember - 2 * interval)  # many retry intervals later
            assert len(b.consensus.proposals) == count  # in flight: not proposed again yet
            await clock.advance(3 * interval)  # past ``remember``: forgotten, so once again
            assert len(b.consensus.proposals) == count + 1

    with short_tmp() as d:
        run(main)


def test_a_backlog_is_proposed_in_batches_past_the_ones_in_flight() -> None:
    timings = ServiceTimings(
        hello_interval=30.0,
        ack_delay=0.0,
        reaper=ReaperTimings(interval=0.02, batch=100),
    )

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d, timings=timings) as b:
            now = wall_ms()
            sets = [b.log.set(f"tenant:a/k{i:03d}", expires_at=now - 1, ts=T0) for i in range(150)]
            await b.consensus.apply(*sets)
            await b.consensus.acked(b.log.index)
            await until(lambda: len(b.consensus.proposals) >= 150, "150 proposals")
            keys = [c.op.key for c in b.consensus.proposals if isinstance(c.op, Expire)]
            assert sorted(keys) == [f"tenant:a/k{i:03d}" for i in range(150)]  # each once

    with short_tmp() as d:
        run(main)


# --------------------------------------------------------------------------- a second copy


@pytest.mark.slow  # the bind retries EADDRINUSE for a second
def test_a_second_storage_on_the_same_data_dir_fails_and_the_first_keeps_serving() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d) as b:
            second = StorageService(node_config(d), ctx=ctx, timings=FAST)
            with pytest.raises(errors.IpcError) as caught:
                await second.run()
            assert ipc.is_address_in_use(caught.value)
            got = await b.front.request("get", wire.Get("tenant:probe/p1", T0))
            assert got.entry is not None

    with short_tmp() as d:
        run(main)


# --------------------------------------------------------------------------- restarts


def test_a_restarted_consensus_gets_hello_and_resumes_apply() -> None:
    timings = ServiceTimings(ack_delay=0.0, hello_interval=0.05, reaper=FAST.reaper)
    clock = ManualClock()
    net = MemoryIpc(clock)

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(None, d, timings=timings, sockets=net, clock=clock) as b:
            at = b.log.index
            await b.consensus.close()
            # Two hello intervals and a send timeout: storage's sends fail meanwhile.
            await clock.advance(2 * timings.hello_interval + timings.send_timeout)
            b.consensus = await FakeConsensus.open(None, d, net)
            assert (await b.consensus.hello()).applied_index == at
            await b.consensus.apply(b.log.set("tenant:a/after"))
            await b.consensus.acked(at + 1)
            got = await b.front.request("get", wire.Get("tenant:a/after", T0))
            assert got.entry is not None

    with short_tmp() as d:
        run(main)
