"""The TTL workload: short-lived keys written and read under the same faults.

The linearizability model has no clock, so expiry is judged on its own here (API.md §2):

* no read, on any node, consistent or not, returns an entry whose ``expiresAt`` had passed
  when the read was sent (the harness and the nodes share one clock: same machine);
* every key whose last write had a TTL is eventually deleted by an ``expire`` change, and a
  key whose last write had none is still there afterwards, with ``expiresAt`` null (a write
  without a TTL clears an earlier one);
* ``expire`` changes follow the version rules like deletes (checked with the feed) and reach
  the watchers like any change.

Its writes go into the same :class:`History` (so every value in the feed is attributable
and acknowledged writes are checked against it) under ``TTL_PREFIX``, which the
linearizability check leaves out.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from concordance.testing.linearizability import Write
from tests.chaos.checks import Verdict
from tests.chaos.clients import PREFIX, TIMEOUT, History, do_request

TTL_PREFIX = f"{PREFIX}ttl/"
SKEW_MS = 2  # wall-clock rounding between the harness and the nodes (same machine)


@dataclass
class TtlRead:
    node: str
    key: str
    sent_ms: int  # wall clock when the read was sent
    consistent: bool
    status: int | None
    entry: dict[str, Any] | None = None


class TtlClient:
    def __init__(
        self,
        cid: int,
        rng: random.Random,
        urls: Callable[[], list[str]],
        http: aiohttp.ClientSession,
        history: History,
        keys: int = 3,
    ) -> None:
        self.cid = cid
        self.rng = rng
        self.urls = urls
        self.http = http
        self.history = history
        self.keys = [f"{TTL_PREFIX}k{i}" for i in range(keys)]
        self.reads: list[TtlRead] = []
        self.ttl_of: dict[str, int | None] = {}  # value written -> ttlMs (None: no TTL)
        self.seq = 0
        self.stopping = False

    async def run(self) -> None:
        while not self.stopping:
            key = self.rng.choice(self.keys)
            urls = self.urls()
            url = urls[self.rng.randrange(len(urls))]
            if self.rng.random() < 0.4:
                await self.write(url, key)
            else:
                await self.read(url, key, consistent=self.rng.random() < 0.5)
            await asyncio.sleep(self.rng.uniform(0.005, 0.05))

    async def write(self, url: str, key: str) -> None:
        self.seq += 1
        value = f"t{self.cid}-{self.seq}"
        ttl = self.rng.randint(200, 2500) if self.rng.random() < 0.8 else None
        body: dict[str, Any] = {"value": value}
        if ttl is not None:
            body["ttlMs"] = ttl
        self.ttl_of[value] = ttl
        record = await do_request(
            self.http, self.cid, url, "PUT", f"/api/v1/kv/{key}", body, key, "set",
            Write(value), self.history,
        )  # fmt: skip
        self.history.add(record)

    async def read(self, url: str, key: str, consistent: bool) -> None:
        sent = time.time_ns() // 1_000_000
        read = TtlRead(url, key, sent, consistent, None)
        query = "?consistent=true" if consistent else ""
        try:
            async with self.http.get(
                f"{url}/api/v1/kv/{key}{query}", timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            ) as resp:
                read.status = resp.status
                if resp.status == 200:
                    read.entry = await resp.json()
        except (aiohttp.ClientError, TimeoutError, OSError):
            pass
        self.reads.append(read)


def pending_expiries(feed: list[dict[str, Any]], ttl_of: dict[str, int | None]) -> list[str]:
    """TTL keys whose last change is a set with a TTL (so an ``expire`` is still due)."""
    last: dict[str, dict[str, Any]] = {}
    for e in feed:
        if e["key"].startswith(TTL_PREFIX):
            last[e["key"]] = e
    return [
        k
        for k, e in last.items()
        if e["type"] == "set" and ttl_of.get(str(e.get("value"))) is not None
    ]


def check(
    client: TtlClient, feed: list[dict[str, Any]], listings: dict[str, list[dict[str, Any]]]
) -> Verdict:
    """``listings``: node id -> the node's final entries (all of the prefix)."""
    v = Verdict("ttl", True, "")
    served = 0
    for r in client.reads:
        if r.entry is None:
            continue
        served += 1
        expires = r.entry.get("expiresAt")
        if expires is not None and expires + SKEW_MS <= r.sent_ms:
            v.add(
                f"{r.node} returned {r.key} {r.entry} at {r.sent_ms}, {r.sent_ms - expires} ms"
                f" after it expired (consistent={r.consistent})"
            )
    expire_events = [e for e in feed if e["type"] == "expire"]
    for key in pending_expiries(feed, client.ttl_of):
        v.add(f"{key}: its last write had a TTL, and no expire change followed")
    last: dict[str, dict[str, Any]] = {}
    for e in feed:
        if e["key"].startswith(TTL_PREFIX):
            last[e["key"]] = e
    for node_id, entries in listings.items():
        listed = {e["key"]: e for e in entries if e["key"].startswith(TTL_PREFIX)}
        for key, e in last.items():
            keeps = e["type"] == "set" and client.ttl_of.get(str(e.get("value"))) is None
            got = listed.get(key)
            if keeps and (got is None or got.get("expiresAt") is not None):
                v.add(f"{node_id}: {key} was last written without a TTL, listed as {got}")
            if not keeps and got is not None:
                v.add(f"{node_id}: {key} should be gone ({e['type']} last), listed as {got}")
    writes = sum(1 for r in client.history.records if r.op.key.startswith(TTL_PREFIX))
    v.summary = (
        f"{writes} TTL writes, {served} reads served, {len(expire_events)} expire changes, "
        f"{len(client.reads) - served} reads without an entry"
    )
    return v


async def wait_expired(
    feed_of: Callable[[], Any], ttl_of: dict[str, int | None], timeout: float
) -> list[dict[str, Any]]:
    """The feed, once no TTL key awaits its expiry (or at the deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        feed: list[dict[str, Any]] = await feed_of()
        if not pending_expiries(feed, ttl_of) or loop.time() > deadline:
            return feed
        await asyncio.sleep(0.3)
