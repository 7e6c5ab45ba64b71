"""The fault-injecting proxy on its own: an echo server behind one link, no nodes."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.integration.netproxy import Link, Net, ProxyLoop


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def echo() -> Iterator[int]:
    server = _Server(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def link(echo: int) -> Iterator[Link]:
    loop = ProxyLoop()
    link = Link(loop, echo, name="a->b")
    yield link
    link.close()
    loop.close()


def connect(link: Link) -> socket.socket:
    return socket.create_connection(("127.0.0.1", link.port), timeout=2)


def roundtrip(sock: socket.socket, data: bytes = b"ping") -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    return got


def test_forwards_both_ways_and_counts(link: Link) -> None:
    with connect(link) as s:
        assert roundtrip(s, b"hello" * 1000) == b"hello" * 1000
    stats = link.stats
    assert stats.accepted == 1 and stats.bytes_forward == 5000 and stats.bytes_back == 5000


def test_block_cuts_open_connections_and_refuses_new(link: Link) -> None:
    s = connect(link)
    assert roundtrip(s) == b"ping"
    link.block()
    with pytest.raises(OSError):
        roundtrip(s)  # reset, or EOF reported as ConnectionError
    s.close()
    with connect(link) as s2, pytest.raises(OSError):
        roundtrip(s2)  # accepted by the kernel, then reset by the proxy
    assert link.stats.aborted == 1 and link.stats.refused >= 1
    link.unblock()
    with connect(link) as s3:
        assert roundtrip(s3) == b"ping"


def test_blackhole_holds_bytes_until_it_lifts(link: Link) -> None:
    with connect(link) as s:
        assert roundtrip(s) == b"ping"
        link.blackhole()
        s.sendall(b"held")
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            s.recv(10)
        with connect(link) as fresh:  # a new connection is not answered either
            fresh.settimeout(0.3)
            fresh.sendall(b"x")
            with pytest.raises(TimeoutError):
                fresh.recv(10)
            link.unblock()
            fresh.settimeout(2)
            assert fresh.recv(10) == b"x"
        s.settimeout(2)
        assert s.recv(10) == b"held"
    assert link.stats.stalled == 1


def test_delay_adds_latency_in_order(link: Link) -> None:
    with connect(link) as s:
        roundtrip(s)
        link.delay(150)
        start = time.monotonic()
        s.sendall(b"1")
        s.sendall(b"2")
        got = b""
        while len(got) < 2:
            got += s.recv(10)
        elapsed = time.monotonic() - start
        assert got == b"12"
        assert 0.25 <= elapsed < 2  # 150 ms each way
        link.delay(0)
        start = time.monotonic()
        roundtrip(s)
        assert time.monotonic() - start < 0.2


def test_target_down_is_a_refused_connection() -> None:
    loop = ProxyLoop()
    with socket.socket() as tmp:
        tmp.bind(("127.0.0.1", 0))
        dead_port = tmp.getsockname()[1]
    link = Link(loop, dead_port)
    try:
        with connect(link) as s, pytest.raises(OSError):
            roundtrip(s)
        assert link.stats.refused == 1
    finally:
        link.close()
        loop.close()


def test_net_partitions(echo: int) -> None:
    with Net({"a": echo, "b": echo, "c": echo}) as net:
        assert len(net.links) == 6
        assert net.overrides("a") == (
            f"b={net.link('a', 'b').address},c={net.link('a', 'c').address}"
        )
        net.isolate("a")
        modes = {k: v.mode for k, v in net.links.items()}
        assert modes[("a", "b")] == modes[("b", "a")] == modes[("c", "a")] == "refuse"
        assert modes[("b", "c")] == modes[("c", "b")] == "open"
        net.partition([["a", "b"]])  # c, named in no group, is alone
        modes = {k: v.mode for k, v in net.links.items()}
        assert modes[("a", "b")] == "open" and modes[("a", "c")] == modes[("c", "b")] == "refuse"
        net.heal()
        net.one_way("a", "b")
        assert [k for k, v in net.links.items() if v.mode != "open"] == [("a", "b")]
        net.heal()
        assert all(v.mode == "open" for v in net.links.values())
        with socket.create_connection(("127.0.0.1", net.link("c", "a").port), timeout=2) as s:
            assert roundtrip(s) == b"ping"
