"""Watch resumption rules against an in-process ``/stream`` that plays a scripted node.

The script decides what each connection sends; the test checks what the watch
asks for on resubscribing (``sinceRevision``) and what it hands out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from concordance import errors
from concordance.client import Client

Script = Callable[[web.WebSocketResponse, dict[str, Any], int], Awaitable[None]]


def change(key: str, revision: int) -> dict[str, Any]:
    return {"type": "set", "key": key, "value": revision, "version": 1, "revision": revision,
            "timestamp": 0}  # fmt: skip


async def notify(ws: web.WebSocketResponse, *events: dict[str, Any]) -> None:
    await ws.send_json({"jsonrpc": "2.0", "method": "watch/change",
                        "params": {"subscriptionId": 1, "events": list(events)}})  # fmt: skip


async def serve(script: Script, subscribes: list[dict[str, Any]]) -> tuple[web.AppRunner, str]:
    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        msg = await ws.receive()
        assert msg.type is WSMsgType.TEXT
        call = msg.json()
        subscribes.append(call["params"])
        await script(ws, call, len(subscribes))
        await ws.close()
        return ws

    app = web.Application()
    app.router.add_get("/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def reply(call: dict[str, Any], revision: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": call["id"],
            "result": {"subscriptionId": 1, "revision": revision}}  # fmt: skip


def test_a_batch_split_by_a_reconnect_is_completed_without_duplicates() -> None:
    async def script(ws: web.WebSocketResponse, call: dict[str, Any], n: int) -> None:
        await ws.send_json(reply(call, 4))
        if n == 1:  # revision 5 is a batch of a and b; the connection dies after a
            await notify(ws, change("tenant:t/a", 5))
        else:
            await notify(ws, change("tenant:t/a", 5), change("tenant:t/b", 5))
            await notify(ws, change("tenant:t/c", 6))
            await ws.receive()  # stays open until the client closes it

    async def scenario() -> None:
        subscribes: list[dict[str, Any]] = []
        runner, url = await serve(script, subscribes)
        try:
            async with Client(url) as c, c.watch("tenant:t/") as w:
                got = [await asyncio.wait_for(anext(w), 10) for _ in range(3)]
            assert [(x.key, x.revision) for x in got] == [
                ("tenant:t/a", 5), ("tenant:t/b", 5), ("tenant:t/c", 6)]  # fmt: skip
            assert "sinceRevision" not in subscribes[0]
            assert subscribes[1]["sinceRevision"] == 4  # the revision before the split one
            assert w.reconnects == 1 and w.revision == 6
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_a_resubscribe_before_any_change_starts_from_the_first_answer() -> None:
    async def script(ws: web.WebSocketResponse, call: dict[str, Any], n: int) -> None:
        await ws.send_json(reply(call, 40 + n))  # the second node is further ahead
        if n == 2:
            await notify(ws, change("tenant:t/a", 41), change("tenant:t/b", 42))
            await ws.receive()

    async def scenario() -> None:
        subscribes: list[dict[str, Any]] = []
        runner, url = await serve(script, subscribes)
        try:
            async with Client(url) as c, c.watch("tenant:t/") as w:
                first = await asyncio.wait_for(anext(w), 10)
            assert subscribes[1]["sinceRevision"] == 41
            # A change at the start revision is not after it: not delivered, even if sent.
            assert (first.key, first.revision) == ("tenant:t/b", 42)
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_compacted_is_raised_not_retried() -> None:
    async def script(ws: web.WebSocketResponse, call: dict[str, Any], n: int) -> None:
        await ws.send_json(reply(call, 7))
        await ws.send_json({"jsonrpc": "2.0", "method": "watch/cancelled",
                            "params": {"subscriptionId": 1, "reason": "compacted"}})  # fmt: skip
        await ws.receive()

    async def scenario() -> None:
        subscribes: list[dict[str, Any]] = []
        runner, url = await serve(script, subscribes)
        try:
            async with Client(url) as c, c.watch("tenant:t/") as w:
                with pytest.raises(errors.Compacted) as caught:
                    await asyncio.wait_for(anext(w), 10)
            assert caught.value.extra["revision"] == 7 and len(subscribes) == 1
        finally:
            await runner.cleanup()

    asyncio.run(scenario())


def test_a_refused_subscribe_raises_and_closes_its_connection() -> None:
    async def script(ws: web.WebSocketResponse, call: dict[str, Any], n: int) -> None:
        error = {"code": -32602, "message": "bad prefix",
                 "data": {"code": "invalid_key", "message": "bad prefix"}}  # fmt: skip
        await ws.send_json({"jsonrpc": "2.0", "id": call["id"], "error": error})
        await ws.receive()

    async def scenario() -> None:
        subscribes: list[dict[str, Any]] = []
        runner, url = await serve(script, subscribes)
        try:
            async with Client(url) as c:
                watch = c.watch("tenant:t/")
                with pytest.raises(errors.InvalidKey, match="bad prefix"):
                    await watch.start()
                assert watch._ws is not None and watch._ws.closed  # not left for the GC
            assert len(subscribes) == 1
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
