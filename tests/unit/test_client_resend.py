"""The client sends a write once: a connection that breaks before the answer is an unknown
outcome, never a silent resend (found by the chaos harness, tests/chaos).

aiohttp resends a request with an idempotent HTTP method (GET, PUT, DELETE) once when its
connection breaks (RFC 9112 §9.3.1). A Concordance PUT is not idempotent in effect: each
one makes a new version, so a resend whose first copy applied writes twice, and a CAS
resent after it applied answers ``version_conflict`` for a write that succeeded.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from concordance.client import Client, OutcomeUnknown

ENTRY = {"key": "tenant:t/k", "value": 1, "version": 1, "revision": 1, "createdAt": 0,
         "updatedAt": 0, "expiresAt": None}  # fmt: skip


async def _server(calls: list[str]) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        await request.read()
        calls.append(request.method)
        if len(calls) == 1:  # the node dies after taking the request: no answer
            assert request.transport is not None
            request.transport.abort()  # what is answered below is never delivered
        return web.json_response(ENTRY)

    app = web.Application()
    app.router.add_route("*", "/api/v1/kv/{key:.+}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("method", ["put", "delete"])
def test_a_write_whose_connection_breaks_is_not_sent_again(method: str) -> None:
    async def scenario() -> None:
        calls: list[str] = []
        runner, url = await _server(calls)
        try:
            async with Client(url, retries=3, timeout_s=5) as client:
                call: Any = (
                    client.put("tenant:t/k", 1) if method == "put" else client.delete("tenant:t/k")
                )
                with pytest.raises(OutcomeUnknown):
                    await call
            assert calls == [method.upper()], f"sent {len(calls)} times: {calls}"
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
