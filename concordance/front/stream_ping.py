"""The ``/stream`` heartbeat: one pinger for every connection of a front, its work spread evenly.

Why not aiohttp's own heartbeat (``WebSocketResponse(heartbeat=30)``): it arms
one timer per connection, rounded up to the whole second, re-armed from the
last frame received. Clients that subscribe in the same second (after a
restart, a deploy, a bench) then all have their ping due in the same second:
one loop turn runs every timer, creates a ping task and a pong timer per
connection, and their pongs, back together, re-arm every timer for the same
second again, so the burst recurs each period. Beside 10,000 idle
connections, ``/healthz`` stalled 0.2-3 s every 30 s (docs/PERFORMANCE.md,
Scale / Watches).

Here one task visits every connection once per ``period``, in ``slices``
slices spread evenly over it (at 30 s and 120 slices: a quarter second apart),
more when the connections are many, so that a slice visits at most
``MAX_VISITS`` (10,000 connections: 1,250 slices of 8, 24 ms apart), whatever
the clients did. The bound is for the requests beside them: a slice's pings
and their pongs are work the front does in one go, and at 84 a slice (the
earlier 120 slices for 10,000) writes waited behind it, a write's p99 1.6-2x
that of the same front with no connection (PERFORMANCE.md, Scale, quiet run
of 7 December). A visit pings the
connection; a connection pinged at the last visit that has sent nothing since
(no pong, no request) is closed. So an idle watcher is pinged every period and
closed about one period after it stops answering (docs/SECURITY.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

__all__ = ["MAX_VISITS", "PERIOD", "SLICES", "Pingable", "Pinger"]

log = logging.getLogger(__name__)

PERIOD: Final = 30.0  # seconds between two pings of a connection
SLICES: Final = 120  # a round's visits are spread over at least this many loop turns
MAX_VISITS: Final = 8  # ... and over more when needed, so that no turn pings more than this


class Pingable(Protocol):
    """A connection the pinger keeps alive (:class:`~concordance.front.stream.StreamConnection`)."""

    heard: bool  # set by the connection on every frame it receives; the pinger clears it

    def ping(self) -> None:
        """Send a ping frame soon (never waits)."""

    def abort(self) -> None:
        """Close the connection: it stopped answering."""


class Pinger:
    """Pings each registered connection once per ``period``; closes the ones that stop answering."""

    def __init__(
        self,
        period: float = PERIOD,
        slices: int = SLICES,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_visits: int = MAX_VISITS,
    ) -> None:
        self.period = period
        self.slices = slices
        self.max_visits = max_visits
        self._sleep = sleep
        # connection -> a ping is out (sent at its last visit); insertion-ordered
        self._conns: dict[Pingable, bool] = {}
        self._task: asyncio.Task[None] | None = None
        self.aborted = 0  # connections closed for not answering (tests, logs)

    def __len__(self) -> int:
        return len(self._conns)

    @property
    def running(self) -> bool:
        """The pinging task is alive (it ends with the last connection)."""
        return self._task is not None

    def add(self, conn: Pingable) -> None:
        """Keep ``conn`` alive from now on; the first ping comes at its first visit."""
        self._conns[conn] = False
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-pinger")

    def discard(self, conn: Pingable) -> None:
        self._conns.pop(conn, None)

    def stop(self) -> None:
        """Stop pinging (shutdown); the connections are closed by their owners."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def visit(self, conn: Pingable) -> None:
        """Close ``conn`` if it sent nothing since its last ping, else ping it."""
        if conn not in self._conns:  # closed since the round began
            return
        if self._conns[conn] and not conn.heard:
            del self._conns[conn]
            self.aborted += 1
            log.info("closing a /stream connection: no answer to a ping in %.0f s", self.period)
            conn.abort()
            return
        conn.heard = False
        self._conns[conn] = True
        conn.ping()

    def slices_for(self, connections: int) -> int:
        """How many loop turns a round of ``connections`` visits is spread over."""
        return max(self.slices, -(-connections // self.max_visits))

    async def _run(self) -> None:
        """Rounds while there are connections: each a snapshot, visited slice by slice."""
        try:
            while self._conns:
                batch = list(self._conns)
                n = len(batch)
                slices = self.slices_for(n)
                for i in range(slices):
                    for conn in batch[i * n // slices : (i + 1) * n // slices]:
                        self.visit(conn)
                    if not self._conns:
                        break
                    await self._sleep(self.period / slices)
        finally:
            if self._task is asyncio.current_task():
                self._task = None
