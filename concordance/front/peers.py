"""``/raft``: the incoming half of the peer transport (the outgoing half is ``relay``).

Why the front: all external traffic of a node uses its one port
(ARCHITECTURE.md), so peers reach consensus through the front. The cluster
key is checked by the auth middleware before the upgrade (401 without it).
Every binary message is one Raft frame, handed to consensus undecoded as
``raft_in``; a frame consensus cannot take in time is dropped, which Raft
tolerates (it retransmits). The handler pings every ``relay.HEARTBEAT``
seconds, so a peer that went silent is closed and forgotten.
"""

from __future__ import annotations

import logging

from aiohttp import WSMsgType, web

from concordance.front.appkeys import CLIENTS, STREAMS
from concordance.front.relay import HEARTBEAT, MAX_FRAME

__all__ = ["PeerSession", "raft_handler"]

log = logging.getLogger(__name__)


class PeerSession:
    """One incoming peer connection; closed on shutdown."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws

    async def shutdown(self) -> None:
        await self.ws.close(code=1001, message=b"shutting down")


async def raft_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, heartbeat=HEARTBEAT)
    await ws.prepare(request)
    consensus = request.app[CLIENTS].consensus
    session = PeerSession(ws)
    streams = request.app[STREAMS]
    streams.add(session)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await consensus.raft_in((msg.data,))
            else:
                log.debug("/raft from %s: ignoring a %s message", request.remote, msg.type.name)
    finally:
        streams.discard(session)
    return ws
