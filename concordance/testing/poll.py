"""Waiting in tests for something to have happened: poll a condition, bounded. Test support.

Why one helper: a test that sleeps a fixed time to "let it happen" is slow
when the machine is idle and flaky when it is busy. A test waits instead for
the effect it means, here, for at most a bound that only fails the test.

* :func:`until` polls in real time: for effects of real I/O (sockets,
  threads, other processes).
* :func:`until_answered` asks again (a request) until the answer holds.
* :func:`until_sync` does the same as :func:`until` without an event loop (tests driving
  processes from the outside).
* Given a ``ManualClock`` (``clock=``), both move that clock instead of
  waiting (``ManualClock.advance_until``): the role's timers are what makes
  the effect happen, and ``timeout`` is then in that clock's seconds.

The poll interval is not a wait for the effect, only how often to look.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from concordance.clock import Clock
from concordance.testing.clock import ManualClock

__all__ = ["POLL", "WAIT", "until", "until_answered", "until_sync"]

WAIT = 10.0  # seconds of real time a wait may take before the test fails
POLL = 0.005  # seconds between two looks

_T = TypeVar("_T")


async def until(
    condition: Callable[[], _T],
    what: str = "",
    timeout: float = WAIT,
    *,
    every: float = POLL,
    clock: Clock | None = None,
) -> _T:
    """Return ``condition()``'s first truthy value, looking every ``every`` seconds.

    Raises:
        AssertionError: still falsy after ``timeout`` seconds (naming ``what``).
    """
    if isinstance(clock, ManualClock):
        return await clock.advance_until(condition, what, step=every, within=timeout)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or condition}")
        await asyncio.sleep(every)


async def until_answered(
    ask: Callable[[], Awaitable[_T]],
    holds: Callable[[_T], object],
    what: str = "",
    timeout: float = WAIT,
    *,
    every: float = POLL,
    clock: Clock | None = None,
) -> _T:
    """Ask (an awaitable: a request) until ``holds(answer)``; return that answer.

    Raises:
        AssertionError: no such answer within ``timeout`` seconds (naming ``what``).
    """
    manual = clock if isinstance(clock, ManualClock) else None
    now = manual.monotonic if manual is not None else asyncio.get_running_loop().time
    deadline = now() + timeout
    while True:
        answer = await ask()
        if holds(answer):
            return answer
        if now() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or holds}")
        if manual is not None:
            await manual.advance(every)
        else:
            await asyncio.sleep(every)


def until_sync(
    condition: Callable[[], _T], what: str = "", timeout: float = WAIT, *, every: float = POLL
) -> _T:
    """:func:`until` for code outside an event loop (blocks the calling thread)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or condition}")
        time.sleep(every)
