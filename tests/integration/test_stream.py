"""WebSocket /stream JSON-RPC against a real node: methods, watches, isolation."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import aiohttp

from tests.integration.helpers import AGENT_KEY, API_KEY, Node

_ids = itertools.count(1)


class Rpc:
    """A JSON-RPC session over /stream that keeps notifications apart from replies."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.notifications: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.replies: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.orphan_errors: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = msg.json()
            if "method" in data and "id" not in data:
                await self.notifications.put(data)
            elif data.get("id") in self.replies:
                self.replies.pop(data["id"]).set_result(data)
            elif data.get("id") is None and "error" in data:
                await self.orphan_errors.put(data)

    async def call(self, method: str, params: Any = None) -> dict[str, Any]:
        rid = next(_ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[rid] = fut
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            body["params"] = params
        await self.ws.send_json(body)
        return await asyncio.wait_for(fut, 10)

    async def events(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < count:
            note = await asyncio.wait_for(self.notifications.get(), timeout)
            assert note["method"] == "watch/change", note
            out += note["params"]["events"]
        return out


async def _session(node: Node, key: str = API_KEY) -> tuple[aiohttp.ClientSession, Rpc]:
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"})
    ws = await session.ws_connect(f"{node.url}/stream")
    return session, Rpc(ws)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_kv_methods(node: Node) -> None:
    async def scenario() -> None:
        session, rpc = await _session(node)
        base = f"tenant:ws{uuid.uuid4().hex[:6]}"
        try:
            set_ = await rpc.call("kv/set", {"key": f"{base}/a", "value": {"x": 1}})
            assert set_["result"]["version"] == 1
            got = await rpc.call("kv/get", {"key": f"{base}/a"})
            assert got["result"]["value"] == {"x": 1}
            assert (await rpc.call("kv/get", {"key": f"{base}/none"}))["result"] is None
            listed = await rpc.call("kv/list", {"prefix": f"{base}/"})
            assert [e["key"] for e in listed["result"]["entries"]] == [f"{base}/a"]
            conflict = await rpc.call("kv/set", {"key": f"{base}/a", "value": 2, "ifVersion": 0})
            assert conflict["error"]["code"] == 409
            assert conflict["error"]["data"]["code"] == "version_conflict"
            deleted = await rpc.call("kv/delete", {"key": f"{base}/a"})
            assert deleted["result"]["deleted"] is True
            assert (await rpc.call("nope/nope", {}))["error"]["code"] == -32601
            assert (await rpc.call("kv/get", {"nokey": 1}))["error"]["code"] == -32602
            bad_key = await rpc.call("kv/get", {"key": "nottenant"})
            assert bad_key["error"]["data"]["code"] == "invalid_key"
            await rpc.ws.send_str("{not json")
            parse_error = await asyncio.wait_for(rpc.orphan_errors.get(), 5)
            assert parse_error["error"]["code"] == -32700
            await rpc.ws.send_str('{"jsonrpc": "2.0", "id": null}')
            invalid = await asyncio.wait_for(rpc.orphan_errors.get(), 5)
            assert invalid["error"]["code"] == -32600
        finally:
            await rpc.ws.close()
            await session.close()

    _run(scenario())


def test_watch_live_in_order_with_replay_and_unsubscribe(node: Node) -> None:
    async def scenario() -> None:
        base = f"tenant:w{uuid.uuid4().hex[:6]}"
        session, rpc = await _session(node)
        try:
            sub = await rpc.call("watch/subscribe", {"prefix": f"{base}/"})
            sid = sub["result"]["subscriptionId"]
            start_rev = sub["result"]["revision"]
            for i in range(20):
                node.put(f"{base}/k{i % 3}", i)
            node.request("DELETE", f"/api/v1/kv/{base}/k0")
            events = await rpc.events(21)
            revisions = [e["revision"] for e in events]
            assert revisions == sorted(set(revisions)) and revisions[0] > start_rev
            assert [e.get("value") for e in events[:20]] == list(range(20))
            assert events[-1]["type"] == "delete"

            # Replay from the start in a second session: the same events, then live ones.
            s2, rpc2 = await _session(node, AGENT_KEY)
            try:
                await rpc2.call(
                    "watch/subscribe", {"prefix": f"{base}/", "sinceRevision": start_rev}
                )
                replayed = await rpc2.events(21)
                assert [e["revision"] for e in replayed] == revisions
                node.put(f"{base}/live", "after")
                live = await rpc2.events(1)
                assert live[0]["key"] == f"{base}/live" and live[0]["revision"] > revisions[-1]
            finally:
                await rpc2.ws.close()
                await s2.close()

            assert (await rpc.call("watch/unsubscribe", {"subscriptionId": sid}))["result"] is True
            await rpc.events(1)  # the "live" write above, delivered before unsubscribing
            node.put(f"{base}/quiet", 1)
            await asyncio.sleep(0.5)
            assert rpc.notifications.empty()
        finally:
            await rpc.ws.close()
            await session.close()

    _run(scenario())


def test_watch_is_tenant_isolated_and_key_scoped(node: Node) -> None:
    async def scenario() -> None:
        mine, theirs = f"tenant:m{uuid.uuid4().hex[:6]}", f"tenant:o{uuid.uuid4().hex[:6]}"
        session, rpc = await _session(node)
        try:
            await rpc.call("watch/subscribe", {"prefix": f"{mine}/"})
            await rpc.call("watch/subscribe", {"key": f"{mine}/only"})
            node.put(f"{theirs}/secret", "no")
            node.put(f"{mine}/other", 1)
            node.put(f"{mine}/only", 2)
            events = await rpc.events(3)
            assert all(e["key"].startswith(f"{mine}/") for e in events)
            await asyncio.sleep(0.3)
            assert rpc.notifications.empty()
        finally:
            await rpc.ws.close()
            await session.close()

    _run(scenario())


def test_stream_auth(node: Node) -> None:
    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            try:
                await session.ws_connect(f"{node.url}/stream")
                raise AssertionError("connected without a key")
            except aiohttp.WSServerHandshakeError as e:
                assert e.status == 401
            ws = await session.ws_connect(f"{node.url}/stream?token={AGENT_KEY}")
            rpc = Rpc(ws)
            denied = await rpc.call("kv/set", {"key": "tenant:a/x", "value": 1})
            assert denied["error"]["data"]["code"] == "forbidden"
            await ws.close()

    _run(scenario())
