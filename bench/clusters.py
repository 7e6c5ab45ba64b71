"""The two systems under test, each as three members (or one) on 127.0.0.1: real processes,
fsyncing.

Concordance members are real nodes (``concordance node``: supervisord and its
three roles); etcd members are Debian's ``etcd`` 3.4, reached through its
JSON gateway. Both are started fresh in a temporary directory and stopped by
process group, so a benchmark leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

KEY = "bench-key"
CLUSTER_KEY = "bench-cluster-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get_json(url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> object:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    with urllib.request.urlopen(req, timeout=2) as resp:
        return json.loads(resp.read())


def wait_until(check: object, timeout: float = 60.0, what: str = "condition") -> object:
    """Poll ``check()`` until it returns something truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()  # type: ignore[operator]
        except (OSError, ValueError, KeyError):
            got = None
        if got:
            return got
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` and their live children, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


@dataclass
class Member:
    name: str
    url: str
    proc: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None  # `python -m` puts the working directory first on sys.path

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.args,
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL the member's whole process group (a node's supervisor and roles)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


class System:
    """Three members of one system; subclasses know how to start them and find the leader.

    ``kind`` says which API it speaks; ``name`` labels it in the table.
    """

    kind = ""
    headers: dict[str, str] = {}

    def __init__(self, name: str = "") -> None:
        self.name = name or self.kind
        self.root = Path(tempfile.mkdtemp(prefix=f"cb-{self.name}-", dir="/tmp"))
        self.members: list[Member] = []

    def start(self) -> System:
        for m in self.members:
            m.start()
        wait_until(self.leader, what=f"a {self.name} leader")
        return self

    def stop(self) -> None:
        for m in self.members:
            m.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def leader(self) -> Member | None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Every process of every member (for CPU accounting)."""
        raise NotImplementedError


class ConcordanceSystem(System):
    """Concordance from this checkout, or from ``source`` (another checkout, put first
    on PYTHONPATH of the node and its roles: before/after comparisons)."""

    kind = "concordance"
    headers = {"Authorization": f"Bearer {KEY}"}

    def __init__(self, source: Path | None = None, nodes: int = 3) -> None:
        super().__init__("baseline" if source else "")
        ports = {f"n{i}": free_port() for i in range(1, nodes + 1)}
        peers = ",".join(f"{n}=127.0.0.1:{p}" for n, p in ports.items())
        env = {**os.environ, "CONCORDANCE_API_KEY": KEY, "CONCORDANCE_CLUSTER_KEY": CLUSTER_KEY}
        if source is not None:
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(source.resolve()), env.get("PYTHONPATH", "")) if p
            )
        for node_id, port in ports.items():
            args = [sys.executable, "-m", "concordance.cli", "node", "--id", node_id,
                    "--listen", f"127.0.0.1:{port}", "--data", str(self.root / node_id),
                    "--peers", peers]  # fmt: skip
            cwd = source.resolve() if source is not None else None
            self.members.append(Member(node_id, f"http://127.0.0.1:{port}", None, args, env, cwd))

    def _status(self, m: Member) -> dict[str, object]:
        got = _get_json(f"{m.url}/api/v1/cluster/status", self.headers)
        assert isinstance(got, dict)
        return got

    def leader(self) -> Member | None:
        for m in self.members:
            if m.proc is None or m.proc.poll() is not None:
                continue
            try:
                status = self._status(m)
            except OSError:
                continue
            if status.get("role") == "leader":
                ready = urllib.request.urlopen(f"{m.url}/readyz", timeout=2).status == 200
                return m if ready else None
        return None

    def pids(self) -> list[int]:
        # every descendant of each node's supervisor: the roles, and the front
        # server under its keeper (supervisord knows only the keeper)
        from concordance.node.supervise import descendants

        return descendants([m.proc.pid for m in self.members if m.proc is not None])


class EtcdSystem(System):
    kind = "etcd"

    def __init__(self, binary: str, nodes: int = 3) -> None:
        super().__init__()
        ports = {f"e{i}": (free_port(), free_port()) for i in range(1, nodes + 1)}
        initial = ",".join(f"{n}=http://127.0.0.1:{peer}" for n, (_, peer) in ports.items())
        for name, (client, peer) in ports.items():
            url = f"http://127.0.0.1:{client}"
            args = [binary, "--name", name, "--data-dir", str(self.root / name),
                    "--listen-client-urls", url, "--advertise-client-urls", url,
                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                    "--initial-cluster", initial, "--initial-cluster-state", "new",
                    "--initial-cluster-token", self.root.name]  # fmt: skip
            self.members.append(Member(name, url, None, args, dict(os.environ)))

    def leader(self) -> Member | None:
        for m in self.members:
            if m.proc is None or m.proc.poll() is not None:
                continue
            try:
                got = _get_json(f"{m.url}/v3/maintenance/status", body=b"{}")
            except OSError:
                continue
            assert isinstance(got, dict)
            if got.get("leader") and got["leader"] == got.get("header", {}).get("member_id"):
                return m
        return None

    def restart_member(self, m: Member) -> None:
        """Start a killed member again on its data dir (it rejoins as an existing member)."""
        m.args = [a if a != "new" else "existing" for a in m.args]
        m.start()

    def pids(self) -> list[int]:
        return [m.proc.pid for m in self.members if m.proc is not None]


def etcd_binary() -> str | None:
    return shutil.which("etcd")
