"""Planned role restarts under steady load: clients see nothing.

Several writers and readers over HTTP (spread over every node) and a WebSocket
watcher run while one role of one node is restarted the way an operator does
it: storage and consensus by supervisord stop + start (SIGTERM, a graceful
stop), the front by a hand-over (``Control.hand_over_front``). Asserted: no
request failed (every write 200, every read 200/404, no connection error), the
watcher saw every revision once and in order with no gap (resuming once, with
``sinceRevision``, after the front's ``shutdown``; never for the other roles),
and every acknowledged write is there afterwards. The numbers (requests during
the restart, time until the node served again) are printed for
docs/OPERATIONS.md, never asserted.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from concordance.node.supervise import serving, serving_front, wait_gone
from tests.integration.helpers import API_KEY, Cluster, Node, short_tmpdir, wait_for

PREFIX = "tenant:load/"
WRITERS = 4
READERS = 2


class Load:
    """Writers, readers and one watcher against ``nodes``; everything they saw."""

    def __init__(self, nodes: list[Node], watch_on: Node) -> None:
        self.nodes = nodes
        self.watch_on = watch_on
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed: list[str] = []
        self.latencies: list[tuple[float, float]] = []  # (start, seconds)
        self.acked: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.watch_error: BaseException | None = None
        self.resumed = 0  # watch connections resumed after a front's shutdown
        self.threads = [
            threading.Thread(target=self._write, args=(j,), daemon=True) for j in range(WRITERS)
        ] + [threading.Thread(target=self._read, args=(j,), daemon=True) for j in range(READERS)]
        self.threads.append(threading.Thread(target=self._watch_thread, daemon=True))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _record(self, what: str, started: float, ok: bool) -> None:
        with self.lock:
            self.latencies.append((started, time.monotonic() - started))
            if ok:
                self.ok += 1
            else:
                self.failed.append(what)

    def _write(self, j: int) -> None:
        node = self.nodes[j % len(self.nodes)]
        i = 0
        while not self.stop.is_set():
            key = f"{PREFIX}w{j}/k{i % 10}"
            started = time.monotonic()
            try:
                resp = node.put(key, i)
                ok, what = resp.status == 200, f"PUT {key} on {node.node_id}: {resp.status}"
            except OSError as e:
                ok, what = False, f"PUT {key} on {node.node_id}: {e!r}"
            self._record(what, started, ok)
            if ok:
                with self.lock:
                    self.acked[key] = i
            i += 1

    def _read(self, j: int) -> None:
        node = self.nodes[(j + 1) % len(self.nodes)]
        i = 0
        while not self.stop.is_set():
            key = f"{PREFIX}w{i % WRITERS}/k{i % 10}"
            query = {"consistent": "true"} if i % 2 else {}
            started = time.monotonic()
            try:
                resp = node.get(key, **query)
                ok, what = resp.status in (200, 404), f"GET {key} on {node.node_id}: {resp.status}"
            except OSError as e:
                ok, what = False, f"GET {key} on {node.node_id}: {e!r}"
            self._record(what, started, ok)
            i += 1
            time.sleep(0.005)

    def _watch_thread(self) -> None:
        try:
            asyncio.run(self._watch())
        except BaseException as e:  # reported by the test
            self.watch_error = e

    async def _watch(self) -> None:
        """A restart of storage or consensus must not end the subscription (no
        reconnect, no resubscribe); a front hand-over ends it with ``watch/cancelled``
        (``shutdown``), and the client resumes as API.md says: a new connection,
        ``sinceRevision`` = the last revision it saw. Any other end fails the test."""
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            while not await self._watch_once(session):
                self.resumed += 1

    async def _watch_once(self, session: aiohttp.ClientSession) -> bool:
        """Watch over one connection: True when done, False after a ``shutdown``."""
        since = self.events[-1]["revision"] if self.events else 0
        async with session.ws_connect(f"{self.watch_on.url}/stream") as ws:
            params = {"prefix": PREFIX, "sinceRevision": since}
            await ws.send_json(
                {"jsonrpc": "2.0", "id": 1, "method": "watch/subscribe", "params": params}
            )
            while True:
                try:
                    msg = await ws.receive(timeout=0.3)
                except TimeoutError:
                    if self.stop.is_set() and self._caught_up():
                        return True
                    continue
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise AssertionError(f"the watch stream ended: {msg.type}")
                data = msg.json()
                if data.get("method") == "watch/change":
                    self.events.extend(data["params"]["events"])
                elif data.get("method") == "watch/cancelled":
                    if data["params"].get("reason") != "shutdown":
                        raise AssertionError(f"the watch was cancelled: {data}")
                    return False
                if self.stop.is_set() and self._caught_up():
                    return True

    def _caught_up(self) -> bool:
        with self.lock:
            acked = dict(self.acked)
        seen = {(e["key"], e.get("value")) for e in self.events if e["type"] == "set"}
        return all((k, v) in seen for k, v in acked.items())


@pytest.fixture
def single() -> Iterator[list[Node]]:
    root = short_tmpdir()
    node = Node("n1", data=root / "n1")
    try:
        node.start()
        yield [node]
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


def restart_under_load(nodes: list[Node], target: Node, role: str) -> dict[str, Any]:
    """Restart ``role`` of ``target`` (SIGTERM via supervisord) while loading every node;
    assert that nobody noticed; the numbers."""
    load = Load(nodes, watch_on=target)
    load.start()
    wait_for(lambda: len(load.acked) >= 2 * WRITERS, 30, "load running")
    time.sleep(1.0)
    began = time.monotonic()
    if role == "front":  # a hand-over: the new front serves before the old one stops
        old_front = serving_front(target.data)
        new_front = target.control().hand_over_front()
        assert new_front != old_front
        assert wait_gone(old_front), "the old front did not finish draining"
    else:  # through its keeper: the successor imports before the old process stops
        old_pid = serving(target.data, role)
        assert old_pid
        new_pid = target.control().hand_over(role)  # waits until the new one was told to go
        assert new_pid != old_pid and wait_gone(old_pid, timeout=0)
    # Serving again: a write and a consistent read through the node both succeed.
    wait_for(
        lambda: (
            target.put(f"{PREFIX}probe", 1).status == 200
            and target.get(f"{PREFIX}probe", consistent="true").status == 200
        ),
        30,
        "serving again",
    )
    time.sleep(1.5)
    load.finish()
    during = [d for s, d in load.latencies if began <= s]
    numbers = {
        "role": role,
        "requests": len(load.latencies),
        "during": sum(1 for s, _ in load.latencies if began <= s < began + 2.0),
        "failed": len(load.failed),
        "max_latency_s": round(max(during, default=0.0), 2),
        "events": len(load.events),
        "watch_resumed": load.resumed,
    }
    print("restart numbers:", numbers)
    assert load.watch_error is None, repr(load.watch_error)
    assert not load.failed, load.failed[:10]
    assert load.ok > 0
    # only the front's own watchers reconnect, once; other restarts keep the stream
    assert load.resumed == (1 if role == "front" else 0), load.resumed
    # The watch: every revision once, in order, no gap.
    revisions = [e["revision"] for e in load.events]
    assert revisions == list(range(revisions[0], revisions[0] + len(revisions))), (
        "gap, duplicate or reordering in the watch"
    )
    # Every acknowledged write is there (one writer per key: its last ack is the value).
    for key, value in load.acked.items():
        resp = target.get(key, consistent="true")
        assert resp.status == 200 and resp.json()["value"] == value, (key, value, resp.body)
    return numbers


@pytest.mark.parametrize("role", ["storage", "consensus", "front"])
def test_single_node_restart_is_invisible(single: list[Node], role: str) -> None:
    restart_under_load(single, single[0], role)


@pytest.mark.parametrize("role", ["storage", "consensus", "front"])
@pytest.mark.parametrize("which", ["leader", "follower"])
def test_cluster_restart_is_invisible(fresh_cluster: Cluster, which: str, role: str) -> None:
    leader = fresh_cluster.wait_for_leader()
    target = leader if which == "leader" else fresh_cluster.followers(leader)[0]
    restart_under_load(list(fresh_cluster.nodes.values()), target, role)
    if which == "leader" and role == "consensus":
        # The leader handed over instead of leaving the others to an election timeout.
        log = (target.data / "logs" / "consensus.log").read_text(errors="replace")
        assert "transferring leadership" in log, target.logs()


def test_remote_rolling_restart_with_ctl_endpoint(single: list[Node]) -> None:
    """``ctl --endpoint URL restart all``: every role gets a new process, one after
    the other, and the node serves again; the agent key may not restart anything."""
    import subprocess
    import sys

    from tests.integration.helpers import AGENT_KEY, ROOT

    node = single[0]
    assert (
        node.request("POST", "/api/v1/cluster/roles/storage/restart", auth=AGENT_KEY).status == 403
    )
    bad = node.request("POST", "/api/v1/cluster/roles/nope/restart")
    assert bad.status == 400 and bad.json()["error"]["code"] == "invalid_request"
    roles = ("storage", "consensus", "front")
    before = {r: serving(node.data, r) for r in roles}  # what each role's keeper runs
    done = subprocess.run(
        [sys.executable, "-m", "concordance.cli", "ctl", "--endpoint", node.url,
         "--api-key", API_KEY, "restart", "all"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=node.env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    after = {r: serving(node.data, r) for r in roles}
    assert all(after[r] and after[r] != before[r] for r in roles), (before, after)
    assert node.put(f"{PREFIX}after", 1).status == 200
