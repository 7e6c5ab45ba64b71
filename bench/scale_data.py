"""``make bench SCALE=1``, data part: Concordance and etcd 3.4 holding many 1 KiB keys.

For each size (100k and 1M keys; ``--quick``: 20k), over 100 tenants, on 3
fresh members of each system in the same run, one after the other:

* bulk load: batches of 128 keys (Concordance ``POST /batch``, etcd a ``txn``
  of 128 puts), 8 batches in flight; keys/s;
* disk: the leader's state.db + raft.db (with WAL files) against etcd's bbolt
  ``db`` + WAL, both keeping the whole history (Concordance's change
  retention is raised to hold every revision, as etcd keeps every revision
  until compacted);
* point-read p99 (serializable / local reads, one client) and the list of a
  10,000-key tenant (pages of 1,000), each against the same measure taken
  before the bulk load, when the store held only that tenant;
* a new member's catch-up (Concordance ``--join``, etcd ``member add`` then
  start), and a write's p99 during it (Concordance compacts its log every 500
  entries here, so the new member needs a snapshot, made on demand and
  streamed) against the write p99 just before;
* a follower's restart to ready (with its data) and every role's RSS.

The machine is shared: compare the ratio columns, which come from one run.
Results also go to ``.bench/scale_data.json``.

    python -m bench.scale_data [--quick] [--keys N ...] [--only concordance] [--source DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.clusters import (
    ConcordanceSystem,
    EtcdSystem,
    Member,
    System,
    etcd_binary,
    free_port,
    wait_until,
)
from bench.workloads import b64, percentile

VALUE = "x" * 1022  # 1,024 bytes of JSON text
TENANTS = 100
LIST_TENANT, LIST_KEYS = "tenant:list/", 10_000
BATCH, IN_FLIGHT = 128, 8
CC_ENV = {
    "CONCORDANCE_CHANGE_RETENTION": str(10**9),  # keep every revision, as etcd does
    "CONCORDANCE_CHANGE_RETENTION_BYTES": str(1 << 40),
    "CONCORDANCE_SNAPSHOT_EVERY": "500",  # compact often: a new member needs a snapshot
    "CONCORDANCE_SNAPSHOT_TRAILING": "100",
}
Row = dict[str, Any]


def data_key(i: int) -> str:
    return f"tenant:t{i % TENANTS:03d}/k{i:08d}"


# -- the two APIs ------------------------------------------------------------------
class Api:
    """One system's requests, over one aiohttp session per call site."""

    def __init__(self, system: System, url: str) -> None:
        self.kind, self.url, self.headers = system.kind, url, system.headers

    def session(self, limit: int = 16) -> aiohttp.ClientSession:
        conn = aiohttp.TCPConnector(limit=limit)
        timeout = aiohttp.ClientTimeout(total=120)
        return aiohttp.ClientSession(
            self.url, headers=self.headers, connector=conn, timeout=timeout
        )

    async def put_batch(self, s: aiohttp.ClientSession, keys: list[str]) -> None:
        if self.kind == "concordance":
            ops = [{"op": "set", "key": k, "value": VALUE} for k in keys]
            r = await s.post("/api/v1/batch", json={"ops": ops})
        else:
            value = b64(json.dumps(VALUE))
            puts = [{"request_put": {"key": b64(k), "value": value}} for k in keys]
            r = await s.post("/v3/kv/txn", json={"success": puts})
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{self.kind} batch: {r.status} {body[:200]!r}")

    async def put(self, s: aiohttp.ClientSession, key: str) -> None:
        await self.put_batch(s, [key])

    async def get(self, s: aiohttp.ClientSession, key: str) -> None:
        if self.kind == "concordance":
            r = await s.get(f"/api/v1/kv/{key}")
        else:
            r = await s.post("/v3/kv/range", json={"key": b64(key), "serializable": True})
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{self.kind} get {key}: {r.status}")

    async def list_all(self, s: aiohttp.ClientSession, prefix: str) -> int:
        """Every key under ``prefix``, in pages of 1,000; returns how many."""
        n, cursor = 0, None
        if self.kind == "concordance":
            while True:
                params = {"prefix": prefix, "limit": "1000"} | (
                    {"cursor": cursor} if cursor else {}
                )
                async with s.get("/api/v1/kv", params=params) as r:
                    page = await r.json()
                n += len(page["entries"])
                cursor = page["next"]
                if not cursor:
                    return n
        start, end = prefix.encode(), prefix[:-1].encode() + bytes([ord(prefix[-1]) + 1])
        while True:
            body = {"key": b64(start), "range_end": b64(end), "limit": 1000, "serializable": True}
            async with s.post("/v3/kv/range", json=body) as r:
                page = await r.json()
            kvs = page.get("kvs", [])
            n += len(kvs)
            if not page.get("more"):
                return n
            start = base64.b64decode(kvs[-1]["key"]) + b"\0"


# -- measures -----------------------------------------------------------------------
async def bulk_load(api: Api, keys: list[str]) -> float:
    """Seconds to write ``keys`` in batches of 128, 8 in flight."""
    batches = [keys[i : i + BATCH] for i in range(0, len(keys), BATCH)]
    it = iter(batches)
    async with api.session(IN_FLIGHT + 2) as s:

        async def worker() -> None:
            for batch in it:
                await api.put_batch(s, batch)

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        return time.monotonic() - began


async def timed_loop(
    api: Api, seconds: float, op: Callable[[aiohttp.ClientSession, int], Awaitable[Any]]
) -> list[float]:
    """One client running ``op`` back to back for ``seconds``; each call's seconds."""
    took: list[float] = []
    async with api.session(2) as s:
        deadline, i = time.monotonic() + seconds, 0
        while time.monotonic() < deadline:
            t = time.perf_counter()
            await op(s, i)
            took.append(time.perf_counter() - t)
            i += 1
    return sorted(took)


async def reads_and_list(api: Api, keys: list[str], seconds: float) -> Row:
    lat = await timed_loop(api, seconds, lambda s, i: api.get(s, keys[(i * 7919) % len(keys)]))
    lists = []
    async with api.session(2) as s:
        for _ in range(5):
            t = time.perf_counter()
            assert await api.list_all(s, LIST_TENANT) == LIST_KEYS
            lists.append(time.perf_counter() - t)
    return {"read_p99": 1000 * percentile(lat, 0.99), "list_ms": 1000 * sorted(lists)[2]}


async def write_p99(api: Api, seconds: float, tag: str) -> float:
    lat = await timed_loop(api, seconds, lambda s, i: api.put(s, f"tenant:w/{tag}{i % 500}"))
    return 1000 * percentile(lat, 0.99)


def tree_bytes(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def disk_mb(system: System, m: Member) -> tuple[float, float]:
    """(state, log) MB on disk of member ``m``: state.db / bbolt, raft.db / WAL."""
    root = system.root / m.name
    if system.kind == "concordance":
        state = tree_bytes(list((root / "state").glob("state.db*")))
        raft = tree_bytes(list((root / "raft").glob("raft.db*")))
    else:
        state = tree_bytes([root / "member" / "snap" / "db"])
        raft = tree_bytes(list((root / "member" / "wal").glob("*")))
    return state / 1e6, raft / 1e6


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def role_rss(system: System) -> dict[str, float]:
    """The largest RSS of each role (Concordance) or member process (etcd), MB."""
    if system.kind == "etcd":
        return {"etcd": max(rss_mb(p) for p in system.pids())}
    out: dict[str, float] = {}
    for m in system.members:
        status = status_of(system, m)
        for role, info in status["roles"].items():
            if info.get("pid"):
                out[role] = max(out.get(role, 0.0), rss_mb(int(info["pid"])))
    return out


def status_of(system: System, m: Member) -> dict[str, Any]:
    if system.kind == "concordance":
        req = urllib.request.Request(f"{m.url}/api/v1/cluster/status", headers=system.headers)
    else:
        req = urllib.request.Request(f"{m.url}/v3/maintenance/status", data=b"{}")
    with urllib.request.urlopen(req, timeout=5) as resp:
        got: dict[str, Any] = json.loads(resp.read())
        return got


def applied(system: System, m: Member) -> int:
    s = status_of(system, m)
    return int(s["appliedIndex"] if system.kind == "concordance" else s["raftAppliedIndex"])


def caught_up(system: System, m: Member, target: int) -> bool:
    return applied(system, m) >= target


# -- membership and restarts --------------------------------------------------------
def add_member(system: System, leader: Member) -> Member:
    """Start a fourth member that joins (Concordance) or is added first (etcd)."""
    if isinstance(system, ConcordanceSystem):
        port = free_port()
        base = system.members[0]
        args = list(base.args)
        args[args.index("--id") + 1] = "n4"
        args[args.index("--listen") + 1] = f"127.0.0.1:{port}"
        args[args.index("--data") + 1] = str(system.root / "n4")
        i = args.index("--peers")
        args[i : i + 2] = ["--join", leader.url.removeprefix("http://")]
        m = Member("n4", f"http://127.0.0.1:{port}", None, args, dict(base.env), base.cwd)
    else:
        client, peer = free_port(), free_port()
        url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        subprocess.run(
            ["etcdctl", f"--endpoints={leader.url}", "member", "add", "e4",
             f"--peer-urls={peer_url}"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        base = system.members[0]
        args = list(base.args)
        initial = args[args.index("--initial-cluster") + 1] + f",e4={peer_url}"
        for flag, value in (
            ("--name", "e4"), ("--data-dir", str(system.root / "e4")),
            ("--listen-client-urls", url), ("--advertise-client-urls", url),
            ("--listen-peer-urls", peer_url), ("--initial-advertise-peer-urls", peer_url),
            ("--initial-cluster", initial), ("--initial-cluster-state", "existing"),
        ):  # fmt: skip
            args[args.index(flag) + 1] = value
        m = Member("e4", url, None, args, dict(base.env))
    system.members.append(m)
    m.start()
    return m


async def catch_up(system: System, api: Api, seconds: float) -> Row:
    """Add a member while one client writes; its catch-up time and the writes' p99."""
    leader = system.leader()
    assert leader is not None
    target = applied(system, leader)
    done = asyncio.Event()
    lat: list[float] = []

    async def writes() -> None:
        async with api.session(2) as s:
            i = 0
            while not done.is_set():
                t = time.perf_counter()
                await api.put(s, f"tenant:w/join{i % 500}")
                lat.append(time.perf_counter() - t)
                i += 1

    writer = asyncio.create_task(writes())
    began = time.monotonic()
    new = await asyncio.to_thread(add_member, system, leader)

    def joined() -> bool:
        if new.proc is not None and new.proc.poll() is not None:
            raise RuntimeError(f"the new member {new.name} exited ({new.proc.returncode})")
        return caught_up(system, new, target)

    await asyncio.to_thread(wait_until, joined, 1800.0, "the new member")
    took = time.monotonic() - began
    done.set()
    await writer
    return {"catch_up_s": took, "write_p99_during": 1000 * percentile(sorted(lat), 0.99)}


def restart_follower(system: System) -> float:
    """Stop a follower, start it on its data, seconds until it serves its data again."""
    leader = system.leader()
    assert leader is not None
    follower = next(m for m in system.members[:3] if m is not leader)
    follower.stop()
    target = applied(system, leader)
    began = time.monotonic()
    if isinstance(system, EtcdSystem):
        system.restart_member(follower)
    else:
        follower.start()

    def ready() -> bool:
        path = "/readyz" if system.kind == "concordance" else "/health"
        with urllib.request.urlopen(f"{follower.url}{path}", timeout=2) as r:
            return r.status == 200 and caught_up(system, follower, target)

    wait_until(ready, 600.0, "the restarted follower")
    return time.monotonic() - began


# -- one system, one size ---------------------------------------------------------
async def measure(system: System, n: int, seconds: float) -> Row:
    leader = system.leader()
    assert leader is not None
    api = Api(system, leader.url)
    list_keys = [f"{LIST_TENANT}k{i:05d}" for i in range(LIST_KEYS)]
    await bulk_load(api, list_keys)
    small = await reads_and_list(api, list_keys, seconds)
    took = await bulk_load(api, [data_key(i) for i in range(n)])
    sample = [data_key(i) for i in range(0, n, max(1, n // 5000))]
    big = await reads_and_list(api, sample, seconds)
    state, log = disk_mb(system, leader)
    write_before = await write_p99(api, seconds, "before")
    joined = await catch_up(system, api, seconds)
    row: Row = {
        "keys": n,
        "load_s": took,
        "keys_per_s": n / took,
        "state_mb": state,
        "log_mb": log,
        "read_p99_small": small["read_p99"],
        "read_p99": big["read_p99"],
        "list_ms_small": small["list_ms"],
        "list_ms": big["list_ms"],
        "write_p99_before": write_before,
        **joined,
        "restart_s": await asyncio.to_thread(restart_follower, system),
        "rss_mb": role_rss(system),
    }
    if system.kind == "concordance":
        log_text = (system.root / "n4" / "logs" / "consensus.log").read_text(errors="replace")
        row["snapshots_installed"] = log_text.count("installing snapshot")
    return row


def run_one(system: System, n: int, seconds: float) -> Row:
    if system.kind == "concordance":
        for m in system.members:
            m.env.update(CC_ENV)
    else:
        for m in system.members:
            m.args += ["--quota-backend-bytes", str(8 << 30)]
    system.start()
    try:
        return asyncio.run(measure(system, n, seconds))
    finally:
        system.stop()


# -- the table -------------------------------------------------------------------
def table(rows: list[tuple[Row | None, Row | None]]) -> str:
    out = [
        "| keys | | load keys/s | state + log MB (leader) | read p99 ms (vs small) "
        "| 10k-key list ms (vs small) | write p99 ms: before / while a member joins "
        "| new member caught up s | follower restart to ready s | RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cc, etcd in rows:
        for name, r in (("Concordance", cc), ("etcd 3.4", etcd)):
            if r is None:
                continue
            rss = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["rss_mb"].items()))
            out.append(
                f"| {r['keys']:,} | {name} | {r['keys_per_s']:,.0f} "
                f"| {r['state_mb']:.0f} + {r['log_mb']:.0f} "
                f"| {r['read_p99']:.1f} ({r['read_p99'] / r['read_p99_small']:.2f}x) "
                f"| {r['list_ms']:.0f} ({r['list_ms'] / r['list_ms_small']:.2f}x) "
                f"| {r['write_p99_before']:.1f} / {r['write_p99_during']:.1f} "
                f"| {r['catch_up_s']:.1f} | {r['restart_s']:.1f} | {rss} |"
            )
        if cc is not None and etcd is not None:
            disk = (cc["state_mb"] + cc["log_mb"]) / (etcd["state_mb"] + etcd["log_mb"])
            out.append(
                f"| | ratio Concordance/etcd | {cc['keys_per_s'] / etcd['keys_per_s']:.2f}x "
                f"| {disk:.2f}x (state alone {cc['state_mb'] / etcd['state_mb']:.2f}x) "
                f"| {cc['read_p99'] / etcd['read_p99']:.2f}x "
                f"| {cc['list_ms'] / etcd['list_ms']:.2f}x "
                f"| {cc['write_p99_during'] / etcd['write_p99_during']:.2f}x "
                f"| {cc['catch_up_s'] / etcd['catch_up_s']:.2f}x "
                f"| {cc['restart_s'] / etcd['restart_s']:.2f}x | |"
            )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 keys only")
    parser.add_argument("--keys", type=int, nargs="*", help="sizes (default 100000 1000000)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per latency measure")
    parser.add_argument("--only", choices=["concordance", "etcd"], help="one system alone")
    parser.add_argument(
        "--source", type=Path, default=None, help="Concordance from another checkout (A/B runs)"
    )
    args = parser.parse_args()
    sizes = args.keys or ([20_000] if args.quick else [100_000, 1_000_000])
    binary = etcd_binary()
    rows: list[tuple[Row | None, Row | None]] = []
    for n in sizes:
        cc = etcd = None
        if args.only != "etcd":
            cc = run_one(ConcordanceSystem(args.source), n, args.seconds)
            print(json.dumps(cc), flush=True)
        if args.only != "concordance" and binary:
            etcd = run_one(EtcdSystem(binary), n, args.seconds)
            print(json.dumps(etcd), flush=True)
        rows.append((cc, etcd))
        print(table(rows), flush=True)
    out = Path(".bench")
    out.mkdir(exist_ok=True)
    (out / "scale_data.json").write_text(json.dumps(rows, indent=1))
    print(f"\nmachine: {os.cpu_count()} cores, shared with other work while this ran")


if __name__ == "__main__":
    main()
