"""The clocks: the system one is asyncio's, the manual one moves only when told."""

from __future__ import annotations

import asyncio
import time

import pytest

from concordance.clock import SYSTEM_CLOCK
from concordance.testing.clock import ManualClock


def test_the_system_clock_reads_time_and_the_loop() -> None:
    before = time.monotonic()
    assert before <= SYSTEM_CLOCK.monotonic() <= time.monotonic()
    assert abs(SYSTEM_CLOCK.wall_ms() - time.time() * 1000) < 1000

    async def main() -> None:
        fired: list[int] = []
        SYSTEM_CLOCK.call_later(0, fired.append, 1)
        await SYSTEM_CLOCK.sleep(0)
        await SYSTEM_CLOCK.sleep(0)
        assert fired == [1]
        with pytest.raises(TimeoutError):
            async with SYSTEM_CLOCK.timeout(0):
                await asyncio.Event().wait()

    asyncio.run(main())


def test_sleepers_wake_in_order_only_when_time_is_advanced() -> None:
    async def main() -> None:
        clock = ManualClock(start=10.0, wall_ms=5_000)
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append((name, clock.monotonic()))

        tasks = [asyncio.ensure_future(sleeper(n, s)) for n, s in (("b", 2.0), ("a", 1.0))]
        await clock.wait_for_timers(2)
        await clock.settle()
        assert woke == [] and clock.monotonic() == 10.0
        await clock.advance(1.5)
        assert woke == [("a", 11.0)] and clock.monotonic() == 11.5
        assert clock.wall_ms() == 6_500
        await clock.advance(0.5)
        assert woke == [("a", 11.0), ("b", 12.0)]
        await asyncio.gather(*tasks)
        assert clock.pending == 0

    asyncio.run(main())


def test_cancelled_timers_never_fire_and_timeouts_run_on_the_clock() -> None:
    async def main() -> None:
        clock = ManualClock()
        fired: list[int] = []
        clock.call_later(1.0, fired.append, 1).cancel()
        clock.call_later(2.0, fired.append, 2)
        assert clock.pending == 1 and clock.next_due() == clock.monotonic() + 2.0

        async def waits() -> str:
            try:
                async with clock.timeout(5.0):
                    await asyncio.Event().wait()
            except TimeoutError:
                return "timed out"
            return "no"

        task = asyncio.ensure_future(waits())
        await clock.advance(4.9)
        assert fired == [2] and not task.done()
        await clock.advance(0.1)
        assert task.done() and task.result() == "timed out"
        with pytest.raises(ValueError):
            await clock.advance(-1)

    asyncio.run(main())
