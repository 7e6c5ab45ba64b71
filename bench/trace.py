"""``python -m bench.trace``: where one write's time goes, hop by hop, on a real 3-node cluster.

Starts a 3-node cluster whose role processes load ``bench/tracehooks`` (see
its docstring: timestamps at every IPC message, TCP read and write,
WebSocket frame and Raft persist), sends ``--writes`` writes one at a time
to the leader with a pause between them (so one write's hops never mix with
another's), and prints the merged timeline of the last ``--show`` writes in
milliseconds from the HTTP request reaching the leader. docs/PERFORMANCE.md
reads such a timeline.

    python -m bench.trace [--writes 20] [--show 1] [--pause 0.2] [--source DIR]

``--source DIR`` traces the Concordance of another checkout (before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.clusters import ConcordanceSystem

HOOKS = Path(__file__).resolve().parent / "tracehooks"


async def paced_writes(url: str, headers: dict[str, str], writes: int, pause: float) -> list[float]:
    """Milliseconds each write took, as the client saw it."""
    took: list[float] = []
    async with aiohttp.ClientSession(base_url=url, headers=headers) as session:
        for i in range(writes):
            start = time.perf_counter()
            async with session.put(f"/api/v1/kv/tenant:trace/k{i}", json={"value": i}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"write {i}: HTTP {r.status}")
            took.append(1000 * (time.perf_counter() - start))
            await asyncio.sleep(pause)
    return took


def timeline(folder: Path, show: int) -> list[str]:
    """The merged lines from the ``show``-th last write's request to the last line before
    the next write, as ``ms role event``."""
    lines = []
    for path in folder.glob("*.tr"):
        for line in path.read_text().splitlines():
            stamp, rest = line.split(" ", 1)
            lines.append((int(stamp), rest))
    lines.sort()
    starts = [i for i, (_, rest) in enumerate(lines) if rest.endswith("b'PUT '")]
    if len(starts) < show:
        return []
    first = starts[-show]
    t0 = lines[first][0]
    return [f"{(t - t0) / 1e6:8.3f}  {rest}" for t, rest in lines[first:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--show", type=int, default=1)
    parser.add_argument("--pause", type=float, default=0.2)
    parser.add_argument("--source", type=Path, default=None, help="another checkout to trace")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="cc-trace-", dir="/tmp"))
    os.environ["CC_TRACE_DIR"] = str(folder)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HOOKS), os.environ.get("PYTHONPATH", "")) if p
    )
    system = ConcordanceSystem(args.source)
    try:
        system.start()
        leader = system.leader()
        assert leader is not None
        took = asyncio.run(paced_writes(leader.url, system.headers, args.writes, args.pause))
        time.sleep(0.5)  # the hooks flush their files every 0.2 s
    finally:
        system.stop()
    ordered = sorted(took)
    print(f"{len(took)} writes, client-side ms: p50 {ordered[len(ordered) // 2]:.2f}, "
          f"max {ordered[-1]:.2f}; last: {took[-1]:.2f}")  # fmt: skip
    print("\n".join(timeline(folder, args.show)))
    print(f"(raw traces in {folder})")


if __name__ == "__main__":
    main()
