"""Storage's typed payloads as plain dicts, so tests can state expectations compactly.

The dicts use the API's field names with ``value`` still the stored JSON text
(``bytes``), the shape storage sent before its payloads became records
(``concordance.protocol.payloads``); only tests use this view.
"""

from __future__ import annotations

from typing import Any

from concordance.protocol import payloads, wire
from concordance.storage.fsm import Applied


def plain(x: Any) -> Any:
    """``x`` with every payload record, page and tuple of them as dicts and lists."""
    if isinstance(x, payloads.Entry):
        return {
            "key": x.key,
            "value": x.value,
            "version": x.version,
            "revision": x.revision,
            "createdAt": x.created_at,
            "updatedAt": x.updated_at,
            "expiresAt": x.expires_at,
        }
    if isinstance(x, payloads.Change):
        out: dict[str, Any] = {"type": x.type, "key": x.key}
        if x.type == "set":
            out["value"] = x.value
        out.update(version=x.version, revision=x.revision, timestamp=x.timestamp)
        return out
    if isinstance(x, payloads.Deleted):
        return {"key": x.key, "deleted": True, "version": x.version, "revision": x.revision}
    if isinstance(x, payloads.Expired):
        return {"key": x.key, "expired": True, "version": x.version, "revision": x.revision}
    if isinstance(x, payloads.PrefixDeleted):
        return {"deleted": x.deleted, "revision": x.revision}
    if isinstance(x, payloads.BatchDone):
        return {"results": [plain(v) for v in x.results], "revision": x.revision}
    if isinstance(x, payloads.Rejected):
        error = x.to_exception()
        return {"code": error.code, "message": error.message, **plain(error.extra)}
    if isinstance(x, wire.ListOk):
        return {"entries": [plain(v) for v in x.entries], "next": x.next, "revision": x.revision}
    if isinstance(x, wire.ChangesOk):
        return {"changes": [plain(v) for v in x.changes], "revision": x.revision}
    if isinstance(x, tuple):
        return tuple(plain(v) for v in x)
    if isinstance(x, list):
        return [plain(v) for v in x]
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    return x


def result_of(applied: Applied) -> Any:
    """The applied command's result as a dict, or None when it was rejected."""
    return None if isinstance(applied.outcome, payloads.Rejected) else plain(applied.outcome)


def error_of(applied: Applied) -> dict[str, Any] | None:
    """The applied command's error as ``{"code", "message", **extra}``, or None."""
    outcome = applied.outcome
    return plain(outcome) if isinstance(outcome, payloads.Rejected) else None
