"""The outgoing peer relay under faults: byte-bounded queues, stale frames,
handshake timeouts, heartbeats, and one bad peer never holding up the others.

Peers here are small local servers: a ``Recorder`` (an aiohttp ``/raft``
that records frames, or refuses the upgrade while ``down``) and a
``SilentPeer`` (plain asyncio: accepts TCP and reads the request, then never
writes; with ``upgrade=True`` it completes the WebSocket handshake first and
then neither reads nor answers pings). Waits are polls with generous bounds,
never tight timing asserts; frame ages run on a manual clock.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from concordance import wire
from concordance.front import peers
from concordance.front.relay import PeerRelay
from concordance.testing.clock import ManualClock
from tests.unit.front.fakes import PEER, harness

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455
DEAD = "127.0.0.1:9"  # discard port: nothing listens


async def until(pred: Callable[[], bool], what: str, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def ignore(frames: Any) -> None:
    pass


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


class Recorder:
    """A healthy peer's ``/raft``: records binary frames; refuses the upgrade while ``down``."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.down = False
        self.refused = 0
        app = web.Application()
        app.router.add_get("/raft", self._raft)
        self.server = TestServer(app)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def _raft(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            self.refused += 1
            raise web.HTTPServiceUnavailable()
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.frames.append(msg.data)
        return ws


@asynccontextmanager
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    await rec.server.start_server()
    try:
        yield rec
    finally:
        await rec.server.close()


class SilentPeer:
    """Accepts TCP and reads the request, then never writes (``upgrade``: after a 101)."""

    def __init__(self, upgrade: bool) -> None:
        self.upgrade = upgrade
        self.requests: list[bytes] = []
        self.accepted = 0
        self.address = ""
        self._writers: list[asyncio.StreamWriter] = []
        self._stop = asyncio.Event()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        if self.upgrade:
            found = re.search(rb"(?im)^sec-websocket-key:\s*(\S+)", head)
            assert found is not None
            accept = base64.b64encode(hashlib.sha1(found.group(1) + WS_GUID).digest())
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
        await self._stop.wait()  # reads nothing more: no pongs, and its socket fills up

    def abort(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._stop.set()


@asynccontextmanager
async def silent_peer(*, upgrade: bool = False) -> AsyncIterator[SilentPeer]:
    peer = SilentPeer(upgrade)
    server = await asyncio.start_server(peer._handle, "127.0.0.1", 0)
    peer.address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield peer
    finally:
        server.close()
        peer.abort()
        await server.wait_closed()


# -- queue bounds ------------------------------------------------------------------


def test_the_queue_is_bounded_by_bytes_dropping_the_oldest_first() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            relay = PeerRelay(http, None, ignore, queue_limit=100, queue_bytes=100)
            relay.send(wire.RaftOut("n9", DEAD, tuple(b"%d" % i * 40 for i in range(4))))
            link = relay.links["n9"]
            assert list(link.queue) == [b"2" * 40, b"3" * 40]
            assert link.queued_bytes == 80 and link.dropped_full == 2
            relay.send(wire.RaftOut("n9", DEAD, (b"x" * 30,)))  # 110 > 100: "2"s go
            assert list(link.queue) == [b"3" * 40, b"x" * 30] and link.dropped_full == 3
            relay.send(wire.RaftOut("n9", DEAD, (b"big" * 100,)))  # alone over the bound: kept
            assert list(link.queue) == [b"big" * 100] and link.queued_bytes == 300
            assert link.dropped == link.dropped_full == 5 and link.dropped_stale == 0
            await relay.close()

    run(main)


def test_drops_are_counted_per_peer_and_reason_in_metrics(tmp_path: Path) -> None:
    async def main() -> None:
        # election timeout 20 ms x 5 = 0.1 s: frames older than that are stale
        clock = ManualClock()
        async with harness(tmp_path, tick_ms=20, election_ticks=5, timers=clock) as h:
            assert h.node.raft_out is not None
            mib = b"m" * (1 << 20)
            h.node.raft_out(wire.RaftOut("n3", DEAD, (mib,) * 9))  # 9 MiB: the oldest goes
            await clock.advance(0.3)
            h.node.raft_out(wire.RaftOut("n3", DEAD, (b"fresh",)))  # the 8 MiB are stale now
            async with h.client.get("/metrics") as resp:
                text = await resp.text()
            assert 'concordance_peer_frames_dropped_total{peer="n3",reason="full"} 1' in text
            assert 'concordance_peer_frames_dropped_total{peer="n3",reason="stale"} 8' in text
            assert re.search(r'^concordance_peer_queue_bytes\{peer="n3"\} [05]$', text, re.M)

    run(main)


# -- stale frames --------------------------------------------------------------------


def test_frames_queued_through_a_long_outage_are_dropped_not_replayed() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http, recorder() as peer:
            relay = PeerRelay(http, None, ignore, stale_after=0.2)
            peer.down = True
            relay.send(wire.RaftOut("n2", peer.address, (b"old1", b"old2")))
            link = relay.links["n2"]
            await until(lambda: peer.refused >= 1, "a refused attempt")
            await until(lambda: link.dropped_stale == 2, "the stale frames to go")
            assert not link.queue and link.queued_bytes == 0
            peer.down = False
            relay.send(wire.RaftOut("n2", peer.address, (b"new1", b"new2")))
            await until(lambda: len(peer.frames) == 2, "the fresh frames")
            assert peer.frames == [b"new1", b"new2"] and link.connected
            await relay.close()

    run(main)


def test_frames_queued_during_a_short_outage_are_delivered_in_order() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http, recorder() as peer:
            relay = PeerRelay(http, None, ignore, stale_after=30.0)
            peer.down = True
            relay.send(wire.RaftOut("n2", peer.address, (b"a", b"b")))
            await until(lambda: peer.refused >= 1, "a refused attempt")
            peer.down = False
            relay.send(wire.RaftOut("n2", peer.address, (b"c",)))
            await until(lambda: len(peer.frames) == 3, "all frames")
            assert peer.frames == [b"a", b"b", b"c"] and relay.links["n2"].dropped == 0
            await relay.close()

    run(main)


# -- timeouts and heartbeats ---------------------------------------------------------


def test_the_handshake_times_out_when_a_peer_accepts_tcp_but_never_answers() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http, silent_peer() as peer:
            relay = PeerRelay(http, PEER, ignore, handshake_timeout=0.2)
            relay.send(wire.RaftOut("n2", peer.address, (b"f",)))
            # a second connection means the first handshake was given up
            await until(lambda: peer.accepted >= 2, "a retry after the handshake timeout")
            assert peer.requests[0].startswith(b"GET /raft HTTP/1.1\r\n")
            assert f"Bearer {PEER}".encode() in peer.requests[0]
            assert not relay.links["n2"].connected
            await relay.close()

    run(main)


def test_the_heartbeat_detects_a_silent_peer_and_the_link_reconnects() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http, silent_peer(upgrade=True) as peer:
            relay = PeerRelay(http, None, ignore, heartbeat=0.2)
            relay.send(wire.RaftOut("n2", peer.address, (b"f1",)))
            link = relay.links["n2"]
            await until(lambda: link.connected, "the upgrade")
            await until(lambda: not link.connected, "the missed pong to close the link")
            relay.send(wire.RaftOut("n2", peer.address, (b"f2",)))
            await until(lambda: peer.accepted == 2, "a new connection")
            await relay.close()

    run(main)


def test_the_raft_handler_closes_a_peer_that_stops_answering_pings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peers, "HEARTBEAT", 0.2)

    async def main() -> None:
        async with harness(tmp_path) as h:
            port = h.client.server.port
            assert port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            key = base64.b64encode(b"0123456789abcdef")
            writer.write(
                b"GET /raft HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n"
                b"Authorization: Bearer " + PEER.encode() + b"\r\n\r\n"
            )
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            async with asyncio.timeout(3.0):
                rest = await reader.read()  # until the server gives up on us
            assert rest.startswith(b"\x89")  # it pinged (and got no pong)
            writer.close()

    run(main)


def test_a_writer_stuck_on_a_full_socket_is_released_when_the_heartbeat_fails() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http, silent_peer(upgrade=True) as stalled:
            relay = PeerRelay(http, None, ignore, queue_bytes=64 << 20, heartbeat=0.2)
            relay.send(wire.RaftOut("n2", stalled.address, (b"\xa5" * (1 << 20),) * 32))
            link = relay.links["n2"]
            await until(lambda: link.connected, "the upgrade")
            # the writer blocks on the full socket; the missed pong must end the
            # session anyway, and the frames still queued bring a new connection
            await until(lambda: stalled.accepted >= 2, "a reconnection")
            assert link.queue
            stalled.abort()
            await relay.close()

    run(main)


# -- isolation -------------------------------------------------------------------------


def test_a_dead_or_stalled_peer_does_not_delay_frames_to_a_healthy_one() -> None:
    async def main() -> None:
        async with (
            aiohttp.ClientSession() as http,
            recorder() as healthy,
            silent_peer() as hung,  # the handshake never completes
            silent_peer(upgrade=True) as stalled,  # connected, but reads nothing
        ):
            # timeouts far beyond the test: the bad links stay stuck throughout
            relay = PeerRelay(
                http, None, ignore, queue_bytes=64 << 20, handshake_timeout=60, heartbeat=60
            )
            chunk = b"\xa5" * (1 << 20)
            relay.send(wire.RaftOut("hung", hung.address, (b"h",)))
            relay.send(wire.RaftOut("stalled", stalled.address, (chunk,) * 32))
            link = relay.links["stalled"]
            await until(lambda: link.connected and hung.accepted == 1, "both bad links to connect")
            # The writer is under way on 32 MiB that the peer never reads: it blocks on the
            # full socket and stays blocked (the last assert shows it still holds frames).
            await until(lambda: len(link.queue) < 32, "the stalled writer to start")
            frames = tuple(b"f%d" % i for i in range(100))
            relay.send(wire.RaftOut("n2", healthy.address, frames))
            await until(lambda: len(healthy.frames) == 100, "the healthy peer's frames")
            assert healthy.frames == list(frames)
            # the stalled link is still stuck on its socket, still holding frames
            assert link.connected and link.queue and not relay.links["hung"].connected
            stalled.abort()  # so that closing the link needs no close timeout
            hung.abort()
            await relay.close()

    run(main)
