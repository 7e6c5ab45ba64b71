"""Batch operations (API.md §3.1) as plain dicts, built with their field names checked.

``await client.batch([ops.check(k, 0), ops.set(k, "pro")])`` sets ``k`` only if absent.
"""

from __future__ import annotations

from typing import Any

__all__ = ["check", "delete", "set"]


def set(
    key: str,
    value: Any,
    if_version: int | None = None,
    ttl_ms: int | None = None,
    expires_at: int | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"op": "set", "key": key, "value": value}
    if if_version is not None:
        op["ifVersion"] = if_version
    if ttl_ms is not None:
        op["ttlMs"] = ttl_ms
    if expires_at is not None:
        op["expiresAt"] = expires_at
    return op


def delete(key: str, if_version: int | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"op": "delete", "key": key}
    if if_version is not None:
        op["ifVersion"] = if_version
    return op


def check(key: str, version: int) -> dict[str, Any]:
    """A condition only: the key's version is ``version`` (0: the key is absent)."""
    return {"op": "check", "key": key, "version": version}
