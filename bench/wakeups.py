"""``python -m bench.wakeups``: context switches and CPU per write, by process and thread.

Starts a 3-node cluster (``bench.clusters``), runs closed-loop writes against
the leader, and reads every thread's counters from ``/proc`` before and after
(voluntary context switches: the thread slept and was woken; involuntary: it
was preempted; user + system CPU). A write at one client is one Raft round
through nine processes, so these counts say how many wake-ups a round costs
and where (docs/PERFORMANCE.md, 9 December): on this machine a wake-up is
worth tens of microseconds, often more than the Python around it.

    python -m bench.wakeups [--clients 1] [--seconds 10] [--source DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.clusters import ConcordanceSystem

ROLES = ("front", "consensus", "storage")


@dataclass(frozen=True, slots=True)
class Counters:
    """One thread's totals so far."""

    voluntary: int
    involuntary: int
    cpu: float  # seconds


def thread_counters(pid: int) -> dict[tuple[int, str], Counters]:
    """``(tid, thread name) -> Counters`` for every live thread of ``pid`` (empty if gone)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[int, str], Counters] = {}
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            status = (task / "status").read_text()
            stat = (task / "stat").read_text().rsplit(")", 1)[1].split()
            name = (task / "comm").read_text().strip()
        except OSError:
            continue  # the thread ended meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        out[(int(task.name), name)] = Counters(
            int(fields["voluntary_ctxt_switches"]),
            int(fields["nonvoluntary_ctxt_switches"]),
            (int(stat[11]) + int(stat[12])) / tick,
        )
    return out


def label(pid: int) -> str | None:
    """``n1 consensus`` for a role process of a bench node, None for anything else."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    args = [a.decode(errors="replace") for a in argv]
    role = next((r for r in ROLES if f"procs.{r}" in args), None)
    if role is None or "--data" not in args:
        return None
    return f"{args[args.index('--data') + 1].rsplit('/', 1)[-1]} {role}"


def per_write(
    before: dict[tuple[int, str], Counters], after: dict[tuple[int, str], Counters], writes: int
) -> dict[str, tuple[float, float, float]]:
    """Per thread name (threads of one name summed): (voluntary, involuntary, CPU ms) per
    write, for the threads alive at both reads."""
    rows: dict[str, list[float]] = {}
    for key, end in after.items():
        start = before.get(key)
        if start is None:
            continue
        row = rows.setdefault(key[1], [0.0, 0.0, 0.0])
        row[0] += end.voluntary - start.voluntary
        row[1] += end.involuntary - start.involuntary
        row[2] += 1000 * (end.cpu - start.cpu)
    return {name: (v / writes, i / writes, ms / writes) for name, (v, i, ms) in rows.items()}


async def closed_loop(url: str, headers: dict[str, str], clients: int, seconds: float) -> int:
    """Writes done by ``clients`` closed loops in ``seconds``."""
    done = 0
    end = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession, c: int) -> None:
        nonlocal done
        while time.monotonic() < end:
            path = f"/api/v1/kv/tenant:wakeups/c{c}-{done % 100}"
            async with session.put(path, json={"value": done}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"write: HTTP {r.status}")
            done += 1

    async with aiohttp.ClientSession(base_url=url, headers=headers) as session:
        await asyncio.gather(*(client(session, c) for c in range(clients)))
    return done


def snapshot(pids: Iterable[int]) -> dict[str, dict[tuple[int, str], Counters]]:
    return {name: thread_counters(pid) for pid in pids if (name := label(pid)) is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--source", type=Path, default=None, help="another checkout to measure")
    args = parser.parse_args()
    system = ConcordanceSystem(args.source)
    try:
        system.start()
        leader = system.leader()
        assert leader is not None
        asyncio.run(closed_loop(leader.url, system.headers, args.clients, 2.0))  # warm up
        pids = system.pids()
        before = snapshot(pids)
        writes = asyncio.run(closed_loop(leader.url, system.headers, args.clients, args.seconds))
        after = snapshot(pids)
    finally:
        system.stop()
    load = os.getloadavg()[0]
    print(f"{writes} writes in {args.seconds:g} s, leader {leader.name}, load {load:.1f}")
    print(f"{'process':16} {'thread':16} {'woken/w':>8} {'preempt/w':>9} {'cpu ms/w':>9}")
    total = [0.0, 0.0, 0.0]
    for proc in sorted(after):
        rows = per_write(before.get(proc, {}), after[proc], max(writes, 1))
        for thread, (v, i, ms) in sorted(rows.items()):
            if not (v or i or ms):
                continue  # ZeroMQ's reaper and other idle threads
            total = [total[0] + v, total[1] + i, total[2] + ms]
            print(f"{proc:16} {thread:16} {v:8.2f} {i:9.2f} {ms:9.3f}")
    print(f"{'cluster':16} {'':16} {total[0]:8.2f} {total[1]:9.2f} {total[2]:9.3f}")


if __name__ == "__main__":
    main()
