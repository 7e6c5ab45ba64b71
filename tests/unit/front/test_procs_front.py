"""``python -m procs.front``: serves on cfg.listen and stops cleanly on SIGTERM (exit 0).

The other roles are not running: the front must still start, answer
``/healthz``, report not ready, and close WebSocket sessions with 1001 on the
way out.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from concordance.config import NodeConfig

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return e.code


@pytest.mark.slow
def test_serves_and_stops_on_sigterm() -> None:
    with tempfile.TemporaryDirectory(prefix="ccp", dir="/tmp") as data:
        port = free_port()
        NodeConfig(node_id="n1", listen=f"127.0.0.1:{port}", data_dir=data).save()
        env = {**os.environ, "CONCORDANCE_API_KEY": "k", "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "procs.front", "--data", data],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while True:
                try:
                    if status_of(f"{base}/healthz") == 200:
                        break
                except OSError:
                    pass
                assert proc.poll() is None, proc.communicate()[0].decode()
                assert time.monotonic() < deadline, "the front never answered /healthz"
                time.sleep(0.05)
            assert status_of(f"{base}/readyz") == 503

            async def session() -> None:
                async with aiohttp.ClientSession() as http:
                    ws = await http.ws_connect(f"{base}/stream?token=k")
                    proc.send_signal(signal.SIGTERM)
                    msg = await asyncio.wait_for(ws.receive(), 10)
                    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)

            asyncio.run(session())
            out, _ = proc.communicate(timeout=15)
            assert proc.returncode == 0, out.decode()
            assert b"front stopped" in out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
