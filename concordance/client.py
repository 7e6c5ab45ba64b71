"""Async Python client for Concordance (API.md §5), with ACP scope resolution.

Every call raises the :mod:`concordance.errors` class of the server's error
code, so callers handle ``VersionConflict``, ``NotFound`` and friends as
exceptions. ``unavailable`` (certainly not applied) is retried with backoff up
to ``retries`` times; ``timeout`` (outcome unknown) is never retried, and neither is a
request whose connection broke before the answer (aiohttp's ``ClientError`` is raised).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from concordance import errors

SCOPES = {
    "user": "tenant:{tenant}/user:{user}/preferences",
    "tenant": "tenant:{tenant}/settings",
    "session": "tenant:{tenant}/sessions/{session}",
    "project": "tenant:{tenant}/projects/{project}",
    "device": "tenant:{tenant}/user:{user}/devices/{device}",
    "credentials": "tenant:{tenant}/credentials",
    "automations": "tenant:{tenant}/automations",
    "skills": "tenant:{tenant}/skills",
    "integrations": "tenant:{tenant}/integrations",
    "audit": "tenant:{tenant}/audit",
}


def namespace(scope: str, tenant_id: str, **ids: str) -> str:
    """Resolve an ACP scope to its Concordance namespace (API.md §5).

    ``namespace("user", "acme", user="u1")`` -> ``tenant:acme/user:u1/preferences``.
    """
    try:
        template = SCOPES[scope]
    except KeyError:
        raise errors.InvalidRequest(f"unknown scope {scope!r}") from None
    try:
        return template.format(tenant=tenant_id, **ids)
    except KeyError as e:
        raise errors.InvalidRequest(f"scope {scope!r} needs {e.args[0]!r}") from None


class Client:
    """One connection pool to one node; use as ``async with Client(...) as c``."""

    def __init__(
        self,
        endpoint: str = "http://127.0.0.1:4100",
        api_key: str | None = None,
        retries: int = 5,
        timeout_s: float = 30.0,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.retries = retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        )
        # aiohttp resends a GET/PUT/DELETE once when its connection breaks (RFC 9112
        # §9.3.1). A write is not idempotent in effect: a resend whose first copy applied
        # writes twice (or answers version_conflict for a CAS that succeeded), where the
        # caller must learn that the outcome is unknown. aiohttp has no public switch;
        # aiohttp.test_utils turns it off the same way.
        self._session._retry_connection = False

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._session.close()

    async def _call(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        delay = 0.05
        for attempt in range(self.retries + 1):
            async with self._session.request(
                method, f"{self.endpoint}{path}", json=body, params=params
            ) as resp:
                if resp.status < 400:
                    if resp.content_type == "application/json":
                        return await resp.json()
                    return await resp.read()
                error = await _error_of(resp)
            if not isinstance(error, errors.Unavailable) or attempt == self.retries:
                raise error
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    # -- key/value ------------------------------------------------------------
    async def get(self, key: str, consistent: bool = False) -> dict[str, Any]:
        params = {"consistent": "true"} if consistent else None
        result: dict[str, Any] = await self._call("GET", f"/api/v1/kv/{_path(key)}", params=params)
        return result

    async def put(
        self,
        key: str,
        value: Any,
        if_version: int | None = None,
        ttl_ms: int | None = None,
        expires_at: int | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"value": value}
        if if_version is not None:
            body["ifVersion"] = if_version
        if ttl_ms is not None:
            body["ttlMs"] = ttl_ms
        if expires_at is not None:
            body["expiresAt"] = expires_at
        result: dict[str, Any] = await self._call("PUT", f"/api/v1/kv/{_path(key)}", body)
        return result

    async def delete(self, key: str, if_version: int | None = None) -> dict[str, Any]:
        params = {"ifVersion": str(if_version)} if if_version is not None else None
        result: dict[str, Any] = await self._call(
            "DELETE", f"/api/v1/kv/{_path(key)}", params=params
        )
        return result

    async def list(
        self, prefix: str, limit: int = 100, cursor: str | None = None
    ) -> dict[str, Any]:
        params = {"prefix": prefix, "limit": str(limit)}
        if cursor:
            params["cursor"] = cursor
        result: dict[str, Any] = await self._call("GET", "/api/v1/kv", params=params)
        return result

    async def list_all(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        cursor = None
        while True:
            page = await self.list(prefix, 1000, cursor)
            for entry in page["entries"]:
                yield entry
            cursor = page["next"]
            if not cursor:
                return

    async def delete_prefix(self, prefix: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("DELETE", "/api/v1/kv", params={"prefix": prefix})
        return result

    async def batch(self, ops: Sequence[dict[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("POST", "/api/v1/batch", {"ops": list(ops)})
        return result

    async def changes(
        self, prefix: str, since: int = 0, limit: int = 1000, wait_ms: int = 0
    ) -> dict[str, Any]:
        params = {"prefix": prefix, "since": str(since), "limit": str(limit)}
        if wait_ms:
            params["waitMs"] = str(wait_ms)
        result: dict[str, Any] = await self._call("GET", "/api/v1/changes", params=params)
        return result

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/api/v1/cluster/status")
        return result

    # -- watch ----------------------------------------------------------------
    async def watch(
        self, prefix: str | None = None, key: str | None = None, since: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield change events forever, resubscribing from the last revision
        seen when the server cancels the watch or the connection drops."""
        last = since
        while True:
            params: dict[str, Any] = {"prefix": prefix} if prefix else {"key": key}
            if last is not None:
                params["sinceRevision"] = last
            try:
                async with self._session.ws_connect(f"{self.endpoint}/stream") as ws:
                    await ws.send_json(
                        {"jsonrpc": "2.0", "id": 1, "method": "watch/subscribe", "params": params}
                    )
                    async for msg in ws:
                        if msg.type is not aiohttp.WSMsgType.TEXT:
                            break
                        data = json.loads(msg.data)
                        if "error" in data:
                            raise _rpc_error(data["error"])
                        if data.get("method") == "watch/change":
                            for event in data["params"]["events"]:
                                last = event["revision"]
                                yield event
                        elif data.get("method") == "watch/cancelled":
                            if data["params"]["reason"] == "compacted":
                                raise errors.Compacted("watch history compacted")
                            break
            except (aiohttp.ClientError, ConnectionError):
                pass
            await asyncio.sleep(0.2)


def _path(key: str) -> str:
    return quote(key, safe="/:@")


async def _error_of(resp: aiohttp.ClientResponse) -> errors.ConcordanceError:
    try:
        body = await resp.json(content_type=None)
        detail = dict(body["error"])
        code, message = detail.pop("code"), detail.pop("message", "")
    except (ValueError, KeyError, TypeError, aiohttp.ContentTypeError):
        return errors.Unavailable(f"HTTP {resp.status} without an error body")
    return errors.from_code(code, message, **detail)


def _rpc_error(error: dict[str, Any]) -> errors.ConcordanceError:
    data = error.get("data") or {}
    return errors.from_code(data.get("code", "invalid_request"), error.get("message", ""))
