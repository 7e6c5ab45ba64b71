"""Outgoing Raft peer links: consensus's ``raft_out`` frames to each peer's ``/raft`` WebSocket.

Why it is shaped like this (etcd's rafthttp is the model): Raft tolerates
lost, late and duplicated messages, but not a node that stalls because one
peer is down. So each peer gets its own link (one task, one WebSocket, its
own writer) with a bounded queue, a dead or slow peer only ever costs its own
queue, and :meth:`PeerRelay.send` never waits. Frames are relayed as opaque
binary messages; the front never decodes them.

**Bounded by frames and by bytes.** A queue holds at most ``queue_limit``
frames (1,024) and ``queue_bytes`` bytes (8 MiB): frames go up to about
1 MiB (AppendEntries batches, snapshot chunks), so a count alone would let
one dead peer pin a gigabyte. When either bound is exceeded the OLDEST
frames are dropped first (newer Raft messages supersede older ones; the
leader retransmits what is still missing). The newest frame is always kept,
even when it alone exceeds the byte bound, so a large snapshot chunk can
still be sent: a queue holds at most ``max(queue_bytes, one frame)``.

**Stale frames are dropped, not replayed.** A frame that waited longer than
``stale_after`` (the election timeout, ``tick_ms * election_ticks``) without
a live connection to go out on is dropped when the link is next used or
reconnects. By then the cluster has moved on: the peer's election timer
fired, terms changed, the leader's heartbeats and appends of that time are
superseded and Raft retransmits whatever still matters (from the peer's
rejections and its next responses). Replaying seconds of stale traffic to a
peer that just came back only delays the messages that count. Frames queued
behind a live but slow connection are not aged (they are sent in order as
the socket drains; the byte bound limits them).

**Everything has a timeout.** The handshake (TCP connect + HTTP upgrade) is
bounded by ``handshake_timeout``, so a peer that accepts TCP and never
answers cannot hold a link. Both sides send WebSocket pings every
``HEARTBEAT`` seconds (the ``/raft`` handler too) and close a connection
whose pong does not come within half of that, so a silent peer (host gone,
packets dropped) is detected and the link reconnects; a writer stuck on a
full socket is cancelled when that happens. Closing is bounded by
``CLOSE_TIMEOUT``. A heartbeat must exceed the time the peer needs to drain
a full socket buffer, or a merely slow link would be cut.

A link connects lazily when it has frames, reconnects with exponential
backoff capped at ``BACKOFF_MAX``, and presents the cluster key; on a TLS
node it dials ``wss://`` and verifies the peer's certificate (``concordance.tls``). Binary
messages received on an outgoing link are handed to consensus like those
received on ``/raft``. Drops are counted per peer and reason
(``concordance_peer_frames_dropped_total{peer,reason}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence

import aiohttp

from concordance import wire
from concordance.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "BACKOFF_MAX",
    "HANDSHAKE_TIMEOUT",
    "HEARTBEAT",
    "QUEUE_BYTES",
    "QUEUE_LIMIT",
    "STALE_AFTER",
    "PeerLink",
    "PeerRelay",
]

log = logging.getLogger(__name__)

QUEUE_LIMIT = 1024  # frames per peer
QUEUE_BYTES = 8 << 20  # bytes per peer (the newest frame is kept even if larger)
STALE_AFTER = 1.0  # seconds; the app passes the election timeout (tick_ms * election_ticks)
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
CONNECT_TIMEOUT = 2.0  # TCP connect (the app's client session)
HANDSHAKE_TIMEOUT = 2.0  # TCP connect + HTTP upgrade
HEARTBEAT = 2.0  # ping interval on both sides; a pong must come within half of it
CLOSE_TIMEOUT = 1.0
STABLE = 1.0  # seconds a session must last for the backoff to start over
DRAIN = "drain"  # text message: "stop sending here, close, reconnect" (peers.py)
MAX_FRAME = 64 << 20  # snapshot chunks are bounded by consensus; this only bounds garbage

Inbound = Callable[[Sequence[bytes]], Awaitable[None]]


class PeerLink:
    """The outgoing connection to one peer, and its queue."""

    def __init__(self, relay: PeerRelay, peer: str, address: str) -> None:
        self.peer = peer
        self.address = address
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.dropped_full = 0  # oldest frames dropped for room (frame or byte bound)
        self.dropped_stale = 0  # frames that waited longer than stale_after for a connection
        self.connected = False
        self.drained = False  # the last session ended on the peer's ``drain``
        self._stamps: deque[float] = deque()  # loop time each queued frame was queued at
        self._relay = relay
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"peer {peer}")

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_stale

    def enqueue(self, frames: Sequence[bytes]) -> None:
        now = self._relay.clock.monotonic()
        if not self.connected:
            self._expire(now)
        for frame in frames:
            self.queue.append(frame)
            self._stamps.append(now)
            self.queued_bytes += len(frame)
        relay = self._relay
        while len(self.queue) > 1 and (
            len(self.queue) > relay.queue_limit or self.queued_bytes > relay.queue_bytes
        ):
            self._pop()
            self.dropped_full += 1
        self._wake.set()

    def _pop(self) -> bytes:
        frame = self.queue.popleft()
        self._stamps.popleft()
        self.queued_bytes -= len(frame)
        return frame

    def _expire(self, now: float) -> None:
        """Drop the frames that waited longer than ``stale_after`` (see the module docstring)."""
        limit = now - self._relay.stale_after
        n = 0
        while self._stamps and self._stamps[0] <= limit:
            self._pop()
            n += 1
        if n:
            self.dropped_stale += n
            log.debug("peer %s: dropped %d stale frame(s)", self.peer, n)

    async def _run(self) -> None:
        clock = self._relay.clock
        backoff = BACKOFF_MIN
        while True:
            self._expire(clock.monotonic())
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            started = clock.monotonic()
            try:
                await self._session()
                why = "closed"
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                why = str(e) or type(e).__name__
            except Exception:  # a link must outlive any bug in one session
                log.exception("peer %s at %s: session failed", self.peer, self.address)
                why = "failed"
            if self.drained:  # the peer asked for it: reconnect now, to its next front
                self.drained = False
                log.debug("peer %s at %s: drained; reconnecting", self.peer, self.address)
                backoff = BACKOFF_MIN
                continue
            if clock.monotonic() - started > STABLE:
                backoff = BACKOFF_MIN  # it worked for a while: reconnect promptly
            log.debug("peer %s at %s: %s; retrying in %.2fs", self.peer, self.address, why, backoff)
            await clock.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        relay = self._relay
        url = f"{'wss' if relay.ssl is not None else 'ws'}://{self.address}/raft"
        headers = {"Authorization": f"Bearer {relay.key}"} if relay.key else {}
        async with relay.clock.timeout(relay.handshake_timeout):
            ws = await relay.http.ws_connect(
                url,
                headers=headers,
                timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT),
                heartbeat=relay.heartbeat,
                autoping=True,
                max_msg_size=MAX_FRAME,
                ssl=relay.ssl if relay.ssl is not None else True,
            )
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read(ws), name=f"peer {self.peer} reader")
        writer = loop.create_task(self._write(ws), name=f"peer {self.peer} writer")
        self.connected = True
        self._expire(relay.clock.monotonic())  # what waited through a long handshake is stale too
        try:
            # The reader ends when the connection does (closed by the peer, or a
            # missed pong); the writer ends only by an error. Either ends the session:
            # a writer stuck on a full socket is cancelled here.
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            self.connected = False
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await ws.close()

    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            frame = self._pop()
            try:
                await ws.send_bytes(frame)
            except (ConnectionError, RuntimeError) as e:
                raise aiohttp.ClientConnectionError(str(e) or type(e).__name__) from e

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                await self._relay.inbound([msg.data])
            elif msg.type == aiohttp.WSMsgType.TEXT and msg.data == DRAIN:
                # The peer's front is stopping (a hand-over): end this session
                # cleanly, so all sent before our close reaches it, and reconnect
                # at once (to its next front).
                self.drained = True
                return

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
        queue_limit: frames queued per peer at most.
        queue_bytes: bytes queued per peer at most (the newest frame is always kept).
        stale_after: seconds a frame may wait for a connection before it is
            dropped (the election timeout).
        handshake_timeout: bound on TCP connect + WebSocket upgrade.
        heartbeat: WebSocket ping interval (a pong must come within half of it).
        overrides: peer id -> the address to dial instead of the one in the
            membership (``--peer-overrides``: NAT, tunnels, fault-injecting proxies).
        ssl: on a TLS node, the context peers are dialed with (``wss://``; it
            verifies their certificate and presents ours under mTLS).
        clock: queue ages, backoffs and the handshake bound run on it (WebSocket
            heartbeats are aiohttp's own and run on the loop).
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        key: str | None,
        inbound: Inbound,
        *,
        queue_limit: int = QUEUE_LIMIT,
        queue_bytes: int = QUEUE_BYTES,
        stale_after: float = STALE_AFTER,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        heartbeat: float = HEARTBEAT,
        overrides: Mapping[str, str] | None = None,
        ssl: ssl_.SSLContext | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.http = http
        self.clock = clock
        self.ssl = ssl
        self.overrides = dict(overrides or {})
        self.key = key
        self.inbound = inbound
        self.queue_limit = queue_limit
        self.queue_bytes = queue_bytes
        self.stale_after = stale_after
        self.handshake_timeout = handshake_timeout
        self.heartbeat = heartbeat
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

    async def close(self, flush: float = 0.0) -> None:
        """Close every link, first giving connected ones up to ``flush`` seconds to
        send what they queued (a front that stops after a hand-over may hold a
        forwarded proposal, which Raft would not send again)."""
        deadline = self.clock.monotonic() + flush
        while self.clock.monotonic() < deadline and any(
            link.queue and link.connected for link in self.links.values()
        ):
            await self.clock.sleep(0.01)
        links = list(self.links.values())
        self.links.clear()
        await asyncio.gather(*(link.close() for link in links))
