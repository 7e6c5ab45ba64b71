"""The one poll helper of the tests: returns the first truthy value, fails at its bound."""

from __future__ import annotations

import asyncio

import pytest

from concordance.testing.clock import ManualClock
from concordance.testing.poll import until, until_answered, until_sync


def test_until_returns_the_first_truthy_value_once_it_comes() -> None:
    async def main() -> None:
        seen: list[int] = []
        asyncio.get_running_loop().call_soon(seen.append, 7)
        assert await until(lambda: seen and seen[0], "the value") == 7

    asyncio.run(main())


def test_until_fails_the_test_at_its_bound_naming_what_it_waited_for() -> None:
    async def main() -> None:
        with pytest.raises(AssertionError, match="never"):
            await until(lambda: False, "never", timeout=0.02)

    asyncio.run(main())


def test_until_answered_asks_again_until_the_answer_holds() -> None:
    async def main() -> None:
        asked = 0

        async def ask() -> int:
            nonlocal asked
            asked += 1
            return asked

        assert await until_answered(ask, lambda n: n >= 3, "a third answer") == 3
        with pytest.raises(AssertionError, match="a negative one"):
            await until_answered(ask, lambda n: n < 0, "a negative one", timeout=0.02)

    asyncio.run(main())


def test_until_sync_polls_without_a_loop() -> None:
    values = iter([0, 0, 5])
    assert until_sync(lambda: next(values), "five") == 5
    with pytest.raises(AssertionError, match="nothing"):
        until_sync(lambda: None, "nothing", timeout=0.02)


def test_advance_until_moves_the_manual_clock_just_far_enough() -> None:
    async def main() -> None:
        clock = ManualClock()
        fired: list[float] = []
        clock.call_later(0.25, lambda: fired.append(clock.monotonic()))
        start = clock.monotonic()
        assert await clock.advance_until(lambda: fired, "the timer", step=0.1) == [start + 0.25]
        assert clock.monotonic() == start + 0.25  # to the timer, not a step past it
        with pytest.raises(AssertionError, match="manual clock"):
            await clock.advance_until(lambda: False, "never", step=0.5, within=1.0)
        assert clock.monotonic() == pytest.approx(start + 1.25)  # steps of 0.5, up to the bound
        with pytest.raises(ValueError):
            await clock.advance_until(lambda: True, step=0)

    asyncio.run(main())
