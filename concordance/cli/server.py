"""The server-side commands of ``concordance``: run nodes, restore one, control its roles.

    concordance node --id ID --listen HOST:PORT --data DIR [--peers ...] [--join HOST:PORT]
    concordance cluster --nodes N --base-port P --data DIR
    concordance restore --backup FILE --data DIR --id ID --listen HOST:PORT [--peers ...]
    concordance ctl --data DIR status | restart ROLE|all | stop ROLE | start ROLE
    concordance ctl --endpoint URL [--api-key K] restart ROLE|all

These need the server's dependencies (``pip install concordance[server]``);
they are imported only when one of these commands runs, so a client-only
install still offers every client command.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from concordance.config import (
    ROLES,
    ConfigError,
    NodeConfig,
    parse_peers,
)
from concordance.timing import ROLLING_ORDER

if TYPE_CHECKING:
    from concordance.node.supervise import Control


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``node``, ``cluster``, ``restore`` and ``ctl`` to the top-level subparsers."""
    node = sub.add_parser("node", help="run one node (supervisor + roles) in the foreground")
    node.add_argument("--id", required=True, dest="node_id")
    node.add_argument("--listen", required=True, help="HOST:PORT for the API and peers")
    node.add_argument("--data", required=True, help="data directory")
    node.add_argument("--peers", default="", help="ID=HOST:PORT,... voters of a new cluster")
    node.add_argument("--join", help="HOST:PORT of a running member to join")
    node.add_argument(
        "--peer-overrides",
        default="",
        help="ID=HOST:PORT,... dial these peers here instead of their advertised address",
    )
    node.add_argument("--insecure", action="store_true", help="allow running without API key")
    node.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS/WSS, dial wss peers")
    node.add_argument("--tls-key", help="PEM private key of --tls-cert")
    node.add_argument("--tls-client-ca", help="CA bundle: require client certificates (mTLS)")
    node.add_argument("--tls-peer-ca", help="CA bundle peers are verified against")
    node.add_argument("--keys", help="scoped access key file (JSON or .toml), reread on SIGHUP")
    node.set_defaults(run=_run_node)

    cluster = sub.add_parser("cluster", help="run a local dev cluster in the foreground")
    cluster.add_argument("--nodes", type=int, default=3)
    cluster.add_argument("--base-port", type=int, default=4100)
    cluster.add_argument("--host", default="127.0.0.1")
    cluster.add_argument("--data", required=True)
    cluster.add_argument("--insecure", action="store_true")
    cluster.set_defaults(run=_run_cluster)

    restore = sub.add_parser(
        "restore", help="build a new node's data dir from a backup (then run `concordance node`)"
    )
    restore.add_argument("--backup", required=True, help="a file from GET /api/v1/cluster/backup")
    restore.add_argument("--data", required=True, help="the new node's data dir (empty)")
    restore.add_argument("--id", required=True, dest="node_id")
    restore.add_argument("--listen", required=True, help="HOST:PORT the new node will serve on")
    restore.add_argument(
        "--peers", default="", help="ID=HOST:PORT,... voters of the new cluster (default: alone)"
    )
    restore.set_defaults(run=_run_restore)

    ctl = sub.add_parser("ctl", help="status and control of one node's roles")
    where = ctl.add_mutually_exclusive_group(required=True)
    where.add_argument("--data", help="the node's data dir: through its supervisor, locally")
    where.add_argument(
        "--endpoint", help="the node's URL: through its API (restart only; full API key)"
    )
    ctl.add_argument(
        "--api-key",
        default=None,
        help="with --endpoint; visible to every local user (ps): prefer $CONCORDANCE_API_KEY",
    )
    ctl.add_argument("--api-key-file", default=None, help="with --endpoint: read the key from it")
    ctl.add_argument("action", choices=["status", "restart", "stop", "start"])
    ctl.add_argument(
        "role", nargs="?", choices=[*ROLES, "all"], help="all: restart storage, consensus, front"
    )
    ctl.set_defaults(run=_run_ctl)


# -- node / cluster -----------------------------------------------------------
def _run_node(args: argparse.Namespace) -> int:
    from concordance import environment
    from concordance.node import supervise

    env = environment.read_node()  # every variable checked here, once, before anything starts
    cfg = NodeConfig(
        node_id=args.node_id,
        listen=args.listen,
        data_dir=str(Path(args.data).resolve()),
        peers=parse_peers(args.peers),
        join=args.join,
        peer_overrides=parse_peers(args.peer_overrides),
        insecure=args.insecure,
        snapshot_every=env.snapshot_every,
        snapshot_trailing=env.snapshot_trailing,
        change_retention=env.change_retention,
        change_retention_bytes=env.change_retention_bytes,
        secrets=env.secrets,
        limits=env.limits,
        keys_file=_abspath(args.keys),
        tls_cert=_abspath(args.tls_cert),
        tls_key=_abspath(args.tls_key),
        tls_client_ca=_abspath(args.tls_client_ca),
        tls_peer_ca=_abspath(args.tls_peer_ca),
    )
    _check_files(cfg.validate())
    from concordance.ipc.paths import UnsafeRunDir, run_dir

    try:  # the roles would each refuse it; say so once, before starting them
        run_dir(cfg.data_dir)
    except (UnsafeRunDir, OSError) as e:
        raise ConfigError(str(e)) from None
    existing = Path(cfg.data_dir) / "raft" / "raft.db"
    if existing.exists():
        members = _members_on_disk(existing)
        if members > 1:
            cfg.require_cluster_key(f"the data dir holds a cluster of {members} members")
        if cfg.peers or cfg.join:
            print(
                "concordance: data dir holds cluster state; --peers/--join ignored",
                file=sys.stderr,
            )
    supervise.run_node(cfg.validate(), environment.child_env())
    return 0  # not reached: run_node execs supervisord


def _members_on_disk(raft_db: Path) -> int:
    """How many members the cluster recorded in ``raft_db`` has (its last configuration).

    Read here, before any role runs: a node restarted on a multi-member data dir gets
    no ``--peers``, and must still refuse to start without a cluster key."""
    from concordance.raft.membership_history import MembershipHistory
    from concordance.raft.sqlite_store import SqliteRaftStore

    try:
        with SqliteRaftStore(raft_db) as store:
            _, snapshot = store.initial_state()
            return len(MembershipHistory.load(store, snapshot).current.members)
    except Exception as e:  # consensus will say what is wrong with it, in its own log
        print(f"concordance: cannot read the membership in {raft_db}: {e}", file=sys.stderr)
        return 0


def _abspath(path: str | None) -> str | None:
    """Role processes do not share our working directory: record absolute paths."""
    return str(Path(path).resolve()) if path else None


def _check_files(cfg: NodeConfig) -> None:
    """Load the key file and TLS files once here, so a bad one stops the node with a reason."""
    from concordance.security.access import AccessKeyRing
    from concordance.security.tls import TlsContexts

    AccessKeyRing(cfg.keys_file)
    if cfg.tls:
        TlsContexts(cfg)


def _run_cluster(args: argparse.Namespace) -> int:
    ids = [f"n{i}" for i in range(1, args.nodes + 1)]
    peers = ",".join(f"{n}={args.host}:{args.base_port + i}" for i, n in enumerate(ids))
    from concordance import environment

    generated = {}
    if not environment.read_node().secrets.cluster_key:
        # A dev cluster gets a throwaway cluster key (API.md §1: no default); real clusters
        # set their own.
        import secrets

        generated["CONCORDANCE_CLUSTER_KEY"] = secrets.token_hex(32)
    env = environment.child_env(generated)
    procs = []
    for i, node_id in enumerate(ids):
        cmd = [
            sys.executable, "-m", "concordance.cli", "node", "--id", node_id,
            "--listen", f"{args.host}:{args.base_port + i}",
            "--data", str(Path(args.data) / node_id), "--peers", peers,
        ]  # fmt: skip
        if args.insecure:
            cmd.append("--insecure")
        procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
        print(f"{node_id}: http://{args.host}:{args.base_port + i}  (data {args.data}/{node_id})")
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


def _run_restore(args: argparse.Namespace) -> int:
    from concordance.node.restore import restore

    done = restore(args.backup, args.data, args.node_id, args.listen, parse_peers(args.peers))
    voters = ",".join(f"{n}={a}" for n, a in done.membership.addresses)
    print(
        f"restored {args.backup} into {done.data_dir}: snapshot at index {done.index}"
        f" (term {done.term}), voters {voters}"
    )
    print(
        f"start it with: concordance node --id {args.node_id} --listen {args.listen}"
        f" --data {done.data_dir}"
    )
    return 0


def _restart(control: Control, role: str) -> None:
    """Restart one role; the front by a hand-over, waiting for the old one to drain."""
    from concordance.node.supervise import serving, serving_front, wait_gone

    old = serving_front(control.data_dir) if role == "front" else None
    control.restart(role)
    if role == "front":
        new = serving_front(control.data_dir)
        drained = wait_gone(old) if old != new else True
        note = "" if drained else " (the old front is still draining)"
        print(f"front: handed over to pid {new}{note}")
    else:
        print(f"{role}: restart done (pid {serving(control.data_dir, role)})")


def _run_ctl(args: argparse.Namespace) -> int:
    from concordance.node.supervise import Control, SupervisorUnavailable

    if args.role == "all" and args.action != "restart":
        print("concordance ctl: only restart takes 'all'", file=sys.stderr)
        return 2
    if args.endpoint is not None:
        from concordance.cli.remote_ctl import run_remote

        return run_remote(args)
    control = Control(args.data)
    try:
        if args.action == "restart" and args.role is not None:
            for role in ROLLING_ORDER if args.role == "all" else (args.role,):
                _restart(control, role)  # each waits until the role serves again
            return 0
        if args.action == "status":
            from concordance.node.supervise import serving

            for name, state in sorted(control.states().items()):
                print(state.line(serving(control.data_dir, name)))
            return 0
        if args.role is None:
            print(f"concordance ctl {args.action}: which role? {', '.join(ROLES)}", file=sys.stderr)
            return 2
        getattr(control, args.action)(args.role)
        print(f"{args.role}: {args.action} done")
        return 0
    except SupervisorUnavailable as e:
        print(f"concordance: {e}", file=sys.stderr)
        return 1
