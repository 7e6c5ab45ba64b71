"""``procs.role_keeper``: a restart imports the successor before the old process stops.

A real consensus process of a one-node configuration (no other role is needed
for it to start, lead and stop) runs under the keeper. The old process is
frozen (SIGSTOP) through the restart, so the order is exact, not a race: the
successor must already be running (its imports done) while the old one still
runs, and be recorded as serving only once the old one is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from concordance.config import NodeConfig
from concordance.node.supervise import descendants, serving, wait_gone
from concordance.testing.poll import until_sync

ROOT = Path(__file__).resolve().parents[2]


def _wait(check: Any, what: str, limit: float = 30.0) -> None:
    until_sync(check, what, limit)


@pytest.mark.slow
def test_a_restart_starts_the_successor_before_the_old_process_stops() -> None:
    with tempfile.TemporaryDirectory(prefix="ccr", dir="/tmp") as data:
        NodeConfig(node_id="n1", listen="127.0.0.1:1", data_dir=data).save()
        env = {**os.environ, "CONCORDANCE_API_KEY": "k", "PYTHONPATH": str(ROOT)}
        keeper = subprocess.Popen(
            [sys.executable, "-m", "procs.role_keeper", "consensus", "--data", data],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert keeper.stdout is not None
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(keeper.stdout.readline, b"")))
        reader.start()
        pids: list[int] = []
        try:
            _wait(lambda: any(b"consensus started" in line for line in lines), "consensus")
            old = serving(data, "consensus")
            assert old is not None
            pids.append(old)
            os.kill(old, signal.SIGSTOP)
            try:
                keeper.send_signal(signal.SIGUSR2)
                _wait(lambda: any(b"imported; stopping" in line for line in lines), "successor")
                successors = [p for p in descendants([keeper.pid]) if p not in (keeper.pid, old)]
                assert len(successors) == 1, successors
                pids += successors
                assert serving(data, "consensus") == old, "recorded before the old one stopped"
            finally:
                os.kill(old, signal.SIGCONT)
            _wait(lambda: serving(data, "consensus") != old, "the successor recorded")
            assert serving(data, "consensus") == successors[0]
            assert wait_gone(old, timeout=0), "the old process is still there"
            _wait(lambda: sum(b"consensus started" in x for x in lines) == 2, "the successor")
        finally:
            keeper.send_signal(signal.SIGTERM)
            keeper.wait(timeout=30)
            reader.join(10)
            keeper.stdout.close()
            for pid in pids:
                assert wait_gone(pid), f"{pid} did not exit"
        assert keeper.returncode == 0, b"".join(lines).decode(errors="replace")[-3000:]
