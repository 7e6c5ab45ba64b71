"""Single-node proposal throughput through the real driver (core + raft.db fsync), and the
group commit that makes it: fsyncs per proposal fall as concurrency rises.

Run by hand for the numbers (the test only checks the shape, not a speed):

    .venv/bin/python -m tests.unit.test_consensus_throughput PROPOSALS BATCH CONCURRENCY...

(BATCH commands per ``propose`` request; a proposal is one command.)

By hand, the driver runs as its own process (``procs.consensus``) so that the
load generator and the storage double do not share its event loop; the fsync
count then comes from its shutdown log line.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop
import zmq.asyncio

from concordance.ipc.sockets import ZmqSockets
from concordance.testing.poll import until
from tests.unit.consensus_harness import (
    FakeFront,
    FakeStorage,
    make_cfg,
    running,
    temp_dir,
    wait_leader,
)


@dataclass(frozen=True)
class Result:
    concurrency: int
    proposals: int
    seconds: float
    fsyncs: int

    @property
    def rate(self) -> float:
        return self.proposals / self.seconds

    def __str__(self) -> str:
        return (
            f"concurrency {self.concurrency:4d}: {self.proposals} proposals in "
            f"{self.seconds:.2f}s = {self.rate:8.0f}/s, {self.fsyncs} fsyncs "
            f"({self.fsyncs / self.proposals:.3f} per proposal)"
        )


async def _load(
    front: FakeFront,
    storage: FakeStorage,
    proposals: int,
    concurrency: int,
    size: int,
    batch: int = 1,
) -> float:
    """``concurrency`` clients each send propose requests (``batch`` commands each) back
    to back until ``proposals`` commands are acknowledged; the clock stops when storage
    applied them all."""
    payload = b"x" * size
    remaining = proposals
    last = 0

    async def client() -> None:
        nonlocal remaining, last
        while remaining > 0:
            n = min(batch, remaining)
            remaining -= n
            reply = await front.propose(*[payload] * n, timeout=30)
            last = max(last, reply.index)

    start = time.perf_counter()
    await asyncio.gather(*[client() for _ in range(concurrency)])
    await until(lambda: storage.applied >= last, timeout=60)
    return time.perf_counter() - start


async def measure(proposals: int, concurrency: int, size: int = 100) -> Result:
    """The driver in this process (counts its fsyncs exactly)."""
    ctx = zmq.asyncio.Context()
    try:
        with temp_dir() as d:
            async with running(make_cfg(d, tick_ms=100), ZmqSockets(ctx)) as node:
                front, storage = FakeFront(ZmqSockets(ctx), d), FakeStorage(ZmqSockets(ctx), d)
                await wait_leader(front)
                await storage.hello()
                before = node.driver.disk.fsyncs
                seconds = await _load(front, storage, proposals, concurrency, size)
                fsyncs = node.driver.disk.fsyncs - before
                await front.close()
                await storage.close()
        return Result(concurrency, proposals, seconds, fsyncs)
    finally:
        ctx.destroy(linger=0)


async def measure_process(
    proposals: int, concurrency: int, size: int = 100, batch: int = 1
) -> Result:
    """The driver as its own process (``procs.consensus``), as in production."""
    root = Path(__file__).resolve().parents[2]
    ctx = zmq.asyncio.Context()
    try:
        with temp_dir() as d:
            make_cfg(d, tick_ms=100).save()
            log = Path(d) / "consensus.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "procs.consensus", "--data", d],
                    cwd=root,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONPATH": str(root)},
                )
            try:
                front, storage = FakeFront(ZmqSockets(ctx), d), FakeStorage(ZmqSockets(ctx), d)
                await wait_leader(front, timeout=30)
                await storage.hello()
                await until(lambda: storage.applied >= 1)
                seconds = await _load(front, storage, proposals, concurrency, size, batch)
                await front.close()
                await storage.close()
                proc.send_signal(signal.SIGTERM)
                await until(lambda: proc.poll() is not None, timeout=10)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            found = re.search(r"(\d+) fsyncs", log.read_text())
            fsyncs = int(found[1]) if found else -1  # includes the few of the startup
        return Result(concurrency, proposals, seconds, fsyncs)
    finally:
        ctx.destroy(linger=0)


@pytest.mark.slow
def test_group_commit_amortizes_fsyncs() -> None:
    one = uvloop.run(measure(100, 1))
    many = uvloop.run(measure(1000, 64))
    print(f"\n{one}\n{many}")
    assert one.fsyncs >= one.proposals  # alone, each proposal waits for its own fsync
    assert many.fsyncs / many.proposals < 0.25


def main(argv: list[str]) -> None:
    proposals = int(argv[0]) if argv else 5000
    batch = int(argv[1]) if len(argv) > 1 else 1
    for concurrency in [int(c) for c in argv[2:]] or [1, 16, 64, 256]:
        result = uvloop.run(measure_process(proposals, concurrency, batch=batch))
        print(f"batch {batch:3d}, {result}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
