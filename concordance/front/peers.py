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

import asyncio
import logging

from aiohttp import WSMsgType, web

from concordance.front.appkeys import CLIENTS, STREAMS
from concordance.front.relay import DRAIN, HEARTBEAT, MAX_FRAME

__all__ = ["PeerSession", "drain_peer_links", "raft_handler"]

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 1.0  # seconds a peer may take to close its side after ``drain``


class PeerSession:
    """One incoming peer connection; drained and closed on shutdown.

    Why drain: a frame the peer already sent when this end closes is lost, and
    not every Raft message is retransmitted (a forwarded proposal is sent once:
    its write would end in a 504). So on shutdown this end asks the peer to
    ``drain`` (a text message): the peer stops sending here, closes its side
    and reconnects (to this node's next front, during a hand-over). Every frame
    up to the peer's close is still handed to consensus. A peer that does not
    close within ``DRAIN_TIMEOUT`` (an older node ignores the text) is closed.
    """

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.ended = asyncio.Event()  # the handler read the last message
        self._closing = False

    async def shutdown(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            await self.ws.send_str(DRAIN)
            await asyncio.wait_for(self.ended.wait(), DRAIN_TIMEOUT)
            log.debug("a peer link drained")
        except Exception as e:  # an older peer, or a broken link: close it anyway
            log.debug("a peer link did not drain: %r", e)
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
        session.ended.set()
        streams.discard(session)
    return ws


async def drain_peer_links(app: web.Application) -> None:
    """Drain every incoming peer link (see :class:`PeerSession`). Call it before the
    runner's cleanup: from then on aiohttp reads nothing more on any connection
    (``RequestHandler.close``), so a peer's last frames and its close would wait
    unread until the drain timed out."""
    sessions = [s for s in app[STREAMS] if isinstance(s, PeerSession)]
    await asyncio.gather(*(s.shutdown() for s in sessions), return_exceptions=True)
