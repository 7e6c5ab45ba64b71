"""Consistent reads share ReadIndex requests: at most ``DEPTH`` in flight, the next one
shared by every read that began meanwhile.

A consistent read needs an index that the leader confirmed after the read
began (ReadIndex, thesis §6.4); storage then answers once it has applied that
index. A read that begins while a request is already on its way must not
join it (the leader may have fixed that index before a write the reader
already saw was acknowledged): it waits for the next request. With fewer
than ``DEPTH`` requests in flight the next one leaves at the end of the loop
turn; otherwise when one of them is answered, and it serves every read that
began in between: under load one IPC round trip and one heartbeat round
serve a whole round trip's worth of reads, whatever the number of readers
(etcd's linearizable read loop works the same way). Two in flight rather
than one let a read that begins mid-round start its own round instead of
waiting for the current one to end (consistent reads at 64 clients: 6-9%
more in A/B runs, docs/PERFORMANCE.md). Should the requests in flight take longer
than ``STALL`` (a lost leader, a slow round), the next one is sent anyway,
so a read never waits for two whole timeouts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

from concordance.clock import SYSTEM_CLOCK, Clock

__all__ = ["DEPTH", "STALL", "ReadIndexBatcher"]

STALL = 0.1  # seconds a request in flight holds back the next one at most
DEPTH = 2  # requests in flight at once


class _ReadIndexSource(Protocol):
    def read_index(self, timeout: float) -> Awaitable[int]: ...


class ReadIndexBatcher:
    """Hands out read indexes: ``depth`` ``read_index`` requests in flight, the next one shared."""

    def __init__(
        self,
        consensus: _ReadIndexSource,
        stall: float = STALL,
        depth: int = DEPTH,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._consensus = consensus
        self._clock = clock
        self._stall = stall
        self._depth = depth
        self._waiting: asyncio.Future[int] | None = None  # the next request's readers
        self._timeout = 0.0  # the next request's timeout: the longest its readers asked for
        self._asking: set[asyncio.Task[None]] = set()
        self.requests = 0

    async def next(self, timeout: float) -> int:
        """A read index confirmed after this call began.

        Raises whatever the request raised (``Unavailable`` without a leader, ...).
        """
        waiting = self._waiting
        if waiting is None:
            loop = asyncio.get_running_loop()
            waiting = self._waiting = loop.create_future()
            self._timeout = timeout
            if len(self._asking) >= self._depth:  # sent when one is answered, or stalls
                self._clock.call_later(self._stall, self._send, waiting)
            else:  # at the end of this loop turn: the reads of this turn share it
                loop.call_soon(self._send, waiting)
        else:
            self._timeout = max(self._timeout, timeout)
        return await asyncio.shield(waiting)

    def _send(self, waiting: asyncio.Future[int]) -> None:
        if self._waiting is not waiting:
            return  # already sent (the request before it was answered first)
        self._waiting = None
        task = asyncio.get_running_loop().create_task(self._ask(waiting, self._timeout))
        self._asking.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._asking.discard(task)
        if self._waiting is not None and len(self._asking) < self._depth:
            self._send(self._waiting)

    async def _ask(self, waiting: asyncio.Future[int], timeout: float) -> None:
        self.requests += 1
        try:
            index = await self._consensus.read_index(timeout)
        except asyncio.CancelledError:
            waiting.cancel()
            raise
        except Exception as e:
            waiting.set_exception(e)
            waiting.exception()  # retrieved: its readers may have given up
        else:
            waiting.set_result(index)
