"""Parked ``wait_applied`` requests, released in index order as applies land.

A consistent read on the front asks storage to answer once ``applied_index``
has reached the read index. Most such requests are answered at once; the rest
wait for an apply that is usually milliseconds away. A heap keyed by the
awaited index releases every ready waiter in ``O(k log n)`` after each apply,
instead of scanning all of them.

Waiters are bounded by their request's deadline: past it the client has
already given up (``IpcTimeout``), so :meth:`AppliedWaiters.expire` drops them
without an answer. A cap on the number parked keeps a misbehaving client from
growing the heap without bound.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["AppliedWaiters"]

T = TypeVar("T")


@dataclass(order=True, slots=True)
class _Waiter(Generic[T]):
    index: int
    seq: int  # FIFO among equal indexes; also keeps ``token`` out of comparisons
    deadline_ms: int = field(compare=False)
    token: T = field(compare=False)


class AppliedWaiters(Generic[T]):
    """Tokens (whatever the caller needs to answer) waiting for an applied index."""

    def __init__(self, limit: int = 100_000) -> None:
        self._heap: list[_Waiter[T]] = []
        self._seq = itertools.count()
        self._limit = limit

    def __len__(self) -> int:
        return len(self._heap)

    def park(self, index: int, deadline_ms: int, token: T) -> bool:
        """Park ``token`` until ``index`` is applied; False when full (answer it otherwise)."""
        if len(self._heap) >= self._limit:
            return False
        heapq.heappush(self._heap, _Waiter(index, next(self._seq), deadline_ms, token))
        return True

    def release(self, applied: int, now_ms: int) -> list[T]:
        """Remove and return the live tokens whose index is <= ``applied``, lowest first.

        Tokens already past their deadline are removed but not returned.
        """
        ready: list[T] = []
        heap = self._heap
        while heap and heap[0].index <= applied:
            waiter = heapq.heappop(heap)
            if waiter.deadline_ms >= now_ms:
                ready.append(waiter.token)
        return ready

    def expire(self, now_ms: int) -> int:
        """Drop every waiter whose deadline has passed; return how many were dropped."""
        live = [w for w in self._heap if w.deadline_ms >= now_ms]
        dropped = len(self._heap) - len(live)
        if dropped:
            heapq.heapify(live)
            self._heap = live
        return dropped

    def clear(self) -> list[T]:
        """Remove and return every token (shutdown)."""
        tokens = [w.token for w in self._heap]
        self._heap = []
        return tokens
