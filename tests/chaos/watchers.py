"""Watchers: WebSocket ``/stream`` subscribers on the test prefix that survive node failures.

A watcher subscribes with ``sinceRevision`` = the last revision it saw (0 at first, so it
also gets the changes made before it connected) and records every event. Whenever its
connection ends (node killed, removed, paused past the WebSocket heartbeat, a
``watch/cancelled``), it moves to the next node and subscribes again from where it was.
It also moves on its own every few seconds (seeded), so resubscription is exercised on
every node, not only after failures. A :class:`Poller` does the same with long-polls of
``GET /api/v1/changes`` (``waitMs``), resuming from the last answer's ``revision``.

Anything that breaks API.md §4's promise (in revision order, no gaps, no duplicates) is
visible in :attr:`Watcher.events`; the harness compares it with the authoritative change
feed. Out-of-order or repeated revisions are also noted when they arrive.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

HEARTBEAT = 3.0  # seconds: a paused node's socket is given up after about this long


def event_tuple(e: dict[str, Any]) -> tuple[Any, ...]:
    """What must match between a watcher and the change feed."""
    return (e.get("revision"), e.get("key"), e.get("type"), e.get("version"), e.get("value"))


class Watcher:
    def __init__(
        self,
        wid: int,
        rng: random.Random,
        urls: Callable[[], list[str]],
        prefix: str,
        http: aiohttp.ClientSession,
        move_every: tuple[float, float] = (4.0, 12.0),
    ) -> None:
        self.wid = wid
        self.rng = rng
        self.urls = urls
        self.prefix = prefix
        self.http = http
        self.move_every = move_every
        self.node = wid
        self.last = 0  # highest revision seen
        self.events: list[tuple[Any, ...]] = []
        self.disorder: list[dict[str, Any]] = []  # events at or below ``last`` when they came
        self.sessions: list[dict[str, Any]] = []  # (node, since, started, ended, why)
        self.cancels: list[str] = []
        self.stopping = False
        self._ids = itertools.count(1)

    async def run(self) -> None:
        while not self.stopping:
            urls = self.urls()
            url = urls[self.node % len(urls)]
            session: dict[str, Any] = {"node": url, "since": self.last, "start": time.monotonic()}
            self.sessions.append(session)
            try:
                session["end_reason"] = await self._session(url)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
                session["end_reason"] = f"{type(e).__name__}: {e}"[:120]
            session["end"] = time.monotonic()
            session["events"] = self.last
            if not self.stopping:
                self.node += 1
                await asyncio.sleep(0.1)

    async def _session(self, url: str) -> str:
        hold = self.rng.uniform(*self.move_every)
        async with self.http.ws_connect(
            f"{url}/stream", heartbeat=HEARTBEAT, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)
        ) as ws:
            rid = next(self._ids)
            await ws.send_json(
                {"jsonrpc": "2.0", "id": rid, "method": "watch/subscribe",
                 "params": {"prefix": self.prefix, "sinceRevision": self.last}}
            )  # fmt: skip
            loop = asyncio.get_running_loop()
            deadline = loop.time() + hold
            while not self.stopping:
                left = deadline - loop.time()
                if left <= 0:
                    return "moving on"
                try:
                    msg = await ws.receive(timeout=min(left, 0.5))
                except TimeoutError:
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return f"socket {msg.type.name}"
                data = msg.json()
                if data.get("id") == rid:
                    if "error" in data:
                        return f"subscribe error {data['error']}"
                elif data.get("method") == "watch/change":
                    self._take(data["params"]["events"], url)
                elif data.get("method") == "watch/cancelled":
                    reason = str(data["params"].get("reason"))
                    self.cancels.append(reason)
                    return f"cancelled: {reason}"
            return "stopped"

    def _take(self, events: list[dict[str, Any]], url: str) -> None:
        for e in events:
            rev = e.get("revision")
            if not isinstance(rev, int) or rev <= self.last:
                self.disorder.append({"after": self.last, "event": e, "node": url})
            else:
                self.last = rev
            self.events.append(event_tuple(e))

    async def wait_until(self, revision: int, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.last < revision and loop.time() < deadline:
            await asyncio.sleep(0.1)
        return self.last >= revision


class Poller(Watcher):
    """A watcher through long-polls: ``GET /api/v1/changes?since=R&waitMs=...``, moving on
    like a WebSocket watcher; ``since`` is the ``revision`` of the previous answer."""

    async def _session(self, url: str) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.rng.uniform(*self.move_every)
        since = self.last
        while not self.stopping and loop.time() < deadline:
            query = f"prefix={self.prefix}&since={since}&limit=500&waitMs=1000"
            async with self.http.get(
                f"{url}/api/v1/changes?{query}", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                if resp.status != 200:
                    return f"status {resp.status}"
                page = await resp.json()
            self._take(page["changes"], url)
            since = max(since, page["revision"])
        return "moving on"
