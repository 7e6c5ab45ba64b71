"""The operations of the benchmark, the same for both systems: closed-loop clients over HTTP.

Each client sends one request, waits for its answer, and sends the next, for
a fixed time. Every request is counted; a non-2xx answer is an error (shown
in the table, never hidden).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

Op = Callable[[aiohttp.ClientSession, int, int], Awaitable[bool]]


def b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def summary(seconds_each: list[float], took: float, errors: int) -> dict[str, float]:
    """A table row: operations per second, latency percentiles in ms, errors."""
    done = sorted(seconds_each)
    return {
        "ops": len(done) / took,
        "p50": 1000 * percentile(done, 0.50),
        "p90": 1000 * percentile(done, 0.90),
        "p99": 1000 * percentile(done, 0.99),
        "errors": errors,
    }


async def drive(
    url: str, headers: dict[str, str], clients: int, seconds: float, op: Op
) -> dict[str, float]:
    """Run ``clients`` closed loops of ``op`` for ``seconds``; ops/s and latency percentiles."""
    latencies: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=clients + 4)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        base_url=url, headers=headers, connector=conn, timeout=timeout
    ) as session:
        deadline = time.monotonic() + seconds

        async def client(c: int) -> None:
            nonlocal errors
            i = 0
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    ok = await op(session, c, i)
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok
                i += 1

        began = time.monotonic()
        await asyncio.gather(*(client(c) for c in range(clients)))
        took = time.monotonic() - began
    return summary(latencies, took, errors)


def _value(i: int, size: int) -> Any:
    if size <= 0:
        return {"theme": "dark", "n": i}
    return "x" * size


# -- Concordance ------------------------------------------------------------------
def cc_put(size: int = 0, keys: int = 100) -> Op:
    async def op(s: aiohttp.ClientSession, c: int, i: int) -> bool:
        body = json.dumps({"value": _value(i, size)})
        async with s.put(f"/api/v1/kv/tenant:bench/c{c}/k{i % keys}", data=body) as r:
            await r.read()
            return r.status == 200

    return op


def cc_get(consistent: bool = False) -> Op:
    query = "?consistent=true" if consistent else ""

    async def op(s: aiohttp.ClientSession, c: int, i: int) -> bool:
        async with s.get(f"/api/v1/kv/tenant:bench/c{c % 16}/k{i % 100}{query}") as r:
            await r.read()
            return r.status in (200, 404)

    return op


def mixed(put: Op, get: Op) -> Op:
    """One write in ten, the rest reads."""

    async def op(s: aiohttp.ClientSession, c: int, i: int) -> bool:
        return await (put if i % 10 == 0 else get)(s, c, i)

    return op


# -- etcd (v3 JSON gateway) ---------------------------------------------------------
def etcd_put(size: int = 0, keys: int = 100) -> Op:
    async def op(s: aiohttp.ClientSession, c: int, i: int) -> bool:
        value = json.dumps(_value(i, size))
        body = {"key": b64(f"tenant:bench/c{c}/k{i % keys}"), "value": b64(value)}
        async with s.post("/v3/kv/put", json=body) as r:
            await r.read()
            return r.status == 200

    return op


def etcd_get(consistent: bool = False) -> Op:
    async def op(s: aiohttp.ClientSession, c: int, i: int) -> bool:
        body = {"key": b64(f"tenant:bench/c{c % 16}/k{i % 100}"), "serializable": not consistent}
        async with s.post("/v3/kv/range", json=body) as r:
            await r.read()
            return r.status == 200

    return op
