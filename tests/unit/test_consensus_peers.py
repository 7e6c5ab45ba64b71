"""consensus's peer links for real: the front's accept loop, the fd hand-over, TLS, refusals.

Each side is what a node runs: an aiohttp runner behind the front's
``SortingSite`` on a loopback port, an ``FdReceiver`` in place of consensus's
socket, and a ``PeerNet``. Waits poll against a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509

from concordance.config import NodeConfig
from concordance.consensus import peers
from concordance.consensus.peers import PeerNet
from concordance.front.accept import SortingSite
from concordance.ipc import fdpass
from concordance.protocol import peerwire
from concordance.security.tls import TlsContexts
from concordance.testing.poll import until, until_answered
from tests.integration.certs import CA, Leaf

pytestmark = pytest.mark.slow


@dataclass
class Side:
    net: PeerNet
    address: str
    site: SortingSite
    receiver: fdpass.FdReceiver
    got: list[bytes] = field(default_factory=list)


def _tls(tmp: Path, leaf: Leaf, ca: Path, peer_ca: Path | None = None) -> NodeConfig:
    return NodeConfig(
        "x",
        "127.0.0.1:1",
        str(tmp),
        insecure=True,
        tls_cert=str(leaf.cert),
        tls_key=str(leaf.key),
        tls_client_ca=str(ca),
        tls_peer_ca=str(peer_ca or ca),
    )


@contextlib.asynccontextmanager
async def side(node_id: str, key: str | None, tls: NodeConfig | None = None) -> AsyncIterator[Side]:
    with tempfile.TemporaryDirectory(prefix="cc-", dir="/tmp") as d:
        got: list[bytes] = []
        peer_tls = TlsContexts(tls, alpn=peerwire.ALPN) if tls else None
        net = PeerNet(
            node_id,
            key,
            got.append,
            stale_after=5.0,
            tls=peer_tls,
        )
        receiver = fdpass.FdReceiver(fdpass.socket_path(d), net.accept)
        app = web.Application()

        async def ping(request: web.Request) -> web.Response:
            return web.Response(text="pong")

        app.router.add_get("/ping", ping)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        port = sock.getsockname()[1]
        front_tls = TlsContexts(tls).server if tls else None
        site = SortingSite(
            runner, sock, fdpass.FdSender(fdpass.socket_path(d)), ssl_context=front_tls
        )
        await site.start()
        s = Side(net, f"127.0.0.1:{port}", site, receiver, got)
        try:
            yield s
        finally:
            await net.close()
            s.receiver.close()
            await runner.cleanup()


def test_frames_cross_in_order_answers_come_back_and_http_shares_the_port() -> None:
    async def main() -> None:
        async with side("n1", "k") as a, side("n2", "k") as b:
            a.net.send("n2", b.address, [b"f0", b"f1"])
            a.net.send("n2", b.address, [b"f2"])
            await until(lambda: len(b.got) == 3, "three frames at n2")
            assert b.got == [b"f0", b"f1", b"f2"]
            assert a.net.counters()[0].connected
            # n2 knows no address for n1 (a joiner): it answers on n1's connection
            b.net.send("n1", "", [b"back"])
            await until(lambda: a.got, "the answer at n1")
            assert a.got == [b"back"] and b.net.unroutable == 0
            b.net.send("n9", "", [b"nowhere"])
            assert b.net.unroutable == 1
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://{b.address}/ping") as resp,
            ):
                assert resp.status == 200 and await resp.text() == "pong"
            assert b.site.handed_over == 1  # the peer connection only

    asyncio.run(main())


@pytest.mark.parametrize(
    ("dialler_key", "to", "why"), [("wrong", "n2", "key"), ("k", "n3", "another node")]
)
def test_a_wrong_key_or_node_is_refused_before_any_frame(
    dialler_key: str, to: str, why: str
) -> None:
    async def main() -> None:
        async with side("n1", dialler_key) as a, side("n2", "k") as b:
            a.net.send(to, b.address, [b"must not arrive"])
            await until(lambda: b.net.refused >= 1, f"a refusal ({why})")
            assert b.got == [] and not a.net.counters()[0].connected

    asyncio.run(main())


def test_a_connection_that_is_not_a_peer_link_is_never_handed_over() -> None:
    async def main() -> None:
        async with side("n2", "k") as b:
            host, port = b.address.split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"\x00CCRAFT9 not quite")  # starts like the preface
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 10)  # aiohttp's 400, then EOF
            writer.close()
            assert b.site.handed_over == 0 and b.got == []

    asyncio.run(main())


def test_mutual_tls_links_and_a_peer_from_another_ca_is_refused(tmp_path: Path) -> None:
    ca, rogue = CA(tmp_path / "ca"), CA(tmp_path / "rogue", "rogue-ca")
    cfg1 = _tls(tmp_path, ca.issue("n1"), ca.cert)
    cfg2 = _tls(tmp_path, ca.issue("n2"), ca.cert)
    # trusts the cluster's CA, presents a rogue certificate
    cfg9 = _tls(tmp_path, rogue.issue("n9"), rogue.cert, peer_ca=ca.cert)

    async def main() -> None:
        async with side("n1", "k", cfg1) as a, side("n2", "k", cfg2) as b:
            a.net.send("n2", b.address, [b"over tls"])
            await until(lambda: b.got, "a frame over TLS")
            assert b.got == [b"over tls"] and b.site.handed_over == 1
            async with side("n9", "k", cfg9) as bad:
                bad.net.send("n2", b.address, [b"rogue"])
                await until(lambda: b.net.refused >= 1, "the rogue peer refused")
            assert b.got == [b"over tls"]
            # HTTPS on the same port is the front's, with its own client CA
            ctx = ca.client_context(ca.issue("client"))
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"https://{b.address}/ping", ssl=ctx) as resp,
            ):
                assert resp.status == 200

    asyncio.run(main())


def test_a_plain_peer_on_a_tls_port_is_not_handed_over(tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    cfg2 = _tls(tmp_path, ca.issue("n2"), ca.cert)

    async def main() -> None:
        async with side("n2", "k", cfg2) as b:
            host, port = b.address.split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(peerwire.encode_hello(peerwire.Hello("n1", "n2", "k")))
            await writer.drain()
            with contextlib.suppress(ConnectionError):
                assert await asyncio.wait_for(reader.read(), 10) == b""  # TLS server: closed
            writer.close()
            assert b.got == [] and b.site.handed_over == 0

    asyncio.run(main())


def test_a_full_queue_drops_the_oldest_frames_and_a_moved_peer_gets_a_new_link() -> None:
    async def main() -> None:
        net = PeerNet("n1", None, lambda f: None, stale_after=5.0, queue_limit=3)
        net.send("n9", "127.0.0.1:9", [b"%d" % i for i in range(5)])  # nothing listens there
        link = net.links["n9"]
        assert list(link.queue) == [b"2", b"3", b"4"] and link.dropped_full == 2
        net.send("n9", "127.0.0.1:10", [b"x"])
        assert net.links["n9"] is not link and list(net.links["n9"].queue) == [b"x"]
        await net.close()

    asyncio.run(main())


async def _served_serial(address: str, ctx: ssl.SSLContext) -> int:
    """The serial of the certificate a peer link's TLS handshake at ``address`` shows."""
    host, port = address.split(":")
    _, writer = await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=host)
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    return x509.load_der_x509_certificate(der).serial_number


def test_a_renewed_certificate_reaches_the_peer_links_without_a_signal(tmp_path: Path) -> None:
    """The front's SIGHUP (API.md §1) does not reach consensus: it follows the files."""
    ca = CA(tmp_path / "ca")
    first = ca.issue("n2")
    cfg2 = _tls(tmp_path, first, ca.cert)
    ctx = ca.client_context(ca.issue("n1"))
    ctx.set_alpn_protocols([peerwire.ALPN])

    async def main() -> None:
        async with side("n2", "k", cfg2) as b:
            assert await _served_serial(b.address, ctx) == first.serial
            renewed = ca.issue("n2")
            await until_answered(
                lambda: _served_serial(b.address, ctx),
                lambda serial: serial == renewed.serial,
                "the renewed certificate served",
            )

    asyncio.run(main())


def test_a_drain_ends_incoming_links_after_their_last_frame_and_refuses_new_ones() -> None:
    """A planned stop of consensus: the dialler stops sending, closes its side after
    what it wrote (all of it delivered), keeps the rest queued for the successor."""

    async def main() -> None:
        async with side("n1", "k") as a, side("n2", "k") as b:
            a.net.send("n2", b.address, [b"f0"])
            await until(lambda: b.got == [b"f0"], "the first frame")
            assert not b.net.drained()  # n1's link is open
            b.net.drain()
            a.net.send("n2", b.address, [b"f1"])  # may cross the drain on the wire
            await until(b.net.drained, "n1's link closed after the drain")
            a.net.send("n2", b.address, [b"later"])
            await until(lambda: a.net.links["n2"].queue, "a frame kept for the successor")
            queue = a.net.links["n2"].queue
            # f1 went out before n1 read the drain (then n2 read it before n1's close),
            # or it waits for the successor: never lost
            assert (b"f1" in b.got) != (b"f1" in queue)
            assert b"later" in queue and b"later" not in b.got

    asyncio.run(main())


def test_a_peer_that_comes_back_is_dialled_at_once_not_after_the_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While n2's consensus is down its front closes every peer connection and n1's
    link backs off; when n2's consensus starts it dials its peers, and n1 takes
    that as the sign to dial back now (with a backoff of a minute here, it would
    otherwise never get through within the test)."""
    monkeypatch.setattr(peers, "BACKOFF_MIN", 60.0)
    monkeypatch.setattr(peers, "BACKOFF_MAX", 60.0)

    async def main() -> None:
        async with side("n1", "k") as a, side("n2", "k") as b:
            b.receiver.close()  # n2's consensus is down
            a.net.send("n2", b.address, [b"for the successor"])
            await until(lambda: b.site._handoff.failed, "n2's front turning n1 away")
            b.receiver = fdpass.FdReceiver(b.receiver.path, b.net.accept)  # back up
            b.net.dial({"n1": a.address, "n2": b.address})
            await until(lambda: b.got, "the frame, once n1 dialled back")
            assert b.got == [b"for the successor"]

    asyncio.run(main())


def test_a_peer_gone_silent_is_cut_and_keepalives_flow_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer that answered the hello and then says nothing (a dead host, a black
    hole) is cut after ``PEER_DEAD_AFTER``; until then we send keepalives on an idle link."""
    monkeypatch.setattr(peers, "PEER_KEEPALIVE", 0.05)
    monkeypatch.setattr(peers, "PEER_DEAD_AFTER", 0.5)

    async def main() -> None:
        received = bytearray()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            frames = peerwire.FrameReader()
            frames.expect_preface()
            while not frames.feed(await reader.read(4096)):
                pass
            writer.write(peerwire.encode_welcome("n2"))
            try:
                while data := await reader.read(4096):  # and never a byte back
                    received.extend(data)
            finally:
                writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        net = PeerNet("n1", "k", lambda f: None, stale_after=5.0)
        try:
            net.send("n2", f"127.0.0.1:{port}", [b"one"])
            await until(lambda: net.counters()[0].connected, "the link up")
            await until(lambda: peerwire.KEEPALIVE in bytes(received), "a keepalive")
            await until(lambda: not net.counters()[0].connected, "the silent peer cut")
        finally:
            await net.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
