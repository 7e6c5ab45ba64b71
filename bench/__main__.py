"""``make bench``: Concordance against etcd, three members each, side by side in one run.

Starts a 3-node Concordance cluster (real nodes: supervisord and three roles
each) and, when Debian's ``etcd`` is installed, a 3-member etcd 3.4 cluster,
both on 127.0.0.1 and both fsyncing. Every workload then runs against one,
then the other, for ``--rounds`` rounds (interleaved, so a machine that gets
busier halfway hurts both alike), and one table shows each system's best
round and the ratio. The load generator is a Python aiohttp client on the
same machine, the same for both.

    python -m bench [--quick] [--seconds S] [--rounds N] [--against DIR] [--only TEXT]

``--against DIR`` compares with the Concordance of another checkout instead
of etcd (``git worktree add /tmp/base v1`` and point at it): before/after.

``--scale`` (``make bench SCALE=1``, quicker with ``QUICK=1``) runs bench/scale.py
instead: how a write's cost grows with watches and connections, one node each.

``--quick`` (``make bench QUICK=1``) runs a subset in about two minutes. The
full run adds 16 clients, a read/write mix, failover after ``kill -9`` of the
leader, and how cost grows with clients and value size. Results also go to
``.bench/latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import workloads as w
from bench.clusters import (
    ConcordanceSystem,
    EtcdSystem,
    System,
    cpu_seconds,
    etcd_binary,
    wait_until,
)
from bench.watch import watch_fanout

Row = dict[str, float]
# name -> (higher is better?, op per system), run with `clients` closed loops
Workload = tuple[str, int, Callable[[str], w.Op]]


def _ops(cc: w.Op, etcd: w.Op) -> Callable[[str], w.Op]:
    return lambda kind: cc if kind == "concordance" else etcd


def matrix(quick: bool) -> list[Workload]:
    rows: list[Workload] = [
        ("write, 1 client", 1, _ops(w.cc_put(), w.etcd_put())),
        ("write, 64 clients", 64, _ops(w.cc_put(), w.etcd_put())),
        ("local read, 64 clients", 64, _ops(w.cc_get(), w.etcd_get())),
        ("consistent read, 64 clients", 64, _ops(w.cc_get(True), w.etcd_get(True))),
    ]
    if not quick:
        rows[1:1] = [("write, 16 clients", 16, _ops(w.cc_put(), w.etcd_put()))]
        rows.append(
            (
                "mixed 90/10, 64 clients",
                64,
                _ops(w.mixed(w.cc_put(), w.cc_get()), w.mixed(w.etcd_put(), w.etcd_get())),
            )
        )
    return rows


def scaling(quick: bool) -> list[Workload]:
    if quick:
        return []
    rows: list[Workload] = [
        (f"write, {n} clients (scaling)", n, _ops(w.cc_put(), w.etcd_put())) for n in (256,)
    ]
    for size, label in ((100, "100 B"), (10 << 10, "10 KiB"), (512 << 10, "512 KiB")):
        rows.append(
            (f"write {label}, 16 clients", 16, _ops(w.cc_put(size, 10), w.etcd_put(size, 10)))
        )
    return rows


def run_workload(system: System, clients: int, seconds: float, op: w.Op) -> Row:
    leader = system.leader() or wait_until(system.leader, what="leader")
    pids = system.pids()
    cpu0, t0, own0 = cpu_seconds(pids), time.monotonic(), _own_cpu()
    row = asyncio.run(w.drive(leader.url, system.headers, clients, seconds, op))  # type: ignore[union-attr]
    cpu, took, own = cpu_seconds(pids) - cpu0, time.monotonic() - t0, _own_cpu() - own0
    done = row["ops"] * seconds
    row["cores"] = cpu / took
    row["core_ms_per_op"] = 1000 * cpu / done if done else float("nan")
    # the load generator shares the cores: how much of them it took
    row["client_cores"] = own / took
    return row


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_watch(system: System, watchers: int, seconds: float) -> Row:
    leader = system.leader() or wait_until(system.leader, what="leader")
    return asyncio.run(
        watch_fanout(system.kind, leader.url, system.headers, watchers, 10.0, seconds)  # type: ignore[union-attr]
    )


def run_failover(system: System) -> Row:
    """Seconds from ``kill -9`` of the leader's whole member to the next acknowledged write."""
    leader = wait_until(system.leader, what="leader")
    assert leader is not None
    others = [m for m in system.members if m is not leader]

    async def first_write() -> float:
        start = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=1)
        async with aiohttp.ClientSession(headers=system.headers, timeout=timeout) as s:
            i = 0
            while time.monotonic() - start < 30:
                url = others[i % len(others)].url
                op = w.cc_put() if system.kind == "concordance" else w.etcd_put()
                async with aiohttp.ClientSession(
                    base_url=url, headers=system.headers, timeout=timeout
                ) as one:
                    try:
                        if await op(one, 0, i):
                            return time.monotonic() - start
                    except (aiohttp.ClientError, TimeoutError):
                        pass
                i += 1
                await asyncio.sleep(0.01)
            del s
        return float("nan")

    leader.kill()  # type: ignore[union-attr]
    took = asyncio.run(first_write())
    if isinstance(system, EtcdSystem):
        system.restart_member(leader)  # type: ignore[arg-type]
    else:
        leader.start()  # type: ignore[union-attr]
    wait_until(lambda: all(_serving(system, m) for m in system.members), what="all members back")
    return {"ops": 0.0, "p50": 1000 * took, "p90": float("nan"), "p99": float("nan"), "errors": 0}


def _serving(system: System, m: Any) -> bool:
    import urllib.request

    path = "/readyz" if system.kind == "concordance" else "/health"
    with urllib.request.urlopen(f"{m.url}{path}", timeout=2) as r:
        return bool(r.status == 200)


def best(rows: list[Row], key: str = "ops") -> Row:
    """The best round: the highest throughput (or lowest p50 for latency-only rows)."""
    if key == "ops":
        return max(rows, key=lambda r: r["ops"])
    return min(rows, key=lambda r: r["p50"])


def _fmt(v: float | None, digits: int = 1) -> str:
    if v is None or v != v:
        return "-"
    return f"{v:,.{digits}f}"


def _cells(r: Row | None, latency_only: bool) -> str:
    if r is None:
        return f"{'':>10} {'':>13} {'':>10}"
    lat = f"{_fmt(r['p50'])}/{_fmt(r['p99'])}"
    ops = "" if latency_only else _fmt(r["ops"], 0)
    return f"{ops:>10} {lat:>13} {_fmt(r.get('core_ms_per_op'), 2):>10}"


def _paired(name: str, ref_rows: list[Row], rows: list[Row]) -> float | None:
    """The median over rounds of the ratio within a round: steadier than best against best
    when the machine's speed drifts between rounds."""
    if name.startswith("failover"):
        return None  # one median over all rounds already
    key = "p99" if name.startswith("watch") else "ops"
    ratios = [c[key] / e[key] for e, c in zip(ref_rows, rows, strict=False) if e[key]]
    return statistics.median(ratios) if ratios else None


def _watch_detail(e: Row | None, c: Row) -> list[str]:
    """The watch round's other two measures (bench/watch.py), p99 ratios."""
    out = []
    measures = (("  receipt from the write's start", "sent_"), ("  the writes", "write_"))
    for label, prefix in measures:
        if f"{prefix}p50" not in c:
            continue
        mine = {"p50": c[f"{prefix}p50"], "p99": c[f"{prefix}p99"]}
        ref = None if e is None else {"p50": e[f"{prefix}p50"], "p99": e[f"{prefix}p99"]}
        ratio = mine["p99"] / ref["p99"] if ref and ref["p99"] else None
        both = f"{_cells(ref, True)}  {_cells(mine, True)}"
        out.append(f"{label:<34} {both}  {_fmt(ratio, 2):>6}")
    return out


def table(results: dict[str, dict[str, list[Row]]], ref: str = "etcd") -> str:
    head = (
        f"{'workload':<34} {ref[:6] + ' ops/s':>12} {'p50/p99 ms':>13} {'core-ms/op':>10}  "
        f"{'conc ops/s':>10} {'p50/p99 ms':>13} {'core-ms/op':>10}  {'ratio':>6} {'paired':>6}"
    )
    lines = [head, "-" * len(head)]
    for name, per in results.items():
        latency_only = name.startswith(("watch", "failover"))
        key = "p50" if latency_only else "ops"
        e = best(per[ref], key) if per.get(ref) else None
        c = best(per["concordance"], key)
        if e is None:
            ratio = None
        elif latency_only:
            ratio = c["p99"] / e["p99"] if name.startswith("watch") else c["p50"] / e["p50"]
        else:
            ratio = c["ops"] / e["ops"] if e["ops"] else None

        miss = ""
        if c.get("errors") or (e and e.get("errors")):
            miss = f"   errors/missing: conc {int(c['errors'])}" + (
                f", {ref} {int(e['errors'])}" if e else ""
            )
        both = f"{_cells(e, latency_only)}  {_cells(c, latency_only)}"
        paired = _paired(name, per.get(ref, []), per["concordance"])
        lines.append(f"{name:<34} {both}  {_fmt(ratio, 2):>6} {_fmt(paired, 2):>6}{miss}")
        if name.startswith("watch"):
            lines.extend(_watch_detail(e, c))
    lines.append("")
    lines.append(
        f"ratio: throughput Concordance/{ref}; for watch p99 and failover p50, "
        f"Concordance/{ref} (lower is better); best round against best round. "
        f"paired: the median of the rounds' own ratios (each round runs both back to back)"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a two-minute subset")
    parser.add_argument("--seconds", type=float, default=None, help="per workload and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument(
        "--scale",
        action="store_true",
        help="the Scale tables instead (bench/scale.py: one node, then three nodes of each;"
        " with --quick, smaller)",
    )
    parser.add_argument("--no-etcd", action="store_true", help="Concordance alone")
    parser.add_argument(
        "--against",
        type=Path,
        help="compare with the Concordance of another checkout (DIR) instead of etcd",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="TEXT",
        help="run only the workloads whose name contains TEXT (repeatable)",
    )
    args = parser.parse_args()
    if args.scale:
        from bench import scale

        return scale.main(args.quick, None if args.no_etcd else etcd_binary())
    seconds = args.seconds or (5.0 if args.quick else 10.0)
    binary = None if args.no_etcd or args.against else etcd_binary()
    if binary is None and not (args.no_etcd or args.against):
        print("etcd not found (apt-get install etcd-server): measuring Concordance alone")
    systems: list[System] = [ConcordanceSystem()]
    if args.against:
        systems.append(ConcordanceSystem(args.against))
    elif binary:
        systems.append(EtcdSystem(binary))
    ref = systems[1].name if len(systems) > 1 else "etcd"
    results: dict[str, dict[str, list[Row]]] = {}
    try:
        for s in systems:
            s.start()
        plan: list[tuple[str, Callable[[System], Row]]] = []
        for name, clients, ops in matrix(args.quick) + scaling(args.quick):
            plan.append((name, lambda s, c=clients, o=ops: run_workload(s, c, seconds, o(s.kind))))
        watch_seconds = seconds if args.quick else 2 * seconds
        plan.append(
            (
                f"watch, {args.watchers} watchers, 10 writes/s",
                lambda s: run_watch(s, args.watchers, watch_seconds),
            )
        )
        if not args.quick:
            plan.append(("failover after kill -9 (s)", run_failover))
        if args.only:
            plan = [(n, r) for n, r in plan if any(t in n for t in args.only)]
        for name, run in plan:
            per = results.setdefault(name, {})
            rounds = 3 if name.startswith("failover") else args.rounds
            for _ in range(rounds):
                for s in systems:
                    row = run(s)
                    per.setdefault(s.name, []).append(row)
                    print(f"  {name:<34} {s.name:<12} {json.dumps(_rounded(row))}", flush=True)
    finally:
        for s in systems:
            s.stop()
    for name, per in results.items():
        if name.startswith("failover"):
            for rows in per.values():
                median = statistics.median(r["p50"] for r in rows)
                for r in rows:
                    r["p50"] = median / 1000  # seconds, as the row's name says
    print()
    print(table(results, ref))
    out = Path(".bench")
    out.mkdir(exist_ok=True)
    (out / "latest.json").write_text(json.dumps(results, indent=2))
    return 0


def _rounded(row: Row) -> dict[str, float]:
    return {k: round(v, 2) for k, v in row.items()}


if __name__ == "__main__":
    sys.exit(main())
