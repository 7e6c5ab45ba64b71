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
``call_later`` and ``timeout`` run on ``monotonic()``. Every role takes its
clock by constructor (``clock=``; the front's app calls it ``timers``) and
hands it to what it builds, so one clock drives a whole node.

What stays on real time, on purpose (it waits for the kernel, a disk or a
remote peer, not for a protocol's deadline, so a manual clock could only
make it hang or lie):

* draining real I/O: a socket or stream flush before close (``peers.py``
  ``close``, the storage's ``flush`` before its sockets close), the bind
  retry of an address the kernel still holds (``ipc.zmq_base._open_retrying``), the
  WAL checkpoint waiting for SQLite readers (``storage/durability.py``, on a
  thread);
* the HTTP and WebSocket edge: a client connection's header timeout
  (``front/gate.py``), the protocol sniffing of a new connection
  (``front/accept.py``), a WebSocket writer's close grace (``front/stream.py``);
* measurements: latency histograms (``time.perf_counter`` around an fsync or
  an apply, the request duration in ``front/middlewares.py``) report what
  real time a real operation took.
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
