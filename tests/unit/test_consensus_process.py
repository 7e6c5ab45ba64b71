"""procs/consensus.py as a real process: starts, leads, serves, stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from concordance.ipc.sockets import ZmqSockets
from concordance.testing.poll import until
from tests.unit.consensus_harness import (
    FakeFront,
    FakeStorage,
    make_cfg,
    run_zmq,
    temp_dir,
    wait_leader,
)

ROOT = Path(__file__).resolve().parents[2]


def spawn(data_dir: str, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "procs.consensus", "--data", data_dir],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    finally:
        out.close()


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    code: int = await until(lambda: proc.poll() is not None, "process exit", timeout=timeout) and (
        proc.returncode
    )
    return code


@pytest.mark.slow
def test_process_leads_serves_and_stops_on_sigterm() -> None:
    async def main(real: ZmqSockets) -> None:
        with temp_dir() as d:
            make_cfg(d).save()
            log = Path(d) / "consensus.log"
            proc = spawn(d, log)
            try:
                front, storage = FakeFront(real, d), FakeStorage(real, d)
                await wait_leader(front, timeout=15)
                await storage.hello()
                index = (await front.propose(b"hello")).index
                await until(lambda: storage.applied >= index)
                # A second copy on the same data dir refuses to start.
                second = spawn(d, Path(d) / "second.log")
                assert await wait_exit(second) == 1
                proc.send_signal(signal.SIGTERM)
                assert await wait_exit(proc) == 0
                await front.close()
                await storage.close()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            text = log.read_text()
            assert text.count("n1 became leader at term") == 1, text
            assert "n1 consensus stopped" in text
            assert "address already in use" in (Path(d) / "second.log").read_text().lower()

    run_zmq(main, deadline=40)


def test_bad_configuration_exits_2() -> None:
    with temp_dir() as d:
        result = subprocess.run(
            [sys.executable, "-m", "procs.consensus", "--data", d],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
        )
        assert result.returncode == 2
        assert b"node.json" in result.stderr


_ = asyncio  # the module's tests run their own loops through run()
