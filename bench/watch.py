"""Watch fan-out: many watchers on one prefix, a steady trickle of writes.

For every write the time from its acknowledgement (the PUT's answer) to its
receipt by each watcher is recorded; a receipt before the acknowledgement
counts as 0. Every watcher must see every write: the missing ones are
counted, not hidden. The row also carries each write's own latency
(``write_p50``/``write_p99``) and the receipt counted from the write's start
(``sent_p50``/``sent_p99``), which ordering tricks cannot improve.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable

import aiohttp

from bench.workloads import b64, percentile, summary

PREFIX = "tenant:watch/"


async def watch_fanout(
    system: str,
    url: str,
    headers: dict[str, str],
    watchers: int,
    rate: float,
    seconds: float,
) -> dict[str, float]:
    writes = max(1, int(rate * seconds))
    sent: dict[int, float] = {}
    acked: dict[int, float] = {}
    received: dict[int, list[float]] = {n: [] for n in range(writes)}
    ready = asyncio.Event()
    subscribed = 0
    conn = aiohttp.TCPConnector(limit=watchers + 8)
    async with aiohttp.ClientSession(
        base_url=url, headers=headers, connector=conn, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:

        def on_value(n: int) -> None:
            if 0 <= n < writes:
                received[n].append(time.perf_counter())

        def on_subscribed() -> None:
            nonlocal subscribed
            subscribed += 1
            if subscribed == watchers:
                ready.set()

        watch = _cc_watcher if system == "concordance" else _etcd_watcher
        tasks = [
            asyncio.create_task(watch(session, on_subscribed, on_value)) for _ in range(watchers)
        ]
        try:
            await asyncio.wait_for(ready.wait(), 120)
            put = _cc_put if system == "concordance" else _etcd_put
            start = time.perf_counter()
            for n in range(writes):
                await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
                sent[n] = time.perf_counter()
                await put(session, n)
                acked[n] = time.perf_counter()
            settle = time.perf_counter() + 5
            while time.perf_counter() < settle and any(
                len(v) < watchers for v in received.values()
            ):
                await asyncio.sleep(0.05)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    receipts = [(n, at) for n, ats in received.items() if n in acked for at in ats]
    delays = [max(0.0, at - acked[n]) for n, at in receipts]
    missing = sum(watchers - len(v) for v in received.values())
    row = summary(delays, seconds, missing)
    # Beside ack->receipt (the measure), what it hides: when the writer
    # heard back, and the receipt counted from the write's start (a server that
    # fed its watchers before answering the writer scores 0 on ack->receipt).
    from_send = sorted(at - sent[n] for n, at in receipts)
    took = sorted(acked[n] - sent[n] for n in acked)
    row["sent_p50"] = 1000 * percentile(from_send, 0.50)
    row["sent_p99"] = 1000 * percentile(from_send, 0.99)
    row["write_p50"] = 1000 * percentile(took, 0.50)
    row["write_p99"] = 1000 * percentile(took, 0.99)
    return row


Callback = Callable[[], None]
ValueCallback = Callable[[int], None]


async def _cc_watcher(s: aiohttp.ClientSession, subscribed: Callback, got: ValueCallback) -> None:
    async with s.ws_connect("/stream") as ws:
        await ws.send_json(
            {"jsonrpc": "2.0", "id": 1, "method": "watch/subscribe", "params": {"prefix": PREFIX}}
        )
        async for msg in ws:
            data = json.loads(msg.data)
            if data.get("id") == 1:
                subscribed()
            elif data.get("method") == "watch/change":
                for event in data["params"]["events"]:
                    got(int(event["value"]))


async def _etcd_watcher(s: aiohttp.ClientSession, subscribed: Callback, got: ValueCallback) -> None:
    end = PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)
    body = {"create_request": {"key": b64(PREFIX), "range_end": b64(end)}}
    async with s.post("/v3/watch", json=body) as r:
        async for line in r.content:
            if not line.strip():
                continue
            result = json.loads(line).get("result", {})
            if result.get("created"):
                subscribed()
            for event in result.get("events", ()):
                got(int(base64.b64decode(event["kv"]["value"])))


async def _cc_put(s: aiohttp.ClientSession, n: int) -> None:
    async with s.put(f"/api/v1/kv/{PREFIX}k", json={"value": n}) as r:
        await r.read()


async def _etcd_put(s: aiohttp.ClientSession, n: int) -> None:
    async with s.post("/v3/kv/put", json={"key": b64(PREFIX + "k"), "value": b64(str(n))}) as r:
        await r.read()
