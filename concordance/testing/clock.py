"""A clock that only moves when the test says so (``concordance.clock.Clock`` for tests).

Why: a role's timers (hello intervals, reaper scans, retry backoffs, stale
frames) used to make their tests sleep for real and hope the loop had run
enough meanwhile. With a :class:`ManualClock` a test advances time by exactly
the interval it means, the due timers fire in order, and the tasks they wake
run before :meth:`ManualClock.advance` returns. No real time passes.

What "run before advance returns" means: after each fired timer the clock
yields to the event loop until no timer callback or woken task is left to
run (``settle``). A task that then waits for real I/O (a socket, a thread) is
not this clock's business; wait for its effect with a bounded condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from concordance.clock import Clock

__all__ = ["ManualClock", "ManualTimer"]

EPOCH_MS = 1_764_230_400_000  # the wall time a clock starts at, unless told otherwise
SETTLE_TURNS = 20  # loop turns given to woken tasks after each fired timer

_T = TypeVar("_T")


class ManualTimer:
    """A scheduled callback; ``cancel`` before it is due and it never runs."""

    __slots__ = ("args", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """Monotonic and wall time that move only in :meth:`advance`.

    Args:
        start: the monotonic reading at creation.
        wall_ms: the epoch milliseconds at creation; wall time moves with monotonic time.
    """

    def __init__(self, start: float = 1000.0, wall_ms: int = EPOCH_MS) -> None:
        self._now = start
        self._start = start
        self._wall0 = wall_ms
        self._seq = itertools.count()
        self._timers: list[tuple[float, int, ManualTimer]] = []
        self._scheduled: asyncio.Event | None = None  # set whenever a timer is added

    # -- the Clock protocol ----------------------------------------------------------
    def monotonic(self) -> float:
        return self._now

    def wall_ms(self) -> int:
        return self._wall0 + round((self._now - self._start) * 1000)

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> ManualTimer:
        timer = ManualTimer(self._now + max(delay, 0.0), callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        if self._scheduled is not None:
            self._scheduled.set()
        return timer

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        timer = self.call_later(seconds, _wake, future)
        try:
            await future
        finally:
            timer.cancel()

    @contextlib.asynccontextmanager
    async def timeout(self, seconds: float) -> AsyncIterator[object]:
        """Like ``asyncio.timeout`` on this clock: when it is due, the real timeout is
        moved to "now", so cancellation and ``TimeoutError`` are asyncio's own."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(None) as real:
            timer = self.call_later(seconds, lambda: real.reschedule(loop.time()))
            try:
                yield real
            finally:
                timer.cancel()

    # -- for tests -------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Timers scheduled and not cancelled (sleepers included)."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    def next_due(self) -> float | None:
        """When the earliest live timer is due (monotonic), or None."""
        self._drop_cancelled()
        return self._timers[0][0] if self._timers else None

    async def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``, firing due timers in order and letting
        what they wake run (``settle``) after each."""
        if seconds < 0:
            raise ValueError("time does not go back")
        target = self._now + seconds
        await self.settle()
        while True:
            self._drop_cancelled()
            if not self._timers or self._timers[0][0] > target:
                break
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            timer.callback(*timer.args)
            await self.settle()
        self._now = target
        await self.settle()

    async def advance_until(
        self,
        condition: Callable[[], _T],
        what: str = "",
        *,
        step: float = 0.01,
        within: float = 60.0,
    ) -> _T:
        """Move time forward until ``condition()`` is truthy; return that value. The
        wait for an effect that the role's timers cause.

        Each round moves to the next due timer, or ``step`` seconds if none is
        due sooner, so a sleeper wakes exactly when it asked to (a chain of
        backoffs is timed as it would be in real time).

        Raises:
            AssertionError: still falsy after ``within`` seconds of this clock's time.
        """
        if step <= 0:
            raise ValueError("step must be positive")
        limit = self._now + within
        await self.settle()
        while not (value := condition()):
            if self._now >= limit:
                raise AssertionError(f"not within {within:g}s (manual clock): {what or condition}")
            due = self.next_due()
            target = min(self._now + step, limit) if due is None else min(due, self._now + step)
            await self.advance(max(target - self._now, 0.0))
        return value

    async def settle(self, turns: int = SETTLE_TURNS) -> None:
        """Give the event loop ``turns`` turns (no time passes)."""
        for _ in range(turns):
            await asyncio.sleep(0)

    async def wait_for_timers(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` timers are pending (a task reached its sleep).

        Bounded by ``timeout`` seconds of real time, which only fails the test.
        """
        if self._scheduled is None:
            self._scheduled = asyncio.Event()
        async with asyncio.timeout(timeout):
            while self.pending < count:
                self._scheduled.clear()
                await self._scheduled.wait()

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _conforms(clock: ManualClock) -> Clock:
    """Never called: mypy checks here that ManualClock keeps the Clock protocol's shape."""
    return clock
