"""The async client: every API.md operation as one typed method.

Why one class over a transport: the retry and failover rules live in
:mod:`concordance.client.transport` and hold for every method alike; this
module only says which requests are reads and which are writes, and turns
JSON into the dataclasses of :mod:`concordance.client.types`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from concordance import errors
from concordance.client.endpoints import DEFAULT_ENDPOINT, parse_endpoints
from concordance.client.scope import Scope
from concordance.client.tls import TlsFiles, ssl_context
from concordance.client.transport import Transport, describe_error
from concordance.client.types import (
    BatchResult,
    Change,
    ChangesPage,
    Deleted,
    Entry,
    Health,
    Member,
    Page,
    PrefixDeleted,
    SnapshotInfo,
    Status,
)
from concordance.client.watch import Watch
from concordance.environment import read_client

Members = list[Member]
Healths = list[Health]  # an alias: the classes below define a method named list

__all__ = ["DEFAULT_ENDPOINT", "Client", "settings_from_env"]

MAX_PAGE = 1000
MAX_WAIT_MS = 60_000


class Client:
    """A client of one cluster; use as ``async with Client("a:4100,b:4100", key) as c``.

    ``endpoints``: a comma-separated string or a list of ``[http[s]://]HOST:PORT``.
    ``retries``: tries after the first for a request that may be retried.
    ``timeout_s``: the deadline of one try; ``connect_timeout_s`` of one connect, short so
    that a node that is down costs little before the next one is tried.
    ``cacert``/``cert``/``key``: TLS files (``https://`` endpoints); see :mod:`.tls`.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINT,
        api_key: str | None = None,
        retries: int = 5,
        timeout_s: float = 30.0,
        *,
        connect_timeout_s: float = 3.0,
        heartbeat_s: float = 5.0,
        cacert: str | None = None,
        cert: str | None = None,
        key: str | None = None,
    ) -> None:
        files = TlsFiles(cacert, cert, key)
        urls = parse_endpoints(endpoints, tls=files.given)
        uses_tls = files.given or any(u.startswith("https://") for u in urls)
        self.tls = ssl_context(files) if uses_tls else None
        self.heartbeat_s = heartbeat_s
        self.transport = Transport(urls, api_key, retries, timeout_s, connect_timeout_s, self.tls)

    @classmethod
    def from_env(cls, **overrides: Any) -> Client:
        """Settings from ``CONCORDANCE_ENDPOINTS``, ``CONCORDANCE_API_KEY``,
        ``CONCORDANCE_CACERT``/``_CERT``/``_KEY``; keyword arguments win."""
        return cls(**{**settings_from_env(), **overrides})

    @property
    def endpoints(self) -> list[str]:
        return [e.url for e in self.transport.endpoints.all]

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    async def _read(self, path: str, params: dict[str, str] | None = None, **kw: Any) -> Any:
        return await self.transport.request("GET", path, write=False, params=params, **kw)

    async def _write(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        return await self.transport.request(method, path, write=True, body=body, params=params)

    # -- key/value ------------------------------------------------------------------
    async def get(self, key: str, consistent: bool = False) -> Entry:
        """The entry; ``NotFound`` if absent. ``consistent``: a linearizable read."""
        params = {"consistent": "true"} if consistent else None
        return Entry.from_json(await self._read(f"/api/v1/kv/{_path(key)}", params))

    async def get_or_none(self, key: str, consistent: bool = False) -> Entry | None:
        try:
            return await self.get(key, consistent)
        except errors.NotFound:
            return None

    async def put(
        self,
        key: str,
        value: Any,
        if_version: int | None = None,
        ttl_ms: int | None = None,
        expires_at: int | None = None,
    ) -> Entry:
        """Write; ``if_version`` is compare-and-swap (0: only if absent)."""
        body = _set_body(value, if_version, ttl_ms, expires_at)
        return Entry.from_json(await self._write("PUT", f"/api/v1/kv/{_path(key)}", body))

    set = put

    async def delete(self, key: str, if_version: int | None = None) -> Deleted:
        params = {"ifVersion": str(if_version)} if if_version is not None else None
        return Deleted.from_json(
            await self._write("DELETE", f"/api/v1/kv/{_path(key)}", None, params)
        )

    async def list(self, prefix: str, limit: int = 100, cursor: str | None = None) -> Page:
        """One page (at most ``limit``, up to 1000); ``Page.next`` fetches the following one."""
        params = {"prefix": prefix, "limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        return Page.from_json(await self._read("/api/v1/kv", params))

    async def list_all(self, prefix: str, limit: int | None = None) -> AsyncIterator[Entry]:
        """Every entry under ``prefix`` in key order, page after page (or the first ``limit``)."""
        cursor: str | None = None
        left = limit
        while left is None or left > 0:
            page = await self.list(prefix, min(MAX_PAGE, left or MAX_PAGE), cursor)
            for entry in page.entries:
                yield entry
            if left is not None:
                left -= len(page.entries)
            cursor = page.next
            if not cursor:
                return

    async def delete_prefix(self, prefix: str) -> PrefixDeleted:
        """Delete every key under ``prefix`` atomically (one revision)."""
        data = await self._write("DELETE", "/api/v1/kv", None, {"prefix": prefix})
        return PrefixDeleted(data["deleted"], data["revision"])

    async def batch(self, ops: Iterable[dict[str, Any]]) -> BatchResult:
        """Atomic batch (API.md §3.1): build ops with :mod:`concordance.client.ops`.
        A failed condition raises ``VersionConflict`` with ``extra["index"]``."""
        op_list = list(ops)
        data = await self._write("POST", "/api/v1/batch", {"ops": op_list})
        results: list[Entry | Deleted | None] = []
        for op, result in zip(op_list, data["results"], strict=True):
            if result is None:
                results.append(None)
            elif op.get("op") == "delete":
                results.append(Deleted.from_json(result))
            else:
                results.append(Entry.from_json(result))
        return BatchResult(results, data["revision"])

    txn = batch

    # -- changes ----------------------------------------------------------------------
    async def changes(
        self, prefix: str, since: int = 0, limit: int = 1000, wait_ms: int = 0
    ) -> ChangesPage:
        """Changes after ``since``; ``wait_ms`` long-polls for the first one. ``Compacted``
        when ``since`` is older than the history kept."""
        params = {"prefix": prefix, "since": str(since), "limit": str(limit)}
        if wait_ms:
            params["waitMs"] = str(min(wait_ms, MAX_WAIT_MS))
        data = await self._read("/api/v1/changes", params, extra_timeout_s=wait_ms / 1000)
        return ChangesPage.from_json(data)

    async def feed(
        self, prefix: str, since: int | None = None, wait_ms: int = 30_000, limit: int = 1000
    ) -> AsyncIterator[Change]:
        """Every change under ``prefix`` after ``since`` (default: from now), forever, by
        long-polling ``/changes``; each answer's ``revision`` is the next ``since``, so a
        retry on another node neither skips nor repeats."""
        if since is None:
            since = (await self.list(prefix, 1)).revision
        while True:
            page = await self.changes(prefix, since, limit, wait_ms)
            for change in page.changes:
                yield change
            since = page.revision

    def watch(
        self, prefix: str | None = None, *, key: str | None = None, since: int | None = None
    ) -> Watch:
        """Push changes over ``/stream``: ``async for change in client.watch("tenant:t/")``.
        Resumes gap-free after reconnects; see :mod:`concordance.client.watch`."""
        return Watch(self.transport, prefix, key, since, self.heartbeat_s)

    # -- scopes -------------------------------------------------------------------------
    def scope(self, scope: str, tenant: str, **ids: str) -> Scope:
        """``client.scope("user", tenant="acme", user="u1")``: get/set/... relative to it."""
        return Scope(self, scope, tenant, **ids)

    # -- cluster --------------------------------------------------------------------------
    async def status(self, endpoint: str | None = None) -> Status:
        """The status of whichever node answers, or of ``endpoint`` only."""
        only = parse_endpoints(endpoint, tls=self.tls is not None)[0] if endpoint else None
        return Status.from_json(await self._read("/api/v1/cluster/status", only=only))

    async def health(self) -> Healths:
        """``/healthz`` and ``/readyz`` of every endpoint, each asked once."""
        out: Healths = []
        for url in self.endpoints:
            healthy = ready = False
            error: str | None = None
            try:
                session = self.transport.session()
                timeout = self.transport.timeout()
                async with session.get(f"{url}/healthz", timeout=timeout) as resp:
                    healthy = resp.status == 200
                async with session.get(f"{url}/readyz", timeout=timeout) as resp:
                    ready = resp.status == 200
                    if not ready:
                        error = f"not ready (HTTP {resp.status})"
            except Exception as e:  # any failure is this endpoint's answer
                error = describe_error(e)
            out.append(Health(url, healthy, ready, error))
        return out

    async def members(self) -> Members:
        data = await self._read("/api/v1/cluster/members")
        return [Member.from_json(m) for m in data["members"]]

    async def add_member(self, node_id: str, address: str, voter: bool = False) -> Members:
        """Add ``node_id`` at ``address`` as a learner (or a voter); returns the members."""
        body = {"id": node_id, "address": address, "voter": voter}
        data = await self._write("POST", "/api/v1/cluster/members", body)
        return [Member.from_json(m) for m in data["members"]]

    async def promote_member(self, node_id: str, address: str | None = None) -> Members:
        """Make a learner a voter (its address is looked up when not given)."""
        if address is None:
            found = [m for m in await self.members() if m.id == node_id]
            if not found:
                raise errors.NotFound(f"no member {node_id!r}")
            address = found[0].address
        return await self.add_member(node_id, address, voter=True)

    async def remove_member(self, node_id: str) -> Members:
        data = await self._write("DELETE", f"/api/v1/cluster/members/{quote(node_id, safe='')}")
        return [Member.from_json(m) for m in data["members"]]

    async def transfer_leader(self, to: str | None = None) -> None:
        """Ask the leader to hand over to ``to`` (or to the best follower)."""
        await self._write("POST", "/api/v1/cluster/leader", {"to": to} if to else {})

    async def snapshot(self) -> SnapshotInfo:
        """Take a Raft snapshot now on the node that answers."""
        data = await self._write("POST", "/api/v1/cluster/snapshot")
        return SnapshotInfo(data["index"], data["term"], data["bytes"])

    async def backup(self, path: str | os.PathLike[str]) -> int:
        """Save the full state (a SQLite file) to ``path``; returns its size in bytes. The
        file appears only once complete (written beside it, then renamed)."""
        target = Path(path)
        size: int = await self._read("/api/v1/cluster/backup", save_to=target)
        return size


def settings_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Client keyword arguments from the environment (this process's unless given; read
    by ``concordance.environment``), only those that are set."""
    got = read_client(env)
    settings = {
        "endpoints": got.endpoints,
        "api_key": got.api_key,
        "cacert": got.cacert,
        "cert": got.cert,
        "key": got.key,
    }
    return {name: value for name, value in settings.items() if value is not None}


def _set_body(
    value: Any, if_version: int | None, ttl_ms: int | None, expires_at: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"value": value}
    if if_version is not None:
        body["ifVersion"] = if_version
    if ttl_ms is not None:
        body["ttlMs"] = ttl_ms
    if expires_at is not None:
        body["expiresAt"] = expires_at
    return body


def _path(key: str) -> str:
    return quote(key, safe="/:@")
