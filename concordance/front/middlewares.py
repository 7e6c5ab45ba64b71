"""The front's middlewares: metrics, the one error-to-JSON mapping, and authentication.

Why middlewares (STYLE.md 15): handlers raise ``ConcordanceError`` and never
build an error body; the error middleware is the single place that turns an
exception into ``{"error": {"code", "message", ...}}`` with its status (and
``Retry-After`` on 503 unavailable). Authentication is decided per route
name before any handler runs, so no route can forget it.

Order, outermost first: metrics (sees the final status), errors, auth.

Who may call what (API.md §3):

* ``healthz``, ``readyz``, ``metrics``, ``openapi`` (the API's description): no key.
* ``raft``: the cluster key (``Secrets.peer_key``); 401 before the upgrade.
* ``cluster_members`` (``GET``/``POST /api/v1/cluster/members``): the full
  key, or the cluster key, which a node started with ``--join`` presents to
  ask to be added (``join.py``).
* everything else: the full key, or the agent key for ``GET``/``HEAD``
  except ``cluster_backup`` (``/stream`` checks each method itself).
* scoped keys (``--keys``, ``concordance.security.access``): the key-value routes
  and ``/stream`` only; the handlers check each key and prefix against the
  key's grants and filter what lists and feeds show.
* a node started ``--insecure`` without an API key lets everything through.

Keys are compared with ``hmac.compare_digest`` on their UTF-8 bytes (scoped
keys on the SHA-256 of the token).
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler

from concordance.config import NodeConfig
from concordance.errors import (
    ConcordanceError,
    Forbidden,
    InvalidRequest,
    IpcError,
    NotFound,
    RequestTooLarge,
    Unauthorized,
    Unavailable,
)
from concordance.front.app_state import ACCESS, ACCESS_KEYRING, CONFIG, METRICS
from concordance.front.codec import dumps
from concordance.security.access import AGENT, FULL, AccessKeyRing, Principal

__all__ = [
    "AGENT_FORBIDDEN",
    "PUBLIC_ROUTES",
    "api_error",
    "auth_middleware",
    "authenticate",
    "authorize",
    "bearer_token",
    "error_middleware",
    "error_parts",
    "error_response",
    "metrics_middleware",
]

log = logging.getLogger(__name__)

PUBLIC_ROUTES: Final = frozenset({"healthz", "readyz", "metrics", "openapi"})
PEER_ROUTE: Final = "raft"
JOIN_ROUTE: Final = "cluster_members"  # the cluster key is accepted here too
STREAM_ROUTE: Final = "stream"
AGENT_FORBIDDEN: Final = frozenset({"cluster_backup"})
SCOPED_ROUTES: Final = frozenset({"kv_key", "kv", "batch", "changes", "stream"})
_READ_METHODS: Final = frozenset({"GET", "HEAD"})


class MethodNotAllowed(ConcordanceError):
    code, http_status = "method_not_allowed", 405


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization`` header's value if its scheme is Bearer."""
    scheme, _, token = header.partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def _token(request: web.Request, *, allow_query: bool) -> str | None:
    token = bearer_token(request.headers.get("Authorization", ""))
    if token is not None:
        return token
    if allow_query:
        return request.query.get("token") or None
    return None


def _same(given: str, expected: str | None) -> bool:
    if not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def authenticate(
    cfg: NodeConfig, token: str | None, keyring: AccessKeyRing | None = None
) -> Principal:
    """What a bearer token may do.

    Raises:
        Unauthorized: no token, or one that matches no configured key.
    """
    secrets = cfg.secrets
    if not secrets.api_key and cfg.insecure:
        return FULL
    if token is None:
        raise Unauthorized("an API key is required (Authorization: Bearer <key>)")
    full = _same(token, secrets.api_key)
    agent = _same(token, secrets.agent_key)  # all compared: no timing hint of which
    scoped = keyring.find(token) if keyring is not None else None
    if full:
        return FULL
    if agent:
        return AGENT
    if scoped is not None:
        return scoped
    raise Unauthorized("unknown API key")


def _check_peer(cfg: NodeConfig, request: web.Request) -> None:
    expected = cfg.secrets.peer_key  # none: no peer may connect, --insecure or not
    token = _token(request, allow_query=False)
    if token is None or not _same(token, expected):
        raise Unauthorized("the cluster key is required on /raft")


def authorize(
    cfg: NodeConfig, keyring: AccessKeyRing, name: str | None, method: str, token: str | None
) -> Principal:
    """Who may call route ``name`` with ``method`` and this token, for every route but the
    public ones, the peers' and the join's (the auth middleware decides those first).

    Raises:
        Unauthorized: no token, or an unknown one.
        Forbidden: the agent key on a write or a closed route; a scoped key off the
            key-value API.
    """
    access = authenticate(cfg, token, keyring)
    if access is AGENT and (method not in _READ_METHODS or name in AGENT_FORBIDDEN):
        raise Forbidden("the agent key is read-only")
    if access.scoped and name is not None and name not in SCOPED_ROUTES:
        raise Forbidden(f"key {access.name!r} is scoped to keys: the key-value API only")
    return access


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    cfg = request.app[CONFIG]
    name = request.match_info.route.name
    if name in PUBLIC_ROUTES:
        return await handler(request)
    if name == PEER_ROUTE:
        _check_peer(cfg, request)
        return await handler(request)
    token = _token(request, allow_query=name == STREAM_ROUTE)
    if name == JOIN_ROUTE and token is not None and _same(token, cfg.secrets.peer_key):
        request[ACCESS] = FULL
        return await handler(request)
    request[ACCESS] = authorize(cfg, request.app[ACCESS_KEYRING], name, request.method, token)
    return await handler(request)


def error_parts(
    error: ConcordanceError, allow: str | None = None
) -> tuple[int, dict[str, str], str]:
    """The one place an error body is built: status, extra headers, JSON text."""
    headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Unavailable) else {}
    if allow is not None:
        headers["Allow"] = allow
    return error.http_status, headers, dumps({"error": error.to_dict()})


def error_response(error: ConcordanceError, allow: str | None = None) -> web.Response:
    status, headers, text = error_parts(error, allow)
    return web.Response(status=status, text=text, content_type="application/json", headers=headers)


def api_error(exc: Exception, method: str, path: str) -> ConcordanceError:
    """What a handler's exception (not an aiohttp ``HTTPException``) tells the client."""
    if isinstance(exc, ConcordanceError):
        return exc
    if isinstance(exc, IpcError):  # a role client leaked plumbing: the role is not answering
        log.warning("%s %s: %s", method, path, exc)
        return Unavailable("a role of this node is not answering")
    log.error("%s %s failed", method, path, exc_info=exc)
    return ConcordanceError("internal error")


def _from_http(exc: web.HTTPException) -> ConcordanceError:
    """aiohttp's own refusals (body too large, no route, bad upgrade...) as API errors."""
    if exc.status == 413:
        return RequestTooLarge("the request body is larger than the limit")
    if exc.status == 404:
        return NotFound("no such route")
    if exc.status == 405:
        return MethodNotAllowed(f"{exc.reason}")
    if exc.status == 503:
        return Unavailable(exc.text or "unavailable")
    if exc.status < 500:
        return InvalidRequest(exc.text or exc.reason)
    return ConcordanceError(exc.text or exc.reason)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(_from_http(e), e.headers.get("Allow"))
    except Exception as e:
        return error_response(api_error(e, request.method, request.path))


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        request.app[METRICS].observe(route, request.method, status, time.monotonic() - started)
