"""A short cache for the unauthenticated probes, ``/readyz`` and ``/metrics``.

Why: they need no key, yet each asked consensus, storage and supervisord
again, so anyone could make the node's roles answer as fast as they could
send requests. Now one computation serves every caller that arrives while
it runs and for ``PROBE_TTL`` seconds after it ends (an outcome that is an
error included: a 503 is cached like a 200). The roles answer at most about
once per ``PROBE_TTL`` per probe, whatever the request rate; a load balancer
or Prometheus polling every few seconds sees answers at most that old.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

__all__ = ["PROBE_TTL", "Probes", "Shared"]

PROBE_TTL: Final = 1.0  # seconds an answer is reused after it was computed

T = TypeVar("T")


class Shared(Generic[T]):
    """One computation at a time, its outcome reused for ``ttl`` seconds after it ends."""

    def __init__(self, now: Callable[[], float], ttl: float = PROBE_TTL) -> None:
        self._now = now
        self._ttl = ttl
        self._future: asyncio.Future[T] | None = None
        self._ended = 0.0

    async def get(self, compute: Callable[[], Awaitable[T]]) -> T:
        future = self._future
        if future is None or (future.done() and self._now() - self._ended >= self._ttl):
            future = self._future = asyncio.ensure_future(self._run(compute))
            future.add_done_callback(_retrieve)
        return await asyncio.shield(future)  # a caller that gives up does not cancel it

    async def _run(self, compute: Callable[[], Awaitable[T]]) -> T:
        try:
            return await compute()
        finally:
            self._ended = self._now()


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # no "exception never retrieved" when every caller left


@dataclass(frozen=True)
class Probes:
    """The front's cached probes."""

    ready: Shared[dict[str, Any]]
    metrics: Shared[str]

    @classmethod
    def on(cls, now: Callable[[], float]) -> Probes:
        return cls(Shared(now), Shared(now))
