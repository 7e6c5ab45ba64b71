"""The cluster under test: real nodes (``tests.integration.helpers.Node``) whose peer links all
go through a fault-injecting :class:`~tests.integration.netproxy.Net`, with room to replace
members.

Node ids are never reused, so replacing a member means a new id with a fresh data dir that
joins with ``--join``. Every node's ``--peer-overrides`` is fixed when it starts, so the
ids and ports of future members (*spares*) are allocated up front and the Net holds their
links from the beginning: a joiner's traffic is proxied like everyone else's.

Everything here that blocks (starting, killing, the supervisor's XML-RPC) is meant to be
called through ``asyncio.to_thread``; :meth:`ChaosCluster.statuses` is async (aiohttp).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from concordance.node.supervise import descendants
from tests.chaos.clients import session
from tests.integration.helpers import API_KEY, Node, free_port, short_tmpdir, wait_for
from tests.integration.netproxy import Net

# Small snapshot thresholds: restarted and partitioned nodes often catch up by snapshot.
SNAPSHOT_ENV = {"CONCORDANCE_SNAPSHOT_EVERY": "300", "CONCORDANCE_SNAPSHOT_TRAILING": "50"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


class ChaosCluster:
    """``size`` voters n1..nN plus ``spares`` reserved ids for members added later."""

    def __init__(self, size: int, spares: int = 2, root: Path | None = None) -> None:
        self.root = root or short_tmpdir()
        self.size = size
        ids = [f"n{i}" for i in range(1, size + spares + 1)]
        self.ports = reserve_ports(len(ids))
        self.spares = ids[size:]
        self.net = Net(self.ports)
        peers = ",".join(f"{i}=127.0.0.1:{self.ports[i]}" for i in ids[:size])
        self.nodes: dict[str, Node] = {i: self._node(i, peers=peers) for i in ids[:size]}
        self.members: list[str] = ids[:size]  # ids that should be members (in id order)
        self.retired: list[Node] = []  # removed members, stopped
        self.paused: dict[str, list[int]] = {}  # node id -> pids stopped with SIGSTOP
        self.http: aiohttp.ClientSession | None = None

    def _node(self, node_id: str, peers: str = "", join: str = "") -> Node:
        return Node(
            node_id,
            data=self.root / node_id,
            port=self.ports[node_id],
            peers=peers,
            join=join,
            extra_env=SNAPSHOT_ENV,
            peer_overrides=self.net.overrides(node_id),
        )

    # -- lifecycle --------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        for node in self.nodes.values():
            node.start(wait=False)
        for node in self.nodes.values():
            node.wait_ready(timeout)

    async def open(self) -> None:
        self.http = session(AUTH)

    def stop(self) -> None:
        """Stop every node (paused ones are woken first) and the proxies; by pid only."""

        def stop(node: Node) -> None:
            with contextlib.suppress(Exception):
                self.resume(node)
            with contextlib.suppress(Exception):
                node.stop()

        every = [*self.nodes.values(), *self.retired]
        with ThreadPoolExecutor(max(1, len(every))) as pool:
            list(pool.map(stop, every))
        self.net.close()

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- views ------------------------------------------------------------------------------
    def live(self) -> list[Node]:
        """Member nodes whose process runs (paused ones included)."""
        return [self.nodes[i] for i in self.members if self.nodes[i].running]

    def urls(self) -> list[str]:
        """Where clients may send requests: every member, running or not."""
        return [self.nodes[i].url for i in self.members]

    async def status(self, node: Node, timeout: float = 2.0) -> dict[str, Any] | None:
        assert self.http is not None
        try:
            async with self.http.get(
                f"{node.url}/api/v1/cluster/status", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                if resp.status != 200:
                    return None
                body: dict[str, Any] = await resp.json()
                return body
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
            return None

    async def statuses(self) -> dict[str, dict[str, Any] | None]:
        nodes = [self.nodes[i] for i in self.members]
        got = await asyncio.gather(*(self.status(n) for n in nodes))
        return {n.node_id: s for n, s in zip(nodes, got, strict=True)}

    async def leader(self) -> Node | None:
        """The leader a majority of the members back in its term, or None."""
        statuses = await self.statuses()
        majority = len(self.members) // 2 + 1
        for node_id, st in statuses.items():
            if not st or st.get("role") != "leader":
                continue
            backers = sum(
                1
                for other in statuses.values()
                if other and other.get("leaderId") == node_id and other.get("term") == st["term"]
            )
            if backers >= majority:
                return self.nodes[node_id]
        return None

    async def wait_leader(self, timeout: float = 30.0) -> Node:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            leader = await self.leader()
            if leader is not None:
                return leader
            await asyncio.sleep(0.2)
        raise AssertionError(f"no leader within {timeout}s: {await self.statuses()}")

    # -- faults on processes (blocking) ---------------------------------------------------
    def pids(self, node: Node) -> list[int]:
        """The supervisor and every process below it (the roles, the front under its
        keeper), each parent first: a parent must not see its children stop."""
        assert node.proc is not None
        return descendants([node.proc.pid])

    def pause(self, node: Node) -> list[int]:
        pids = self.pids(node)
        for pid in pids:  # the supervisor first: it must not see its roles stop
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self.paused[node.node_id] = pids
        return pids

    def resume(self, node: Node) -> None:
        for pid in reversed(self.paused.pop(node.node_id, [])):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    # -- membership -------------------------------------------------------------------------
    def add_node(self, node_id: str, join: str) -> Node:
        """Start a spare as a new node that joins through ``join`` (does not wait)."""
        self.spares.remove(node_id)
        node = self._node(node_id, join=join)
        self.nodes[node_id] = node
        self.members.append(node_id)
        node.start(wait=False)
        return node

    def retire(self, node_id: str) -> Node:
        """Forget a removed member and stop it; its data dir is deleted."""
        node = self.nodes.pop(node_id)
        self.members.remove(node_id)
        self.retired.append(node)
        with contextlib.suppress(Exception):
            node.stop()
        shutil.rmtree(node.data, ignore_errors=True)
        return node

    # -- final state ------------------------------------------------------------------------
    async def listing(self, node: Node, prefix: str) -> dict[str, Any]:
        """Every entry under ``prefix`` (all pages) and the revision of the last page."""
        assert self.http is not None
        entries: list[dict[str, Any]] = []
        cursor = ""
        while True:
            query = f"prefix={urllib.parse.quote(prefix, safe='')}&limit=1000"
            if cursor:
                query += f"&cursor={urllib.parse.quote(cursor, safe='')}"
            async with self.http.get(
                f"{node.url}/api/v1/kv?{query}", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                resp.raise_for_status()
                page = await resp.json()
            entries += page["entries"]
            cursor = page["next"] or ""
            if not cursor:
                return {"entries": entries, "revision": page["revision"]}

    async def changes(self, node: Node, prefix: str) -> list[dict[str, Any]]:
        """The authoritative change feed under ``prefix`` from revision 0 (all pages)."""
        assert self.http is not None
        out: list[dict[str, Any]] = []
        since = 0
        while True:
            query = f"prefix={urllib.parse.quote(prefix, safe='')}&since={since}&limit=10000"
            async with self.http.get(
                f"{node.url}/api/v1/changes?{query}", timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                resp.raise_for_status()
                page = await resp.json()
            out += page["changes"]
            if not page["changes"] or page["revision"] <= since:
                return out
            since = page["revision"]


def reserve_ports(count: int) -> dict[str, int]:
    """Free ports for n1..n{count}, below the kernel's ephemeral range when possible.

    A port from ``free_port()`` is free only until the kernel hands it out again, and it
    does so for every outgoing connection and every proxy listener (bound to port 0):
    with ~150 proxy links and busy clients, a node sometimes found its port taken at
    start. Ports outside the ephemeral range are never handed out that way.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    pick = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < count:
        port = pick.randrange(10_000, low) if low > 11_000 else free_port()
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return {f"n{i}": port for i, port in enumerate(ports, start=1)}


def digest(entries: list[dict[str, Any]]) -> str:
    """A short hash of a listing (every field of every entry)."""
    text = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def wait_process_gone(node: Node, timeout: float = 10.0) -> None:
    wait_for(lambda: not node.running, timeout, f"{node.node_id} to exit")
