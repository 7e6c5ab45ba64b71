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
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from concordance.node.supervise import Control, SupervisorUnavailable

API_KEY = "test-full-key"
AGENT_KEY = "test-agent-key"
CLUSTER_KEY = "test-cluster-key"  # required by every multi-member cluster
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


@dataclass
class NodeTls:
    """A node's TLS files (``--tls-*``) and the context the test's own requests use."""

    cert: Path
    key: Path
    client_ca: Path | None = None  # --tls-client-ca: mutual TLS
    peer_ca: Path | None = None  # --tls-peer-ca
    context: ssl.SSLContext | None = None  # for Node.request (trusts the CA, mTLS cert)

    def args(self) -> list[str]:
        out = ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        if self.client_ca is not None:
            out += ["--tls-client-ca", str(self.client_ca)]
        if self.peer_ca is not None:
            out += ["--tls-peer-ca", str(self.peer_ca)]
        return out


class Node:
    """One real node; use as a context manager or call :meth:`stop`.

    ``tls`` serves HTTPS/WSS with those files (requests then go to ``https://``);
    ``keys_file`` is passed as ``--keys``. Both are off by default.
    """

    def __init__(
        self,
        node_id: str = "n1",
        data: Path | None = None,
        port: int | None = None,
        peers: str = "",
        extra_env: dict[str, str] | None = None,
        peer_overrides: str = "",
        join: str = "",
        tls: NodeTls | None = None,
        keys_file: Path | None = None,
    ) -> None:
        self.node_id = node_id
        self.tls = tls
        self.keys_file = keys_file
        self.data = data or short_tmpdir() / node_id
        self.port = port or free_port()
        self.peers = peers
        self.peer_overrides = peer_overrides  # --peer-overrides: e.g. through a netproxy.Net
        self.join = join  # --join HOST:PORT: ask that member to add this node
        self.env = {
            **os.environ,
            "CONCORDANCE_API_KEY": API_KEY,
            "CONCORDANCE_AGENT_API_KEY": AGENT_KEY,
            "CONCORDANCE_CLUSTER_KEY": CLUSTER_KEY,
            "CONCORDANCE_ENCRYPTION_KEY": ENCRYPTION_KEY,
            "PYTHONPATH": str(ROOT),
            **(extra_env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen_pids: set[int] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

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
        if self.peer_overrides:
            cmd += ["--peer-overrides", self.peer_overrides]
        if self.join:
            cmd += ["--join", self.join]
        if self.tls is not None:
            cmd += self.tls.args()
        if self.keys_file is not None:
            cmd += ["--keys", str(self.keys_file)]
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
            context = self.tls.context if self.tls is not None else None
            with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
                return Response(resp.status, resp.read(), dict(resp.headers))
        except urllib.error.HTTPError as e:
            return Response(e.code, e.read(), dict(e.headers))

    def put(self, key: str, value: Any, **extra: Any) -> Response:
        return self.request("PUT", f"/api/v1/kv/{key}", {"value": value, **extra})

    def get(self, key: str, **query: str) -> Response:
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return self.request("GET", f"/api/v1/kv/{key}" + (f"?{qs}" if qs else ""))

    def status(self, timeout: float = 3.0) -> dict[str, Any] | None:
        """``/cluster/status``, or None if the node does not answer."""
        try:
            resp = self.request("GET", "/api/v1/cluster/status", timeout=timeout)
        except OSError:
            return None
        body: dict[str, Any] | None = resp.json() if resp.status == 200 else None
        return body

    def list_all(self, prefix: str, timeout: float = 5.0) -> tuple[list[dict[str, Any]], int]:
        """Every entry under ``prefix`` (all pages of 1000) and the last page's revision."""
        entries: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            path = f"/api/v1/kv?prefix={urllib.parse.quote(prefix, safe='')}&limit=1000"
            if cursor:
                path += f"&cursor={urllib.parse.quote(cursor, safe='')}"
            resp = self.request("GET", path, timeout=timeout)
            assert resp.status == 200, (self.node_id, resp.status, resp.body[:300])
            page = resp.json()
            entries += page["entries"]
            cursor = page["next"]
            if not cursor:
                return entries, int(page["revision"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """``kill -9`` the whole node: its supervisor and every role, by pid.

        The supervisor is frozen (SIGSTOP) first so that it cannot respawn a
        role between the kills; nothing gets a chance to shut down cleanly.
        """
        assert self.proc is not None, f"{self.node_id} is not running"
        with contextlib.suppress(SupervisorUnavailable, RuntimeError, OSError):
            self.role_pids()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGSTOP)
        for pid in self.seen_pids:
            self._kill_if_ours(pid)
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        wait_for(lambda: not self._any_role_alive(), 10, f"{self.node_id}'s roles to die")

    def _any_role_alive(self) -> bool:
        for pid in self.seen_pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            zombie = stat.rpartition(")")[2].split()[0] == "Z"
            if not zombie and str(self.data).encode() in cmdline:
                return True
        return False

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


class Cluster:
    """N real nodes of one new cluster, every peer link routed through a :class:`Net` proxy.

    ``cluster.net`` injects faults between nodes (``isolate``, ``partition``,
    ``one_way``, ``heal``); ``cluster[node_id]`` is a :class:`Node`. ``tls``
    gives each node its TLS files by id; ``keys_file`` is every node's ``--keys``. Always
    :meth:`stop` it (or use it as a context manager).
    """

    def __init__(
        self,
        size: int = 3,
        root: Path | None = None,
        extra_env: dict[str, str] | None = None,
        proxied: bool = True,
        tls: Callable[[str], NodeTls] | None = None,
        keys_file: Path | None = None,
    ) -> None:
        from tests.integration.netproxy import Net

        self.root = root or short_tmpdir()
        self.ids = [f"n{i}" for i in range(1, size + 1)]
        ports = {node_id: free_port() for node_id in self.ids}
        peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in ports.items())
        self.net = Net(ports) if proxied else None
        self.nodes = {
            node_id: Node(
                node_id,
                data=self.root / node_id,
                port=ports[node_id],
                peers=peers,
                extra_env=extra_env,
                peer_overrides=self.net.overrides(node_id) if self.net else "",
                tls=tls(node_id) if tls is not None else None,
                keys_file=keys_file,
            )
            for node_id in self.ids
        }

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def majority(self) -> int:
        return len(self.ids) // 2 + 1

    def start(self, timeout: float = 60.0) -> Cluster:
        for node in self.nodes.values():
            node.start(wait=False)
        for node in self.nodes.values():
            node.wait_ready(timeout)
        return self

    def running(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.running]

    def statuses(self, nodes: list[Node] | None = None) -> dict[str, dict[str, Any] | None]:
        return {n.node_id: n.status() for n in (nodes if nodes is not None else self.running())}

    def leader(self, nodes: list[Node] | None = None) -> Node | None:
        """The leader a majority of the whole cluster agrees on (same term), among ``nodes``."""
        statuses = self.statuses(nodes)
        for node_id, st in statuses.items():
            if not st or st.get("role") != "leader":
                continue
            backers = [
                other
                for other in statuses.values()
                if other and other.get("leaderId") == node_id and other.get("term") == st["term"]
            ]
            if len(backers) >= self.majority:
                return self.nodes[node_id]
        return None

    def wait_for_leader(
        self, nodes: list[Node] | None = None, exclude: tuple[str, ...] = (), timeout: float = 20.0
    ) -> Node:
        def found() -> Node | None:
            leader = self.leader(nodes)
            return leader if leader is not None and leader.node_id not in exclude else None

        try:
            leader: Node = wait_for(found, timeout, "a leader")
        except AssertionError as e:
            raise AssertionError(f"{e}\nstatuses: {self.statuses(nodes)}") from None
        return leader

    def followers(self, leader: Node | None = None) -> list[Node]:
        leader = leader or self.wait_for_leader()
        return [n for n in self.running() if n is not leader]

    def state(self, node: Node, prefix: str) -> dict[str, Any]:
        """What must be identical on every node: the listing, its revision, the applied index."""
        st = node.status()
        entries, revision = node.list_all(prefix)
        return {
            "entries": entries,
            "revision": revision,
            "appliedIndex": st and st["appliedIndex"],
            "storageRevision": st and st["revision"],
        }

    def converged(self, prefix: str, nodes: list[Node] | None = None) -> dict[str, Any] | None:
        """The common state of ``nodes`` (default: the running ones) if they agree, else None."""
        states = [self.state(n, prefix) for n in (nodes if nodes is not None else self.running())]
        first = states[0]
        if first["appliedIndex"] is None:
            return None
        return first if all(s == first for s in states[1:]) else None

    def wait_converged(
        self, prefix: str, nodes: list[Node] | None = None, timeout: float = 20.0
    ) -> dict[str, Any]:
        """Wait until every node holds the same state; on timeout, say how they differ."""
        try:
            state: dict[str, Any] = wait_for(
                lambda: self.converged(prefix, nodes), timeout, f"convergence of {prefix}"
            )
        except AssertionError as e:
            summary: dict[str, Any] = {}
            for n in nodes if nodes is not None else self.running():
                try:
                    s = self.state(n, prefix)
                    summary[n.node_id] = (
                        len(s["entries"]), s["revision"], s["appliedIndex"], s["storageRevision"]
                    )  # fmt: skip
                except Exception as err:  # report, do not mask the timeout
                    summary[n.node_id] = repr(err)
            raise AssertionError(
                f"{e}\n(entries, revision, applied, storage revision): {summary}"
            ) from None
        return state

    def stop(self) -> None:
        """Stop every node (whatever state it is in, in parallel), then the proxies."""

        def stop(node: Node) -> None:
            with contextlib.suppress(Exception):
                node.stop()

        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(stop, self.nodes.values()))
        if self.net is not None:
            self.net.close()
