"""``make bench``: throughput, latency and memory of a real single node.

Starts a node (supervisor + three roles) on a free port with a fresh data dir,
drives it over HTTP with concurrent clients, and prints a table: writes,
plain and linearizable reads, a compare-and-swap storm, watch delivery
latency, and the resident memory of each role. When an ``etcd`` binary is on
the PATH (Debian's etcd-server), the same writes and reads run against a
single etcd through its JSON gateway, as the reference. Results also go to
``.bench/latest.json`` so runs can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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


async def _run_etcd(url: str, seconds: float, concurrency: int) -> dict[str, Any]:
    """The same writes and reads against etcd's v3 JSON gateway."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    conn = aiohttp.TCPConnector(limit=concurrency * 2)
    async with aiohttp.ClientSession(connector=conn) as session:

        async def put(w: int, i: int) -> bool:
            value = json.dumps({"theme": "dark", "n": i})
            body = {"key": b64(f"tenant:bench/w{w}/k{i % 100}"), "value": b64(value)}
            async with session.post(f"{url}/v3/kv/put", json=body) as r:
                await r.read()
                return r.status == 200

        def reader(serializable: bool) -> Callable[[int, int], Awaitable[bool]]:
            async def get(w: int, i: int) -> bool:
                body = {"key": b64(f"tenant:bench/w{w}/k{i % 100}"), "serializable": serializable}
                async with session.post(f"{url}/v3/kv/range", json=body) as r:
                    await r.read()
                    return r.status == 200

            return get

        return {
            "etcd put (1 client)": await _drive(1, seconds, put),
            f"etcd put ({concurrency} clients)": await _drive(concurrency, seconds, put),
            f"etcd get serializable ({concurrency} clients)": await _drive(
                concurrency, seconds, reader(True)
            ),
            f"etcd get linearizable ({concurrency} clients)": await _drive(
                concurrency, seconds, reader(False)
            ),
        }


def _etcd(seconds: float, concurrency: int) -> dict[str, Any]:
    binary = shutil.which("etcd")
    if binary is None:
        return {}
    root = Path(tempfile.mkdtemp(prefix="cc-etcd-", dir="/tmp"))
    client, peer = _free_port(), _free_port()
    url = f"http://127.0.0.1:{client}"
    proc = subprocess.Popen(
        [binary, "--data-dir", str(root), "--listen-client-urls", url,
         "--advertise-client-urls", url, "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"default=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_http(f"{url}/health")
        results = asyncio.run(_run_etcd(url, seconds, concurrency))
        results["etcd memory"] = {"etcd rss MiB": round(_rss_mib(proc.pid), 1)}
        return results
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def _wait_http(url: str, timeout: float = 30.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} never answered")


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
        _wait_http(f"{url}/readyz")
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
    results.update(_etcd(args.seconds, args.concurrency))
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
