"""The node supervisor: supervisord runs the three roles; this module drives it.

``run_node`` replaces the current process with supervisord in the foreground
(so Ctrl-C and SIGTERM reach it directly and it stops every role, whole
process groups, before exiting). ``Control`` talks to a running supervisord
over its unix socket (XML-RPC), for ``concordance ctl`` and the front's
``/cluster/status``.
"""

from __future__ import annotations

import os
import pwd
import resource
import signal
import sys
import time
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

from supervisor.xmlrpc import SupervisorTransport

from concordance.config import ROLES, NodeConfig, supervisor_socket
from concordance.timing import HAND_OVER_TIMEOUT

GROUP = "node"
STARTS_DIR = "run"


class SupervisorUnavailable(RuntimeError):
    """No supervisord answers on the node's socket (the node is not running)."""


def config_path() -> Path:
    """The packaged supervisord configuration (the repo's ``supervisor.conf``)."""
    return Path(str(resources.files("concordance").joinpath("supervisor.conf")))


def node_environment(cfg: NodeConfig, base: Mapping[str, str]) -> dict[str, str]:
    """The environment supervisord (and so every role) runs with: ``base`` (the node
    command's, ``concordance.environment.child_env``) plus what supervisor.conf reads."""
    env = dict(base)
    env.update(
        CONCORDANCE_DATA=str(cfg.data.resolve()),
        CONCORDANCE_PYTHON=sys.executable,
        CONCORDANCE_SUPERVISOR_SOCK=supervisor_socket(cfg.data),
        CONCORDANCE_USER=pwd.getpwuid(os.getuid()).pw_name,
        CONCORDANCE_MINFDS=str(_min_fds(cfg.limits.descriptors)),
        PYTHONUNBUFFERED="1",
    )
    # Roles import `procs`, which lives beside the `concordance` package.
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, base.get("PYTHONPATH", "")) if p)
    return env


def _min_fds(wanted: int) -> int:
    """supervisord's ``minfds``: the descriptors the front's connection cap needs, within the
    hard limit unless we may raise it (root), since supervisord refuses to start past it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.getuid() == 0 or hard == resource.RLIM_INFINITY:
        return wanted
    return min(wanted, hard)


def prepare(cfg: NodeConfig) -> None:
    """Create the data dir layout and record the configuration for the roles."""
    for sub in ("logs", "raft", "state", STARTS_DIR):
        (cfg.data / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.data, 0o700)
    cfg.save()


def run_node(cfg: NodeConfig, base: Mapping[str, str]) -> None:
    """Become the node's supervisor (never returns), with ``base`` as the environment
    its roles inherit (``concordance.environment.child_env``)."""
    prepare(cfg)
    env = node_environment(cfg, base)
    os.execve(sys.executable, supervisord_command(cfg), env)


def supervisord_command(cfg: NodeConfig) -> list[str]:
    """supervisord in the foreground, through a start that wakes its first poll so the
    roles are spawned at once, not a second later (``concordance/node/supervisor_start.py``)."""
    sock = supervisor_socket(cfg.data)
    start = [sys.executable, "-m", "concordance.node.supervisor_start", sock]
    return [*start, "-n", "-c", str(config_path())]


def record_start(data_dir: str | os.PathLike[str], role: str) -> None:
    """Count a role's start, so restarts can be reported (called by ``procs/``)."""
    path = Path(data_dir) / STARTS_DIR / f"{role}.starts"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(f"{os.getpid()}\n")


def starts(data_dir: str | os.PathLike[str], role: str) -> int:
    """How many times ``role`` started in this data dir (0 if never under ``procs/``):
    it only grows, so it orders a role's processes (the fronts' ROUTING_IDs)."""
    try:
        return len((Path(data_dir) / STARTS_DIR / f"{role}.starts").read_text().splitlines())
    except OSError:
        return 0


def restarts(data_dir: str | os.PathLike[str], role: str) -> int:
    """How many times ``role`` started after its first start in this data dir."""
    return max(0, starts(data_dir, role) - 1)


def serving_pid_path(data_dir: str | os.PathLike[str], role: str) -> Path:
    """Where a role's keeper (``procs/front_keeper.py``, ``procs/role_keeper.py``)
    records the process serving the role."""
    return Path(data_dir) / STARTS_DIR / f"{role}.pid"


def front_pid_path(data_dir: str | os.PathLike[str]) -> Path:
    """Where the front keeper records the serving front."""
    return serving_pid_path(data_dir, "front")


def record_serving(data_dir: str | os.PathLike[str], role: str, pid: int) -> None:
    """Record ``pid`` as the process serving ``role`` (atomically: readers poll it)."""
    path = serving_pid_path(data_dir, role)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def serving(data_dir: str | os.PathLike[str], role: str) -> int | None:
    """The pid of the process serving ``role`` now, by its keeper's record."""
    try:
        return int(serving_pid_path(data_dir, role).read_text())
    except (OSError, ValueError):
        return None


def serving_front(data_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the front process serving now, by its keeper's record."""
    return serving(data_dir, "front")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class RoleState:
    name: str
    state: str
    pid: int | None
    description: str

    def line(self, serving_pid: int | None) -> str:
        """One row of ``ctl status``: supervisord's pid is the role's keeper, so the
        process that serves the role (its keeper's record) is shown beside it."""
        pid = self.pid or "-"
        now = serving_pid if self.up and serving_pid is not None else "-"
        return (
            f"{self.name:<10} {self.state:<9} pid {pid!s:<8} serving {now!s:<8} {self.description}"
        )

    @property
    def up(self) -> bool:
        # STARTING = spawned and alive, not yet past startsecs: it is serving.
        return self.state in ("RUNNING", "STARTING") and self.pid is not None


class Control:
    """Operator control of one node's roles through its supervisord."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = data_dir
        self._url = f"unix://{supervisor_socket(data_dir)}"

    def _call(self, method: str, *args: Any) -> Any:
        # A transport per call, closed after it: nothing stays open between calls.
        transport = SupervisorTransport(None, None, self._url)
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        try:
            return getattr(proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault as e:
            raise RuntimeError(e.faultString) from e
        except OSError as e:
            raise SupervisorUnavailable(
                f"no supervisor answers for {self.data_dir} (is the node running?)"
            ) from e
        finally:
            transport.close()

    def states(self) -> dict[str, RoleState]:
        infos = cast(list[dict[str, Any]], self._call("getAllProcessInfo"))
        out = {}
        for info in infos:
            pid = int(info["pid"]) or None
            out[info["name"]] = RoleState(info["name"], info["statename"], pid, info["description"])
        return out

    def start(self, role: str) -> None:
        self._call("startProcess", f"{GROUP}:{_role(role)}", True)

    def stop(self, role: str) -> None:
        self._call("stopProcess", f"{GROUP}:{_role(role)}", True)

    def restart(self, role: str) -> None:
        """Restart ``role`` through its keeper when it runs (``hand_over``: the front's
        successor serves before the old one stops; a storage or consensus successor
        has done its imports before the old one stops); a role that is down, or a
        keeper that never recorded a serving process, by stop and start."""
        state = self.states().get(_role(role))
        running = state is not None and state.state in ("RUNNING", "STARTING")
        if running and serving(self.data_dir, role) is not None:
            self.hand_over(role)
            return
        if running or (state is not None and state.state == "BACKOFF"):
            self.stop(role)
        self.start(role)

    def hand_over_front(self, timeout: float = HAND_OVER_TIMEOUT) -> int:
        """``hand_over("front")``: the old front drains and exits after (``wait_gone``);
        clients never find the port closed."""
        return self.hand_over("front", timeout)

    def hand_over(self, role: str, timeout: float = HAND_OVER_TIMEOUT) -> int:
        """Ask ``role``'s keeper to restart it (SIGUSR2); return the new process's pid
        once the keeper records it: a front once it serves and the old front stopped
        accepting, storage or consensus once the old process is gone and the new one
        (imports done) was told to go on.

        Raises:
            RuntimeError: nothing new recorded within ``timeout`` (the old one goes on).
        """
        old = serving(self.data_dir, role)
        self.signal(role, "USR2")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            new = serving(self.data_dir, role)
            if new is not None and new != old:
                return new
            time.sleep(0.01)
        raise RuntimeError(f"the {role} restart did not complete in {timeout:.0f} s")

    def signal(self, role: str, name: str) -> None:
        """Send signal ``name`` (``TERM``...) to the role; with ``autorestart`` a role
        that exits on it is started again by supervisord (how a front restarts itself:
        it cannot call ``start`` after its own stop)."""
        self._call("signalProcess", f"{GROUP}:{_role(role)}", name)

    def shutdown(self) -> None:
        self._call("shutdown")


def descendants(roots: list[int]) -> list[int]:
    """``roots`` and every live process below them (from /proc), each parent before
    its children: a node's supervisor, its roles and the front under its keeper."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], list(reversed(roots))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += reversed(children.get(pid, []))
    return out


def wait_gone(pid: int | None, timeout: float = 10.0) -> bool:
    """Wait until process ``pid`` exited (an old front draining after a hand-over)."""
    deadline = time.monotonic() + timeout
    while pid is not None and _alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def _role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    return role


def role_states(data_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{"front": {"pid", "up", "restarts"}, ...}`` for ``/cluster/status``.

    Blocking (XML-RPC over a unix socket): call it from an executor.
    """
    try:
        states = Control(data_dir).states()
    except SupervisorUnavailable:
        states = {}
    result = {}
    for role in ROLES:
        state = states.get(role)
        up = state is not None and state.up
        kept = serving(data_dir, role) if role != "front" else None  # its keeper's child
        result[role] = {
            "pid": (kept or state.pid) if state is not None and up else None,
            "up": bool(state and state.up),
            "restarts": restarts(data_dir, role),
        }
    return result


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this role if its parent (supervisor or keeper) dies,
    even by SIGKILL, so a crashed parent never leaves orphaned roles holding the port."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, sig, 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the supervisor's own stop path still applies
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


def role_started(
    data_dir: str | os.PathLike[str], role: str, parent_death: int = signal.SIGTERM
) -> None:
    """What every role process does first under the supervisor (``parent_death``: what
    it gets if its parent dies; SIGKILL under a keeper, a crash like the keeper's)."""
    die_with_parent(parent_death)
    record_start(data_dir, role)
