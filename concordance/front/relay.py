"""Outgoing Raft peer links: consensus's ``raft_out`` frames to each peer's ``/raft`` WebSocket.

Why it is shaped like this: Raft tolerates lost, late and duplicated
messages, but not a node that stalls because one peer is down. So each peer
gets its own link (one task, one WebSocket) with a bounded queue that drops
its OLDEST frames when full (newer Raft messages supersede older ones), and
a dead peer only ever costs its own queue. Frames are relayed as opaque
binary messages; the front never decodes them.

A link connects lazily when it has frames, reconnects with exponential
backoff capped at ``BACKOFF_MAX``, and presents the cluster key. Binary
messages received on an outgoing link are handed to consensus like those
received on ``/raft``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence

import aiohttp

from concordance import wire

__all__ = ["BACKOFF_MAX", "PeerLink", "PeerRelay"]

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1024  # frames per peer
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
CONNECT_TIMEOUT = 2.0
STABLE = 1.0  # seconds a session must last for the backoff to start over
MAX_FRAME = 64 << 20  # snapshot chunks are bounded by consensus; this only bounds garbage

Inbound = Callable[[Sequence[bytes]], Awaitable[None]]


class PeerLink:
    """The outgoing connection to one peer."""

    def __init__(self, relay: PeerRelay, peer: str, address: str) -> None:
        self.peer = peer
        self.address = address
        self.queue: deque[bytes] = deque(maxlen=relay.queue_limit)
        self.dropped = 0
        self.connected = False
        self._relay = relay
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"peer {peer}")

    def enqueue(self, frames: Sequence[bytes]) -> None:
        for frame in frames:
            if len(self.queue) == self.queue.maxlen:
                self.dropped += 1  # deque(maxlen) drops the oldest on append
            self.queue.append(frame)
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_MIN
        while True:
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            started = loop.time()
            try:
                await self._session()
                why = "closed by the peer"
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                why = str(e) or type(e).__name__
            if loop.time() - started > STABLE:
                backoff = BACKOFF_MIN  # it worked for a while: reconnect promptly
            log.debug("peer %s at %s: %s; retrying in %.2fs", self.peer, self.address, why, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        url = f"ws://{self.address}/raft"
        headers = {"Authorization": f"Bearer {self._relay.key}"} if self._relay.key else {}
        async with self._relay.http.ws_connect(
            url,
            headers=headers,
            timeout=aiohttp.ClientWSTimeout(ws_close=CONNECT_TIMEOUT),
            heartbeat=5.0,
            autoping=True,
            max_msg_size=MAX_FRAME,
        ) as ws:
            self.connected = True
            reader = asyncio.get_running_loop().create_task(self._read(ws))
            try:
                while True:
                    while not self.queue:
                        if reader.done():
                            return
                        self._wake.clear()
                        waiter = asyncio.ensure_future(self._wake.wait())
                        await asyncio.wait({waiter, reader}, return_when=asyncio.FIRST_COMPLETED)
                        waiter.cancel()
                    frame = self.queue.popleft()
                    try:
                        await ws.send_bytes(frame)
                    except (ConnectionError, RuntimeError) as e:
                        raise aiohttp.ClientConnectionError(str(e)) from e
            finally:
                self.connected = False
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await self._relay.inbound([msg.data])

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class PeerRelay:
    """All outgoing peer links of this node.

    Args:
        http: the client session links connect with (owned by the caller).
        key: the cluster key presented to peers (None on an insecure cluster).
        inbound: hands frames received on an outgoing link to consensus.
        overrides: peer id -> the address to dial instead of the one in the
            membership (``--peer-overrides``: NAT, tunnels, fault-injecting proxies).
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        key: str | None,
        inbound: Inbound,
        *,
        queue_limit: int = QUEUE_LIMIT,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        self.http = http
        self.overrides = dict(overrides or {})
        self.key = key
        self.inbound = inbound
        self.queue_limit = queue_limit
        self.links: dict[str, PeerLink] = {}
        self.learned: dict[str, str] = {}
        self.unroutable = 0  # frames dropped because no address is known for their peer

    def learn(self, addresses: Mapping[str, str]) -> None:
        """Remember peer addresses learned outside the log (a joiner's join answer).

        Used only for a ``raft_out`` that carries no address: a joiner's
        consensus knows no addresses until the membership reaches it through
        the log, yet it must answer its leader's first messages.
        """
        self.learned.update(addresses)

    def send(self, out: wire.RaftOut) -> None:
        """Queue ``out.frames`` for ``out.peer`` (never waits; called from the IPC receive loop)."""
        address = self.overrides.get(out.peer) or out.address or self.learned.get(out.peer, "")
        if not address:
            self.unroutable += len(out.frames)
            log.debug("no address for peer %s: dropping %d frame(s)", out.peer, len(out.frames))
            return
        link = self.links.get(out.peer)
        if link is not None and link.address != address:
            log.info("peer %s moved from %s to %s", out.peer, link.address, address)
            asyncio.get_running_loop().create_task(link.close())
            link = None
        if link is None:
            link = self.links[out.peer] = PeerLink(self, out.peer, address)
        link.enqueue(out.frames)

    async def close(self) -> None:
        links = list(self.links.values())
        self.links.clear()
        for link in links:
            await link.close()
