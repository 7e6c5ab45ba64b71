"""The Proposer on its own: how ``results`` and ``dropped`` resolve a waiting write."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import cast

import pytest

from concordance.errors import IpcError, Timeout, Unavailable
from concordance.front.clients import ConsensusClient
from concordance.front.writes import HOLD_MAX, REPROPOSE_WINDOW, Proposer
from concordance.protocol import payloads, wire
from concordance.protocol.commands import Command, Delete
from concordance.testing.clock import ManualClock

KEY = "tenant:acme/k"


class ScriptedConsensus:
    """``propose`` forwards (index 0) after running ``script`` on the proposed bytes,
    i.e. whatever consensus and storage report while the request is in flight."""

    def __init__(self, script: Callable[[Sequence[bytes]], None]) -> None:
        self.script = script

    async def propose(self, commands: Sequence[bytes], timeout: float) -> int:
        self.script(commands)
        return 0


def proposer_with(script: Callable[[Proposer, Sequence[bytes]], None]) -> Proposer:
    box: list[Proposer] = []
    consensus = ScriptedConsensus(lambda commands: script(box[0], commands))
    proposer = Proposer("n1", cast(ConsensusClient, consensus), 60_000, lambda: 0)
    box.append(proposer)
    return proposer


def request_id(data: bytes) -> int:
    return Command.decode(data).request_id


def test_dropped_fails_the_write_with_unavailable() -> None:
    def refuse(p: Proposer, commands: Sequence[bytes]) -> None:
        p.fail_dropped(wire.Dropped(tuple(commands)))

    async def main() -> None:
        proposer = proposer_with(refuse)
        with pytest.raises(Unavailable):
            await asyncio.wait_for(proposer.submit(Delete(KEY)), 5)
        assert proposer.pending == 0

    asyncio.run(main())


def test_a_result_that_arrived_first_is_kept() -> None:
    """Unless its result already arrived: a report of the same command after the
    result (it cannot happen over an at-most-once transport) does not overwrite it."""
    result = payloads.Deleted(KEY, 1, 2)

    def apply_then_refuse(p: Proposer, commands: Sequence[bytes]) -> None:
        p.deliver(wire.Results("n1", (payloads.Outcome(request_id(commands[0]), result),)))
        p.fail_dropped(wire.Dropped(tuple(commands)))

    async def main() -> None:
        proposer = proposer_with(apply_then_refuse)
        assert await asyncio.wait_for(proposer.submit(Delete(KEY)), 5) == result

    asyncio.run(main())


def test_writes_of_one_loop_turn_share_one_propose_and_keep_their_own_outcomes() -> None:
    calls: list[list[bytes]] = []

    def apply_each(p: Proposer, commands: Sequence[bytes]) -> None:
        calls.append(list(commands))
        items = tuple(
            payloads.Outcome(request_id(c), payloads.PrefixDeleted(i, i))
            for i, c in enumerate(commands)
        )
        p.deliver(wire.Results("n1", items))

    async def main() -> None:
        proposer = proposer_with(apply_each)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(proposer.submit(Delete(f"{KEY}{i}")) for i in range(5))), 5
        )
        assert [len(c) for c in calls] == [5] and proposer.batches == 1
        assert outcomes == [payloads.PrefixDeleted(i, i) for i in range(5)]
        assert [Command.decode(c).op for c in calls[0]] == [Delete(f"{KEY}{i}") for i in range(5)]
        # A later turn starts a new batch.
        await asyncio.wait_for(proposer.submit(Delete(KEY)), 5)
        assert [len(c) for c in calls] == [5, 1] and proposer.pending == 0

    asyncio.run(main())


def test_a_refused_batch_fails_every_write_in_it_with_unavailable() -> None:
    class Refusing:
        def __init__(self) -> None:
            self.calls = 0

        async def propose(self, commands: Sequence[bytes], timeout: float) -> int:
            self.calls += 1
            raise Unavailable("no leader")

    async def main() -> None:
        consensus = Refusing()
        proposer = Proposer("n1", cast(ConsensusClient, consensus), 60_000, lambda: 0)
        outcomes = await asyncio.gather(
            *(proposer.submit(Delete(f"{KEY}{i}")) for i in range(3)), return_exceptions=True
        )
        assert consensus.calls == 1
        assert all(isinstance(o, Unavailable) for o in outcomes)
        assert proposer.pending == 0

    asyncio.run(main())


def test_a_full_batch_is_sent_and_the_rest_go_in_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    import concordance.front.writes as writes

    monkeypatch.setattr(writes, "BATCH_COMMANDS", 2)
    sizes: list[int] = []

    def apply_each(p: Proposer, commands: Sequence[bytes]) -> None:
        sizes.append(len(commands))
        p.deliver(
            wire.Results("n1", tuple(payloads.Outcome(request_id(c), None) for c in commands))
        )

    async def main() -> None:
        proposer = proposer_with(apply_each)
        await asyncio.wait_for(
            asyncio.gather(*(proposer.submit(Delete(f"{KEY}{i}")) for i in range(5))), 5
        )
        assert sorted(sizes) == [1, 2, 2]

    asyncio.run(main())


def test_consistent_reads_of_one_loop_turn_share_one_read_index_request() -> None:
    from concordance.front.reads import ReadIndexBatcher

    class Counting:
        def __init__(self) -> None:
            self.calls = 0

        async def read_index(self, timeout: float) -> int:
            self.calls += 1
            await asyncio.sleep(0)
            return 10 * self.calls

    async def main() -> None:
        consensus = Counting()
        reads = ReadIndexBatcher(consensus)
        first = await asyncio.gather(*(reads.next(1.0) for _ in range(4)))
        assert first == [10] * 4 and consensus.calls == 1
        # A read that begins while a request is in flight waits for the next one.
        early = asyncio.ensure_future(reads.next(1.0))
        await asyncio.sleep(0)  # the request for `early` is now on its way
        late = asyncio.ensure_future(reads.next(1.0))
        assert await early == 20 and await late == 30 and consensus.calls == 3

    asyncio.run(main())


class GatedReadIndex:
    """Answers each read_index request when the test says so, with an index it chose then."""

    def __init__(self) -> None:
        self.asked: list[asyncio.Future[int]] = []

    async def read_index(self, timeout: float) -> int:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.asked.append(answer)
        return await answer


def test_reads_that_begin_during_a_request_share_the_next_one_sent_after_it() -> None:
    from concordance.front.reads import ReadIndexBatcher

    async def main() -> None:
        clock = ManualClock()  # no time passes: the stall never fires
        consensus = GatedReadIndex()
        reads = ReadIndexBatcher(consensus, stall=60.0, depth=1, clock=clock)
        first = asyncio.ensure_future(reads.next(1.0))
        await clock.settle()
        assert len(consensus.asked) == 1
        # Three reads begin while the first request is in flight, over several turns.
        later = [asyncio.ensure_future(reads.next(1.0))]
        await clock.settle()
        later += [asyncio.ensure_future(reads.next(1.0)) for _ in range(2)]
        await clock.settle()
        assert len(consensus.asked) == 1  # none of them joined it, none was sent yet
        consensus.asked[0].set_result(5)
        assert await first == 5
        await clock.settle()
        assert len(consensus.asked) == 2  # one request for all three, sent after the first
        consensus.asked[1].set_result(9)
        assert await asyncio.gather(*later) == [9, 9, 9]

    asyncio.run(main())


def test_read_index_requests_go_out_up_to_the_depth_then_the_next_one_is_shared() -> None:
    """Two requests in flight (``DEPTH``): a read that begins during the first
    gets its own at once; reads that begin while both are out share the third,
    sent when one of them is answered."""
    from concordance.front.reads import DEPTH, ReadIndexBatcher

    async def main() -> None:
        assert DEPTH == 2
        clock = ManualClock()  # no time passes: the stall never fires
        consensus = GatedReadIndex()
        reads = ReadIndexBatcher(consensus, stall=60.0, clock=clock)
        first = asyncio.ensure_future(reads.next(1.0))
        await clock.settle()
        second = asyncio.ensure_future(reads.next(1.0))
        await clock.settle()
        assert len(consensus.asked) == 2  # the second did not wait for the first
        later = [asyncio.ensure_future(reads.next(1.0)) for _ in range(3)]
        await clock.settle()
        assert len(consensus.asked) == 2  # both slots taken: they wait, together
        consensus.asked[1].set_result(8)
        assert await second == 8
        await clock.settle()
        assert len(consensus.asked) == 3
        consensus.asked[0].set_result(7)
        consensus.asked[2].set_result(9)
        assert await first == 7 and await asyncio.gather(*later) == [9, 9, 9]

    asyncio.run(main())


def test_a_stalled_read_index_request_does_not_hold_back_the_next_one() -> None:
    from concordance.front.reads import ReadIndexBatcher

    class Answering:
        def __init__(self) -> None:
            self.calls = 0
            self.stuck: asyncio.Future[int] | None = None

        async def read_index(self, timeout: float) -> int:
            self.calls += 1
            if self.calls == 1:  # the first request never comes back
                self.stuck = asyncio.get_running_loop().create_future()
                return await self.stuck
            return 7

    async def main() -> None:
        clock = ManualClock()
        consensus = Answering()
        reads = ReadIndexBatcher(consensus, stall=0.05, depth=1, clock=clock)
        stuck = asyncio.ensure_future(reads.next(1.0))
        await clock.settle()
        behind = asyncio.ensure_future(reads.next(1.0))  # the one slot is taken
        await clock.advance(0.04)
        assert not behind.done() and consensus.calls == 1  # held back, until the stall
        await clock.advance(0.01)
        assert behind.done() and behind.result() == 7
        assert consensus.calls == 2 and not stuck.done()
        stuck.cancel()

    asyncio.run(main())


def test_a_write_is_503_only_once_refused_for_the_window_in_a_row() -> None:
    """``dropped`` re-proposes until the write has been refused for
    ``REPROPOSE_WINDOW`` in a row; a pause as long between two refusals (the
    proposal was held for a restarting consensus) starts a new run."""

    async def main() -> None:
        clock = ManualClock()
        proposed: list[bytes] = []
        consensus = ScriptedConsensus(proposed.extend)  # forwards; no result comes
        proposer = Proposer("n1", cast(ConsensusClient, consensus), 60_000, lambda: 0, timers=clock)
        write = asyncio.ensure_future(proposer.submit(Delete(KEY)))
        await clock.settle()
        assert len(proposed) == 1

        async def refuse_at(offset: float) -> None:
            await clock.advance(offset - (clock.monotonic() - start))
            proposer.fail_dropped(wire.Dropped((proposed[0],)))
            await clock.settle()

        start = clock.monotonic()
        for at in (0.0, 0.3, 1.0, 1.4):  # 0.7 s without a refusal: a new run from 1.0
            await refuse_at(at)
            assert not write.done(), at
        assert len(proposed) > 1  # proposed again, the same command
        assert set(proposed) == {proposed[0]}
        await refuse_at(1.0 + REPROPOSE_WINDOW)  # refused for the whole window in a row
        with pytest.raises(Unavailable):
            await asyncio.wait_for(write, 5)
        assert proposer.pending == 0

    asyncio.run(main())


class Gated:
    """``propose`` answers only when the test opens that call's gate."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []
        self.gates: list[asyncio.Future[None]] = []

    async def propose(self, commands: Sequence[bytes], timeout: float) -> int:
        self.calls.append(list(commands))
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        await gate
        return 1


def test_writes_made_while_a_batch_is_in_flight_go_together_once_it_settles() -> None:
    """The next batch is held until the previous propose is answered AND each of its
    writes has its outcome (one Raft round per write's round trip), not only until
    the answer."""

    async def main() -> None:
        clock = ManualClock()
        consensus = Gated()
        proposer = Proposer("n1", cast(ConsensusClient, consensus), 60_000, lambda: 0, timers=clock)
        first = asyncio.ensure_future(proposer.submit(Delete(f"{KEY}0")))
        await clock.settle()
        assert len(consensus.calls) == 1  # a lone write is not held
        later = []
        for i in range(1, 4):  # three loop turns, each one write, while the first waits
            later.append(asyncio.ensure_future(proposer.submit(Delete(f"{KEY}{i}"))))
            await clock.settle()
        assert len(consensus.calls) == 1  # held: they share the next batch
        consensus.gates[0].set_result(None)
        await clock.settle()
        assert len(consensus.calls) == 1  # answered, but the first write has no outcome yet
        first_id = request_id(consensus.calls[0][0])
        proposer.deliver(wire.Results("n1", (payloads.Outcome(first_id, None),)))
        await clock.settle()
        assert [len(c) for c in consensus.calls] == [1, 3] and proposer.batches == 2
        ids = [request_id(c) for c in consensus.calls[1]]
        proposer.deliver(wire.Results("n1", tuple(payloads.Outcome(r, None) for r in ids)))
        consensus.gates[1].set_result(None)
        assert await asyncio.wait_for(asyncio.gather(first, *later), 5) == [None] * 4

    asyncio.run(main())


@pytest.mark.parametrize("answered", [True, False], ids=["answered, no result", "not answered"])
def test_a_batch_that_does_not_settle_holds_the_next_only_hold_max(answered: bool) -> None:
    async def main() -> None:
        clock = ManualClock()
        consensus = Gated()
        proposer = Proposer("n1", cast(ConsensusClient, consensus), 60_000, lambda: 0, timers=clock)
        stuck = asyncio.ensure_future(proposer.submit(Delete(f"{KEY}0")))
        await clock.settle()
        if answered:
            consensus.gates[0].set_result(None)  # appended; its result never comes
        behind = asyncio.ensure_future(proposer.submit(Delete(f"{KEY}1")))
        await clock.advance(HOLD_MAX * 0.9)
        assert len(consensus.calls) == 1
        await clock.advance(HOLD_MAX * 0.1)
        assert len(consensus.calls) == 2  # sent without the first one settling
        proposer.deliver(
            wire.Results("n1", (payloads.Outcome(request_id(consensus.calls[1][0]), None),))
        )
        consensus.gates[1].set_result(None)
        assert await asyncio.wait_for(behind, 5) is None
        assert not stuck.done()
        stuck.cancel()

    asyncio.run(main())


def test_a_stopping_front_ends_waiting_writes_as_outcome_unknown() -> None:
    """A write proposed (forwarded: index 0) and still waiting for its result when the
    front stops ends with 504 ``Timeout``, never 503 ``Unavailable``: it may be
    applied after this front is gone, and 503 would tell the client it was not
    (the node simulation found a delete answered 503 that was applied)."""

    async def main() -> None:
        proposer = proposer_with(lambda p, commands: None)  # proposed; no result ever
        write = asyncio.ensure_future(proposer.submit(Delete(KEY)))
        for _ in range(10):
            await asyncio.sleep(0)
        assert proposer.pending == 1 and not write.done()
        proposer.abandon_all()
        with pytest.raises(Timeout):
            await write

    asyncio.run(main())


def test_a_write_answered_before_its_propose_returns_does_not_wait_for_that_answer() -> None:
    """A write awaits its own waiter only: its result ends it at once, while the
    propose that carried it is still unanswered (the batch's answer is not awaited)."""

    async def main() -> None:
        clock = ManualClock()
        consensus = Gated()
        proposer = Proposer("n1", cast(ConsensusClient, consensus), 60_000, lambda: 0, timers=clock)
        write = asyncio.ensure_future(proposer.submit(Delete(KEY)))
        await clock.settle()
        result = payloads.Deleted(KEY, 1, 2)
        proposer.deliver(
            wire.Results("n1", (payloads.Outcome(request_id(consensus.calls[0][0]), result),))
        )
        await clock.settle()
        assert write.done() and write.result() == result
        assert proposer.pending == 0
        consensus.gates[0].set_result(None)  # the late answer changes nothing
        await clock.settle()

    asyncio.run(main())


def test_an_unknown_propose_outcome_waits_for_the_result_then_the_deadline() -> None:
    """``IpcError`` from propose (outcome unknown) leaves each write of the batch
    waiting: one gets its result, the other ends as ``Timeout`` at its deadline."""

    class Lost:
        def __init__(self) -> None:
            self.calls: list[list[bytes]] = []

        async def propose(self, commands: Sequence[bytes], timeout: float) -> int:
            self.calls.append(list(commands))
            raise IpcError("lost the reply")

    async def main() -> None:
        clock = ManualClock()
        consensus = Lost()
        proposer = Proposer("n1", cast(ConsensusClient, consensus), 1_000, lambda: 0, timers=clock)
        kept = asyncio.ensure_future(proposer.submit(Delete(f"{KEY}0")))
        lost = asyncio.ensure_future(proposer.submit(Delete(f"{KEY}1")))
        await clock.settle()
        assert [len(c) for c in consensus.calls] == [2]
        assert not kept.done() and not lost.done()
        proposer.deliver(
            wire.Results("n1", (payloads.Outcome(request_id(consensus.calls[0][0]), None),))
        )
        await clock.settle()
        assert kept.done() and kept.result() is None
        await clock.advance(0.99)
        assert not lost.done()
        await clock.advance(0.02)
        with pytest.raises(Timeout):
            await lost
        assert proposer.pending == 0 and proposer.failed["timeout"] == 1

    asyncio.run(main())


def test_a_refused_reproposal_fails_the_write_and_an_unknown_one_leaves_it_waiting() -> None:
    """A re-proposal (after ``dropped``) fails its write only on ``Unavailable``."""

    class Answers:
        def __init__(self, errors: list[Exception | None]) -> None:
            self.errors = errors
            self.calls: list[list[bytes]] = []

        async def propose(self, commands: Sequence[bytes], timeout: float) -> int:
            self.calls.append(list(commands))
            error = self.errors.pop(0)
            if error is not None:
                raise error
            return 0

    async def write_refused_then(error: Exception) -> tuple[Proposer, asyncio.Future[object]]:
        clock = ManualClock()
        consensus = Answers([None, error])
        proposer = Proposer("n1", cast(ConsensusClient, consensus), 60_000, lambda: 0, timers=clock)
        write = asyncio.ensure_future(proposer.submit(Delete(KEY)))
        await clock.settle()
        proposer.fail_dropped(wire.Dropped(tuple(consensus.calls[0])))
        await clock.advance(1.0)  # past REPROPOSE_DELAY: proposed again, and answered
        assert len(consensus.calls) == 2
        return proposer, write

    async def main() -> None:
        proposer, write = await write_refused_then(Unavailable("no leader"))
        with pytest.raises(Unavailable):
            await write
        proposer, write = await write_refused_then(IpcError("lost the reply"))
        assert not write.done() and proposer.pending == 1
        write.cancel()

    asyncio.run(main())
