"""The OpenAPI 3.1 description of the HTTP API (``GET /api/v1/openapi.json``), from the routes.

Why built, not written: a hand-kept YAML file drifts from the code. Here
the paths and methods come from the application's router, every limit and
field list from the constants the validators use (``validate``, ``kv``,
``keys``), and :func:`build` refuses to run when a route has no
description below, so adding a route or a body field without describing it
fails the unit tests (``tests/unit/front/test_openapi.py``) and the fuzzer
(``tests/fuzz``) then checks the live node's answers against the result.

Unknown query parameters are ignored (only JSON body fields are strict, API.md
§3); the document lists every parameter a route reads.

The key path parameter is described by a simplified pattern (tenant prefix,
no control characters, at most 1024 bytes); the finer rules (no empty, ``.``
or ``..`` segments) are in its description and answered ``400 invalid_key``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from aiohttp import web

from concordance import __version__
from concordance.front.kv import CHANGES_LIMIT, LIST_LIMIT, MAX_WAIT_MS
from concordance.front.validate import INT64_MAX, MAX_BATCH_OPS, SET_FIELDS
from concordance.protocol.kv_keys import MAX_KEY_BYTES

__all__ = ["UNDESCRIBED", "build", "openapi_handler"]

Schema = dict[str, Any]

_TENANT: Final = r"tenant:[A-Za-z0-9_.-]{1,64}/"
KEY_PATTERN: Final = rf"^{_TENANT}[^\x00-\x1f\x7f]+$"
PREFIX_PATTERN: Final = rf"^{_TENANT}[^\x00-\x1f\x7f]*$"
UNDESCRIBED: Final = frozenset(
    {"stream", "raft"}
)  # WebSocket upgrades: docs/PROTOCOL.md, API.md §4


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _int(lo: int = 0, hi: int = INT64_MAX) -> Schema:
    return {"type": "integer", "minimum": lo, "maximum": hi}


def _nullable_int(lo: int = 0, hi: int = INT64_MAX) -> Schema:
    return {"type": ["integer", "null"], "minimum": lo, "maximum": hi}


def _object(required: Iterable[str], props: dict[str, Schema], extra: bool = False) -> Schema:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": props,
        "additionalProperties": extra,
    }


def _set_fields() -> dict[str, Schema]:
    fields = {
        "value": {"description": "any JSON value (at most the node's value limit)"},
        "ifVersion": _nullable_int(),
        "expiresAt": _nullable_int(),
        "ttlMs": {**_nullable_int(1), "description": "not together with expiresAt"},
    }
    assert fields.keys() == SET_FIELDS, "validate.SET_FIELDS changed: describe the new fields"
    return fields


def _components() -> Schema:
    entry = _object(
        ("key", "value", "version", "revision", "createdAt", "updatedAt", "expiresAt"),
        {
            "key": {"type": "string"},
            "value": {},
            "version": _int(1),
            "revision": _int(1),
            "createdAt": _int(),
            "updatedAt": _int(),
            "expiresAt": _nullable_int(),
        },
    )
    deleted = _object(
        ("key", "deleted", "version", "revision"),
        {
            "key": {"type": "string"},
            "deleted": {"const": True},
            "version": _int(1),
            "revision": _int(1),
        },
    )
    change = _object(
        ("type", "key", "version", "revision", "timestamp"),
        {
            "type": {"enum": ["set", "delete", "expire"]},
            "key": {"type": "string"},
            "value": {},
            "version": _int(),
            "revision": _int(1),
            "timestamp": _int(),
        },
    )
    key_field = {"type": "string", "pattern": KEY_PATTERN}
    batch_op = {
        "oneOf": [
            _object(
                ("op", "key", "value"), {"op": {"const": "set"}, "key": key_field, **_set_fields()}
            ),
            _object(
                ("op", "key"),
                {"op": {"const": "delete"}, "key": key_field, "ifVersion": _nullable_int()},
            ),
            _object(
                ("op", "key", "version"),
                {"op": {"const": "check"}, "key": key_field, "version": _int()},
            ),
        ]
    }
    error = _object(
        ("error",),
        {
            "error": _object(
                ("code", "message"),
                {"code": {"type": "string"}, "message": {"type": "string"}},
                extra=True,
            )
        },
    )
    member = _object(
        ("id", "address", "voter", "matchIndex"),
        {
            "id": {"type": "string"},
            "address": {"type": "string"},
            "voter": {"type": "boolean"},
            "matchIndex": _int(),
        },
    )
    return {
        "Entry": entry,
        "Deleted": deleted,
        "Change": change,
        "Error": error,
        "SetBody": _object(("value",), _set_fields()),
        "BatchBody": _object(
            ("ops",),
            {"ops": {"type": "array", "minItems": 1, "maxItems": MAX_BATCH_OPS, "items": batch_op}},
        ),
        "Page": _object(
            ("entries", "next", "revision"),
            {
                "entries": {"type": "array", "items": _ref("Entry")},
                "next": {"type": ["string", "null"]},
                "revision": _int(),
            },
        ),
        "Changes": _object(
            ("changes", "revision"),
            {"changes": {"type": "array", "items": _ref("Change")}, "revision": _int()},
        ),
        "Members": _object(("members",), {"members": {"type": "array", "items": member}}),
        "Status": {"type": "object", "required": ["nodeId", "role", "members", "roles"]},
    }


def _json(schema: Schema, description: str = "OK") -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Schema]:
    # 401 everywhere a key is needed, 503 whenever a role may be down
    return {str(s): _json(_ref("Error"), "error") for s in sorted({*statuses, 401, 403, 503})}


def _query(name: str, schema: Schema, description: str = "") -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_KEY_PARAM: Final = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": (
        f"tenant:{{tenantId}}/{{path}}, percent-encoded, at most {MAX_KEY_BYTES} bytes of UTF-8;"
        " no empty, '.' or '..' segment, no control character (else 400 invalid_key)"
    ),
    "schema": {"type": "string", "pattern": KEY_PATTERN, "maxLength": MAX_KEY_BYTES},
}
_PREFIX: Final = _query(
    "prefix",
    {"type": "string", "pattern": PREFIX_PATTERN, "maxLength": MAX_KEY_BYTES},
    "tenant-scoped prefix (required)",
)
_CONSISTENT: Final = _query("consistent", {"type": "boolean"}, "linearizable read (ReadIndex)")
_PUBLIC: Final = {"healthz", "readyz", "metrics", "openapi"}


def _operations() -> dict[tuple[str, str], Schema]:
    """(route name, method) -> the operation's description."""
    list_default, list_max = LIST_LIMIT
    changes_default, changes_max = CHANGES_LIMIT
    body = {"required": True, "content": {"application/json": {"schema": _ref("SetBody")}}}
    batch_body = {"required": True, "content": {"application/json": {"schema": _ref("BatchBody")}}}
    optional_body = {"required": False, "content": {"application/json": {"schema": {}}}}
    return {
        ("kv_key", "GET"): {
            "summary": "Read a key",
            "parameters": [_KEY_PARAM, _CONSISTENT],
            "responses": {"200": _json(_ref("Entry")), **_errors(400, 404)},
        },
        ("kv_key", "PUT"): {
            "summary": "Write a key (ifVersion: compare-and-swap)",
            "parameters": [_KEY_PARAM],
            "requestBody": body,
            "responses": {"200": _json(_ref("Entry")), **_errors(400, 409, 413, 504)},
        },
        ("kv_key", "DELETE"): {
            "summary": "Delete a key",
            "parameters": [_KEY_PARAM, _query("ifVersion", _int())],
            "responses": {"200": _json(_ref("Deleted")), **_errors(400, 404, 409, 504)},
        },
        ("kv", "GET"): {
            "summary": "List keys under a prefix, in key order",
            "parameters": [
                _PREFIX,
                _query("limit", _int(1, list_max), f"default {list_default}"),
                _query("cursor", {"type": "string"}),
                _CONSISTENT,
            ],
            "responses": {"200": _json(_ref("Page")), **_errors(400)},
        },
        ("kv", "DELETE"): {
            "summary": "Delete every key under a prefix (atomic)",
            "parameters": [_PREFIX],
            "responses": {
                "200": _json(
                    _object(("deleted", "revision"), {"deleted": _int(), "revision": _int()})
                ),
                **_errors(400, 504),
            },
        },
        ("batch", "POST"): {
            "summary": f"Atomic batch of 1 to {MAX_BATCH_OPS} ops",
            "requestBody": batch_body,
            "responses": {
                "200": _json(
                    _object(
                        ("results", "revision"), {"results": {"type": "array"}, "revision": _int()}
                    )
                ),
                **_errors(400, 404, 409, 413, 504),  # 404: a delete op of an absent key
            },
        },
        ("changes", "GET"): {
            "summary": "Change events after a revision (long-poll with waitMs)",
            "parameters": [
                _PREFIX,
                _query("since", _int()),
                _query("limit", _int(1, changes_max), f"default {changes_default}"),
                _query("waitMs", _int(0, MAX_WAIT_MS)),
            ],
            "responses": {"200": _json(_ref("Changes")), **_errors(400, 410)},
        },
        ("cluster_status", "GET"): {
            "summary": "This node's view of the cluster",
            "responses": {"200": _json(_ref("Status")), **_errors()},
        },
        ("cluster_members", "GET"): {
            "summary": "The members",
            "responses": {"200": _json(_ref("Members")), **_errors()},
        },
        ("cluster_members", "POST"): {
            "summary": "Add a member (learner, or voter with voter: true); idempotent",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": _object(
                            ("id", "address"),
                            {
                                "id": {"type": "string"},
                                "address": {"type": "string"},
                                "voter": {"type": "boolean"},
                            },
                        )
                    }
                },
            },
            "responses": {"200": _json(_ref("Members")), **_errors(400, 504)},
        },
        ("cluster_member", "DELETE"): {
            "summary": "Remove a member",
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {"200": _json(_ref("Members")), **_errors(400, 504)},
        },
        ("cluster_leader", "POST"): {
            "summary": "Transfer leadership (to: a voter id, or any)",
            "requestBody": optional_body,
            "responses": {"200": _json({"type": "object"}), **_errors(400, 504)},
        },
        ("cluster_snapshot", "POST"): {
            "summary": "Take a snapshot now",
            "responses": {"200": _json({"type": "object"}), **_errors(504)},
        },
        ("cluster_role_restart", "POST"): {
            "summary": "Restart one role of this node (full key only); 200 once the new"
            " process serves (the front by a hand-over on the same socket)",
            "parameters": [
                {
                    "name": "role",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": ["front", "consensus", "storage"]},
                }
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "role": {"type": "string"},
                            "restarted": {"type": "boolean"},
                            "pid": {"type": ["integer", "null"]},
                        },
                    }
                ),
                **_errors(400, 403, 503),
            },
        },
        ("cluster_backup", "GET"): {
            "summary": "The whole state as a SQLite file (credentials stay encrypted)",
            "responses": {
                "200": {
                    "description": "SQLite file",
                    "content": {"application/octet-stream": {"schema": {}}},
                },
                **_errors(504),
            },
        },
        ("healthz", "GET"): {
            "summary": "Liveness (no key)",
            "responses": {"200": _json({"type": "object"})},
        },
        ("readyz", "GET"): {
            "summary": "Readiness: a leader is known and storage applied up to commit (no key)",
            "responses": {"200": _json({"type": "object"}), "503": _json(_ref("Error"))},
        },
        ("metrics", "GET"): {
            "summary": "Prometheus metrics (no key; no keys or values in them)",
            "responses": {
                "200": {
                    "description": "text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        },
        ("openapi", "GET"): {
            "summary": "This document (no key)",
            "responses": {"200": _json({"type": "object"})},
        },
    }


def _openapi_path(resource: web.AbstractResource) -> str:
    info = resource.get_info()
    path = info.get("path") or info.get("formatter") or ""
    return str(path).replace("{key:[\\s\\S]+}", "{key}")


def build(router: web.UrlDispatcher) -> dict[str, Any]:
    """The OpenAPI document of every route in ``router``.

    Raises:
        LookupError: a route has no description here (or a description no route).
    """
    ops = _operations()
    used: set[tuple[str, str]] = set()
    paths: dict[str, dict[str, Any]] = {}
    for route in router.routes():
        name, method = route.name, route.method
        if name in UNDESCRIBED or method == "HEAD":
            continue
        if name is None or (name, method) not in ops or route.resource is None:
            raise LookupError(f"route {method} {name} has no OpenAPI description")
        op = dict(ops[(name, method)])
        op["operationId"] = f"{name}_{method.lower()}"
        if name not in _PUBLIC:
            op["security"] = [{"bearer": []}]
        paths.setdefault(_openapi_path(route.resource), {})[method.lower()] = op
        used.add((name, method))
    if used != ops.keys():
        raise LookupError(f"described but not routed: {sorted(ops.keys() - used)}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Concordance",
            "version": __version__,
            "description": "Strongly consistent configuration store (see API.md). WebSocket "
            "/stream (JSON-RPC) and /raft are not described here.",
        },
        "paths": paths,
        "components": {
            "schemas": _components(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


async def openapi_handler(request: web.Request) -> web.Response:
    """``GET /api/v1/openapi.json`` (no key: it holds no data)."""
    return web.json_response(build(request.app.router))
