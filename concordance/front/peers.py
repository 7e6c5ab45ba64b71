"""``/raft`` over HTTP: a clear answer for what is no longer served there.

Peer links no longer use HTTP: consensus dials a peer's port with the
``concordance-raft/1`` preface (or ALPN on TLS) and the front hands such
connections to consensus before any HTTP parsing (PROTOCOL.md §6). An HTTP
request to ``/raft`` is a client, or a node from before that change: without
the cluster key it still gets ``401`` (the auth middleware, API.md §3), with
it ``400 invalid_request`` saying why, instead of a WebSocket that would
carry nothing.
"""

from __future__ import annotations

from aiohttp import web

from concordance.errors import InvalidRequest

__all__ = ["raft_handler"]


async def raft_handler(request: web.Request) -> web.StreamResponse:
    raise InvalidRequest(
        "peer links do not use HTTP: a node's consensus dials its peers' port with the"
        " concordance-raft/1 preface (docs/PROTOCOL.md §6); a node from before that change"
        " cannot peer with this one (docs/OPERATIONS.md, upgrading)"
    )
