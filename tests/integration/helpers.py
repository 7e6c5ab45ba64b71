"""Real nodes for integration tests: the supervisor and its three role processes.

A :class:`Node` launches ``concordance node`` (which becomes supervisord) in
its own session, on a free port, with a short data dir. It is always stopped
by the test: SIGTERM to the supervisor (which stops the roles), then SIGKILL
of the supervisor and of every role pid it ever reported, by pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from concordance.supervise import Control, SupervisorUnavailable

API_KEY = "test-full-key"
AGENT_KEY = "test-agent-key"
ENCRYPTION_KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes, base64
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def short_tmpdir() -> Path:
    """Data dirs stay short: unix socket paths are limited to ~100 bytes."""
    return Path(tempfile.mkdtemp(prefix="cc-", dir="/tmp"))


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy, against a deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # the node may not be up yet
            last_error = e
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last error: {last_error!r}")


class Response:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status, self.body, self.headers = status, body, headers

    def json(self) -> Any:
        return json.loads(self.body)


class Node:
    """One real node; use as a context manager or call :meth:`stop`."""

    def __init__(
        self,
        node_id: str = "n1",
        data: Path | None = None,
        port: int | None = None,
        peers: str = "",
        extra_env: dict[str, str] | None = None,
        join: str = "",
    ) -> None:
        self.node_id = node_id
        self.data = data or short_tmpdir() / node_id
        self.port = port or free_port()
        self.peers = peers
        self.join = join  # --join HOST:PORT: ask that member to add this node
        self.env = {
            **os.environ,
            "CONCORDANCE_API_KEY": API_KEY,
            "CONCORDANCE_AGENT_API_KEY": AGENT_KEY,
            "CONCORDANCE_ENCRYPTION_KEY": ENCRYPTION_KEY,
            "PYTHONPATH": str(ROOT),
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Node:
        cmd = [
            sys.executable, "-m", "concordance.cli", "node", "--id", self.node_id,
            "--listen", self.address, "--data", str(self.data),
        ]  # fmt: skip
        if self.peers:
            cmd += ["--peers", self.peers]
        if self.join:
            cmd += ["--join", self.join]
        self.data.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.data.parent / f"{self.node_id}-supervisor.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def __enter__(self) -> Node:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- roles --------------------------------------------------------------
    def control(self) -> Control:
        return Control(self.data)

    def role_pids(self) -> dict[str, int | None]:
        states = self.control().states()
        pids = {name: state.pid for name, state in states.items()}
        self.seen_pids |= {p for p in pids.values() if p}
        return pids

    def kill_role(self, role: str, sig: int = signal.SIGKILL) -> int:
        pid = self.role_pids()[role]
        assert pid, f"{role} is not running"
        os.kill(pid, sig)
        return pid

    def wait_role_restarted(self, role: str, old_pid: int, timeout: float = 20.0) -> int:
        def restarted() -> int | None:
            pid = self.role_pids().get(role)
            return pid if pid and pid != old_pid else None

        pid: int = wait_for(restarted, timeout, f"{role} to restart")
        return pid

    # -- readiness ------------------------------------------------------------
    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}: {self.logs()}")
            return self.request("GET", "/readyz", auth=None).status == 200

        try:
            wait_for(ready, timeout, f"{self.node_id} ready")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.logs()}") from None
        self.role_pids()

    def logs(self, tail: int = 40) -> str:
        out = []
        for path in sorted((self.data / "logs").glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        sup = self.data.parent / f"{self.node_id}-supervisor.out"
        if sup.exists():
            out.append("--- supervisor.out\n" + sup.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    # -- HTTP -----------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        auth: str | None = API_KEY,
        raw: bytes | None = None,
        timeout: float = 15.0,
    ) -> Response:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        path = urllib.parse.quote(path, safe="/:?=&%@+,;")  # non-ASCII keys are percent-encoded
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        if auth:
            req.add_header("Authorization", f"Bearer {auth}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return Response(resp.status, resp.read(), dict(resp.headers))
        except urllib.error.HTTPError as e:
            return Response(e.code, e.read(), dict(e.headers))

    def put(self, key: str, value: Any, **extra: Any) -> Response:
        return self.request("PUT", f"/api/v1/kv/{key}", {"value": value, **extra})

    def get(self, key: str, **query: str) -> Response:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return self.request("GET", f"/api/v1/kv/{key}" + (f"?{qs}" if qs else ""))

    # -- teardown -------------------------------------------------------------
    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(SupervisorUnavailable, RuntimeError, OSError):
            self.role_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.seen_pids:  # roles outlive a supervisor that was killed
            self._kill_if_ours(pid)
        self.proc = None

    def _kill_if_ours(self, pid: int) -> None:
        """SIGKILL ``pid`` only if it is still one of this node's roles (pids get reused)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if b"procs." in cmdline and str(self.data).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
