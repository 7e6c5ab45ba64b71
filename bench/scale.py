"""``make bench SCALE=1``: a write's cost against the number of watches, one node of each,
then three nodes of each.

One Concordance node and a one-member etcd 3.4, started side by side; etcd's
watches go through its native gRPC API (``aetcd``: one HTTP/2 stream per
client carries all its watches), Concordance's through ``/stream``. Then the
same with three nodes of each (``--nodes 3``): the writes and the watches
both go to the leader (so the node holding the subscriptions is the one every
write passes through, and its write also waits for a follower's fsync). Rows:

* a write's p50/p99 (sequential PUTs to a key nobody watches) with 0, 1k,
  10k and 100k subscriptions on distinct prefixes ``tenant:s{i}/``, spread
  over ``CONNECTIONS`` connections; subscriptions are added level by level
  and each level is measured on both systems, alternately, ``ROUNDS`` times;
* 1,000 subscriptions on the written prefix (writes paced at ``HOT_RATE``):
  the writes, and every watcher's receipt counted from its write's start;
* the front's (and etcd's) RSS growth per 10k subscriptions, between the
  1k and the top level (so the connections' own cost is not counted);
* 10,000 WebSocket connections with one subscription each: ``/healthz``
  probed while writes run and for at least ``WIDE_PROBE_S`` per round (longer
  than the front's /stream ping period, so every connection is pinged
  during the probe), and the writes (Concordance only), against the same writes
  and probes with no connection open (``PROBED_BASE``): the probes, made by the
  writer's own process, cost the writes something of their own.

``python -m bench.scale --connections`` runs only the connection row, after
the no-subscription write row on both systems (the same-run reference).

The watches are held by a child process (:class:`WatcherProcess`), the
writes and probes made by this one.

The client opens more than 10,000 sockets: it raises its own RLIMIT_NOFILE
soft limit to the hard one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import multiprocessing
import resource
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aetcd
import aiohttp

from bench.clusters import ConcordanceSystem, EtcdSystem, Member, wait_until
from bench.workloads import percentile
from concordance.node.supervise import serving_front

CONNECTIONS = 100
HOT = 1_000
HOT_RATE = 20.0  # writes/s on the watched prefix
ROUNDS = 2
WIDE = 10_000  # connections of the connection row
WIDE_PROBE_S = 35.0  # > the /stream ping period (30 s)
PROBED_BASE = "write, no connection, /healthz probed"  # the connection row's baseline
BATCH = 100  # subscribe requests per JSON-RPC batch frame

Row = dict[str, float]
Put = Callable[[int], Awaitable[None]]


def _ms(values: list[float]) -> Row:
    done = sorted(values)
    return {
        "p50": 1000 * percentile(done, 0.50),
        "p99": 1000 * percentile(done, 0.99),
        "max": 1000 * done[-1] if done else float("nan"),
        "n": float(len(done)),
    }


def _rss_mb(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


# -- Concordance -------------------------------------------------------------------
class CcWatches:
    """WebSocket connections to one front, each holding many subscriptions."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url = url
        self.headers = headers
        self.on_value: Callable[[int], None] = lambda n: None
        self.cancelled = 0
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._conns: list[aiohttp.ClientWebSocketResponse] = []
        self._readers: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def open(self, count: int) -> None:
        conn = aiohttp.TCPConnector(limit=0)
        self._session = aiohttp.ClientSession(
            base_url=self.url,
            headers=self.headers,
            connector=conn,
            timeout=aiohttp.ClientTimeout(total=None),
        )
        for start in range(0, count, 200):  # a few hundred upgrades at a time
            got = await asyncio.gather(
                *(
                    self._session.ws_connect("/stream", heartbeat=None)
                    for _ in range(min(200, count - start))
                )
            )
            for ws in got:
                self._conns.append(ws)
                self._readers.append(asyncio.create_task(self._read(ws)))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            for item in data if isinstance(data, list) else (data,):
                method = item.get("method")
                if method == "watch/change":
                    for event in item["params"]["events"]:
                        self.on_value(int(event["value"]))
                elif method == "watch/cancelled":
                    self.cancelled += 1
                else:
                    fut = self._pending.pop(item.get("id"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(item)

    async def _call(self, ws: aiohttp.ClientWebSocketResponse, calls: list[Any]) -> list[Any]:
        loop = asyncio.get_running_loop()
        frame, futs = [], []
        for method, params in calls:
            ident = next(self._ids)
            fut = self._pending[ident] = loop.create_future()
            futs.append(fut)
            frame.append({"jsonrpc": "2.0", "id": ident, "method": method, "params": params})
        await ws.send_str(json.dumps(frame))
        replies = await asyncio.wait_for(asyncio.gather(*futs), 300)
        for reply in replies:
            if "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
        return [r["result"] for r in replies]

    async def subscribe(self, prefixes: list[str], consume: bool = False) -> list[tuple[int, int]]:
        """Subscribe to ``prefixes`` round-robin over the connections; (conn, id) each."""
        per: dict[int, list[str]] = {}
        for i, prefix in enumerate(prefixes):
            per.setdefault(i % len(self._conns), []).append(prefix)

        async def one(c: int, mine: list[str]) -> list[tuple[int, int]]:
            out = []
            for start in range(0, len(mine), BATCH):
                calls = [("watch/subscribe", {"prefix": p}) for p in mine[start : start + BATCH]]
                results = await self._call(self._conns[c], calls)
                out += [(c, r["subscriptionId"]) for r in results]
            return out

        got = await asyncio.gather(*(one(c, mine) for c, mine in per.items()))
        return [x for part in got for x in part]

    async def unsubscribe(self, subs: list[tuple[int, int]]) -> None:
        per: dict[int, list[int]] = {}
        for c, sub_id in subs:
            per.setdefault(c, []).append(sub_id)
        await asyncio.gather(
            *(
                self._call(
                    self._conns[c], [("watch/unsubscribe", {"subscriptionId": i}) for i in ids]
                )
                for c, ids in per.items()
            )
        )

    async def close(self) -> None:
        for ws in self._conns:
            await ws.close()
        for task in self._readers:
            task.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        self._conns, self._readers = [], []


def cc_put(session: aiohttp.ClientSession, key: str) -> Put:
    async def put(n: int) -> None:
        async with session.put(f"/api/v1/kv/{key}", json={"value": n}) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"PUT answered {r.status}")

    return put


# -- etcd ----------------------------------------------------------------------------
class EtcdWatches:
    """aetcd clients (one gRPC channel and watch stream each), each holding many watches."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.on_value: Callable[[int], None] = lambda n: None
        self.cancelled = 0  # etcd cancels only on compaction, which this run never does
        self.clients: list[aetcd.Client] = []
        self._consumers: list[asyncio.Task[None]] = []

    async def open(self, count: int) -> None:
        for _ in range(count):
            client = aetcd.Client("127.0.0.1", self.port, timeout=300)
            await client.connect()
            self.clients.append(client)

    async def subscribe(self, prefixes: list[str], consume: bool = False) -> list[Any]:
        per: dict[int, list[str]] = {}
        for i, prefix in enumerate(prefixes):
            per.setdefault(i % len(self.clients), []).append(prefix)

        async def one(c: int, mine: list[str]) -> list[Any]:
            client = self.clients[c]
            out = []
            for prefix in mine:
                key = prefix.encode()
                out.append(await client.watch(key, range_end=prefix_end(key)))
            return out

        got = await asyncio.gather(*(one(c, mine) for c, mine in per.items()))
        watches = [x for part in got for x in part]
        if consume:
            self._consumers += [asyncio.create_task(self._consume(w)) for w in watches]
        return watches

    async def _consume(self, watch: Any) -> None:
        async for event in watch:
            self.on_value(int(event.kv.value))

    async def unsubscribe(self, watches: list[Any]) -> None:
        for w in watches:
            await w.cancel()

    async def close(self) -> None:
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        for client in self.clients:
            await client.close()
        self.clients = []


def etcd_put(client: aetcd.Client, key: str) -> Put:
    async def put(n: int) -> None:
        await client.put(key.encode(), str(n).encode())

    return put


# -- the watchers' process ---------------------------------------------------------------
class WatcherProcess:
    """The watches live in a child process of their own, so the loop that writes and probes
    is not the one parsing a thousand notifications per write. Receipt times are
    ``time.perf_counter()`` (CLOCK_MONOTONIC: one clock for both processes)."""

    def __init__(self, kind: str, url: str, headers: dict[str, str], port: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_watcher_main, args=(child, kind, url, headers, port), daemon=True
        )
        self.proc.start()

    async def call(self, *command: Any) -> Any:
        self._conn.send(command)
        status, out = await asyncio.to_thread(self._conn.recv)
        if status != "ok":
            raise RuntimeError(f"watcher process: {command[0]}: {out}")
        return out

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.call("exit"), 60)
        await asyncio.to_thread(self.proc.join, 10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _watcher_main(
    conn: Connection, kind: str, url: str, headers: dict[str, str], port: int
) -> None:
    _raise_fd_limit()
    asyncio.run(_watcher_serve(conn, kind, url, headers, port))


async def _watcher_serve(
    conn: Connection, kind: str, url: str, headers: dict[str, str], port: int
) -> None:
    watches: CcWatches | EtcdWatches = (
        CcWatches(url, headers) if kind == "concordance" else EtcdWatches(port)
    )
    received: dict[int, list[float]] = {}
    watches.on_value = lambda n: received.setdefault(n, []).append(time.perf_counter())
    hot: list[Any] = []
    while True:
        command = await asyncio.to_thread(conn.recv)
        op, args = command[0], command[1:]
        try:
            out: Any = None
            if op == "open":
                await watches.open(args[0])
            elif op == "subscribe":
                subs = await watches.subscribe(args[0], consume=args[1])
                if args[1]:
                    hot += subs
                out = len(subs)
            elif op == "unsubscribe_hot":
                await watches.unsubscribe(hot)
                hot = []
            elif op == "receipts":
                out = {n: list(ats) for n, ats in received.items()}
                received.clear()
            elif op == "cancelled":
                out = watches.cancelled
            elif op == "exit":
                await watches.close()
                conn.send(("ok", None))
                return
            conn.send(("ok", out))
        except Exception as e:  # the parent says which command failed
            conn.send(("error", repr(e)))


# -- measures --------------------------------------------------------------------------
async def sequential_writes(put: Put, count: int) -> Row:
    took = []
    for n in range(count):
        start = time.perf_counter()
        await put(n)
        took.append(time.perf_counter() - start)
    return _ms(took)


async def paced_writes(put: Put, count: int, rate: float, watchers: WatcherProcess) -> Row:
    """Writes at ``rate``; every watcher's receipt of each counted from the write's start."""
    await watchers.call("receipts")  # forget anything older
    sent: dict[int, float] = {}
    took = []
    begin = time.perf_counter()
    for n in range(count):
        await asyncio.sleep(max(0.0, begin + n / rate - time.perf_counter()))
        sent[n] = time.perf_counter()
        await put(n)
        took.append(time.perf_counter() - sent[n])
    received: dict[int, list[float]] = {}
    settle = time.perf_counter() + 15
    while time.perf_counter() < settle:
        for n, ats in (await watchers.call("receipts")).items():
            received.setdefault(n, []).extend(ats)
        if all(len(received.get(n, ())) >= HOT for n in sent):
            break
        await asyncio.sleep(0.1)
    row = _ms(took)
    receipts = _ms([at - sent[n] for n, ats in received.items() if n in sent for at in ats])
    row.update({f"recv_{k}": v for k, v in receipts.items()})
    row["missing"] = float(sum(max(0, HOT - len(received.get(n, ()))) for n in sent))
    return row


async def probe_health(session: aiohttp.ClientSession, until: asyncio.Event) -> list[float]:
    took = []
    while not until.is_set():
        start = time.perf_counter()
        async with session.get("/healthz") as r:
            await r.read()
        took.append(time.perf_counter() - start)
        await asyncio.sleep(0.02)
    return took


# -- the run ---------------------------------------------------------------------------
class ScaleRun:
    def __init__(self, quick: bool, connections_only: bool = False) -> None:
        self.quick = quick
        self.connections_only = connections_only
        self.levels = (0, 1_000, 10_000) if quick else (0, 1_000, 10_000, 100_000)
        self.writes = 100 if quick else 300
        self.rounds = 2 if quick else 3
        self.wide = 2_000 if quick else WIDE
        self.results: dict[str, dict[str, Row]] = {}
        self.rss: dict[str, list[float]] = {}  # "level" -> [front MB, etcd MB]

    def record(self, name: str, system: str, row: Row) -> None:
        """Keep each measure's best over the rounds (the machine is shared: the best is the
        one least disturbed by the others' work)."""
        print(f"  {name:<46} {system:<12} {json.dumps({k: round(v, 2) for k, v in row.items()})}")
        old = self.results.setdefault(name, {}).get(system)
        if old is None:
            self.results[name][system] = dict(row)
            return
        for k, v in row.items():
            if k.endswith(("p50", "p99", "max")):
                old[k] = min(old[k], v)
            elif k == "missing":
                old[k] = max(old[k], v)

    async def run(self, cc: ConcordanceSystem, etcd: EtcdSystem | None) -> None:
        member = _leader(cc)  # one node: the node itself
        front = serving_front(cc.root / member.name)
        e_member = _leader(etcd) if etcd else None
        etcd_pid = e_member.proc.pid if e_member and e_member.proc else None
        etcd_port = int(e_member.url.rsplit(":", 1)[1]) if e_member else 0
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(
            base_url=member.url, headers=cc.headers, timeout=timeout
        ) as session:
            writer = aetcd.Client("127.0.0.1", etcd_port, timeout=60) if etcd else None
            if writer is not None:
                await writer.connect()
            if self.connections_only:
                cold = "tenant:bench/k"
                put_etcd = etcd_put(writer, cold) if writer is not None else None
                await self._both("write, 0 subscriptions", cc_put(session, cold), put_etcd)
                await self._wide(session, cc, front)
                if writer is not None:
                    await writer.close()
                return
            cc_w = WatcherProcess("concordance", member.url, cc.headers, 0)
            et_w = WatcherProcess("etcd", "", {}, etcd_port) if etcd else None
            try:
                await self._levels(session, writer, cc_w, et_w, front, etcd_pid)
            finally:
                await cc_w.stop()
                if et_w is not None:
                    await et_w.stop()
            await self._wide(session, cc, front)
            if writer is not None:
                await writer.close()

    async def _both(self, name: str, cc_put_: Put, etcd_put_: Put | None) -> None:
        for _ in range(self.rounds):
            self.record(name, "concordance", await sequential_writes(cc_put_, self.writes))
            if etcd_put_ is not None:
                self.record(name, "etcd", await sequential_writes(etcd_put_, self.writes))

    async def _levels(
        self,
        session: aiohttp.ClientSession,
        writer: aetcd.Client | None,
        cc_w: WatcherProcess,
        et_w: WatcherProcess | None,
        front: int | None,
        etcd_pid: int | None,
    ) -> None:
        cold = "tenant:bench/k"  # a key none of the subscriptions watches
        put_cc = cc_put(session, cold)
        put_etcd = etcd_put(writer, cold) if writer is not None else None
        await self._both("write, 0 subscriptions", put_cc, put_etcd)
        self.rss["no connection"] = [_rss_mb(front), _rss_mb(etcd_pid)]
        await cc_w.call("open", CONNECTIONS)
        if et_w is not None:
            await et_w.call("open", CONNECTIONS)
        self.rss[f"{CONNECTIONS} connections"] = [_rss_mb(front), _rss_mb(etcd_pid)]
        await self._hot(session, writer, cc_w, et_w)
        have = 0
        rss: dict[int, tuple[float, float]] = {}
        for level in self.levels[1:]:
            began = time.monotonic()
            prefixes = [f"tenant:s{i}/" for i in range(have, level)]
            await cc_w.call("subscribe", prefixes, False)
            if et_w is not None:
                await et_w.call("subscribe", prefixes, False)
            have = level
            print(f"  {level:,} subscriptions on each system in {time.monotonic() - began:.0f} s")
            rss[level] = (_rss_mb(front), _rss_mb(etcd_pid))
            self.rss[f"{level:,} subscriptions"] = list(rss[level])
            await self._both(f"write, {level:,} subscriptions on other prefixes", put_cc, put_etcd)
        cancelled = await cc_w.call("cancelled")
        if cancelled:
            print(f"  !! {cancelled} Concordance subscriptions were cancelled")
        low, high = self.levels[1], self.levels[-1]
        per = 10_000 / (high - low)
        self.results["RSS per 10k subscriptions (MB)"] = {
            "concordance": {"p50": (rss[high][0] - rss[low][0]) * per, "rss": rss[high][0]},
            "etcd": {"p50": (rss[high][1] - rss[low][1]) * per, "rss": rss[high][1]},
        }

    async def _hot(
        self,
        session: aiohttp.ClientSession,
        writer: aetcd.Client | None,
        cc_w: WatcherProcess,
        et_w: WatcherProcess | None,
    ) -> None:
        hot = "tenant:hot/"
        name = f"write, {HOT:,} subscriptions on its prefix"
        count = int(self.writes / 2)
        await cc_w.call("subscribe", [hot] * HOT, True)
        if et_w is not None:
            await et_w.call("subscribe", [hot] * HOT, True)
        for _ in range(self.rounds):
            row = await paced_writes(cc_put(session, f"{hot}k"), count, HOT_RATE, cc_w)
            self.record(name, "concordance", row)
            if et_w is not None and writer is not None:
                row = await paced_writes(etcd_put(writer, f"{hot}k"), count, HOT_RATE, et_w)
                self.record(name, "etcd", row)
        await cc_w.call("unsubscribe_hot")
        if et_w is not None:
            await et_w.call("unsubscribe_hot")

    async def _wide(
        self, session: aiohttp.ClientSession, cc: ConcordanceSystem, front: int | None
    ) -> None:
        # The same measure without the connections first: /healthz is probed from this
        # process during the writes, which costs the writes something of its own.
        for _ in range(self.rounds):
            self.record(PROBED_BASE, "concordance", await self._probed_writes(session, 0.0))
        before = _rss_mb(front)
        began = time.monotonic()
        wide = WatcherProcess("concordance", _leader(cc).url, cc.headers, 0)
        try:
            await wide.call("open", self.wide)
            await wide.call("subscribe", [f"tenant:c{i}/" for i in range(self.wide)], False)
            print(f"  {self.wide:,} connections in {time.monotonic() - began:.0f} s")
            name = f"write, {self.wide:,} connections, 1 subscription each"
            for _ in range(self.rounds):
                row = await self._probed_writes(session, WIDE_PROBE_S)
                row["rss_per_conn_kb"] = (_rss_mb(front) - before) * 1024 / self.wide
                self.record(name, "concordance", row)
        finally:
            await wide.stop()

    async def _probed_writes(self, session: aiohttp.ClientSession, at_least_s: float) -> Row:
        """Sequential writes while ``/healthz`` is probed, probing for ``at_least_s`` in all."""
        stop = asyncio.Event()
        probes = asyncio.create_task(probe_health(session, stop))
        began = time.monotonic()
        row = await sequential_writes(cc_put(session, "tenant:bench/k"), self.writes)
        await asyncio.sleep(max(0.0, at_least_s - (time.monotonic() - began)))
        stop.set()
        health = _ms(await probes)
        row.update({f"health_{k}": v for k, v in health.items()})
        return row


def _leader(system: ConcordanceSystem | EtcdSystem) -> Member:
    """The member that writes and watches go to: the leader (of one node: that node)."""
    found = wait_until(system.leader, what=f"a {system.name} leader")
    assert isinstance(found, Member)
    return found


def _cell(row: Row | None, prefix: str = "") -> str:
    if row is None:
        return f"{'-':>15}"
    return f"{row[prefix + 'p50']:>7.2f}/{row[prefix + 'p99']:<7.2f}"


def table(results: dict[str, dict[str, Row]], nodes: int = 1) -> str:
    each = "one node each" if nodes == 1 else f"{nodes} nodes each (at the leader)"
    head = (
        f"{each:<48} {'etcd p50/p99 ms':>15}  {'conc p50/p99 ms':>15}  "
        f"{'p99 conc/etcd':>13}  {'p50, p99 / same at 0':>20}"
    )
    lines = [head, "-" * len(head)]
    base = results.get("write, 0 subscriptions", {})
    probed = results.get(PROBED_BASE, {})
    for name, per in results.items():
        e, c = per.get("etcd"), per.get("concordance")
        if name.startswith("RSS"):
            lines.append(
                f"{name:<48} {_fmt(e, 'p50'):>15}  {_fmt(c, 'p50'):>15}   "
                f"(front RSS at the top level {_fmt(c, 'rss')} MB, etcd {_fmt(e, 'rss')} MB)"
            )
            continue
        assert c is not None
        ratio = c["p99"] / e["p99"] if e and e["p99"] else float("nan")
        growth = ""
        if "subscriptions on other" in name or "connections" in name:
            b = (probed if "connections" in name else base).get("concordance")
            if b:
                growth = f"{c['p50'] / b['p50']:.2f}, {c['p99'] / b['p99']:.2f}"
                be = base.get("etcd")
                if e and be:
                    growth += f" (etcd {e['p50'] / be['p50']:.2f}, {e['p99'] / be['p99']:.2f})"
        lines.append(f"{name:<48} {_cell(e)}  {_cell(c)}  {ratio:>13.2f}  {growth}")
        if "recv_p50" in c:
            ratio = c["recv_p99"] / e["recv_p99"] if e else float("nan")
            miss = f"missing: conc {int(c['missing'])}"
            if e:
                miss += f", etcd {int(e['missing'])}"
            lines.append(
                f"{'  receipt, from the write start':<48} {_cell(e, 'recv_')}  "
                f"{_cell(c, 'recv_')}  {ratio:>13.2f}  {miss}"
            )
        if "health_p50" in c:
            rss = c.get("rss_per_conn_kb")
            lines.append(
                f"{'  /healthz meanwhile (max)':<48} {'-':>15}  {_cell(c, 'health_')}  "
                f"{'':>13}  max {c['health_max']:.1f} ms"
                + ("" if rss is None else f", front RSS {rss:.0f} KB per connection")
            )
    lines.append("")
    who = ("one member", "one node") if nodes == 1 else (f"{nodes} members", f"{nodes} nodes")
    lines.append(
        f"best round of each (lowest p50); etcd: {who[0]}, writes and watches over gRPC "
        f"(aetcd); Concordance: {who[1]}, writes over HTTP, watches over /stream"
        + ("" if nodes == 1 else "; both to the leader")
    )
    return "\n".join(lines)


def _fmt(row: Row | None, key: str) -> str:
    return "-" if row is None else f"{row[key]:.1f}"


def main(
    quick: bool,
    etcd_binary: str | None,
    connections_only: bool = False,
    nodes: tuple[int, ...] = (1, 3),
) -> int:
    """Each table of ``nodes`` (one node of each, then three), each from fresh systems."""
    _raise_fd_limit()
    for n in nodes:
        run_one(quick, etcd_binary, connections_only, n)
    return 0


def run_one(quick: bool, etcd_binary: str | None, connections_only: bool, nodes: int) -> None:
    print(f"== {nodes} node(s) of each")
    run = ScaleRun(quick, connections_only)
    cc = ConcordanceSystem(nodes=nodes)
    etcd = EtcdSystem(etcd_binary, nodes=nodes) if etcd_binary else None
    systems = [s for s in (cc, etcd) if s is not None]
    try:
        for s in systems:
            s.start()
        leader = _leader(cc)
        wait_until(lambda: serving_front(cc.root / leader.name), what="the front's pid")
        asyncio.run(run.run(cc, etcd))
    finally:
        for s in systems:
            s.stop()
    print()
    print(table(run.results, nodes))
    print(
        "RSS MB (front, etcd): "
        + "; ".join(f"{k} {v[0]:.0f}, {v[1]:.0f}" for k, v in run.rss.items())
    )
    out = Path(".bench")
    out.mkdir(exist_ok=True)
    name = "scale.json" if nodes == 1 else f"scale-{nodes}.json"
    (out / name).write_text(json.dumps({"rows": run.results, "rss": run.rss}, indent=2))


if __name__ == "__main__":
    import argparse
    import sys

    from bench.clusters import etcd_binary

    parser = argparse.ArgumentParser(description="bench/scale.py alone")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-etcd", action="store_true")
    parser.add_argument("--connections", action="store_true", help="only the 10,000-connection row")
    parser.add_argument(
        "--nodes", type=int, action="append", choices=[1, 3], help="1 or 3 (default: both)"
    )
    args = parser.parse_args()
    nodes = tuple(args.nodes or (1, 3))
    sys.exit(main(args.quick, None if args.no_etcd else etcd_binary(), args.connections, nodes))
