"""WebSocket /stream: JSON-RPC methods, error codes, auth, watches end to end, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from concordance.front import stream as stream_module
from concordance.front.app_state import HUB, STREAMS
from concordance.front.stream import Outbox
from concordance.testing.clock import ManualClock
from concordance.testing.poll import until
from tests.unit.front.fakes import AGENT, FULL, Harness, harness, on_clock

_ids = itertools.count(1)


class Rpc:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def recv(self) -> Any:
        msg = await asyncio.wait_for(self.ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        return json.loads(msg.data)

    async def call(self, method: str, params: Any = None) -> dict[str, Any]:
        rid = next(_ids)
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            body["params"] = params
        await self.ws.send_str(json.dumps(body))
        while True:
            reply = await self.recv()
            if isinstance(reply, dict) and reply.get("id") == rid:
                return reply

    async def raw(self, text: str) -> Any:
        await self.ws.send_str(text)
        return await self.recv()

    async def notes(self, count: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while len(out) < count:
            out.append(await self.recv())
        return out


def run(
    tmp_path: Path,
    scenario: Callable[[Harness, Rpc], Awaitable[None]],
    *,
    token: str = FULL,
    **cfg: Any,
) -> None:
    async def main() -> None:
        async with harness(tmp_path, **cfg) as h:
            ws = await h.client.ws_connect("/stream", headers={"Authorization": f"Bearer {token}"})
            try:
                await scenario(h, Rpc(ws))
            finally:
                await ws.close()

    asyncio.run(main())


def test_kv_methods(tmp_path: Path) -> None:
    async def scenario(h: Harness, rpc: Rpc) -> None:
        got = await rpc.call("kv/set", {"key": "tenant:a/x", "value": {"x": 1}, "ttlMs": 1000})
        assert got["result"]["version"] == 1 and got["result"]["value"] == {"x": 1}
        assert (await rpc.call("kv/get", {"key": "tenant:a/x"}))["result"]["value"] == {"x": 1}
        got = await rpc.call("kv/get", {"key": "tenant:a/x", "consistent": True})
        assert got["result"]["version"] == 1
        assert (await rpc.call("kv/get", {"key": "tenant:a/none"}))["result"] is None
        listed = await rpc.call("kv/list", {"prefix": "tenant:a/", "limit": 10})
        assert [e["key"] for e in listed["result"]["entries"]] == ["tenant:a/x"]
        assert listed["result"]["next"] is None and listed["result"]["revision"] == 1
        conflict = await rpc.call("kv/set", {"key": "tenant:a/x", "value": 2, "ifVersion": 0})
        assert conflict["error"]["code"] == 409
        assert conflict["error"]["data"]["code"] == "version_conflict"
        assert conflict["error"]["data"]["current"]["value"] == {"x": 1}
        deleted = await rpc.call("kv/delete", {"key": "tenant:a/x", "ifVersion": 1})
        assert deleted["result"] == {
            "key": "tenant:a/x", "deleted": True, "version": 1, "revision": 2,
        }  # fmt: skip
        missing = await rpc.call("kv/delete", {"key": "tenant:a/x"})
        assert (missing["error"]["code"], missing["error"]["data"]["code"]) == (404, "not_found")

    run(tmp_path, scenario)


PROTOCOL_FAULTS = [
    ("{not json", -32700, None),
    ('{"jsonrpc": "2.0", "id": null}', -32600, None),
    ('{"jsonrpc": "1.0", "id": 3, "method": "kv/get"}', -32600, 3),
    ('{"jsonrpc": "2.0", "id": 4, "method": 5}', -32600, 4),
    ('{"jsonrpc": "2.0", "id": {}, "method": "kv/get"}', -32600, None),
    ('{"jsonrpc": "2.0", "id": 5, "method": "kv/get", "params": 1}', -32600, 5),
    ('{"jsonrpc": "2.0", "id": 6, "method": "kv/get", "extra": 1}', -32600, 6),
    ("[]", -32600, None),
    ("7", -32600, None),
    ('{"jsonrpc": "2.0", "id": 8, "method": "nope/nope"}', -32601, 8),
    ('{"jsonrpc": "2.0", "id": 9, "method": "kv/get", "params": ["tenant:a/x"]}', -32602, 9),
    ('{"jsonrpc": "2.0", "id": 10, "method": "kv/get", "params": {"nokey": 1}}', -32602, 10),
    ('{"jsonrpc": "2.0", "id": 11, "method": "kv/get", "params": {"key": 1}}', -32602, 11),
    ('{"jsonrpc": "2.0", "id": "s", "method": "kv/get"}', -32602, "s"),
    ('{"jsonrpc": "2.0", "id": 12, "method": "kv/set", "params": {"key": "tenant:a/x"}}', -32602,
     12),
    ('{"jsonrpc": "2.0", "id": 13, "method": "kv/set", '
     '"params": {"key": "tenant:a/x", "value": 1, "ttlMs": 0}}', -32602, 13),
    ('{"jsonrpc": "2.0", "id": 14, "method": "kv/list", "params": {"prefix": "tenant:a/",'
     ' "limit": 0}}', -32602, 14),
    ('{"jsonrpc": "2.0", "id": 15, "method": "watch/subscribe", "params": {}}', -32602, 15),
    ('{"jsonrpc": "2.0", "id": 16, "method": "watch/subscribe", '
     '"params": {"prefix": "tenant:a/", "key": "tenant:a/x"}}', -32602, 16),
    ('{"jsonrpc": "2.0", "id": 17, "method": "watch/subscribe", '
     '"params": {"prefix": "tenant:a/", "sinceRevision": -1}}', -32602, 17),
]  # fmt: skip

API_FAULTS = [
    ("kv/get", {"key": "nottenant"}, 400, "invalid_key"),
    ("kv/list", {"prefix": "tenant:a"}, 400, "invalid_key"),
    ("watch/subscribe", {"prefix": "tenant:a"}, 400, "invalid_key"),
    ("watch/unsubscribe", {"subscriptionId": 999}, 404, "not_found"),
    ("kv/set", {"key": "tenant:a/x", "value": "x" * 2000}, 413, "value_too_large"),
]


def test_protocol_and_api_error_codes(tmp_path: Path) -> None:
    async def scenario(h: Harness, rpc: Rpc) -> None:
        for text, code, rid in PROTOCOL_FAULTS:
            reply = await rpc.raw(text)
            assert reply["jsonrpc"] == "2.0" and reply["id"] == rid, text
            assert reply["error"]["code"] == code, (text, reply)
        for method, params, code, name in API_FAULTS:
            reply = await rpc.call(method, params)
            assert (reply["error"]["code"], reply["error"]["data"]["code"]) == (code, name)
        await rpc.ws.send_bytes(b"\x00")
        assert (await rpc.recv())["error"]["code"] == -32600
        assert h.node.knobs.proposed == []

    run(tmp_path, scenario)


def test_notifications_get_no_reply_and_batches_get_arrays(tmp_path: Path) -> None:
    async def scenario(h: Harness, rpc: Rpc) -> None:
        await rpc.ws.send_str(json.dumps(
            {"jsonrpc": "2.0", "method": "kv/set", "params": {"key": "tenant:a/n", "value": 1}}
        ))  # fmt: skip
        await rpc.ws.send_str('{"jsonrpc": "2.0", "method": "nope"}')
        batch = [
            {"jsonrpc": "2.0", "id": "a", "method": "kv/get", "params": {"key": "tenant:a/n"}},
            {"jsonrpc": "2.0", "method": "kv/get", "params": {"key": "tenant:a/n"}},
            {"jsonrpc": "2.0", "id": "b", "method": "nope"},
            5,
        ]
        replies = await rpc.raw(json.dumps(batch))
        assert [r["id"] for r in replies] == ["a", "b", None]
        assert replies[0]["result"]["value"] == 1
        assert [r["error"]["code"] for r in replies[1:]] == [-32601, -32600]

    run(tmp_path, scenario)


def test_agent_key_may_read_and_watch_only(tmp_path: Path) -> None:
    async def scenario(h: Harness, rpc: Rpc) -> None:
        for method, params in (
            ("kv/set", {"key": "tenant:a/x", "value": 1}),
            ("kv/delete", {"key": "tenant:a/x"}),
        ):
            reply = await rpc.call(method, params)
            assert (reply["error"]["code"], reply["error"]["data"]["code"]) == (403, "forbidden")
        assert "result" in await rpc.call("kv/get", {"key": "tenant:a/x"})
        assert "result" in await rpc.call("kv/list", {"prefix": "tenant:a/"})
        sub = await rpc.call("watch/subscribe", {"prefix": "tenant:a/"})
        sid = sub["result"]["subscriptionId"]
        assert (await rpc.call("watch/unsubscribe", {"subscriptionId": sid}))["result"] is True

    run(tmp_path, scenario, token=AGENT)


def test_upgrade_needs_a_key_header_or_token(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                    await h.client.ws_connect("/stream", headers=headers)
                assert err.value.status == 401
            ws = await h.client.ws_connect(f"/stream?token={AGENT}")
            reply = await Rpc(ws).call("kv/set", {"key": "tenant:a/x", "value": 1})
            assert reply["error"]["data"]["code"] == "forbidden"
            await ws.close()
            ws = await h.client.ws_connect(f"/stream?token={FULL}")
            assert "result" in await Rpc(ws).call("kv/set", {"key": "tenant:a/x", "value": 1})
            await ws.close()

    asyncio.run(main())


def test_watch_live_replay_and_unsubscribe(tmp_path: Path) -> None:
    async def scenario(h: Harness, rpc: Rpc) -> None:
        sub = await rpc.call("watch/subscribe", {"prefix": "tenant:a/"})
        sid, start = sub["result"]["subscriptionId"], sub["result"]["revision"]
        assert start == 0
        key_sub = await rpc.call("watch/subscribe", {"key": "tenant:a/k0"})
        kid = key_sub["result"]["subscriptionId"]
        for i in range(6):
            await h.put(f"tenant:a/k{i % 3}", i)
        await h.put("tenant:b/k", "other tenant")
        await h.call("DELETE", "/api/v1/kv/tenant:a/k0")
        notes = await rpc.notes(7 + 3)
        by_sub: dict[int, list[dict[str, Any]]] = {}
        for note in notes:
            assert note["method"] == "watch/change"
            by_sub.setdefault(note["params"]["subscriptionId"], []).extend(note["params"]["events"])
        assert [e["revision"] for e in by_sub[sid]] == [1, 2, 3, 4, 5, 6, 8]
        assert [e.get("value") for e in by_sub[sid]] == [0, 1, 2, 3, 4, 5, None]
        assert [e["revision"] for e in by_sub[kid]] == [1, 4, 8]

        replay = await rpc.call("watch/subscribe", {"prefix": "tenant:a/", "sinceRevision": 3})
        rid = replay["result"]["subscriptionId"]
        assert replay["result"]["revision"] == 8
        replayed = await rpc.notes(1)
        assert [e["revision"] for e in replayed[0]["params"]["events"]] == [4, 5, 6, 8]
        for sub_id in (sid, kid):
            assert (await rpc.call("watch/unsubscribe", {"subscriptionId": sub_id}))["result"]
        await h.put("tenant:a/live", "after")
        live = await rpc.notes(1)
        assert live[0]["params"]["subscriptionId"] == rid
        assert [e["key"] for e in live[0]["params"]["events"]] == ["tenant:a/live"]
        assert h.app[HUB].watchers == 1

    run(tmp_path, scenario)


def test_subscribe_reply_precedes_its_first_event(tmp_path: Path) -> None:
    async def scenario(h: Harness, rpc: Rpc) -> None:
        await h.put("tenant:a/x", 1)
        await rpc.ws.send_str(json.dumps({
            "jsonrpc": "2.0", "id": 1, "method": "watch/subscribe",
            "params": {"prefix": "tenant:a/", "sinceRevision": 0},
        }))  # fmt: skip
        first, second = await rpc.notes(2)
        assert first["id"] == 1 and first["result"]["revision"] == 1
        assert second["method"] == "watch/change"

    run(tmp_path, scenario)


def test_watch_with_storage_down_is_503(tmp_path: Path) -> None:
    clock = ManualClock()

    async def scenario(h: Harness, rpc: Rpc) -> None:
        h.node.knobs.storage_down = True
        reply = await on_clock(clock, rpc.call("watch/subscribe", {"prefix": "tenant:a/"}))
        assert (reply["error"]["code"], reply["error"]["data"]["code"]) == (503, "unavailable")
        assert h.app[HUB].watchers == 0

    run(tmp_path, scenario, timers=clock)


def test_a_client_that_does_not_keep_up_is_cancelled_as_slow_consumer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_module, "OUTBOX_LIMIT", 1)

    async def scenario(h: Harness, rpc: Rpc) -> None:
        sub = await rpc.call("watch/subscribe", {"prefix": "tenant:a/"})
        sid = sub["result"]["subscriptionId"]
        h.node.knobs.hold = True
        for i in range(3):
            await h.put_later(f"tenant:a/{i}", i)
        h.node.release()  # three batches at once: the outbox of 1 overflows
        notes = await rpc.notes(2)
        assert notes[0]["method"] == "watch/change"
        assert notes[0]["params"]["events"][0]["revision"] == 1
        assert notes[1]["params"] == {"subscriptionId": sid, "reason": "slow_consumer"}
        assert h.app[HUB].watchers == 0

    run(tmp_path, scenario)


def test_compacted_replay_is_cancelled_over_the_wire(tmp_path: Path) -> None:
    async def scenario(h: Harness, rpc: Rpc) -> None:
        for i in range(40):
            await h.put("tenant:a/x", i)
        sub = await rpc.call("watch/subscribe", {"prefix": "tenant:a/", "sinceRevision": 0})
        [note] = await rpc.notes(1)
        assert note == {
            "jsonrpc": "2.0",
            "method": "watch/cancelled",
            "params": {"subscriptionId": sub["result"]["subscriptionId"], "reason": "compacted"},
        }

    run(tmp_path, scenario, retention=16)


def test_shutdown_cancels_watches_then_closes(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            ws = await h.client.ws_connect("/stream", headers={"Authorization": f"Bearer {FULL}"})
            rpc = Rpc(ws)
            sub = await rpc.call("watch/subscribe", {"prefix": "tenant:a/"})
            assert len(h.app[STREAMS]) == 1
            await h.app.shutdown()
            [note] = await rpc.notes(1)
            assert note["method"] == "watch/cancelled"
            assert note["params"] == {
                "subscriptionId": sub["result"]["subscriptionId"],
                "reason": "shutdown",
            }
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)

    asyncio.run(main())


def test_outbox_bounds_notifications_but_not_goodbyes() -> None:
    async def main() -> None:
        box = Outbox(limit=2)
        assert box.offer("a") and box.offer("b") and not box.offer("c")
        box.push("bye")
        assert len(box) == 3
        put = asyncio.ensure_future(box.put("reply"))
        await asyncio.sleep(0)
        assert not put.done()
        assert [await box.get(), await box.get()] == ["a", "b"]
        await asyncio.sleep(0)
        assert put.done()
        box.close()
        assert [await box.get(), await box.get(), await box.get()] == ["bye", "reply", None]

    asyncio.run(main())


def test_a_lone_surrogate_in_a_request_does_not_silence_the_connection(tmp_path: Path) -> None:
    """Regression (found by the /stream fuzzer): an error message that echoed a lone
    surrogate could not be encoded, the connection's writer died and no reply came again."""

    async def scenario(h: Harness, rpc: Rpc) -> None:
        bad = '{"jsonrpc": "2.0", "id": 1, "method": "kv/get", "params": {"\\ud800": 1}}'
        reply = await rpc.raw(bad)
        assert reply["id"] == 1 and reply["error"]["code"] == -32602
        assert "\\ud800" in reply["error"]["message"]  # escaped, not raw
        reply = await rpc.raw('{"jsonrpc": "2.0", "id": "\\udfff", "method": "nope/\\ud800"}')
        assert reply["error"]["code"] == -32601
        assert (await rpc.call("kv/get", {"key": "tenant:a/x"}))["result"] is None  # still serving

    run(tmp_path, scenario)


def test_a_batch_of_more_than_128_requests_is_refused_whole(tmp_path: Path) -> None:
    async def scenario(h: Harness, rpc: Rpc) -> None:
        def setter(i: int) -> dict[str, Any]:
            params = {"key": f"tenant:a/{i}", "value": i}
            return {"jsonrpc": "2.0", "id": i, "method": "kv/set", "params": params}

        reply = await rpc.raw(json.dumps([setter(i) for i in range(129)]))
        assert reply["id"] is None and reply["error"]["code"] == -32600
        assert "128" in reply["error"]["message"]
        assert h.node.knobs.proposed == []
        replies = await rpc.raw(json.dumps([setter(i) for i in range(128)]))
        assert sorted(r["id"] for r in replies) == list(range(128))

    run(tmp_path, scenario)


def test_a_batch_s_replies_are_sent_as_they_are_produced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Never one string for the whole batch: past the flush size, each array goes out."""
    monkeypatch.setattr(stream_module, "BATCH_FLUSH_BYTES", 1)

    async def scenario(h: Harness, rpc: Rpc) -> None:
        await h.put("tenant:a/x", "v")
        gets = [
            {"jsonrpc": "2.0", "id": i, "method": "kv/get", "params": {"key": "tenant:a/x"}}
            for i in range(3)
        ]
        await rpc.ws.send_str(json.dumps(gets))
        frames = [await rpc.recv() for _ in range(3)]
        assert [[r["id"] for r in frame] for frame in frames] == [[0], [1], [2]]
        assert all(frame[0]["result"]["value"] == "v" for frame in frames)

    run(tmp_path, scenario)


def test_a_client_that_does_not_read_its_replies_is_closed_with_1008(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a connection may hold queued is bounded; past a short stall it is closed."""
    monkeypatch.setattr(stream_module, "OUTBOX_BYTES", 64 << 10)
    monkeypatch.setattr(stream_module, "REPLY_STALL", 0.2)
    big = "x" * 200_000

    async def scenario(h: Harness, rpc: Rpc) -> None:
        await h.put("tenant:a/big", big)
        gets = [
            {"jsonrpc": "2.0", "id": i, "method": "kv/get", "params": {"key": "tenant:a/big"}}
            for i in range(128)
        ]
        await rpc.ws.send_str(json.dumps(gets))  # 25 MB of replies, and the client reads none
        async with asyncio.timeout(30):
            await until(lambda: not h.app[STREAMS], "the server giving up on the connection", 30)
            while (msg := await rpc.ws.receive()).type == aiohttp.WSMsgType.TEXT:
                assert all(r["result"]["value"] == big for r in json.loads(msg.data))
        assert msg.type == aiohttp.WSMsgType.CLOSE, msg
        assert msg.data == 1008 and "not read" in msg.extra

    run(tmp_path, scenario, max_value_bytes=256_000)


def test_the_outbox_bounds_bytes_but_takes_one_big_message() -> None:
    async def main() -> None:
        box = Outbox(limit=10, max_bytes=100)
        assert box.offer("x" * 500)  # alone: fits, whatever its size
        assert not box.offer("y")  # past the byte bound
        with pytest.raises(stream_module.OutboxStalled):
            await box.put("y", stall=0.01)
        assert await box.get() == "x" * 500 and box.queued_bytes == 0
        await box.put("y" * 60, stall=0.01)
        assert box.offer("z" * 40) and not box.offer("z")
        assert box.queued_bytes == 100

    asyncio.run(main())


def test_compression_is_declined(tmp_path: Path) -> None:
    """A client asking for permessage-deflate (browsers do) gets plain frames: a zlib
    stream per connection would cost ~80 KB of front memory per watcher."""

    async def main() -> None:
        async with harness(tmp_path) as h:
            ws = await h.client.ws_connect(
                "/stream", headers={"Authorization": f"Bearer {FULL}"}, compress=15
            )
            try:
                assert ws.compress == 0  # the server's answer named no extension
                got = await Rpc(ws).call("kv/set", {"key": "tenant:a/z", "value": "x" * 900})
                assert got["result"]["value"] == "x" * 900
            finally:
                await ws.close()

    asyncio.run(main())
