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
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from concordance.config import NodeConfig
from concordance.node.supervise import serving_front, wait_gone
from concordance.testing.poll import until_sync

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

            def healthy() -> bool:
                assert proc.poll() is None, proc.communicate()[0].decode()
                try:
                    return status_of(f"{base}/healthz") == 200
                except OSError:
                    return False

            until_sync(healthy, "the front answering /healthz", 20)
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


def _start_keeper(data: str) -> tuple[subprocess.Popen[bytes], str]:
    """``procs.front_keeper`` on a fresh single-node config in ``data`` (no other role),
    and the URL it serves."""
    listen = f"127.0.0.1:{free_port()}"
    NodeConfig(node_id="n1", listen=listen, data_dir=data).save()
    env = {**os.environ, "CONCORDANCE_API_KEY": "k", "PYTHONPATH": str(ROOT)}
    keeper = subprocess.Popen(
        [sys.executable, "-m", "procs.front_keeper", "--data", data],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return keeper, f"http://{listen}"


def _wait(check: Any, what: str, limit: float = 20.0) -> None:
    until_sync(check, what, limit)


@pytest.mark.slow
def test_the_keeper_hands_over_without_refusing_a_connection() -> None:
    """``procs.front_keeper``: SIGUSR2 starts a new front on the same socket and
    stops the old one once the new one serves; a client hammering the port with
    new connections meanwhile sees no refusal or reset. A front that dies on its
    own takes the keeper with it (supervisord restarts both); SIGTERM stops all."""
    with tempfile.TemporaryDirectory(prefix="cck", dir="/tmp") as data:
        keeper, base = _start_keeper(data)
        fronts: list[int] = []
        try:
            _wait(lambda: serving_front(data) is not None, "the first front")
            first = serving_front(data)
            assert first is not None
            fronts.append(first)
            assert status_of(f"{base}/healthz") == 200
            failures: list[str] = []
            answered = [0]
            done = threading.Event()

            def hammer() -> None:
                while not done.is_set():
                    try:
                        assert status_of(f"{base}/healthz") == 200
                        answered[0] += 1
                    except (OSError, AssertionError) as e:
                        failures.append(repr(e))

            client = threading.Thread(target=hammer)
            client.start()
            try:
                _wait(lambda: answered[0] >= 5, "the first front answering the hammer")
                keeper.send_signal(signal.SIGUSR2)
                _wait(lambda: serving_front(data) not in (None, first), "the new front")
                second = serving_front(data)
                assert second is not None
                fronts.append(second)
                assert wait_gone(first), "the old front did not exit"
                mark = answered[0]
                _wait(lambda: answered[0] >= mark + 5, "the new front answering the hammer")
            finally:
                done.set()
                client.join()
            assert not failures, failures[:5]
            assert answered[0] > 10
            assert keeper.poll() is None

            os.kill(second, signal.SIGKILL)  # a crash of the serving front
            out, _ = keeper.communicate(timeout=20)
            assert keeper.returncode == 1, out.decode()
            assert b"hand-over: front" in out
        finally:
            if keeper.poll() is None:
                keeper.send_signal(signal.SIGTERM)
                keeper.wait(timeout=20)
            for pid in fronts:
                assert wait_gone(pid), f"front {pid} did not exit"


@pytest.mark.slow
def test_the_keeper_stops_its_front_on_sigterm() -> None:
    with tempfile.TemporaryDirectory(prefix="cck", dir="/tmp") as data:
        keeper, _ = _start_keeper(data)
        try:
            _wait(lambda: serving_front(data) is not None, "the front")
            front = serving_front(data)
            assert front is not None
            keeper.send_signal(signal.SIGTERM)
            out, _ = keeper.communicate(timeout=20)
            assert keeper.returncode == 0, out.decode()
            assert b"front stopped" in out
            assert wait_gone(front, timeout=0)
        finally:
            if keeper.poll() is None:
                keeper.kill()
                keeper.wait()


def _listener(pid: int) -> str | None:
    """What the front ``pid``'s inherited listening descriptor is now (``socket:[inode]``),
    or None once it closed it (or exited)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        fd = next(v.split(b"=", 1)[1] for v in environ if v.startswith(b"CONCORDANCE_LISTEN_FD="))
        return os.readlink(f"/proc/{pid}/fd/{int(fd)}")
    except (OSError, StopIteration):
        return None


@pytest.mark.slow
def test_a_hand_over_is_recorded_only_once_the_old_front_stopped_accepting() -> None:
    """``run/front.pid`` (what ``ctl restart front`` and the restart API wait for) names
    the new front only once the old one has closed the listening socket: a client
    told the restart is done never reaches the old front on a new connection. The
    old front is frozen (SIGSTOP) through the hand-over, so it cannot stop accepting
    until the test lets it go on; the order is then exact, not a race."""
    with tempfile.TemporaryDirectory(prefix="cck", dir="/tmp") as data:
        keeper, _ = _start_keeper(data)
        assert keeper.stdout is not None
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(keeper.stdout.readline, b"")))
        reader.start()
        fronts: list[int] = []
        try:
            _wait(lambda: serving_front(data) is not None, "the first front")
            first = serving_front(data)
            assert first is not None
            fronts.append(first)
            listening = _listener(first)
            assert listening is not None and listening.startswith("socket:")
            os.kill(first, signal.SIGSTOP)
            try:
                keeper.send_signal(signal.SIGUSR2)
                _wait(lambda: any(b"hand-over: front" in line for line in lines), "the new front")
                assert serving_front(data) == first, "recorded while the old front still accepts"
            finally:
                os.kill(first, signal.SIGCONT)
            _wait(lambda: serving_front(data) != first, "the hand-over recorded")
            second = serving_front(data)
            assert second is not None
            fronts.append(second)
            assert _listener(first) != listening, "the old front still holds the port"
            assert _listener(second) == listening
            assert wait_gone(first), "the old front did not exit"
        finally:
            keeper.send_signal(signal.SIGTERM)
            keeper.wait(timeout=20)
            reader.join(10)
            keeper.stdout.close()
            for pid in fronts:
                assert wait_gone(pid), f"front {pid} did not exit"
