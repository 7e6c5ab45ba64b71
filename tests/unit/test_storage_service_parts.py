"""The storage service's parts: the wait_applied heap, the TTL reaper's rules, a second copy."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import zmq.asyncio

from concordance import errors, ipc, wire
from concordance.commands import Expire
from concordance.storage.service import ServiceTimings, StorageService
from concordance.storage.service_ttl import ExpiryReaper, ReaperTimings, wall_ms
from concordance.storage.service_waiters import AppliedWaiters
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


class _FollowerConsensus:
    async def request(self, type: str, body: Any, timeout: float) -> Any:
        return wire.StatusOk("n1", "follower", 1, "n2", 0, 0, ())


def test_the_reaper_does_not_spin_on_an_expired_entry_it_may_not_delete() -> None:
    state = _ExpiredState()
    timings = ReaperTimings(interval=0.02, leader_ttl=0.05)
    reaper = ExpiryReaper("n1", state, _FollowerConsensus(), timings)  # type: ignore[arg-type]

    async def main() -> None:
        task = asyncio.ensure_future(reaper.run())
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert state.looks <= 20  # about 2 per interval, not a busy loop


@pytest.mark.slow
def test_an_unavailable_proposal_is_retried_and_a_lost_one_after_remember() -> None:
    timings = ServiceTimings(
        hello_interval=30.0,
        reaper=ReaperTimings(interval=0.02, leader_ttl=0.05, propose_timeout=1.0, remember=0.3),
    )

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d, timings=timings) as b:
            b.consensus.propose_error = errors.Unavailable("no leader")
            now = wall_ms()
            await b.consensus.apply(b.log.set("tenant:a/k", expires_at=now - 1, ts=now - 9))
            await b.consensus.acked(b.log.index)
            await _until(lambda: len(b.consensus.proposals) >= 2)  # certainly not appended
            b.consensus.propose_error = None
            await _until(lambda: b.consensus.proposed_ok == 1)
            assert b.reaper_in_flight() == 1
            count = len(b.consensus.proposals)
            await asyncio.sleep(0.1)  # in flight: not again yet
            assert len(b.consensus.proposals) == count
            await _until(lambda: len(b.consensus.proposals) > count)  # forgotten: again

    with short_tmp() as d:
        run(main)


def test_a_backlog_is_proposed_in_batches_past_the_ones_in_flight() -> None:
    timings = ServiceTimings(
        hello_interval=30.0,
        reaper=ReaperTimings(interval=0.02, leader_ttl=0.05, batch=100),
    )

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d, timings=timings) as b:
            now = wall_ms()
            sets = [b.log.set(f"tenant:a/k{i:03d}", expires_at=now - 1, ts=T0) for i in range(150)]
            await b.consensus.apply(*sets)
            await b.consensus.acked(b.log.index)
            await _until(lambda: len(b.consensus.proposals) >= 150)
            keys = [c.op.key for c in b.consensus.proposals if isinstance(c.op, Expire)]
            assert sorted(keys) == [f"tenant:a/k{i:03d}" for i in range(150)]  # each once

    with short_tmp() as d:
        run(main)


async def _until(condition: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.01)


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
    timings = ServiceTimings(hello_interval=0.05, reaper=FAST.reaper)

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with bench(ctx, d, timings=timings) as b:
            at = b.log.index
            await b.consensus.close()
            await asyncio.sleep(0.1)  # storage's sends fail meanwhile; it keeps going
            b.consensus = await FakeConsensus.open(ctx, d)
            assert (await b.consensus.hello()).applied_index == at
            await b.consensus.apply(b.log.set("tenant:a/after"))
            await b.consensus.acked(at + 1)
            got = await b.front.request("get", wire.Get("tenant:a/after", T0))
            assert got.entry is not None

    with short_tmp() as d:
        run(main)
