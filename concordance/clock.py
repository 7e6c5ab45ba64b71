"""One clock for the roles: monotonic and wall time, sleeps and timers, injectable for tests.

Why: the driver, the waiters, the storage service and its TTL reaper, the
front's proposer, peer relay and watch hub all measure intervals and
deadlines. Reading ``time`` and the event loop directly made their tests
sleep and hope; with every such read going through one :class:`Clock`
passed in by constructor (default :data:`SYSTEM_CLOCK`), a test passes a
``concordance.testing.clock.ManualClock`` and moves time itself.

Rules: ``monotonic()`` is for intervals and deadlines (seconds, never goes
back); ``wall_ms()`` is epoch milliseconds for what other processes or
clients compare (request deadlines on the wire, expiry); ``sleep``,
``call_later`` and ``timeout`` run on ``monotonic()``. Time spent waiting for
real I/O to drain (a socket flush before close) is not the clock's business.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "Timer"]


class Timer(Protocol):
    """A callback scheduled by :meth:`Clock.call_later`."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic and wall time, and the waits that run on them."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary start; only differences mean anything."""
        ...

    def wall_ms(self) -> int:
        """Epoch milliseconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of this clock's monotonic time."""
        ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Timer:
        """Call ``callback(*args)`` on the running loop after ``delay`` seconds."""
        ...

    def timeout(self, seconds: float) -> AbstractAsyncContextManager[object]:
        """``async with``: cancel the block after ``seconds``, then raise ``TimeoutError``."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic`` (the event loop's own), ``time.time_ns``, asyncio."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback, *args)

    def timeout(self, seconds: float) -> asyncio.Timeout:
        return asyncio.timeout(seconds)


SYSTEM_CLOCK: Clock = SystemClock()
