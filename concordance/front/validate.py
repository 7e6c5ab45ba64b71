"""Request validation shared by HTTP and WebSocket: bodies, params and query strings to typed ops.

Why one module: API.md §3 promises that a malformed body, a wrong JSON type
or an unknown field is ``400 invalid_request`` (and a bad key ``400
invalid_key``), never a 500, whichever door the request came through. Every
check lives here and raises the API error; handlers never build error bodies.

Rules: integers are JSON integers (``true`` is not 1, ``1.0`` is not 1) within
the int64 range; ``null`` for an optional field means "absent"; unknown
fields are rejected; ``ttlMs`` becomes an absolute ``expiresAt`` fixed by the
accepting node's clock; a value's size is measured on its canonical JSON text
before any encryption.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from concordance.errors import InvalidRequest, ValueTooLarge
from concordance.front.codec import encode_value
from concordance.protocol.kv_keys import validate_key

__all__ = [
    "MAX_BATCH_OPS",
    "CheckArgs",
    "DeleteArgs",
    "SetArgs",
    "opt_int",
    "parse_batch",
    "parse_delete",
    "parse_set",
    "query_bool",
    "query_int",
    "query_opt_int",
    "query_str",
    "require_object",
]

MAX_BATCH_OPS: Final = 128
INT64_MAX: Final = 2**63 - 1
_DIGITS = re.compile(r"[0-9]{1,19}\Z")

SET_FIELDS: Final = frozenset({"value", "ifVersion", "expiresAt", "ttlMs"})


@dataclass(frozen=True, slots=True)
class SetArgs:
    """A validated write: ``value_json`` is the plaintext canonical JSON text."""

    key: str
    value_json: bytes
    if_version: int | None
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class DeleteArgs:
    key: str
    if_version: int | None


@dataclass(frozen=True, slots=True)
class CheckArgs:
    key: str
    version: int


def require_object(obj: Any, what: str = "body") -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InvalidRequest(f"{what} must be a JSON object")
    return obj


def _reject_unknown(obj: Mapping[str, Any], allowed: frozenset[str], what: str) -> None:
    unknown = obj.keys() - allowed
    if unknown:
        names = ", ".join(sorted(repr(k)[:40] for k in unknown)[:5])
        raise InvalidRequest(f"unknown field(s) in {what}: {names}")


def opt_int(obj: Mapping[str, Any], name: str, *, lo: int = 0, hi: int = INT64_MAX) -> int | None:
    """An optional integer field (``null`` = absent) within [lo, hi]."""
    value = obj.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise InvalidRequest(f"{name} must be an integer")
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}")
    return value


def _key_field(obj: Mapping[str, Any], name: str = "key") -> str:
    key = obj.get(name)
    if not isinstance(key, str):
        raise InvalidRequest(f"{name} must be a string")
    return validate_key(key)


def parse_set(
    key: str,
    fields: Mapping[str, Any],
    *,
    now: int,
    max_value_bytes: int,
    allowed: frozenset[str] = SET_FIELDS,
    what: str = "body",
    key_checked: bool = False,
) -> SetArgs:
    """A write of ``fields`` (``value``, ``ifVersion``, ``expiresAt``, ``ttlMs``) to ``key``.

    Raises:
        InvalidKey: bad key.
        InvalidRequest: missing value, unknown field, wrong type, bad ttl rules.
        ValueTooLarge: the value's JSON text exceeds ``max_value_bytes``.
    """
    _reject_unknown(fields, allowed, what)
    if not key_checked:  # a batch op's key was checked as the op was read
        validate_key(key)
    if "value" not in fields:
        raise InvalidRequest(f"{what} needs a value")
    if_version = opt_int(fields, "ifVersion")
    expires_at = opt_int(fields, "expiresAt")
    ttl_ms = opt_int(fields, "ttlMs", lo=-INT64_MAX)
    if ttl_ms is not None:
        if expires_at is not None:
            raise InvalidRequest("give either expiresAt or ttlMs, not both")
        if ttl_ms <= 0:
            raise InvalidRequest("ttlMs must be positive")
        if ttl_ms > INT64_MAX - now:
            raise InvalidRequest("ttlMs is too large")
        expires_at = now + ttl_ms
    value_json = encode_value(fields["value"])
    if len(value_json) > max_value_bytes:
        raise ValueTooLarge(
            f"the value is {len(value_json)} bytes of JSON, more than {max_value_bytes}"
        )
    return SetArgs(key, value_json, if_version, expires_at)


def parse_delete(key: str, fields: Mapping[str, Any], what: str = "params") -> DeleteArgs:
    _reject_unknown(fields, frozenset({"ifVersion"}), what)
    return DeleteArgs(validate_key(key), opt_int(fields, "ifVersion"))


def parse_batch(
    body: Any, *, now: int, max_value_bytes: int
) -> list[SetArgs | DeleteArgs | CheckArgs]:
    """The ops of ``{"ops": [...]}`` (API.md §3.1), 1..128 of them.

    Raises:
        InvalidRequest / InvalidKey / ValueTooLarge: as for single writes; the
            message names the op's position.
    """
    body = require_object(body)
    _reject_unknown(body, frozenset({"ops"}), "body")
    ops = body.get("ops")
    if not isinstance(ops, list):
        raise InvalidRequest("ops must be an array")
    if not 1 <= len(ops) <= MAX_BATCH_OPS:
        raise InvalidRequest(f"a batch has 1 to {MAX_BATCH_OPS} ops, not {len(ops)}")
    out: list[SetArgs | DeleteArgs | CheckArgs] = []
    for i, raw in enumerate(ops):
        what = f"ops[{i}]"
        op = require_object(raw, what)
        kind = op.get("op")
        fields = {k: v for k, v in op.items() if k not in ("op", "key")}
        if kind == "set":
            key = _key_field(op)
            out.append(
                parse_set(
                    key,
                    fields,
                    now=now,
                    max_value_bytes=max_value_bytes,
                    what=what,
                    key_checked=True,
                )
            )
        elif kind == "delete":
            out.append(parse_delete(_key_field(op), fields, what))
        elif kind == "check":
            _reject_unknown(fields, frozenset({"version"}), what)
            version = opt_int(fields, "version")
            if version is None:
                raise InvalidRequest(f"{what}: check needs a version (0 = absent)")
            out.append(CheckArgs(_key_field(op), version))
        else:
            raise InvalidRequest(f"{what}: op must be 'set', 'delete' or 'check'")
    return out


def _single(query: Mapping[str, str], getall: Any, name: str) -> str | None:
    values = getall(name, [])
    if len(values) > 1:
        raise InvalidRequest(f"query parameter {name} is given more than once")
    return values[0] if values else None


def query_str(query: Any, name: str) -> str | None:
    """A query parameter given at most once (``query`` is a MultiDict)."""
    return _single(query, query.getall, name)


def query_int(query: Any, name: str, default: int, *, lo: int = 0, hi: int = INT64_MAX) -> int:
    """A decimal query parameter within [lo, hi], or ``default`` when absent."""
    text = query_str(query, name)
    if text is None:
        return default
    if not _DIGITS.match(text) or not lo <= int(text) <= hi:
        raise InvalidRequest(f"query parameter {name} must be an integer from {lo} to {hi}")
    return int(text)


def query_opt_int(query: Any, name: str, *, lo: int = 0, hi: int = INT64_MAX) -> int | None:
    """Like :func:`query_int`, None when absent."""
    if query_str(query, name) is None:
        return None
    return query_int(query, name, 0, lo=lo, hi=hi)


def query_bool(query: Any, name: str) -> bool:
    text = query_str(query, name)
    if text is None or text in ("false", "0", ""):
        return False
    if text in ("true", "1"):
        return True
    raise InvalidRequest(f"query parameter {name} must be true or false")
