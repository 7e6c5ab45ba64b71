"""Killing or restarting any one role: the node serves again and loses nothing acknowledged."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.helpers import API_KEY, ROOT, Node, wait_for

SECRET = "ghp_plaintext_marker_7f3a9c"


class Writer(threading.Thread):
    """Writes distinct values in a loop and records which were acknowledged."""

    def __init__(self, node: Node, prefix: str) -> None:
        super().__init__(daemon=True)
        self.node, self.prefix = node, prefix
        self.acked: dict[str, int] = {}
        self.statuses: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            key = f"{self.prefix}/k{i % 50}"
            try:
                resp = self.node.put(key, i)
            except OSError:
                resp = None
            if resp is not None:
                self.statuses.append(resp.status)
                if resp.status == 200:
                    self.acked[key] = i
            i += 1


@pytest.mark.parametrize("role", ["storage", "consensus", "front"])
def test_kill_9_each_role_with_writes_in_flight(fresh_node: Node, role: str) -> None:
    node = fresh_node
    prefix = f"tenant:kill-{role}"
    writer = Writer(node, prefix)
    writer.start()
    wait_for(lambda: len(writer.acked) >= 20, 20, "some acknowledged writes")
    old = node.kill_role(role)
    node.wait_role_restarted(role, old)
    node.wait_ready()
    acked_before = len(writer.statuses)
    wait_for(lambda: writer.statuses[acked_before:].count(200) >= 20, 30, "writes resume")
    writer.stop.set()
    writer.join(10)
    assert not [s for s in writer.statuses if s >= 500 and s not in (503, 504)]
    for key, value in writer.acked.items():
        resp = node.get(key)
        assert resp.status == 200, (key, resp.body)
        # The last acknowledged write to a key is what it holds (one writer per key).
        assert resp.json()["value"] == value


def test_a_write_answered_just_before_storage_dies_is_read_back_there(fresh_node: Node) -> None:
    """storage commits state.db when it acknowledges to consensus (``ack_delay``, 0.1 s
    after a batch), so a kill -9 right after a write's answer takes the write out of
    state.db. The restarted storage gets it again from consensus, and a local read on
    that node waits for it (the front's read floor, PROTOCOL.md ``results``) rather
    than miss a write the node has answered."""
    node = fresh_node
    key = "tenant:floor/k"
    for value in range(3):
        assert node.put(key, value).status == 200
        old = node.kill_role("storage")  # within a millisecond or two of the answer
        resp = node.get(key)  # held by the front until a new storage answers
        assert resp.status == 200, (value, resp.body, node.logs(tail=30))
        assert resp.json()["value"] == value
        node.wait_role_restarted("storage", old)
        # Past supervisord's startsecs before the next kill: a role killed sooner is a
        # failed start, restarted after a growing backoff (longer than the read waits).
        wait_for(
            lambda: node.control().states()["storage"].state == "RUNNING", 20, "storage RUNNING"
        )


def test_ctl_restart_keeps_watchers_gapless(fresh_node: Node) -> None:
    """Restart storage then front with `concordance ctl` while a watcher follows
    a key and a writer writes 0..59 to it: the watcher, resubscribing from the
    last revision it saw, gets every acknowledged value once, in order."""
    node = fresh_node
    prefix = "tenant:watch-restart"
    total = 60
    acked: list[int] = []

    def writes() -> None:
        for i in range(total):
            for _ in range(100):  # retry only what certainly did not apply
                try:
                    resp = node.put(f"{prefix}/k", i)
                except OSError:
                    time.sleep(0.1)  # connection refused: nothing was sent
                    continue
                if resp.status != 503:
                    break
                time.sleep(0.1)
            if resp.status == 200:
                acked.append(i)
            if i == 20:
                for role in ("storage", "front"):
                    subprocess.run(
                        [sys.executable, "-m", "concordance.cli", "ctl",
                         "--data", str(node.data), "restart", role],
                        check=True, cwd=ROOT, capture_output=True,
                    )  # fmt: skip
                node.wait_ready()

    async def watch(writing: asyncio.Future[None]) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        last = 0  # replay from the start: the writer may be ahead of the first subscribe
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            while not (writing.done() and seen and seen[-1]["value"] == acked[-1]):
                if writing.done():
                    writing.result()  # surface the writer's failure, if any
                params = {"prefix": f"{prefix}/", "sinceRevision": last}
                try:
                    ws = await session.ws_connect(f"{node.url}/stream")
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)
                    continue
                await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "watch/subscribe",
                                    "params": params})  # fmt: skip
                while True:
                    try:
                        msg = await ws.receive(timeout=0.5)
                    except TimeoutError:
                        if writing.done() and seen and seen[-1]["value"] == acked[-1]:
                            break
                        continue
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        break
                    data = msg.json()
                    if data.get("method") == "watch/change":
                        for event in data["params"]["events"]:
                            seen.append(event)
                            last = event["revision"]
                    elif data.get("method") == "watch/cancelled":
                        break
                await ws.close()
        return seen

    async def scenario() -> list[dict[str, Any]]:
        writing = asyncio.get_running_loop().run_in_executor(None, writes)
        return await watch(writing)

    seen = asyncio.run(asyncio.wait_for(scenario(), 120))
    revisions = [e["revision"] for e in seen]
    assert revisions == sorted(set(revisions)), "duplicate or out-of-order events"
    values = [e["value"] for e in seen if e["type"] == "set"]
    assert values == sorted(set(values)), "a value was delivered twice or out of order"
    missing = set(acked) - set(values)
    assert not missing, f"acknowledged writes never reached the watcher: {sorted(missing)}"
    assert len(acked) >= total - 5


def test_credentials_never_on_disk_in_plaintext(fresh_node: Node) -> None:
    node = fresh_node
    key = "tenant:acme/credentials/github"
    assert node.put(key, {"token": SECRET}).status == 200
    assert node.get(key).json()["value"] == {"token": SECRET}
    node.request("POST", "/api/v1/cluster/snapshot")
    backup = node.request("GET", "/api/v1/cluster/backup")
    assert backup.status == 200 and SECRET.encode() not in backup.body
    changes = node.request("GET", "/api/v1/changes?prefix=tenant:acme/&since=0").json()
    assert changes["changes"][-1]["value"] == {"token": SECRET}
    node.stop()  # flush everything to the files
    leaks = [
        str(p)
        for p in Path(node.data).rglob("*")
        if p.is_file() and SECRET.encode() in p.read_bytes()
    ]
    assert not leaks, f"plaintext credential found in {leaks}"


def test_restart_whole_node_keeps_data(fresh_node: Node) -> None:
    node = fresh_node
    for i in range(30):
        assert node.put(f"tenant:r/k{i}", i).status == 200
    revision = node.get("tenant:r/k29").json()["revision"]
    node.stop()
    node.start()
    after = node.get("tenant:r/k29").json()
    assert after["value"] == 29 and after["revision"] == revision
    assert node.put("tenant:r/k0", "again").json()["version"] == 2
