"""The hot routes outside aiohttp: the same answers as aiohttp's, over raw connections.

The same requests go to a front served through the hot path and to one served
by aiohttp alone (``hot_routes=False``), each on its own fake roles given the
same writes; status, body and headers must agree (``Date`` aside). Then what
only the hot path has: the switch to aiohttp mid-connection, pipelining, the gate's
count, keep-alive, ``Connection: close``, a client that goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl as ssl_
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from concordance.config import FrontLimits
from concordance.front.app_state import GATE, METRICS
from concordance.front.hot_path import HotConnection, HotPath
from concordance.testing.poll import until
from tests.integration.certs import CA
from tests.unit.front.fakes import AGENT, FULL, FrontTestServer, Harness, harness

Response = tuple[int, dict[str, str], bytes]


@dataclass
class Counts:
    served: int
    to_aiohttp: int


def hot_of(h: Harness) -> Counts:
    """What the front's hot path served and gave to aiohttp (its /metrics counters)."""
    server = h.client.server
    assert isinstance(server, FrontTestServer) and server.site is not None
    assert isinstance(server.site.hot, HotPath)
    metrics = h.app[METRICS]
    return Counts(metrics.hot_requests, metrics.to_aiohttp)


def req(
    method: str, target: str, body: bytes = b"", *, key: str | None = FULL, **hdr: str
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: t"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in hdr.items()]
    if body or method == "PUT":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def put(key: str, value: Any, **fields: Any) -> bytes:
    return req("PUT", f"/api/v1/kv/{key}", json.dumps({"value": value, **fields}).encode())


class Conn:
    """One raw client connection: send bytes, read whole responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> Response:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status_line, *lines = head.decode().split("\r\n")[:-2]
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body

    async def ask(self, data: bytes) -> Response:
        await self.send(data)
        return await self.response()

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(), 10) == b""


@contextlib.asynccontextmanager
async def conn(h: Harness, ssl: ssl_.SSLContext | None = None) -> AsyncIterator[Conn]:
    reader, writer = await asyncio.open_connection("127.0.0.1", h.client.server.port, ssl=ssl)
    try:
        yield Conn(reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


K = "tenant:acme/settings/theme"
batch_ops = [
    {"op": "set", "key": "tenant:acme/b1", "value": [1]},
    {"op": "set", "key": "tenant:acme/b2", "value": {"x": None}, "ifVersion": 0},
]
# Each request, in order, on one connection per front (the switch to aiohttp ends the hot
# path for that connection, so those cases come last).
CORPUS: list[bytes] = [
    put(K, {"mode": "dark"}),
    put(K, 2, ifVersion=1),
    put(K, 3, ifVersion=1),  # 409 version_conflict
    put(K, 4, ttlMs=-1),  # 400
    req("PUT", f"/api/v1/kv/{K}", b"{not json"),
    req("PUT", f"/api/v1/kv/{K}", b"[1]"),
    req("PUT", f"/api/v1/kv/{K}", b""),
    put("no-tenant/k", 1),  # invalid key
    put("tenant:x/" + "k" * 600, 1),  # key too long
    put(K, 5).replace(FULL.encode(), b"wrong-key"),
    put(K, 5).replace(FULL.encode(), AGENT.encode()),  # 403 read-only
    req("PUT", f"/api/v1/kv/{K}", json.dumps({"value": 1}).encode(), key=None),
    req("GET", f"/api/v1/kv/{K}"),
    req("GET", f"/api/v1/kv/{K}", key=AGENT),
    req("GET", f"/api/v1/kv/{K}?consistent=true"),
    req("GET", f"/api/v1/kv/{K}?consistent=maybe"),
    req("GET", f"/api/v1/kv/{K}?consistent=true&consistent=false"),
    req("GET", "/api/v1/kv/tenant:acme/none"),
    put("tenant:acme/k-._~:@!$*,=()'1", {"chars": True}),
    req("GET", "/api/v1/kv/tenant:acme/k-._~:@!$*,=()'1"),
    req("DELETE", f"/api/v1/kv/{K}?ifVersion=1"),
    req("DELETE", f"/api/v1/kv/{K}?ifVersion=x"),
    req("DELETE", f"/api/v1/kv/{K}"),
    req("DELETE", f"/api/v1/kv/{K}"),
    req("DELETE", "/api/v1/kv/tenant:acme/k-._~:@!$*,=()'1", key=AGENT),
    req("POST", "/api/v1/batch", json.dumps({"ops": batch_ops}).encode()),
    req("POST", "/api/v1/batch", json.dumps({"ops": batch_ops}).encode()),  # 409 at index 1
    req("POST", "/api/v1/batch", b'{"ops": 3}'),
    req("POST", "/api/v1/batch", b"[", key=AGENT),  # 403 before the body is looked at
    req("POST", "/api/v1/batch", b"", key="wrong-key"),
    req("GET", "/api/v1/kv/tenant:acme/b1"),
    req("GET", "/api/v1/kv?prefix=tenant:acme/"),  # aiohttp's, from here on
    put("tenant:acme/after", 1),
    req("GET", "/api/v1/kv/tenant:acme%2Fafter"),
]


async def corpus_answers(tmp: Path, *, hot_routes: bool) -> list[Response]:
    async with harness(tmp, hot_routes=hot_routes) as h, conn(h) as c:
        h.clock.now = 1_764_230_400_000
        answers = [await c.ask(data) for data in CORPUS]
        if hot_routes:
            assert (hot_of(h).served, hot_of(h).to_aiohttp) == (len(CORPUS) - 3, 1)
        return answers


def test_the_hot_path_answers_every_request_as_aiohttp_does(tmp_path: Path) -> None:
    async def main() -> None:
        hot = await corpus_answers(tmp_path / "hot", hot_routes=True)
        plain = await corpus_answers(tmp_path / "plain", hot_routes=False)
        for data, ours, theirs in zip(CORPUS, hot, plain, strict=True):
            (s1, h1, b1), (s2, h2, b2) = ours, theirs
            assert (s1, json.loads(b1)) == (s2, json.loads(b2)), data
            for name in ("content-type", "retry-after", "allow", "connection"):
                assert h1.get(name) == h2.get(name), (name, data)
            assert "date" in h1
        statuses = {status for status, _, _ in hot}
        assert {200, 400, 401, 403, 404, 409} <= statuses

    (tmp_path / "hot").mkdir()
    (tmp_path / "plain").mkdir()
    asyncio.run(main())


async def unavailable_answers(tmp: Path, *, hot_routes: bool) -> list[Response]:
    async with harness(tmp, hot_routes=hot_routes) as h, conn(h) as c:
        h.node.knobs.storage_down = True
        return [await c.ask(req("GET", f"/api/v1/kv/{K}"))]


def test_role_failures_are_answered_as_aiohttp_answers_them(tmp_path: Path) -> None:
    async def main() -> None:
        hot = await unavailable_answers(tmp_path / "hot", hot_routes=True)
        plain = await unavailable_answers(tmp_path / "plain", hot_routes=False)
        for (s1, h1, b1), (s2, h2, b2) in zip(hot, plain, strict=True):
            assert (s1, h1["retry-after"], json.loads(b1)) == (503, "1", json.loads(b2))
            assert (s2, h2["retry-after"]) == (503, "1")

    (tmp_path / "hot").mkdir()
    (tmp_path / "plain").mkdir()
    asyncio.run(main())


def test_pipelined_requests_are_answered_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h, conn(h) as c:
            await c.send(b"".join(put(f"tenant:p/k{i}", i) for i in range(20)))
            answers = [await c.response() for _ in range(20)]
            assert [json.loads(body)["key"] for _, _, body in answers] == [
                f"tenant:p/k{i}" for i in range(20)
            ]
            assert hot_of(h).served == 20

    asyncio.run(main())


def test_a_give_to_aiohttp_takes_the_requests_buffered_behind_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h, conn(h) as c:
            await c.send(
                put("tenant:p/a", 1)
                + req("GET", "/api/v1/kv?prefix=tenant:p/")
                + put("tenant:p/b", 2)
                + req("GET", "/api/v1/kv/tenant:p/b")
            )
            answers = [await c.response() for _ in range(4)]
            assert [status for status, _, _ in answers] == [200, 200, 200, 200]
            assert [e["key"] for e in json.loads(answers[1][2])["entries"]] == ["tenant:p/a"]
            assert json.loads(answers[3][2])["value"] == 2
            assert (hot_of(h).served, hot_of(h).to_aiohttp) == (1, 1)

    asyncio.run(main())


def test_the_gate_counts_a_connection_once_whoever_serves_it(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            gate = h.app[GATE]
            async with conn(h) as c:
                assert (await c.ask(put("tenant:g/a", 1)))[0] == 200
                assert gate.open == 1
                assert (await c.ask(req("GET", "/healthz", key=None)))[0] == 200  # to aiohttp
                assert gate.open == 1
                assert (await c.ask(put("tenant:g/a", 2)))[0] == 200
            await until(lambda: gate.open == 0, "the closed connection uncounted")

    asyncio.run(main())


def test_the_gate_refuses_a_hot_connection_past_the_cap(tmp_path: Path) -> None:
    async def main() -> None:
        limits = FrontLimits(max_client_connections=1, reserved_connections=0)
        async with harness(tmp_path, limits=limits) as h:
            h.app[GATE].loopback = False  # the test's client is not trusted
            async with conn(h) as first, conn(h) as second:
                assert (await first.ask(put("tenant:g/a", 1)))[0] == 200
                status, headers, _ = await second.response()  # said at accept, unasked
                assert (status, headers["retry-after"]) == (503, "1")
                assert await second.closed()

    asyncio.run(main())


def test_connection_close_is_honoured(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h, conn(h) as c:
            status, headers, _ = await c.ask(req("GET", f"/api/v1/kv/{K}", Connection="close"))
            assert (status, headers["connection"]) == (404, "close")
            assert await c.closed()

    asyncio.run(main())


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path, limits=FrontLimits(keepalive_timeout=0.2)) as h, conn(h) as c:
            assert (await c.ask(put("tenant:i/a", 1)))[0] == 200
            assert await c.closed()

    asyncio.run(main())


def test_a_write_whose_client_went_away_is_still_applied(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            h.node.knobs.hold = True
            async with conn(h) as c:
                await c.send(put("tenant:gone/a", 1))
                await until(lambda: h.node.knobs.proposed, "the write proposed")
            h.node.release()
            status, body = await h.call("GET", "/api/v1/kv/tenant:gone/a")
            assert (status, body["value"]) == (200, 1)
            await until(
                lambda: any("kv/{key}" in str(k) for k in h.app[METRICS]._requests),
                "the write's request counted",
            )

    asyncio.run(main())


@pytest.mark.parametrize("split", [1, 7, 30])
def test_a_request_arriving_in_pieces_is_served_once_whole(tmp_path: Path, split: int) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h, conn(h) as c:
            data = put("tenant:s/a", "x" * 100)
            for i in range(0, len(data), split):
                await c.send(data[i : i + split])
                await asyncio.sleep(0)
            status, _, body = await c.response()
            assert (status, json.loads(body)["value"]) == (200, "x" * 100)

    asyncio.run(main())


def test_over_tls_hot_requests_and_a_give_to_aiohttp_share_one_connection(tmp_path: Path) -> None:
    ca = CA(tmp_path / "ca")
    leaf = ca.issue("n1")
    tls = {"tls_cert": str(leaf.cert), "tls_key": str(leaf.key)}

    async def main() -> None:
        async with harness(tmp_path, **tls) as h, conn(h, ca.client_context()) as c:
            assert (await c.ask(put("tenant:t/a", 1)))[0] == 200
            status, _, body = await c.ask(req("GET", "/healthz", key=None))  # aiohttp's
            assert (status, json.loads(body)) == (200, {"ok": True})
            status, _, body = await c.ask(req("GET", "/api/v1/kv/tenant:t/a"))
            assert (status, json.loads(body)["value"]) == (200, 1)
            assert (hot_of(h).served, hot_of(h).to_aiohttp) == (1, 1)

    asyncio.run(main())


def test_while_the_client_reads_slowly_the_next_request_waits(tmp_path: Path) -> None:
    """The transport's flow control (``pause_writing``) holds the next pipelined request
    until the answer before it has drained; answers stay whole and in order."""

    async def main() -> None:
        async with harness(tmp_path) as h, conn(h) as c:
            assert (await c.ask(put("tenant:w/a", 1)))[0] == 200
            runner = h.client.server.runner
            assert runner is not None and runner.server is not None
            (ours,) = runner.server.connections
            assert isinstance(ours, HotConnection)
            served = hot_of(h).served
            ours.pause_writing()  # what the transport says past its high-water mark
            status, _, body = await c.ask(put("tenant:w/b", 2))  # written, not yet drained
            assert (status, json.loads(body)["key"]) == (200, "tenant:w/b")
            await c.send(put("tenant:w/c", 3))
            await h.settle()  # loop turns enough for the third to be read, were it read
            assert hot_of(h).served == served + 1  # it waits for the drain
            ours.resume_writing()
            status, _, body = await c.response()
            assert (status, json.loads(body)["key"]) == (200, "tenant:w/c")

    asyncio.run(main())


def test_metrics_count_hot_requests_and_connections_given_to_aiohttp(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h, conn(h) as c:
            assert (await c.ask(put("tenant:m/a", 1)))[0] == 200
            status, _, body = await c.ask(req("GET", "/metrics", key=None))
            lines = body.decode().splitlines()
            assert status == 200
            assert "concordance_http_hot_requests_total 1" in lines
            assert "concordance_http_connections_to_aiohttp_total 1" in lines
            route = 'route="/api/v1/kv/{key}",method="PUT",status="200"'
            assert f"concordance_http_requests_total{{{route}}} 1" in lines

    asyncio.run(main())
