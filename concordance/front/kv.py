"""HTTP handlers of the key-value routes (API.md §3, §3.1, §3.2).

Thin by design: read the path, query and body, validate them (``validate``),
call the shared :class:`~concordance.front.service.KvService`, answer JSON.
Every failure is raised as a ``ConcordanceError`` for the error middleware.
Each handler checks the caller's key (``request[ACCESS]``, see
``concordance.security.access``) on every key and prefix it touches, after validating
them and before anything is read or proposed, and filters what lists and
change feeds return to what the key may see.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiMapping

from concordance.errors import NotFound
from concordance.front.app_state import ACCESS, CONFIG, KV
from concordance.front.codec import dumps, parse_json
from concordance.front.validate import (
    parse_batch,
    parse_delete,
    parse_set,
    query_bool,
    query_int,
    query_opt_int,
    query_str,
    require_object,
)
from concordance.protocol.kv_keys import validate_key, validate_prefix
from concordance.security.access import Principal

__all__ = [
    "batch",
    "batch_text",
    "changes",
    "delete_key",
    "delete_prefix",
    "delete_text",
    "get_key",
    "get_text",
    "json_response",
    "list_keys",
    "put_key",
    "put_text",
]

LIST_LIMIT = (100, 1000)  # default, max
CHANGES_LIMIT = (1000, 10_000)
MAX_WAIT_MS = 60_000


def json_response(data: Any) -> web.Response:
    return web.json_response(data, dumps=dumps)


def _json_text(text: str) -> web.Response:
    """An answer already rendered as JSON text (a write's, ``Renderer.result_text``)."""
    return web.json_response(text=text)


def _prefix(request: web.Request) -> str:
    return validate_prefix(query_str(request.query, "prefix") or "")


async def put_text(app: web.Application, access: Principal, raw_key: str, body: bytes) -> str:
    """``PUT /api/v1/kv/{key}``'s answer as JSON text (also served by ``hot_path``)."""
    key = validate_key(raw_key)
    access.check_write(key)
    fields = require_object(parse_json(body))
    kv = app[KV]
    args = parse_set(key, fields, now=kv.clock(), max_value_bytes=app[CONFIG].max_value_bytes)
    return await kv.set_text(args)


async def get_text(
    app: web.Application, access: Principal, raw_key: str, query: MultiMapping[str]
) -> str:
    """``GET /api/v1/kv/{key}``'s answer as JSON text (also served by ``hot_path``)."""
    key = validate_key(raw_key)
    access.check_read(key)
    consistent = query_bool(query, "consistent")
    entry = await app[KV].get(key, consistent=consistent)
    if entry is None:
        raise NotFound(f"{key} does not exist")
    return dumps(entry)


async def delete_text(
    app: web.Application, access: Principal, raw_key: str, query: MultiMapping[str]
) -> str:
    """``DELETE /api/v1/kv/{key}``'s answer as JSON text (also served by ``hot_path``)."""
    key = validate_key(raw_key)
    access.check_write(key)
    args = parse_delete(key, {"ifVersion": query_opt_int(query, "ifVersion")})
    return await app[KV].delete_text(args)


async def put_key(request: web.Request) -> web.Response:
    # read() enforces client_max_size (413, mapped to request_too_large by the middleware),
    # after the key and the caller's grant are checked
    key = validate_key(request.match_info["key"])
    request[ACCESS].check_write(key)
    body = await request.read()
    return _json_text(await put_text(request.app, request[ACCESS], key, body))


async def get_key(request: web.Request) -> web.Response:
    text = await get_text(request.app, request[ACCESS], request.match_info["key"], request.query)
    return _json_text(text)


async def delete_key(request: web.Request) -> web.Response:
    key, query = request.match_info["key"], request.query
    return _json_text(await delete_text(request.app, request[ACCESS], key, query))


async def list_keys(request: web.Request) -> web.Response:
    prefix = _prefix(request)
    access = request[ACCESS]
    access.check_read_prefix(prefix)
    default, most = LIST_LIMIT
    limit = query_int(request.query, "limit", default, lo=1, hi=most)
    cursor = query_str(request.query, "cursor") or None
    consistent = query_bool(request.query, "consistent")
    page = await request.app[KV].list(prefix, limit, cursor, consistent=consistent)
    if access.scoped:  # a page may then hold fewer than `limit` entries; `next` still holds
        page["entries"] = access.visible(page["entries"])
    return json_response(page)


async def delete_prefix(request: web.Request) -> web.Response:
    prefix = _prefix(request)
    request[ACCESS].check_write_prefix(prefix)
    return json_response(await request.app[KV].delete_prefix(prefix))


async def batch_text(app: web.Application, access: Principal, body: bytes) -> str:
    """``POST /api/v1/batch``'s answer as JSON text (also served by ``hot_path``)."""
    kv = app[KV]
    ops = parse_batch(parse_json(body), now=kv.clock(), max_value_bytes=app[CONFIG].max_value_bytes)
    # A batch is one Raft entry whatever its ops, so every op, a `check` included, needs
    # write access to its key: a read grant must not be able to append to the log. All
    # are checked before anything is proposed, so a refused batch changes nothing.
    for op in ops:
        access.check_write(op.key)
    return await kv.batch_text(ops)


async def batch(request: web.Request) -> web.Response:
    # read() enforces client_max_size (413, mapped to request_too_large by the middleware)
    return _json_text(await batch_text(request.app, request[ACCESS], await request.read()))


async def changes(request: web.Request) -> web.Response:
    prefix = _prefix(request)
    access = request[ACCESS]
    access.check_read_prefix(prefix)
    since = query_int(request.query, "since", 0)
    default, most = CHANGES_LIMIT
    limit = query_int(request.query, "limit", default, lo=1, hi=most)
    wait_ms = query_int(request.query, "waitMs", 0, hi=MAX_WAIT_MS)
    feed = await request.app[KV].changes(prefix, since, limit, wait_ms)
    if access.scoped:  # `revision` still says how far the answer is complete
        feed["changes"] = access.visible(feed["changes"])
    return json_response(feed)
