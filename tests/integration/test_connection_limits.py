"""A real front caps its connections, keeps room for loopback and peers, times out slow
headers and idle keep-alive, leaves idle watchers alone, and counts it all in /metrics."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import aiohttp
import pytest

from tests.integration.helpers import API_KEY, Node, short_tmpdir

pytestmark = pytest.mark.slow

LIMITS = {
    "CONCORDANCE_MAX_CLIENT_CONNECTIONS": "3",
    "CONCORDANCE_RESERVED_CONNECTIONS": "2",  # loopback is trusted: 5 in all
    "CONCORDANCE_HEADER_TIMEOUT": "0.5",
    "CONCORDANCE_KEEPALIVE_TIMEOUT": "1",
}


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    assert found, name
    return float(found.group(1))


async def closed_by_server(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        async with asyncio.timeout(20):
            return await reader.read()  # until the server closes
    finally:
        writer.close()


async def scenario(node: Node) -> None:
    port = node.port
    # Half-sent headers, then an idle keep-alive connection: both closed by the front.
    assert await closed_by_server(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n") == b""
    answer = await closed_by_server(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ")  # served, then closed once idle
    url = f"ws://127.0.0.1:{port}/stream"
    auth = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession() as http:
        watcher = await http.ws_connect(url, headers=auth)
        sub = {"jsonrpc": "2.0", "id": 1, "method": "watch/subscribe",
               "params": {"prefix": "tenant:a/"}}  # fmt: skip
        await watcher.send_str(json.dumps(sub))
        assert "result" in json.loads((await watcher.receive(timeout=10)).data)
        others = [await http.ws_connect(url, headers=auth) for _ in range(4)]  # 5 open
        # Sending nothing: a refused connection is answered at accept (had it sent a request,
        # closing with it unread could turn the answer into a reset).
        refused = await closed_by_server(port, b"")
        assert refused.startswith(b"HTTP/1.1 503 "), refused[:200]
        for ws in others:
            await ws.close()
        # An idle watcher outlives the keep-alive and header timeouts (its session is a
        # request in progress). Nothing to poll for here: the point is time passing.
        await asyncio.sleep(2.5)
        assert (await asyncio.to_thread(node.put, "tenant:a/x", 1)).status == 200
        note = json.loads((await watcher.receive(timeout=10)).data)
        assert note["method"] == "watch/change", note
        async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            text = await resp.text()
        await watcher.close()
    assert metric(text, "concordance_client_connection_limit") == 3
    assert metric(text, "concordance_connections_refused_total") >= 1
    assert metric(text, "concordance_header_timeouts_total") >= 1
    assert metric(text, "concordance_client_connections") >= 2  # the watcher and this scrape


def test_connection_cap_deadlines_and_counts() -> None:
    root = short_tmpdir()
    node = Node("n1", data=root / "n1", extra_env=LIMITS)
    try:
        node.start()
        asyncio.run(scenario(node))
        front = int((node.data / "run" / "front.pid").read_text())
        limits = Path(f"/proc/{front}/limits").read_text()
        found = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits)
        assert found is not None
        soft, hard = found.groups()
        assert int(soft) == int(hard)  # raised to the hard limit at start
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)
