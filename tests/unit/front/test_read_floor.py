"""The read floor starts at consensus's commit index, and never holds reads for a consensus
that does not answer (front/read_floor.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from concordance.errors import IpcError
from concordance.front import read_floor
from concordance.front.read_floor import ReadFloor
from concordance.protocol import wire
from concordance.testing.clock import ManualClock


class Consensus:
    """Answers ``status`` with the queued outcomes, in order (a future: held until set)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.asked: list[float] = []  # the timeout of each ask

    async def status(self, timeout: float) -> wire.StatusOk:
        self.asked.append(timeout)
        outcome = self.outcomes.pop(0) if self.outcomes else IpcError("no answer")
        if isinstance(outcome, asyncio.Future):
            outcome = await outcome
        if isinstance(outcome, Exception):
            raise outcome
        return wire.StatusOk("n1", "follower", 2, "n2", outcome, outcome, ())


def test_the_floor_starts_at_the_commit_index_and_only_rises() -> None:
    async def main() -> None:
        floor = ReadFloor(ManualClock())
        assert await floor.seed(Consensus(7)) == "starts at consensus's commit index 7"  # type: ignore[arg-type]
        assert await floor.current() == 7
        floor.raise_to(5)  # an older results: the floor stays
        assert floor.index == 7
        floor.raise_to(9)
        assert await floor.current() == 9

    asyncio.run(main())


def test_reads_wait_for_the_first_answer_at_start() -> None:
    async def main() -> None:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        floor = ReadFloor(ManualClock())
        seed = asyncio.ensure_future(floor.seed(Consensus(answer)))  # type: ignore[arg-type]
        read = asyncio.ensure_future(floor.current())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not read.done()  # a write an earlier front answered may be above 0
        answer.set_result(4)
        assert await read == 4
        await seed

    asyncio.run(main())


def test_without_consensus_reads_go_on_and_the_floor_keeps_asking() -> None:
    async def main() -> None:
        clock = ManualClock()
        floor = ReadFloor(clock)
        consensus = Consensus(IpcError("timed out"), IpcError("timed out"), 12)
        seed = asyncio.ensure_future(floor.seed(consensus))  # type: ignore[arg-type]
        assert await floor.current() == 0  # the first ask failed: reads are not held
        floor.raise_to(3)  # results still raise it
        await clock.advance_until(seed.done, "the third ask answered")
        assert floor.index == 12
        assert consensus.asked == [read_floor.FIRST_TRY] + [read_floor.RETRY_TIMEOUT] * 2

    asyncio.run(main())


def test_a_consensus_that_never_answers_is_asked_a_bounded_number_of_times() -> None:
    async def main() -> None:
        clock = ManualClock()
        floor = ReadFloor(clock)
        consensus = Consensus()  # every ask fails
        seed = asyncio.ensure_future(floor.seed(consensus))  # type: ignore[arg-type]
        await clock.advance_until(seed.done, "the floor gave up", within=read_floor.TRIES)
        assert seed.result() == "consensus did not answer; the floor rests on results alone"
        assert len(consensus.asked) == read_floor.TRIES
        assert await floor.current() == 0

    asyncio.run(main())
