"""The storage role as a real process (``python -m procs.storage``): stop and crash.

Consensus and front are played in the test process over the node's ipc
endpoints. Every process started here is stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq.asyncio

from concordance.protocol import wire
from tests.unit.storage_service_harness import (
    T0,
    FakeConsensus,
    FakeFront,
    Writer,
    node_config,
    run,
    short_tmp,
)

REPO = Path(__file__).resolve().parents[2]
K = "tenant:acme/settings/theme"

pytestmark = pytest.mark.slow  # a Python process start each


@contextmanager
def storage_process(data_dir: str) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORDANCE_")}
    log = open(os.path.join(data_dir, "storage.log"), "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "procs.storage", "--data", data_dir],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.close()


def test_sigterm_stops_cleanly_with_exit_0() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        consensus = await FakeConsensus.open(ctx, d)
        try:
            with storage_process(d) as proc:
                assert (await consensus.hello()).applied_index == 0
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 10) == 0
        finally:
            await consensus.close()
        out = Path(d, "storage.log").read_text()
        assert "stopping" in out and "Traceback" not in out

    with short_tmp() as d:
        node_config(d).save()
        run(main)


def test_kill_9_and_restart_keeps_the_applied_index_and_the_data() -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        consensus = await FakeConsensus.open(ctx, d)
        log = Writer(term=2)
        try:
            with storage_process(d) as proc:
                await consensus.hello()
                await consensus.apply(log.set(K, b'"kept"'), log.noop(), log.set(K + "/2"))
                await consensus.acked(3)  # acknowledged = committed in state.db
                proc.kill()
                assert await asyncio.to_thread(proc.wait, 10) == -signal.SIGKILL
            with storage_process(d) as proc:
                hello = await consensus.hello()
                assert (hello.applied_index, hello.applied_term) == (3, 2)
                front = FakeFront(ctx, d)
                try:
                    got = await front.request("get", wire.Get(K, T0), timeout=5.0)
                    assert got.entry.value == b'"kept"' and got.entry.version == 1
                    await consensus.apply(log.set(K, b'"next"'))  # resumes after index 3
                    await consensus.acked(4)
                    got = await front.request("get", wire.Get(K, T0))
                    assert got.entry.version == 2
                finally:
                    await front.close()
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(proc.wait, 10) == 0
        finally:
            await consensus.close()

    with short_tmp() as d:
        node_config(d).save()
        run(main)
