"""The one reader of ``CONCORDANCE_*`` variables, and the one builder of child environments.

Why one module: the variables were read in four places (config, the node
command, the role launcher, the dev runner, which also wrote them back), each
with its own parsing and errors. Here every variable is in one table
(:data:`VARIABLES`, which ``tests/unit/test_environment.py`` checks against the
docs), is read once into a typed, frozen object (:class:`NodeEnv`,
:class:`ClientEnv`) and a bad value is a :class:`~concordance.config.ConfigError`
that names the variable (``concordance node`` and the roles exit 2 on it).
Everything else receives those objects.

A process this one starts gets :func:`child_env`: this process's environment
plus what it sets for the child (the dev keys, a keeper's descriptors), never
by writing ``os.environ``.

Imports only the standard library, ``concordance.config`` and ``logfmt``: the
client and the command line use it too, on a client-only install.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeVar

from concordance.config import ConfigError, FrontLimits, NodeConfig, Secrets
from concordance.node.logfmt import FORMATS, LEVELS

__all__ = [
    "VARIABLES",
    "ClientEnv",
    "NodeEnv",
    "Variable",
    "child_env",
    "inherited_fd",
    "read_client",
    "read_node",
]

Reader = Literal["node", "client", "internal"]
_T = TypeVar("_T", int, float)


@dataclass(frozen=True, slots=True)
class Variable:
    """One ``CONCORDANCE_*`` variable: who reads it (a node's processes, the client and
    the CLI, or only the node's own processes, which set it for each other)."""

    name: str
    reader: Reader
    meaning: str


VARIABLES: Mapping[str, Variable] = {
    v.name: v
    for v in (
        Variable("CONCORDANCE_API_KEY", "node", "full read/write key (also the CLI's key)"),
        Variable("CONCORDANCE_AGENT_API_KEY", "node", "read-only key for agents"),
        Variable("CONCORDANCE_CLUSTER_KEY", "node", "the secret peers present to each other"),
        Variable("CONCORDANCE_ENCRYPTION_KEY", "node", "32 bytes, base64: credentials at rest"),
        Variable("CONCORDANCE_ENCRYPTION_OLD_KEYS", "node", "older keys, still read"),
        Variable("CONCORDANCE_SNAPSHOT_EVERY", "node", "applied entries between compactions"),
        Variable("CONCORDANCE_SNAPSHOT_TRAILING", "node", "log entries kept for slow followers"),
        Variable("CONCORDANCE_CHANGE_RETENTION", "node", "change history kept, in revisions"),
        Variable("CONCORDANCE_CHANGE_RETENTION_BYTES", "node", "change history kept, in bytes"),
        Variable("CONCORDANCE_MAX_CLIENT_CONNECTIONS", "node", "connections a front accepts"),
        Variable("CONCORDANCE_RESERVED_CONNECTIONS", "node", "more for peers and loopback"),
        Variable("CONCORDANCE_HEADER_TIMEOUT", "node", "seconds from accept to headers"),
        Variable("CONCORDANCE_KEEPALIVE_TIMEOUT", "node", "seconds an idle keep-alive lives"),
        Variable("CONCORDANCE_LOG_FORMAT", "node", "text or json"),
        Variable("CONCORDANCE_LOG_LEVEL", "node", "DEBUG, INFO, WARNING or ERROR"),
        Variable("CONCORDANCE_ENDPOINTS", "client", "the nodes the client and CLI use"),
        Variable("CONCORDANCE_ENDPOINT", "client", "the same, singular (an alias)"),
        Variable("CONCORDANCE_CACERT", "client", "CA file for https:// endpoints"),
        Variable("CONCORDANCE_CERT", "client", "client certificate file"),
        Variable("CONCORDANCE_KEY", "client", "client certificate's key file"),
        Variable("CONCORDANCE_DEBUG", "client", "the CLI shows a traceback on a bug"),
        Variable("CONCORDANCE_DATA", "internal", "supervisor.conf: the data dir"),
        Variable("CONCORDANCE_PYTHON", "internal", "supervisor.conf: the interpreter"),
        Variable("CONCORDANCE_SUPERVISOR_SOCK", "internal", "supervisor.conf: its socket"),
        Variable("CONCORDANCE_USER", "internal", "supervisor.conf: the user"),
        Variable("CONCORDANCE_MINFDS", "internal", "supervisor.conf: minfds"),
        Variable("CONCORDANCE_LISTEN_FD", "internal", "front keeper -> front: the socket"),
        Variable("CONCORDANCE_READY_FD", "internal", "front -> front keeper: serving"),
        Variable("CONCORDANCE_ROLE_READY_FD", "internal", "role -> role keeper: imported"),
        Variable("CONCORDANCE_ROLE_GO_FD", "internal", "role keeper -> role: run"),
    )
}


@dataclass(frozen=True)
class NodeEnv:
    """What a node's processes take from the environment (README "Configuration")."""

    secrets: Secrets
    limits: FrontLimits
    snapshot_every: int
    snapshot_trailing: int
    change_retention: int
    change_retention_bytes: int
    log_format: str
    log_level: str

    def __repr__(self) -> str:  # the secrets redact themselves; say so for the rest too
        return f"NodeEnv(log_format={self.log_format!r}, log_level={self.log_level!r}, ...)"


@dataclass(frozen=True)
class ClientEnv:
    """What the client and the CLI take from the environment (README "The command-line
    client"); None where unset, so flags and arguments override it."""

    endpoints: str | None = None
    api_key: str | None = None
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    debug: bool = False


def read_node(env: Mapping[str, str] | None = None) -> NodeEnv:
    """Read and check every node variable (``os.environ`` unless given).

    Raises:
        ConfigError: a bad value, naming its variable.
    """
    e = _Reader(os.environ if env is None else env)
    keys: list[tuple[str, bytes]] = []
    if raw := e.text("CONCORDANCE_ENCRYPTION_KEY"):
        keys.append(_decode_key(raw, "CONCORDANCE_ENCRYPTION_KEY"))
    # Old keys stay readable after a rotation: comma-separated, base64.
    for old in filter(None, e.text("CONCORDANCE_ENCRYPTION_OLD_KEYS").split(",")):
        keys.append(_decode_key(old.strip(), "CONCORDANCE_ENCRYPTION_OLD_KEYS"))
    secrets = Secrets(
        api_key=e.raw("CONCORDANCE_API_KEY"),
        agent_key=e.raw("CONCORDANCE_AGENT_API_KEY"),
        cluster_key=e.raw("CONCORDANCE_CLUSTER_KEY"),
        encryption_keys=tuple(keys),
    )
    d = FrontLimits()
    limits = FrontLimits(
        max_client_connections=e.positive(
            "CONCORDANCE_MAX_CLIENT_CONNECTIONS", d.max_client_connections, int
        ),
        reserved_connections=e.positive(
            "CONCORDANCE_RESERVED_CONNECTIONS", d.reserved_connections, int
        ),
        header_timeout=e.positive("CONCORDANCE_HEADER_TIMEOUT", d.header_timeout, float),
        keepalive_timeout=e.positive("CONCORDANCE_KEEPALIVE_TIMEOUT", d.keepalive_timeout, float),
    )
    log_format = e.text("CONCORDANCE_LOG_FORMAT").lower() or "text"
    if log_format not in FORMATS:
        raise ConfigError(
            f"CONCORDANCE_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {log_format!r}"
        )
    level_text = e.text("CONCORDANCE_LOG_LEVEL")
    log_level = level_text.upper() or "INFO"
    if log_level not in LEVELS:
        raise ConfigError(f"CONCORDANCE_LOG_LEVEL={level_text!r}: use one of {', '.join(LEVELS)}")
    return NodeEnv(
        secrets=secrets,
        limits=limits,
        snapshot_every=e.count("CONCORDANCE_SNAPSHOT_EVERY", NodeConfig.snapshot_every),
        snapshot_trailing=e.count("CONCORDANCE_SNAPSHOT_TRAILING", NodeConfig.snapshot_trailing),
        change_retention=e.count("CONCORDANCE_CHANGE_RETENTION", NodeConfig.change_retention),
        change_retention_bytes=e.count(
            "CONCORDANCE_CHANGE_RETENTION_BYTES", NodeConfig.change_retention_bytes
        ),
        log_format=log_format,
        log_level=log_level,
    )


def read_client(env: Mapping[str, str] | None = None) -> ClientEnv:
    """The client's and the CLI's variables (``os.environ`` unless given); an empty one
    counts as unset."""
    e = _Reader(os.environ if env is None else env)
    return ClientEnv(
        endpoints=e.raw("CONCORDANCE_ENDPOINTS") or e.raw("CONCORDANCE_ENDPOINT"),
        api_key=e.raw("CONCORDANCE_API_KEY"),
        cacert=e.raw("CONCORDANCE_CACERT"),
        cert=e.raw("CONCORDANCE_CERT"),
        key=e.raw("CONCORDANCE_KEY"),
        debug=bool(e.raw("CONCORDANCE_DEBUG")),
    )


def inherited_fd(name: str, *, take: bool = False) -> int | None:
    """A descriptor number a keeper passed down in ``name`` (an ``internal`` variable),
    or None when this process was started without it. ``take`` removes it from this
    process's environment, so the processes it starts do not inherit a stale one.

    Raises:
        ConfigError: the value is not a descriptor number.
    """
    _known(name, "internal")
    text = os.environ.pop(name, None) if take else os.environ.get(name)
    if not text:
        return None
    if not text.isdigit():
        raise ConfigError(f"{name} must be a file descriptor number, not {text[:40]!r}")
    return int(text)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a process this one starts: ours, plus ``extra`` (the one
    place child environments are built; ``os.environ`` itself is never written)."""
    for name in extra or {}:
        if name.startswith("CONCORDANCE_"):
            _known(name)
    return {**os.environ, **(extra or {})}


class _Reader:
    """Typed reads of one environment mapping; each error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def raw(self, name: str) -> str | None:
        _known(name)
        return self._env.get(name) or None

    def text(self, name: str) -> str:
        _known(name)
        return self._env.get(name, "").strip()

    def count(self, name: str, default: int) -> int:
        """A non-negative integer (a tuning knob; ``NodeConfig.validate`` says which
        must be positive)."""
        value = self._number(name, default, int)
        if value < 0:
            raise ConfigError(f"{name} must not be negative")
        return value

    def positive(self, name: str, default: _T, kind: Callable[[str], _T]) -> _T:
        value = self._number(name, default, kind)
        if not value > 0:
            raise ConfigError(f"{name} must be positive")
        return value

    def _number(self, name: str, default: _T, kind: Callable[[str], _T]) -> _T:
        text = self.text(name)
        if not text:
            return default
        try:
            return kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise ConfigError(f"{name} must be {what}, not {text[:40]!r}") from None


def _known(name: str, reader: Reader | None = None) -> None:
    variable = VARIABLES.get(name)
    if variable is None or (reader is not None and variable.reader != reader):
        raise KeyError(f"{name} is not in concordance.environment.VARIABLES as {reader or 'any'}")


def _decode_key(text: str, name: str) -> tuple[str, bytes]:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ConfigError(f"{name} is not valid base64") from e
    if len(key) != 32:
        raise ConfigError(f"{name} must decode to 32 bytes, not {len(key)}")
    return hashlib.sha256(key).hexdigest()[:8], key
