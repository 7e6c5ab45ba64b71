"""Requests that are answered later (ReadIndex, snapshot_now), and when to give up on them.

A request whose answer depends on a future Ready (or on storage) is parked
here with its client's routing id. The client already gave up at its
deadline (``dl`` in the envelope), so a parked request that outlives it is
simply dropped, never answered: that keeps the tables bounded even when a
leader never answers a forwarded ReadIndex.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.protocol.wire import Envelope

__all__ = ["DEFAULT_WAIT_MS", "Waiter", "Waiters"]

DEFAULT_WAIT_MS = 10_000  # for a request sent without a deadline


@dataclass(frozen=True, slots=True)
class Waiter:
    """A parked request: who asked, the envelope to answer, and when the asker gives up."""

    peer: bytes
    request: Envelope
    deadline_ms: int


class Waiters:
    """Parked requests keyed by a context that is unique across restarts of this process.

    The key starts with 8 random bytes, so an answer meant for a previous
    incarnation (a late ReadIndexResponse from the leader) never matches.
    """

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self._clock = clock  # its wall time: deadlines are the askers' epoch milliseconds
        self._prefix = os.urandom(8)
        self._seq = itertools.count(1)
        self._parked: dict[bytes, Waiter] = {}

    def park(self, peer: bytes, request: Envelope) -> bytes:
        """Park ``request`` and return its new, unique context."""
        ctx = self._prefix + next(self._seq).to_bytes(8, "big")
        deadline = request.deadline_ms or self._clock.wall_ms() + DEFAULT_WAIT_MS
        self._parked[ctx] = Waiter(peer, request, deadline)
        return ctx

    def pop(self, ctx: bytes) -> Waiter | None:
        return self._parked.pop(ctx, None)

    def pop_all(self) -> list[Waiter]:
        out = list(self._parked.values())
        self._parked.clear()
        return out

    def expire(self, now: int | None = None) -> int:
        """Drop every waiter whose asker has given up; returns how many."""
        now = self._clock.wall_ms() if now is None else now
        dead = [ctx for ctx, w in self._parked.items() if w.deadline_ms < now]
        for ctx in dead:
            del self._parked[ctx]
        return len(dead)

    def __len__(self) -> int:
        return len(self._parked)
