"""The front's shared state in one place: the typed slots (``AppKey``s) of its app and requests.

Why one module (STYLE.md 14): a reader finds all shared state of the front
here, and handlers reach it only through these typed keys. The service
objects they name are created in ``app``'s cleanup context, once the role
clients are connected.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Protocol

from aiohttp import web

from concordance.clock import Clock
from concordance.config import NodeConfig
from concordance.front.clients import Clients
from concordance.front.gate import ConnectionGate
from concordance.front.metrics import Metrics
from concordance.front.probe_cache import Probes
from concordance.front.service import KvService
from concordance.front.supervisor import Supervisor
from concordance.front.watch import WatchHub
from concordance.front.writes import Proposer
from concordance.security.access import AccessKeyRing, Principal
from concordance.security.crypto import Cipher
from concordance.security.tls import TlsContexts

__all__ = [
    "ACCESS",
    "ACCESS_KEYRING",
    "CIPHER",
    "CLIENTS",
    "CLOCK",
    "CONFIG",
    "GATE",
    "HUB",
    "KV",
    "METRICS",
    "PROBES",
    "PROPOSER",
    "STREAMS",
    "SUPERVISOR",
    "TIMERS",
    "TLS",
    "Closable",
]


class Closable(Protocol):
    """A long-lived connection the front closes on shutdown (WebSocket sessions)."""

    async def shutdown(self) -> None: ...


CONFIG = web.AppKey("config", NodeConfig)
PROBES = web.AppKey("probes", Probes)  # /readyz and /metrics, computed at most once a second
GATE = web.AppKey("gate", ConnectionGate)  # counts and caps connections (installed by procs)
CLOCK = web.AppKey[Callable[[], int]]("clock")
TIMERS = web.AppKey[Clock]("timers")  # monotonic time, sleeps, timeouts
CIPHER = web.AppKey("cipher", Cipher)
METRICS = web.AppKey("metrics", Metrics)
SUPERVISOR = web.AppKey[Supervisor]("supervisor")  # role states and restarts (supervisor.py)
STREAMS = web.AppKey("streams", weakref.WeakSet[Closable])
ACCESS_KEYRING = web.AppKey("keyring", AccessKeyRing)  # scoped keys (--keys), reloaded on SIGHUP
TLS = web.AppKey("tls", TlsContexts)  # set on a TLS node only
# Set once the role clients are connected (cleanup context):
CLIENTS = web.AppKey("clients", Clients)
PROPOSER = web.AppKey("proposer", Proposer)
HUB = web.AppKey("hub", WatchHub)
KV = web.AppKey("kv", KvService)

# What the caller's key allows (concordance.security.access: FULL, AGENT or a scoped key).
ACCESS = web.RequestKey("access", Principal)
