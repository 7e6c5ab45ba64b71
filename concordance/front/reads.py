"""Consistent reads that begin together share one ReadIndex request.

A consistent read needs an index that the leader confirmed after the read
began (ReadIndex, thesis §6.4); storage then answers once it has applied that
index. Every read that begins in the same turn of the event loop can use the
same request, since it is sent after all of them began. A read that begins
while a request is already on its way must not join it (the leader may have
fixed that index before a write the reader already saw was acknowledged), so
each turn starts a new batch; under load one IPC round trip and one
heartbeat round serve many reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Protocol

__all__ = ["ReadIndexBatcher"]


class _ReadIndexSource(Protocol):
    def read_index(self, timeout: float) -> Awaitable[int]: ...


class ReadIndexBatcher:
    """Hands out read indexes, one ``read_index`` request per loop turn that needs any."""

    def __init__(self, consensus: _ReadIndexSource) -> None:
        self._consensus = consensus
        self._waiting: asyncio.Future[int] | None = None
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
            loop.call_soon(self._send, waiting, timeout)
        return await asyncio.shield(waiting)

    def _send(self, waiting: asyncio.Future[int], timeout: float) -> None:
        self._waiting = None  # later reads wait for a request sent after they began
        task = asyncio.get_running_loop().create_task(self._ask(waiting, timeout))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

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
