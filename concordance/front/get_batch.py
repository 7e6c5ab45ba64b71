"""Single-key reads of one loop turn share one storage request.

Under load a front serves many ``GET /kv/{key}`` at once. Each storage request
is two ZeroMQ messages, and each message wakes four threads (PROTOCOL.md §1),
so the reads that begin in one turn of the event loop are sent together at the
end of the turn: one ``get`` when there is one, else one ``get_many`` (PROTOCOL.md
§3.3). Reads with different ``min_index`` never share a request: a local read must
not wait for the index a consistent one needs. The batch is read at the latest
``now`` of its reads (at most one loop turn later than any of them asked), and
waits as long as the most patient of them. A batch holds at most ``MAX_KEYS``
keys, which bounds the answer (values are up to 1 MiB each).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from concordance.protocol import payloads

__all__ = ["MAX_KEYS", "GetBatcher", "SendGets"]

MAX_KEYS = 64  # keys in one storage request at most

Entry = payloads.Entry | None
# (keys, now, min_index, timeout) -> one entry per key, in order
SendGets = Callable[[Sequence[str], int, int, float], Awaitable[Sequence[Entry]]]


class _Batch:
    __slots__ = ("answer", "keys", "now", "timeout")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.keys: list[str] = []
        self.now = 0
        self.timeout = 0.0
        self.answer: asyncio.Future[Sequence[Entry]] = loop.create_future()


class GetBatcher:
    """Collects the ``get`` calls of a loop turn, per ``min_index``, and sends each
    group with ``send`` at the end of the turn."""

    def __init__(self, send: SendGets) -> None:
        self._send = send
        self._open: dict[int, _Batch] = {}  # min_index -> the batch this turn fills
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0  # storage requests sent (tests read it)

    async def get(self, key: str, now: int, timeout: float, min_index: int = 0) -> Entry:
        batch = self._open.get(min_index)
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._open[min_index] = _Batch(loop)
            loop.call_soon(self._flush, min_index, batch)
        slot = len(batch.keys)
        batch.keys.append(key)
        batch.now = max(batch.now, now)
        batch.timeout = max(batch.timeout, timeout)
        if len(batch.keys) >= MAX_KEYS:  # full: the next read starts another
            del self._open[min_index]
        return (await asyncio.shield(batch.answer))[slot]

    def _flush(self, min_index: int, batch: _Batch) -> None:
        if self._open.get(min_index) is batch:
            del self._open[min_index]
        task = asyncio.get_running_loop().create_task(self._ask(min_index, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ask(self, min_index: int, batch: _Batch) -> None:
        self.requests += 1
        try:
            entries = await self._send(batch.keys, batch.now, min_index, batch.timeout)
        except asyncio.CancelledError:
            batch.answer.cancel()
            raise
        except Exception as e:
            batch.answer.set_exception(e)
            batch.answer.exception()  # retrieved: its readers may have given up
        else:
            batch.answer.set_result(entries)
