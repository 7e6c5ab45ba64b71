"""A client bound to one ACP scope's namespace: keys are paths relative to it.

Why: the gateway resolves a ``config/*`` call to a scope and a relative path;
with a :class:`Scope` it cannot write outside that namespace by mistake (a
path is validated to stay inside: no leading ``/``, no ``..``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from concordance import errors
from concordance.client.scopes import namespace
from concordance.client.types import Deleted, Entry, PrefixDeleted

if TYPE_CHECKING:
    from concordance.client.client import Client
    from concordance.client.watch import Watch

__all__ = ["Scope"]


class Scope:
    """``client.scope("user", tenant="acme", user="u1")``; ``.namespace`` is the key prefix."""

    def __init__(self, client: Client, scope: str, tenant: str, **ids: str) -> None:
        self.client = client
        self.scope = scope
        self.namespace = namespace(scope, tenant, **ids)

    def key(self, path: str) -> str:
        """The full key of ``path`` (``theme`` -> ``tenant:acme/user:u1/preferences/theme``)."""
        if not path or path.startswith("/") or any(s in ("", ".", "..") for s in path.split("/")):
            raise errors.InvalidKey(f"path {path!r} is not a relative path inside the scope")
        return f"{self.namespace}/{path}"

    def path(self, key: str) -> str:
        """The relative path of a full key of this scope (the inverse of :meth:`key`)."""
        head = self.namespace + "/"
        if not key.startswith(head):
            raise errors.InvalidKey(f"{key!r} is not in scope {self.namespace!r}")
        return key[len(head) :]

    def _prefix(self, path: str) -> str:
        return self.key(path.rstrip("/")) + "/" if path else self.namespace + "/"

    async def get(self, path: str, consistent: bool = False) -> Entry:
        return await self.client.get(self.key(path), consistent)

    async def get_or_none(self, path: str, consistent: bool = False) -> Entry | None:
        return await self.client.get_or_none(self.key(path), consistent)

    async def set(
        self,
        path: str,
        value: Any,
        if_version: int | None = None,
        ttl_ms: int | None = None,
        expires_at: int | None = None,
    ) -> Entry:
        return await self.client.put(self.key(path), value, if_version, ttl_ms, expires_at)

    async def delete(self, path: str, if_version: int | None = None) -> Deleted:
        return await self.client.delete(self.key(path), if_version)

    async def list(self, path: str = "", limit: int | None = None) -> AsyncIterator[Entry]:
        """Every entry under ``path`` (default: the whole scope), all pages."""
        async for entry in self.client.list_all(self._prefix(path), limit):
            yield entry

    async def values(self, path: str = "") -> dict[str, Any]:
        """``{relative path: value}`` of the scope: the gateway's ``config/list`` answer."""
        return {self.path(e.key): e.value async for e in self.list(path)}

    async def clear(self, path: str = "") -> PrefixDeleted:
        """Delete everything under ``path`` (default: the whole scope), atomically."""
        return await self.client.delete_prefix(self._prefix(path))

    def watch(self, path: str = "", since: int | None = None) -> Watch:
        return self.client.watch(self._prefix(path), since=since)
