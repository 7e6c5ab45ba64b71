"""A seeded JSON-RPC fuzzer for ``/stream`` against a real node: the node must keep serving.

Rounds of frames from a seeded generator (malformed JSON, wrong JSON-RPC
envelopes, wrong param types, odd ids, batches, deep nesting, binary frames,
unknown methods), then a flood without reading, a slow watcher, and a frame
over the size limit; then oversized and deeply nested batches, after which
the front's peak memory (``VmHWM``) must stay under ``FRONT_PEAK_MIB``.
After each round every message the node sent must be a well-formed
JSON-RPC reply or notification and never an internal error; at the end the
node still answers over HTTP and ``/stream``, and its front process is the one
it started with (nothing crashed).

``FUZZ_FRAMES`` (default 1500) frames in ``make test``; ``make fuzz`` sends more.
``FUZZ_SEED`` replays one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from concordance.security.access import hash_secret
from tests.integration.helpers import API_KEY, Node, short_tmpdir

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fuzz")]  # one node, one worker

FRAMES = int(os.environ.get("FUZZ_FRAMES", "1500"))
SEED = int(os.environ.get("FUZZ_SEED", "20261202"))
ROUND = 100
METHODS = ["kv/get", "kv/set", "kv/delete", "kv/list", "watch/subscribe", "watch/unsubscribe"]
INTERNAL = -32603
DRAIN_TIMEOUT = 120.0  # seconds for the replies of one round; a silent connection fails the test
FRONT_PEAK_MIB = 300  # the serving front's peak RSS over the whole module (about 80 idle)
SCOPED = "fuzz-scoped-secret"  # readwrite on tenant:fz/ without credentials: every other round


@pytest.fixture(scope="module")
def stream_node() -> Iterator[Node]:
    root = short_tmpdir()
    keys = root / "keys.json"
    grants = [{"prefix": "tenant:fz/", "access": "readwrite"}]
    keys.write_text(
        json.dumps({"keys": [{"id": "fz", "sha256": hash_secret(SCOPED), "grants": grants}]})
    )
    node = Node("n1", data=root / "n1", keys_file=keys)
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


class Frames:
    """Seeded garbage, from almost-valid requests to nonsense."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def scalar(self) -> Any:
        r = self.rng
        return r.choice(
            [
                None,
                True,
                False,
                0,
                -1,
                1,
                2**63,
                -(2**63) - 1,
                2**80,
                1.5,
                -0.0,
                1e308,
                "",
                "tenant:fz/ok",
                "tenant:fz/",
                "tenant:fz",
                "tenant:fz/a\nb",
                "tenant:fz/../x",
                "tenant:fz/\x00",
                "tenant:fz/" + "x" * 2000,
                "tenant:other/x",
                "\ud800",
                "ü€😀",
                r.randint(-10, 10),
                "x" * r.randint(0, 50),
            ]
        )

    def value(self, depth: int = 0) -> Any:
        r = self.rng
        if depth > 3 or r.random() < 0.5:
            return self.scalar()
        if r.random() < 0.5:
            return [self.value(depth + 1) for _ in range(r.randint(0, 4))]
        return {str(self.scalar()): self.value(depth + 1) for _ in range(r.randint(0, 4))}

    def params(self) -> Any:
        r = self.rng
        if r.random() < 0.1:
            return self.value()
        names = [
            "key",
            "prefix",
            "value",
            "ifVersion",
            "expiresAt",
            "ttlMs",
            "limit",
            "cursor",
            "consistent",
            "sinceRevision",
            "subscriptionId",
            "extra",
        ]
        chosen = r.sample(names, r.randint(0, 4))
        params = {n: self.value() for n in chosen}
        if r.random() < 0.6:
            params["key" if r.random() < 0.5 else "prefix"] = r.choice(
                [
                    "tenant:fz/k",
                    "tenant:fz/",
                    "tenant:fz/k/" + str(r.randint(0, 9)),
                    "tenant:fz/credentials/c",
                ]
            )
        return params

    def request(self) -> Any:
        r = self.rng
        msg: dict[str, Any] = {"jsonrpc": "2.0" if r.random() < 0.9 else self.scalar()}
        if r.random() < 0.85:
            msg["id"] = r.choice([r.randint(0, 10**6), "s", None, 1.5, True, [], {}])
        msg["method"] = r.choice(METHODS) if r.random() < 0.85 else self.scalar()
        if r.random() < 0.9:
            msg["params"] = self.params()
        if r.random() < 0.05:
            msg["extra"] = 1
        return msg

    def frame(self) -> str | bytes:
        r = self.rng
        kind = r.random()
        if kind < 0.6:
            return json.dumps(self.request())
        if kind < 0.7:
            return json.dumps([self.request() for _ in range(r.randint(0, 8))])
        if kind < 0.8:
            text = json.dumps(self.request())
            return text[: r.randint(0, len(text))]  # truncated
        if kind < 0.85:
            depth = r.choice([100, 5000, 200_000])
            return "[" * depth + "]" * depth
        if kind < 0.9:
            return r.choice(
                [
                    "NaN",
                    "1e999999",
                    '"\\ud800"',
                    '{"a":1,"a":2}',
                    "null",
                    "[]",
                    "",
                    " ",
                    "{}",
                    "true",
                    "\x00",
                    '{"jsonrpc":"2.0"}',
                ]
            )
        if kind < 0.95:
            return bytes(r.getrandbits(8) for _ in range(r.randint(0, 64)))
        return json.dumps(self.scalar())


def check_message(data: Any) -> None:
    """A well-formed reply or notification, and never an internal error."""
    items = data if isinstance(data, list) else [data]
    assert items, "an empty batch reply"
    for item in items:
        assert isinstance(item, dict) and item.get("jsonrpc") == "2.0", item
        if "method" in item:
            assert item["method"] in ("watch/change", "watch/cancelled"), item
            continue
        assert "id" in item and (("result" in item) != ("error" in item)), item
        if "error" in item:
            code = item["error"]["code"]
            assert isinstance(code, int) and code not in (INTERNAL, 500), item


async def _drain_until(ws: aiohttp.ClientWebSocketResponse, marker: str) -> None:
    # One deadline for the whole drain: receive(timeout) starts over on every server ping,
    # so a connection that went silent (the node's writer died) would never time out.
    async with asyncio.timeout(DRAIN_TIMEOUT):
        await _drain(ws, marker)


async def _drain(ws: aiohttp.ClientWebSocketResponse, marker: str) -> None:
    while True:
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        check_message(data)
        if isinstance(data, dict) and data.get("id") == marker:
            return


async def _fuzz(node: Node) -> None:
    rng = random.Random(SEED)
    frames = Frames(rng)
    url = f"ws://127.0.0.1:{node.port}/stream"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession() as http:
        sent = 0
        scoped = {"Authorization": f"Bearer {SCOPED}"}
        while sent < FRAMES:
            token = scoped if (sent // ROUND) % 2 else headers
            async with http.ws_connect(url, headers=token, max_msg_size=0) as ws:
                for _ in range(ROUND):
                    frame = frames.frame()
                    if isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    else:
                        await ws.send_str(frame)
                    sent += 1
                marker = f"end-{sent}"
                await ws.send_str(
                    json.dumps(
                        {
                            "jsonrpc": "2.0",
                            "id": marker,
                            "method": "kv/get",
                            "params": {"key": "tenant:fz/k"},
                        }
                    )
                )
                await _drain_until(ws, marker)

        # A flood sent without reading, and a watcher that never reads while writes go on.
        # The flood is sent from a task: once the node's outbox and the socket buffers are
        # full the node stops reading (backpressure), so the sender waits until we drain.
        async with http.ws_connect(url, headers=headers, max_msg_size=0) as ws:
            sub = {
                "jsonrpc": "2.0",
                "id": "sub",
                "method": "watch/subscribe",
                "params": {"prefix": "tenant:fz/", "sinceRevision": 0},
            }
            await ws.send_str(json.dumps(sub))
            get = json.dumps(
                {"jsonrpc": "2.0", "id": 1, "method": "kv/list", "params": {"prefix": "tenant:fz/"}}
            )
            end = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": "end-flood",
                    "method": "kv/get",
                    "params": {"key": "tenant:fz/k"},
                }
            )

            async def flood() -> None:
                for _ in range(max(2000, FRAMES)):
                    await ws.send_str(get)
                await ws.send_str(end)

            sender = asyncio.get_running_loop().create_task(flood())
            for i in range(200):
                put = await asyncio.to_thread(node.put, f"tenant:fz/flood/{i % 7}", i)
                assert put.status == 200
            await _drain_until(ws, "end-flood")
            await sender

        # A frame over the limit: the node closes that connection (1009), nothing else.
        # It may close as soon as it reads the frame's header, while our 2 MiB are still
        # going out: then the send itself fails with a reset, which is the same verdict.
        async with http.ws_connect(url, headers=headers) as ws:
            oversized = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 1,
                    "method": "kv/set",
                    "params": {"key": "tenant:fz/big", "value": "x" * (2 << 20)},
                }
            )
            with contextlib.suppress(ConnectionError):  # closed mid-frame: receive reports it
                await ws.send_str(oversized)
            msg = await ws.receive(timeout=30)
            assert msg.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            ), msg

        # Still serving, on both doors.
        async with http.ws_connect(url, headers=headers) as ws:
            await ws.send_str(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": 7,
                        "method": "kv/set",
                        "params": {"key": "tenant:fz/after", "value": 1},
                    }
                )
            )
            reply = json.loads((await ws.receive(timeout=30)).data)
            assert reply["result"]["value"] == 1, reply


def test_stream_fuzz_leaves_the_node_serving(stream_node: Node) -> None:
    front = stream_node.role_pids()["front"]
    asyncio.run(_fuzz(stream_node))
    assert stream_node.request("GET", "/healthz", auth=None).status == 200
    assert stream_node.get("tenant:fz/after").json()["value"] == 1
    assert stream_node.role_pids()["front"] == front  # the front never crashed
    assert stream_node.get("tenant:fz/big").status == 404  # the oversized frame wrote nothing


def _front_peak_mib(node: Node) -> float:
    """Peak resident memory of the serving front process (not its keeper), in MiB."""
    pid = int((node.data / "run" / "front.pid").read_text())
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


async def _big_batches(node: Node) -> None:
    url = f"ws://127.0.0.1:{node.port}/stream"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    huge = "x" * ((1 << 20) - 16)  # a value at the 1 MiB limit
    assert (await asyncio.to_thread(node.put, "tenant:fz/huge", huge)).status == 200

    def get(i: int) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": i, "method": "kv/get", "params": {"key": "tenant:fz/huge"}}

    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(url, headers=headers, max_msg_size=0) as ws,
    ):
        for _ in range(3):  # the whole allowed batch, each reply a 1 MiB entry
            await ws.send_str(json.dumps([get(i) for i in range(128)]))
            seen = 0
            while seen < 128:
                frame = json.loads((await ws.receive(timeout=60)).data)
                assert all(r["result"]["value"] == huge for r in frame)
                seen += len(frame)
        # over the cap: refused whole, nothing run
        await ws.send_str(json.dumps([get(i) for i in range(5000)]))
        reply = json.loads((await ws.receive(timeout=60)).data)
        assert reply["error"]["code"] == -32600, reply
        # deeply nested: in a batch, in params, bare
        deep = "[" * 100_000 + "]" * 100_000
        for text in (
            "[" + ",".join([deep] * 4) + "]",  # 800 KB: under the frame limit
            '{"jsonrpc":"2.0","id":1,"method":"kv/get","params":' + deep + "}",
            deep,
        ):
            await ws.send_str(text)
            msg = await ws.receive(timeout=60)
            assert msg.type == aiohttp.WSMsgType.TEXT, (text[:60], msg)
            check_message(json.loads(msg.data))


def test_oversized_and_deep_batches_keep_the_front_small(stream_node: Node) -> None:
    """Issue 20: an 18.7 KB batch of gets once took the front past 1.2 GiB."""
    asyncio.run(_big_batches(stream_node))
    peak = _front_peak_mib(stream_node)
    print(f"front peak RSS {peak:.0f} MiB (bound {FRONT_PEAK_MIB})")
    assert peak < FRONT_PEAK_MIB
    assert stream_node.request("GET", "/healthz", auth=None).status == 200
