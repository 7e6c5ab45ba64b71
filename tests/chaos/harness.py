"""One chaos run against a real cluster: clients + watchers + nemesis, then heal and check.

Like Jepsen and etcd's robustness tests: a real N-node cluster (every peer link through a
fault-injecting proxy), K concurrent clients doing consistent gets, sets, CAS and deletes
on a few keys through every node (``clients.py``), a TTL workload on other keys
(``ttl.py``), WebSocket and long-poll watchers on the prefix (``watchers.py``), and a
nemesis injecting faults, one kind at a time or a network and a process fault together
(``nemesis.py``). Afterwards everything is healed and the run is judged (``checks.py``):
the history is linearizable, no acknowledged write is lost and no failed one applied,
read-your-writes holds on the node that answered, every watcher saw every change exactly
once in order, every node converged to the same state, expiry behaved.

Seeds: one ``random.Random(seed)`` derives the generators of the clients, the watchers
and the nemesis, so a seed fixes every *choice* (operations, keys, values, fault kinds,
hold times). Real-time interleavings (who is leader when, which request wins) are not
deterministic: a failing seed may need several runs to fail again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.chaos import checks, ttl
from tests.chaos.clients import PREFIX, Client, History, do_request, keys, session
from tests.chaos.cluster import AUTH, ChaosCluster, digest
from tests.chaos.nemesis import KINDS, Fault, Nemesis
from tests.chaos.watchers import Poller, Watcher

log = logging.getLogger("chaos")

FINAL_CLIENT = 1000  # client ids of the final reads: 1000 + node index
TTL_CLIENT = 500


@dataclass
class Config:
    seed: int = 1
    nodes: int = 3
    duration: float = 60.0  # seconds of traffic under faults
    min_faults: int = 0  # go on past the duration (up to twice it) until this many faults
    clients: int = 0  # 0: 2 per node
    keys: int = 5
    watchers: int = 2
    think: float = 0.02  # max seconds between a client's requests
    hold: tuple[float, float] = (2.0, 5.0)
    gap: tuple[float, float] = (1.0, 3.0)
    kinds: dict[str, float] = field(default_factory=lambda: dict(KINDS))
    spares: int = 0  # 0: enough for the duration
    checker_timeout: float = 60.0  # seconds per key
    recovery_timeout: float = 60.0
    keep_data: bool = False  # keep the nodes' data dirs (always kept on a violation)
    ttl: bool = True  # the TTL workload (tests/chaos/ttl.py) alongside the KV clients
    poller: bool = True  # a long-polling watcher besides the WebSocket ones


@dataclass
class Result:
    config: Config
    ok: bool
    verdicts: list[checks.Verdict]
    history: History
    faults: list[Any]
    timings: dict[str, float]
    final: dict[str, Any]
    data_dir: str
    linearizability: Any = None
    watchers: list[Watcher] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        ops = self.history.records
        faults: dict[str, int] = {}
        for f in self.faults:
            faults[f.kind] = faults.get(f.kind, 0) + 1
        return {
            "seed": self.config.seed,
            "ok": self.ok,
            "config": asdict(self.config),
            "determinism": "the seed fixes every choice (operations, keys, values, fault kinds"
            " and hold times); real-time interleavings and which node leads when do not"
            " repeat exactly",
            "timings_s": self.timings,
            "operations": {
                "total": len(ops),
                "per_second": round(len(ops) / max(self.timings.get("traffic", 1), 1e-9), 1),
                "by_kind": self.history.counts(),
                "anomalies": self.history.anomalies[:50],
            },
            "faults": {
                "total": len(self.faults),
                "by_kind": dict(sorted(faults.items())),
                "errors": sum(1 for f in self.faults if f.error),
                "list": [asdict(f) for f in self.faults],
            },
            "watchers": [
                {
                    "events": len(w.events),
                    "subscriptions": len(w.sessions),
                    "ended": dict(
                        Counter(str(s.get("end_reason", "")).split(":")[0] for s in w.sessions)
                    ),
                }
                for w in self.watchers
            ],
            "checks": {v.name: v.as_dict() for v in self.verdicts},
            "final": self.final,
            "data_dir": self.data_dir,
        }


async def _final_reads(
    cluster: ChaosCluster, http: aiohttp.ClientSession, key_names: list[str], history: History
) -> dict[str, dict[str, Any]]:
    """A consistent read of every key on every member, retried until answered (in history)."""
    out: dict[str, dict[str, Any]] = {}
    for i, node_id in enumerate(list(cluster.members)):
        node = cluster.nodes[node_id]
        got: dict[str, Any] = {}
        for key in key_names:
            for _ in range(20):
                rec = await do_request(
                    http, FINAL_CLIENT + i, node.url, "GET", f"/api/v1/kv/{key}?consistent=true",
                    None, key, "get", None, history,
                )  # fmt: skip
                history.add(rec)
                if rec.op.status == "ok":
                    out_ = rec.op.output
                    body = {"value": getattr(out_, "value", None),
                            "version": getattr(out_, "version", None)}  # fmt: skip
                    got[key] = (rec.status, body)
                    break
                await asyncio.sleep(0.5)
            else:
                got[key] = (rec.status, f"no answer: {rec.error}")
        out[node_id] = got
    return out


async def _ready(cluster: ChaosCluster, timeout: float) -> None:
    """Every member answers /readyz (a leader, applied up to commit)."""
    assert cluster.http is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for node_id in list(cluster.members):
        url = cluster.nodes[node_id].url
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with cluster.http.get(
                    f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=2)
                ) as resp:
                    if resp.status == 200:
                        break
            if loop.time() > deadline:
                raise AssertionError(f"{node_id} not ready within {timeout}s")
            await asyncio.sleep(0.2)


async def _states(cluster: ChaosCluster, timeout: float) -> dict[str, dict[str, Any]]:
    """Every member's final state, once they agree (or what they hold at the deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        states: dict[str, dict[str, Any]] = {}
        for node_id in list(cluster.members):
            node = cluster.nodes[node_id]
            try:
                listing = await cluster.listing(node, PREFIX)
                st = await cluster.status(node)
                feed = await cluster.changes(node, PREFIX)
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                states[node_id] = {"error": repr(e)}
                continue
            states[node_id] = {
                "entries": listing["entries"],
                "revision": listing["revision"],
                "applied": st and st["appliedIndex"],
                "digest": digest(listing["entries"]),
                "feed": feed,
            }
        views = [
            (s.get("digest"), s.get("revision"), s.get("applied"), len(s.get("feed", [])))
            for s in states.values()
        ]
        if all(v == views[0] and v[2] is not None for v in views) or loop.time() > deadline:
            return states
        await asyncio.sleep(0.3)


async def run(cfg: Config) -> Result:
    rng = random.Random(cfg.seed)
    client_rngs = [random.Random(rng.getrandbits(64)) for _ in range(cfg.clients or 2 * cfg.nodes)]
    watcher_rngs = [random.Random(rng.getrandbits(64)) for _ in range(cfg.watchers)]
    nemesis_rng = random.Random(rng.getrandbits(64))
    ttl_rng = random.Random(rng.getrandbits(64))  # drawn last: earlier seeds keep their runs
    poller_rng = random.Random(rng.getrandbits(64))
    longest = cfg.duration * (2 if cfg.min_faults else 1)  # see Config.min_faults
    spares = cfg.spares or max(2, int(longest // 25) + 1)
    cluster = ChaosCluster(cfg.nodes, spares=spares)
    history = History()
    timings: dict[str, float] = {}
    verdicts: list[checks.Verdict] = []
    final: dict[str, Any] = {}
    faults: list[Any] = []
    lin_report = None
    watchers: list[Watcher] = []
    wtasks: list[asyncio.Task[None]] = []
    started = time.monotonic()
    http = session(AUTH)
    try:
        await asyncio.to_thread(cluster.start)
        await cluster.open()
        await cluster.wait_leader()
        timings["startup"] = round(time.monotonic() - started, 2)
        key_names = keys(cfg.keys)
        clients = [
            Client(i, r, cluster.urls, key_names, http, history, cfg.think)
            for i, r in enumerate(client_rngs)
        ]
        watchers = [Watcher(i, r, cluster.urls, PREFIX, http) for i, r in enumerate(watcher_rngs)]
        if cfg.poller:
            watchers.append(Poller(len(watchers), poller_rng, cluster.urls, PREFIX, http))
        t0 = time.monotonic()
        nemesis = Nemesis(cluster, nemesis_rng, t0, cfg.hold, cfg.gap, cfg.kinds)
        faults = nemesis.faults
        ttl_client = ttl.TtlClient(TTL_CLIENT, ttl_rng, cluster.urls, http, history)
        runners: list[Client | ttl.TtlClient] = [*clients, *([ttl_client] if cfg.ttl else [])]
        tasks = [asyncio.create_task(c.run()) for c in runners]
        wtasks = [asyncio.create_task(w.run()) for w in watchers]
        try:
            await nemesis.run(t0 + cfg.duration, cfg.min_faults, t0 + 2 * cfg.duration)
            await asyncio.sleep(max(0.0, t0 + cfg.duration - time.monotonic()))
        finally:
            for c in runners:
                c.stopping = True
            await asyncio.wait(tasks, timeout=15)
            for t in tasks:
                t.cancel()
            await nemesis.heal()
        timings["traffic"] = round(time.monotonic() - t0, 2)

        # -- heal and judge -----------------------------------------------------------------
        t1 = time.monotonic()
        recovered = checks.Verdict("recovery", True, "")
        try:
            leader = await cluster.wait_leader(cfg.recovery_timeout)
            await _ready(cluster, cfg.recovery_timeout)
            recovered.summary = f"leader {leader.node_id}, members {cluster.members}, " \
                f"{time.monotonic() - t1:.1f}s after healing"  # fmt: skip
        except AssertionError as e:
            recovered.add(str(e)[:500])
            recovered.summary = "the cluster did not recover"
        verdicts.append(recovered)
        if recovered.ok:
            try:
                final_reads = await _final_reads(cluster, http, key_names, history)
                leader = await cluster.wait_leader(cfg.recovery_timeout)
                feed = await ttl.wait_expired(
                    lambda: cluster.changes(leader, PREFIX), ttl_client.ttl_of, 20.0
                )
                states = await _states(cluster, 30.0)
                last = max((e["revision"] for e in feed), default=0)
                await asyncio.gather(*(w.wait_until(last, 30.0) for w in watchers))
                final = {
                    "leader": leader.node_id,
                    "members": list(cluster.members),
                    "feed_changes": len(feed),
                    "last_revision": last,
                    "nodes": {
                        n: {k: s.get(k) for k in ("digest", "revision", "applied", "error")}
                        for n, s in states.items()
                    },
                }
                verdicts.append(checks.acknowledged_writes(history.records, feed, final_reads))
                windows = _restart_windows(cluster, faults, t0)
                verdicts.append(checks.planned_restarts(history.records, feed, windows))
                verdicts.append(checks.read_your_writes(history.local_reads, feed))
                verdicts.append(checks.watchers(watchers, feed))
                verdicts.append(checks.convergence(states, feed))
                if cfg.ttl:
                    listings = {n: s["entries"] for n, s in states.items() if "entries" in s}
                    verdicts.append(ttl.check(ttl_client, feed, listings))
            except (aiohttp.ClientError, TimeoutError, OSError, AssertionError, KeyError) as e:
                failed = checks.Verdict("final-state", False, "could not read the final state")
                failed.add(f"{type(e).__name__}: {e}"[:500])
                verdicts.append(failed)
        for w in watchers:
            w.stopping = True
        await asyncio.wait(wtasks, timeout=5)
        for t in wtasks:
            t.cancel()
        timings["final"] = round(time.monotonic() - t1, 2)
    except Exception as e:  # the harness or the environment failed (a port taken, ...)
        log.exception("chaos run aborted")
        broken = checks.Verdict("harness", False, "the run was aborted")
        broken.add(f"{type(e).__name__}: {e}"[:2000])
        verdicts.append(broken)
        for t in wtasks:
            t.cancel()
    finally:
        await http.close()
        await cluster.close()
        await asyncio.to_thread(cluster.stop)
    t2 = time.monotonic()
    lin_verdict, lin_report = await asyncio.to_thread(
        checks.linearizable,
        [op for op in history.operations if not op.key.startswith(ttl.TTL_PREFIX)],
        cfg.checker_timeout,
    )
    verdicts.insert(0, lin_verdict)
    anomalies = checks.Verdict("answers", not history.anomalies,
                               f"{len(history.anomalies)} unexpected answers")  # fmt: skip
    anomalies.evidence = [str(a)[:300] for a in history.anomalies[:20]]
    verdicts.append(anomalies)
    timings["check"] = round(time.monotonic() - t2, 2)
    timings["total"] = round(time.monotonic() - started, 2)
    ok = all(v.ok is True for v in verdicts)
    if ok and not cfg.keep_data:
        cluster.cleanup()
    else:
        _dump_history(history, cluster.root / "history.jsonl")
    return Result(cfg, ok, verdicts, history, faults, timings, final, str(cluster.root),
                  lin_report, watchers)  # fmt: skip


def _restart_windows(
    cluster: ChaosCluster, faults: list[Fault], t0: float
) -> list[tuple[str, float, float]]:
    """(node URL, start, end) in monotonic seconds of each planned restart fault."""
    windows = []
    for f in faults:
        node = cluster.nodes.get(f.target.split(" ")[0]) if f.target else None
        if f.kind == "restart-role" and not f.error and node is not None and f.end is not None:
            windows.append((node.url, t0 + f.start, t0 + f.end))
    return windows


def _dump_history(history: History, path: Path) -> None:
    """Every request of the run, one JSON object a line, in call order."""
    with path.open("w") as f:
        for r in sorted(history.records, key=lambda r: r.op.call):
            op = r.op
            row = {
                "client": op.client, "key": op.key, "kind": op.kind, "input": repr(op.input),
                "output": repr(op.output), "call": op.call, "ret": op.ret, "status": op.status,
                "http": r.status, "error": r.error, "node": r.node, "revision": r.revision,
            }  # fmt: skip
            f.write(json.dumps(row) + "\n")


def run_sync(cfg: Config) -> Result:
    return asyncio.run(run(cfg))
