"""``SyncClient``: the async client's methods for code without an event loop.

Why a private loop on a thread and not ``asyncio.run`` per call: the
connection pool, the endpoint health and a watch's position live across
calls, and they belong to one loop. Each method hands its coroutine to that
loop and waits; iterators pull one item at a time the same way.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Generator, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from concordance.client.client import DEFAULT_ENDPOINT, Client, Healths, Members, settings_from_env
from concordance.client.scopes import namespace
from concordance.client.types import (
    BatchResult,
    Change,
    ChangesPage,
    Deleted,
    Entry,
    Page,
    PrefixDeleted,
    SnapshotInfo,
    Status,
)
from concordance.client.watch import Watch

__all__ = ["SyncClient", "SyncScope", "SyncWatch"]

T = TypeVar("T")


class _Loop:
    """An event loop running on a daemon thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="concordance-client")  # fmt: skip
        self.thread.start()

    def run(self, coro: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result()

    def iterate(self, aiter: AsyncIterator[T]) -> Generator[T, None, None]:
        try:
            while True:
                try:
                    yield self.run(anext(aiter))
                except StopAsyncIteration:
                    return
        finally:
            close = getattr(aiter, "aclose", None)
            if close is not None and self.loop.is_running():
                self.run(close())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class SyncWatch:
    """A blocking iterator of :class:`Change`; ``.revision`` is the last one delivered."""

    def __init__(self, loop: _Loop, watch: Watch) -> None:
        self._loop, self._watch = loop, watch
        self._it = loop.iterate(watch)

    @property
    def revision(self) -> int | None:
        return self._watch.revision

    def __iter__(self) -> Iterator[Change]:
        return self._it

    def __next__(self) -> Change:
        return next(self._it)

    def close(self) -> None:
        self._it.close()
        self._loop.run(self._watch.aclose())

    def __enter__(self) -> SyncWatch:
        return self.start()

    def start(self) -> SyncWatch:
        """Subscribe now (``with`` does this); see :meth:`Watch.start`."""
        self._loop.run(self._watch.start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncClient:
    """The same methods as :class:`Client`, blocking: ``with SyncClient(...) as c``."""

    def __init__(
        self,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINT,
        api_key: str | None = None,
        retries: int = 5,
        timeout_s: float = 30.0,
        **options: Any,
    ) -> None:
        self._loop = _Loop()
        try:
            self.aio = Client(endpoints, api_key, retries, timeout_s, **options)
        except BaseException:
            self._loop.stop()
            raise

    @classmethod
    def from_env(cls, **overrides: Any) -> SyncClient:
        return cls(**{**settings_from_env(), **overrides})

    @property
    def endpoints(self) -> list[str]:
        return self.aio.endpoints

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.loop.is_running():
            self._loop.run(self.aio.close())
            self._loop.stop()

    def get(self, key: str, consistent: bool = False) -> Entry:
        return self._loop.run(self.aio.get(key, consistent))

    def get_or_none(self, key: str, consistent: bool = False) -> Entry | None:
        return self._loop.run(self.aio.get_or_none(key, consistent))

    def put(
        self,
        key: str,
        value: Any,
        if_version: int | None = None,
        ttl_ms: int | None = None,
        expires_at: int | None = None,
    ) -> Entry:
        return self._loop.run(self.aio.put(key, value, if_version, ttl_ms, expires_at))

    set = put

    def delete(self, key: str, if_version: int | None = None) -> Deleted:
        return self._loop.run(self.aio.delete(key, if_version))

    def list(self, prefix: str, limit: int = 100, cursor: str | None = None) -> Page:
        return self._loop.run(self.aio.list(prefix, limit, cursor))

    def list_all(self, prefix: str, limit: int | None = None) -> Iterator[Entry]:
        return self._loop.iterate(self.aio.list_all(prefix, limit))

    def delete_prefix(self, prefix: str) -> PrefixDeleted:
        return self._loop.run(self.aio.delete_prefix(prefix))

    def batch(self, ops: Iterable[dict[str, Any]]) -> BatchResult:
        return self._loop.run(self.aio.batch(list(ops)))

    txn = batch

    def changes(
        self, prefix: str, since: int = 0, limit: int = 1000, wait_ms: int = 0
    ) -> ChangesPage:
        return self._loop.run(self.aio.changes(prefix, since, limit, wait_ms))

    def feed(
        self, prefix: str, since: int | None = None, wait_ms: int = 30_000, limit: int = 1000
    ) -> Iterator[Change]:
        return self._loop.iterate(self.aio.feed(prefix, since, wait_ms, limit))

    def watch(
        self, prefix: str | None = None, *, key: str | None = None, since: int | None = None
    ) -> SyncWatch:
        return SyncWatch(self._loop, self.aio.watch(prefix, key=key, since=since))

    def scope(self, scope: str, tenant: str, **ids: str) -> SyncScope:
        return SyncScope(self, scope, tenant, **ids)

    def status(self, endpoint: str | None = None) -> Status:
        return self._loop.run(self.aio.status(endpoint))

    def health(self) -> Healths:
        return self._loop.run(self.aio.health())

    def members(self) -> Members:
        return self._loop.run(self.aio.members())

    def add_member(self, node_id: str, address: str, voter: bool = False) -> Members:
        return self._loop.run(self.aio.add_member(node_id, address, voter))

    def promote_member(self, node_id: str, address: str | None = None) -> Members:
        return self._loop.run(self.aio.promote_member(node_id, address))

    def remove_member(self, node_id: str) -> Members:
        return self._loop.run(self.aio.remove_member(node_id))

    def transfer_leader(self, to: str | None = None) -> None:
        self._loop.run(self.aio.transfer_leader(to))

    def snapshot(self) -> SnapshotInfo:
        return self._loop.run(self.aio.snapshot())

    def backup(self, path: str | os.PathLike[str]) -> int:
        return self._loop.run(self.aio.backup(path))


class SyncScope:
    """:class:`concordance.client.scope.Scope`, blocking."""

    def __init__(self, client: SyncClient, scope: str, tenant: str, **ids: str) -> None:
        self.client = client
        self.aio = client.aio.scope(scope, tenant, **ids)
        self.namespace = namespace(scope, tenant, **ids)

    def key(self, path: str) -> str:
        return self.aio.key(path)

    def path(self, key: str) -> str:
        return self.aio.path(key)

    def get(self, path: str, consistent: bool = False) -> Entry:
        return self.client._loop.run(self.aio.get(path, consistent))

    def get_or_none(self, path: str, consistent: bool = False) -> Entry | None:
        return self.client._loop.run(self.aio.get_or_none(path, consistent))

    def set(
        self,
        path: str,
        value: Any,
        if_version: int | None = None,
        ttl_ms: int | None = None,
        expires_at: int | None = None,
    ) -> Entry:
        return self.client._loop.run(self.aio.set(path, value, if_version, ttl_ms, expires_at))

    def delete(self, path: str, if_version: int | None = None) -> Deleted:
        return self.client._loop.run(self.aio.delete(path, if_version))

    def list(self, path: str = "", limit: int | None = None) -> Iterator[Entry]:
        return self.client._loop.iterate(self.aio.list(path, limit))

    def values(self, path: str = "") -> dict[str, Any]:
        return self.client._loop.run(self.aio.values(path))

    def clear(self, path: str = "") -> PrefixDeleted:
        return self.client._loop.run(self.aio.clear(path))

    def watch(self, path: str = "", since: int | None = None) -> SyncWatch:
        return SyncWatch(self.client._loop, self.aio.watch(path, since))
