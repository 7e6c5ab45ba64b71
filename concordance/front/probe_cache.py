"""A short cache for the unauthenticated probes, ``/readyz`` and ``/metrics``.

Why: they need no key, yet each asked consensus, storage and supervisord
again, so anyone could make the node's roles answer as fast as they could
send requests. Now one computation serves every caller that arrives while
it runs and for ``PROBE_TTL`` seconds after it ends (an outcome that is an
error included: a 503 is cached like a 200). The roles answer at most about
once per ``PROBE_TTL`` per probe, whatever the request rate; a load balancer
or Prometheus polling every few seconds sees answers at most that old.

A "not ready" answer is reused for ``NOT_READY_TTL`` only: a node coming back
from a restart is ready the moment it caught up, and a 503 kept for a whole
second made every restart look up to a second longer to whoever polls. The
roles then answer at most ten readiness probes a second while the node is
not ready, still bounded whatever the request rate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

__all__ = ["NOT_READY_TTL", "PROBE_TTL", "Probes", "Shared"]

PROBE_TTL: Final = 1.0  # seconds an answer is reused after it was computed
NOT_READY_TTL: Final = 0.1  # seconds a failed /readyz computation (a 503) is reused

T = TypeVar("T")


class Shared(Generic[T]):
    """One computation at a time, its outcome reused for ``ttl`` seconds after it ends
    (``failed_ttl`` when the computation raised)."""

    def __init__(
        self, now: Callable[[], float], ttl: float = PROBE_TTL, failed_ttl: float | None = None
    ) -> None:
        self._now = now
        self._ttl = ttl
        self._failed_ttl = ttl if failed_ttl is None else failed_ttl
        self._future: asyncio.Future[T] | None = None
        self._ended = 0.0

    def _stale(self, future: asyncio.Future[T]) -> bool:
        if not future.done():
            return False
        failed = future.cancelled() or future.exception() is not None
        return self._now() - self._ended >= (self._failed_ttl if failed else self._ttl)

    async def get(self, compute: Callable[[], Awaitable[T]]) -> T:
        future = self._future
        if future is None or self._stale(future):
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
        return cls(Shared(now, failed_ttl=NOT_READY_TTL), Shared(now))
