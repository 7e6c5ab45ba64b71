"""The connection gate on a real aiohttp server: the cap, its reserve, the header deadline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from concordance.config import FrontLimits
from concordance.front.gate import ConnectionGate, is_loopback
from concordance.testing.poll import until

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def hello(request: web.Request) -> web.Response:
    return web.Response(text="hello")


@asynccontextmanager
async def serving(gate: ConnectionGate) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, keepalive_timeout=gate.limits.keepalive_timeout)
    await runner.setup()
    assert runner.server is not None
    gate.install(runner.server)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


async def refusal(port: int) -> bytes:
    """What the server says to a connection that sends nothing (a refused one is answered at
    accept; sending first could make the close a reset that discards the answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


async def get(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    try:
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


def test_past_the_cap_only_trusted_hosts_get_in_up_to_the_reserve() -> None:
    limits = FrontLimits(max_client_connections=2, reserved_connections=1, header_timeout=60)
    gate = ConnectionGate(limits, loopback=False)

    async def main() -> None:
        async with serving(gate) as port:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await until(lambda: gate.open == 2)
            refused = await refusal(port)
            assert refused.startswith(b"HTTP/1.1 503 ") and b'"unavailable"' in refused
            assert b"Retry-After: 1" in refused and gate.refused == 1
            gate.trust(["127.0.0.1"])  # as a peer would be
            held.append(await asyncio.open_connection("127.0.0.1", port))
            await until(lambda: gate.open == 3)  # the reserve
            assert (await refusal(port)).startswith(b"HTTP/1.1 503 ")  # the reserve is full too
            for _, writer in held:
                writer.close()
            await until(lambda: gate.open == 0)
            assert (await get(port)).startswith(b"HTTP/1.1 200 ")
            assert gate.refused == 2

    asyncio.run(main())


def test_a_connection_without_complete_headers_in_time_is_closed() -> None:
    gate = ConnectionGate(FrontLimits(header_timeout=0.2), loopback=False)

    async def main() -> None:
        async with serving(gate) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
            async with asyncio.timeout(10):
                assert await reader.read() == b""  # closed by the server
            writer.close()
            assert gate.header_timeouts == 1
            await until(lambda: gate.open == 0)
            # headers in time: served, and not counted as late
            assert (await get(port)).startswith(b"HTTP/1.1 200 ")
            assert gate.header_timeouts == 1

    asyncio.run(main())


def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    gate = ConnectionGate(FrontLimits(keepalive_timeout=0.3), loopback=False)

    async def main() -> None:
        async with serving(gate) as port:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"hello")
                assert head.startswith(b"HTTP/1.1 200 ")
                assert await reader.read() == b""  # then idle: closed
            writer.close()
            assert gate.header_timeouts == 0

    asyncio.run(main())


def test_loopback_and_mapped_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("10.0.0.1") and not is_loopback("") and not is_loopback("host")
    gate = ConnectionGate(FrontLimits(), ["10.0.0.2"])
    assert gate.trusted("::ffff:10.0.0.2") and gate.trusted("127.0.0.1")
    assert not gate.trusted("10.0.0.3")
