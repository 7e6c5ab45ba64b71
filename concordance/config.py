"""A node's configuration: frozen, validated once at startup.

``concordance node`` builds a :class:`NodeConfig` from argv and the
environment, validates it and writes the non-secret part to
``{data}/node.json``. Each role process (``procs/*.py``) reloads it with
:func:`load` from that file plus the environment, which supervisord passes
down; secrets (API keys, the encryption key) never touch the disk.
Only ``concordance.cli`` and ``procs/`` read argv; only
``concordance.environment`` reads the environment (into the objects here).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concordance.environment import NodeEnv

NODE_FILE = "node.json"
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "*", ""})
ROLES = ("storage", "consensus", "front")  # start order; stop order is reversed


class ConfigError(ValueError):
    """The configuration is unusable; the message says which setting and why."""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); IPv6 hosts may be bracketed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"invalid address {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def parse_peers(text: str) -> dict[str, str]:
    """``n1=host:port,n2=host:port`` -> {id: address}."""
    peers: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node_id, sep, address = item.partition("=")
        if not sep:
            raise ConfigError(f"invalid peer {item!r}: expected ID=HOST:PORT")
        validate_node_id(node_id)
        parse_address(address)
        if node_id in peers:
            raise ConfigError(f"peer {node_id!r} listed twice")
        peers[node_id] = address
    return peers


def validate_node_id(node_id: str) -> str:
    ok = 0 < len(node_id) <= 32 and all(c.isalnum() or c in "-_." for c in node_id)
    if not ok:
        raise ConfigError(f"invalid node id {node_id!r}: 1-32 letters, digits, '-', '_', '.'")
    return node_id


@dataclass(frozen=True)
class Secrets:
    """Keys from the environment; never written to disk or logged."""

    api_key: str | None = None
    agent_key: str | None = None
    cluster_key: str | None = None
    encryption_keys: tuple[tuple[str, bytes], ...] = ()  # (key id, 32 bytes); first encrypts

    def __repr__(self) -> str:
        return "Secrets(<redacted>)"

    @property
    def peer_key(self) -> str | None:
        """The secret peers present in a peer link's hello (and a joiner on ``/cluster/members``):
        ``CONCORDANCE_CLUSTER_KEY``, which has no default (API.md v1.1 §1). A client key
        standing in would let every client pose as a peer and rewrite the log."""
        return self.cluster_key

    def cluster_key_problem(self) -> str | None:
        """Why this cluster key cannot serve a multi-member node, or None if it can."""
        if not self.cluster_key:
            return "CONCORDANCE_CLUSTER_KEY is not set"
        for name, other in (
            ("CONCORDANCE_API_KEY", self.api_key),
            ("CONCORDANCE_AGENT_API_KEY", self.agent_key),
        ):
            if other and hmac.compare_digest(self.cluster_key.encode(), other.encode()):
                return f"CONCORDANCE_CLUSTER_KEY equals {name}"
        return None


@dataclass(frozen=True)
class FrontLimits:
    """What one front lets clients hold (docs/SECURITY.md §1.4), from the environment
    (``concordance.environment``).

    The connection cap counts every connection the front accepted; past it only
    peers and loopback (operators' probes) get in, up to ``reserved_connections``
    more, so a flood of clients cannot lock them out. The default leaves room for
    10,000 watchers on one front.
    """

    max_client_connections: int = 16_384  # CONCORDANCE_MAX_CLIENT_CONNECTIONS
    reserved_connections: int = 256  # CONCORDANCE_RESERVED_CONNECTIONS: peers, loopback
    header_timeout: float = 10.0  # CONCORDANCE_HEADER_TIMEOUT: accept -> first request's headers
    keepalive_timeout: float = 30.0  # CONCORDANCE_KEEPALIVE_TIMEOUT: idle HTTP keep-alive

    @property
    def descriptors(self) -> int:
        """File descriptors a front wants: every connection, plus its own files and sockets."""
        return self.max_client_connections + self.reserved_connections + 1024


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node's roles need to know; see ``docs/OPERATIONS.md``."""

    node_id: str
    listen: str
    data_dir: str
    peers: dict[str, str] = field(default_factory=dict)  # voters of a new cluster
    join: str | None = None
    peer_overrides: dict[str, str] = field(default_factory=dict)  # dial these instead
    insecure: bool = False
    tick_ms: int = 100
    heartbeat_ticks: int = 1
    election_ticks: int = 10
    auto_promote: bool = True  # the leader promotes caught-up learners to voters
    snapshot_every: int = 10_000  # applied entries between snapshots
    snapshot_trailing: int = 5_000  # entries kept behind a snapshot for slow followers
    change_retention: int = 100_000  # revisions of change history kept at most
    change_retention_bytes: int = 1 << 30  # key + value bytes of change history kept at most
    max_value_bytes: int = 1 << 20
    request_timeout_ms: int = 5_000
    keys_file: str | None = None  # --keys: scoped access keys (concordance.security.access)
    tls_cert: str | None = None  # --tls-cert/--tls-key: serve HTTPS/WSS (concordance.security.tls)
    tls_key: str | None = None
    tls_client_ca: str | None = None  # --tls-client-ca: require client certificates (mTLS)
    tls_peer_ca: str | None = None  # --tls-peer-ca: verify peers (default: client CA, system)
    secrets: Secrets = field(default_factory=Secrets, compare=False)
    limits: FrontLimits = field(default_factory=FrontLimits, compare=False)

    @property
    def data(self) -> Path:
        return Path(self.data_dir)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def scheme(self) -> str:
        """``https`` on a TLS node (peers dial ``wss``), else ``http``."""
        return "https" if self.tls else "http"

    @property
    def address(self) -> str:
        """This node's address as peers reach it."""
        return self.peers.get(self.node_id, self.listen)

    def validate(self) -> NodeConfig:
        validate_node_id(self.node_id)
        parse_address(self.listen)
        if self.peers and self.node_id not in self.peers:
            raise ConfigError(f"--peers must include this node ({self.node_id})")
        if self.peers and self.join:
            raise ConfigError("--peers and --join are exclusive")
        if self.join:
            parse_address(self.join)
            if parse_address(self.listen)[0] in _WILDCARD_HOSTS:
                raise ConfigError(
                    f"--join: --listen {self.listen} is what the cluster will dial to reach"
                    " this node; give this machine's reachable address, not a wildcard"
                )
        if not self.insecure and not self.secrets.api_key:
            raise ConfigError(
                "CONCORDANCE_API_KEY is not set: refusing to start (use --insecure for a dev node)"
            )
        self._validate_cluster_key()
        self._validate_files()
        for name in (
            "tick_ms",
            "heartbeat_ticks",
            "snapshot_every",
            "change_retention",
            "change_retention_bytes",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("election_ticks must exceed heartbeat_ticks")
        return self

    def _validate_cluster_key(self) -> None:
        if len(self.peers) > 1 or self.join:
            self.require_cluster_key("this node has other members (--peers or --join)")

    def require_cluster_key(self, why: str) -> None:
        """Refuse a multi-member node without a cluster key of its own (API.md v1.1 §1).

        Raises:
            ConfigError: one line, saying what is wrong and how to fix it.
        """
        problem = self.secrets.cluster_key_problem()
        if problem is not None:
            raise ConfigError(
                f"{problem}: {why}, and peers authenticate with a cluster key of their own;"
                " set the same random secret (openssl rand -hex 32) on every member,"
                " different from the API and agent keys"
            )

    def _validate_files(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        if not self.tls and (self.tls_client_ca or self.tls_peer_ca):
            raise ConfigError("--tls-client-ca/--tls-peer-ca need --tls-cert and --tls-key")
        for flag, path in (
            ("--tls-cert", self.tls_cert),
            ("--tls-key", self.tls_key),
            ("--tls-client-ca", self.tls_client_ca),
            ("--tls-peer-ca", self.tls_peer_ca),
            ("--keys", self.keys_file),
        ):
            if path is not None and not os.access(path, os.R_OK):
                raise ConfigError(f"{flag} {path}: not a readable file")

    def save(self) -> Path:
        """Write the non-secret settings to ``{data}/node.json`` (atomically)."""
        self.data.mkdir(parents=True, exist_ok=True)
        body = asdict(self)
        body.pop("secrets")
        body.pop("limits")
        path = self.data / NODE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True))
        os.replace(tmp, path)
        return path


def load(data_dir: str | os.PathLike[str], env: NodeEnv) -> NodeConfig:
    """Rebuild a node's configuration inside a role process (``env``: its environment,
    read by ``concordance.environment.read_node``)."""
    path = Path(data_dir) / NODE_FILE
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from e
    known = {f for f in NodeConfig.__dataclass_fields__ if f not in ("secrets", "limits")}
    cfg = NodeConfig(**{k: v for k, v in body.items() if k in known})
    return replace(cfg, secrets=env.secrets, limits=env.limits).validate()


def runtime_path(data_dir: str | os.PathLike[str], name: str) -> str:
    """A unix-socket path for ``name`` that fits the 108-byte limit.

    Inside the data dir when short enough (easy to find), else under /tmp with
    a name derived from the data dir's real path.
    """
    real = os.path.realpath(data_dir)
    inside = os.path.join(real, name)
    if len(inside.encode()) <= 100:
        return inside
    digest = hashlib.sha256(real.encode()).hexdigest()[:12]
    return f"/tmp/cc-{digest}-{name}"


def supervisor_socket(data_dir: str | os.PathLike[str]) -> str:
    """Where the node's supervisord listens for ``concordance ctl`` / supervisorctl."""
    return runtime_path(data_dir, "supervisor.sock")
