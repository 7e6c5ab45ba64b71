"""``make bench``: throughput, latency and memory of a real single node.

Starts a node (supervisor + three roles) on a free port with a fresh data dir,
drives it over HTTP with concurrent clients, and prints a table: writes,
plain and linearizable reads, a compare-and-swap storm, watch delivery
latency, and the resident memory of each role. Results also go to
``.bench/latest.json`` so runs can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _drive(
    concurrency: int, seconds: float, op: Callable[[int, int], Awaitable[bool]]
) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal errors
        i = 0
        while time.monotonic() < deadline:
            start = time.perf_counter()
            ok = await op(w, i)
            latencies.append(time.perf_counter() - start)
            errors += not ok
            i += 1

    began = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    took = time.monotonic() - began
    latencies.sort()
    return {
        "ops_per_s": len(latencies) / took,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "errors": errors,
    }


async def _watch_latency(url: str, session: aiohttp.ClientSession, n: int) -> dict[str, float]:
    ws = await session.ws_connect(f"{url}/stream")
    await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "watch/subscribe",
                        "params": {"prefix": "tenant:watch/"}})  # fmt: skip
    await ws.receive_json()
    delays = []
    for i in range(n):
        sent = time.perf_counter()
        async with session.put(f"{url}/api/v1/kv/tenant:watch/k", json={"value": i}) as resp:
            await resp.read()
        while True:
            msg = await ws.receive_json(timeout=10)
            if msg.get("method") == "watch/change":
                delays.append(time.perf_counter() - sent)
                break
    await ws.close()
    return {"write_to_event_p50_ms": 1000 * statistics.median(delays)}


async def _run(url: str, seconds: float, concurrency: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {KEY}"}
    conn = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(headers=headers, connector=conn) as session:

        async def put(w: int, i: int) -> bool:
            body = {"value": {"theme": "dark", "n": i}}
            async with session.put(f"{url}/api/v1/kv/tenant:bench/w{w}/k{i % 100}", json=body) as r:
                await r.read()
                return r.status == 200

        async def get(w: int, i: int) -> bool:
            async with session.get(f"{url}/api/v1/kv/tenant:bench/w{w}/k{i % 100}") as r:
                await r.read()
                return r.status in (200, 404)

        async def get_lin(w: int, i: int) -> bool:
            key = f"tenant:bench/w{w}/k{i % 100}"
            async with session.get(f"{url}/api/v1/kv/{key}?consistent=true") as r:
                await r.read()
                return r.status in (200, 404)

        async def cas(w: int, i: int) -> bool:
            key = f"{url}/api/v1/kv/tenant:bench/cas"
            async with session.get(key) as r:
                version = (await r.json())["version"] if r.status == 200 else 0
            async with session.put(key, json={"value": w, "ifVersion": version}) as r:
                await r.read()
                return r.status in (200, 409)

        results: dict[str, Any] = {}
        results["put (1 client)"] = await _drive(1, seconds, put)
        results[f"put ({concurrency} clients)"] = await _drive(concurrency, seconds, put)
        results[f"get ({concurrency} clients)"] = await _drive(concurrency, seconds, get)
        results[f"get consistent ({concurrency} clients)"] = await _drive(
            concurrency, seconds, get_lin
        )
        results["cas storm (8 clients, 1 key)"] = await _drive(8, seconds, cas)
        results["watch"] = await _watch_latency(url, session, 100)
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cc-bench-", dir="/tmp"))
    port = _free_port()
    env = {**os.environ, "CONCORDANCE_API_KEY": KEY}
    node = subprocess.Popen(
        [sys.executable, "-m", "concordance.cli", "node", "--id", "n1",
         "--listen", f"127.0.0.1:{port}", "--data", str(root / "n1")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    pass
                import urllib.request

                if urllib.request.urlopen(f"{url}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        results = asyncio.run(_run(url, args.seconds, args.concurrency))
        from concordance.supervise import Control

        states = Control(root / "n1").states()
        results["memory"] = {
            f"{name} rss MiB": round(_rss_mib(s.pid), 1) for name, s in states.items() if s.pid
        }
    finally:
        node.send_signal(signal.SIGTERM)
        node.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    for name, row in results.items():
        cells = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in row.items())  # fmt: skip
        print(f"{name:<34} {cells}")
    out = Path(".bench")
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
