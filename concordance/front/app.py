"""The front's aiohttp application factory: state, services, the event pump, shutdown order.

Why a factory taking a client factory: the role clients own ZeroMQ sockets
and tasks, which must be created inside the running loop and closed on the
way out, so they live in a cleanup context (STYLE.md 14); tests pass a
factory of in-memory fakes instead of ``ipc_clients.connect``.

Lifecycle:

* startup: connect the clients, build the proposer, watch hub and kv
  service, and start the event pump: one task that reads storage's events
  in order, resolving write waiters from ``results`` and fanning
  ``change_batch`` out to watchers. A node started with ``--join`` also runs
  the join task (``join.py``) until it is a member.
* shutdown (``on_shutdown``, before cleanup): every WebSocket session says
  goodbye (``watch/cancelled`` with ``shutdown``, then close); long-polls are
  woken. Cleanup then stops the pump, fails pending writes and closes the role
  sockets. Peer links are consensus's (PROTOCOL.md §6), not the front's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
from aiohttp import web

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.config import NodeConfig
from concordance.front.app_state import (
    ACCESS_KEYRING,
    CIPHER,
    CLIENTS,
    CLOCK,
    CONFIG,
    GATE,
    HUB,
    KV,
    METRICS,
    PROBES,
    PROPOSER,
    STREAMS,
    SUPERVISOR,
    TIMERS,
    TLS,
    Closable,
)
from concordance.front.clients import Clients, EventSource
from concordance.front.codec import Renderer
from concordance.front.gate import ConnectionGate
from concordance.front.join import join_cluster
from concordance.front.metrics import Metrics
from concordance.front.middlewares import auth_middleware, error_middleware, metrics_middleware
from concordance.front.probe_cache import Probes
from concordance.front.routes import setup_routes
from concordance.front.service import KvService
from concordance.front.supervisor import Supervisor
from concordance.front.watch import WatchHub
from concordance.front.writes import Proposer
from concordance.protocol import wire
from concordance.security.access import AccessKeyRing
from concordance.security.crypto import Cipher
from concordance.security.tls import TlsContexts

__all__ = ["BODY_SLACK", "ClientsFactory", "make_app", "now_ms", "reload", "static_clients"]

log = logging.getLogger(__name__)

BODY_SLACK = 64 * 1024  # a request body may exceed the value limit by this much (API.md §2)
STORAGE_PROBE_TIMEOUT = 2.0
CONNECT_TIMEOUT = 2.0  # TCP connect of the app's client session (--join)

ClientsFactory = Callable[[], AbstractAsyncContextManager[Clients]]


def now_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return time.time_ns() // 1_000_000


def static_clients(clients: Clients) -> ClientsFactory:
    """A factory that hands out already-built clients (tests, embedding)."""

    @contextlib.asynccontextmanager
    async def connect() -> AsyncIterator[Clients]:
        yield clients

    return connect


def make_app(
    cfg: NodeConfig,
    connect: ClientsFactory,
    *,
    supervisor: Supervisor,
    clock: Callable[[], int] | None = None,
    timers: Clock = SYSTEM_CLOCK,
    tls: TlsContexts | None = None,
) -> web.Application:
    """The front of node ``cfg``.

    Args:
        cfg: the node's configuration (secrets included).
        connect: opens the clients of the other roles for the app's lifetime
            (``concordance.front.ipc_clients.connect(cfg.data_dir, n)`` in production).
        supervisor: the node's supervisor (``Supervisord`` in production): role
            states and restarts, blocking calls run in an executor.
        clock: epoch milliseconds, for timestamps, ttlMs and expiry
            (``timers.wall_ms`` unless given).
        timers: the clock of the proposer's deadlines, the watch hub's waits, long-polls,
            membership waits and the join's backoff (a manual one in tests).
        tls: on a TLS node, the contexts the server uses (the caller serves with
            ``tls.server``); peers and ``--join`` are then dialed with ``tls.client``.

    Raises:
        ConfigError: the key file (``--keys``) is unreadable or invalid.
    """
    app = web.Application(
        middlewares=[metrics_middleware, error_middleware, auth_middleware],
        client_max_size=cfg.max_value_bytes + BODY_SLACK,
    )
    app[CONFIG] = cfg
    app[CLOCK] = clock or timers.wall_ms
    app[TIMERS] = timers
    app[CIPHER] = Cipher(cfg.secrets.encryption_keys)
    app[METRICS] = Metrics()
    app[GATE] = ConnectionGate(cfg.limits)
    app[PROBES] = Probes.on(timers.monotonic)
    app[SUPERVISOR] = supervisor
    app[STREAMS] = weakref.WeakSet[Closable]()
    app[ACCESS_KEYRING] = AccessKeyRing(cfg.keys_file)
    if tls is not None:
        app[TLS] = tls
    setup_routes(app)

    async def services(app: web.Application) -> AsyncIterator[None]:
        async with (
            connect() as clients,
            _http_session() as http,
            _running(app, clients, http),
        ):
            yield

    app.cleanup_ctx.append(services)
    app.on_shutdown.append(_say_goodbye)
    return app


def _http_session() -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(
        total=None, connect=CONNECT_TIMEOUT, sock_connect=CONNECT_TIMEOUT
    )
    return aiohttp.ClientSession(timeout=timeout)


@contextlib.asynccontextmanager
async def _running(
    app: web.Application, clients: Clients, http: aiohttp.ClientSession
) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    timers = app[TIMERS]
    proposer = Proposer(
        cfg.node_id, clients.consensus, cfg.request_timeout_ms, app[CLOCK], timers=timers
    )
    hub = WatchHub(
        clients.storage,
        Renderer(app[CIPHER]),
        storage_timeout=min(STORAGE_PROBE_TIMEOUT, cfg.request_timeout_ms / 1000),
        clock=timers,
    )
    app[CLIENTS] = clients
    app[PROPOSER] = proposer
    app[HUB] = hub
    app[KV] = KvService(
        clients, proposer, hub, app[CIPHER], cfg.request_timeout_ms, app[CLOCK], timers
    )
    clients.consensus.on_dropped(proposer.fail_dropped)
    loop = asyncio.get_running_loop()
    pump = _pump(clients.events, proposer, hub, timers)
    tasks = [loop.create_task(pump, name="event-pump")]
    if cfg.secrets.cluster_key_problem() is not None:
        check = _check_cluster_key(cfg, clients, timers)
        tasks.append(loop.create_task(_logged("cluster key check", check), name="cluster-key"))
    if cfg.join:
        ssl = app[TLS].client if TLS in app else None
        joining = join_cluster(cfg, clients.consensus, http, ssl=ssl, clock=timers)
        tasks.append(loop.create_task(_logged("join", joining), name="join"))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await hub.close()
        proposer.abandon_all()  # 504: a waiting write may have been proposed


def reload(app: web.Application) -> bool:
    """SIGHUP: re-read the key file and the TLS certificate and key; False if one was refused.

    Whatever fails to load keeps its previous version (and is logged), so a
    bad edit never locks every client out of a running node.
    """
    ok = app[ACCESS_KEYRING].reload()
    if TLS in app:
        ok = app[TLS].reload() and ok
    return ok


CLUSTER_KEY_CHECK_TRIES = 60
CLUSTER_KEY_CHECK_EVERY = 0.5  # seconds between two asks while consensus is not up
EVENTS_RETRY = 0.1  # seconds before reading a failed event source again


async def _check_cluster_key(cfg: NodeConfig, clients: Clients, timers: Clock) -> str:
    """Say loudly why a member of a multi-node cluster without a usable cluster key gets
    nowhere: its peers and it refuse each other on ``/raft``.

    ``concordance node`` refuses to start such a node when its flags or its data dir
    show other members; this covers the one case it cannot see, members added while
    the node runs (only consensus knows them).
    """
    problem = cfg.secrets.cluster_key_problem()
    for _ in range(CLUSTER_KEY_CHECK_TRIES):
        try:
            st = await clients.consensus.status(STORAGE_PROBE_TIMEOUT)
        except Exception:  # consensus not up yet
            await timers.sleep(CLUSTER_KEY_CHECK_EVERY)
            continue
        if len(st.members) > 1:
            log.error(
                "%s but this node is one of %d members: peers cannot reach it on /raft nor"
                " it them; set the same cluster key on every member and restart it",
                problem,
                len(st.members),
            )
            return "multi-member cluster without a cluster key"
        return "single member: no cluster key needed"
    return "consensus did not answer; not checked"


async def _logged(what: str, coro: Coroutine[Any, Any, object]) -> None:
    """Run a background job; log how it ended instead of losing an exception."""
    try:
        outcome = await coro
        log.info("%s: %s", what, outcome)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s failed", what)


async def _pump(events: EventSource, proposer: Proposer, hub: WatchHub, timers: Clock) -> None:
    """Storage's events, in order: results to write waiters, change batches to watchers."""
    while True:
        try:
            event = await events.recv()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("event source failed; retrying")
            await timers.sleep(EVENTS_RETRY)
            continue
        try:
            if isinstance(event, wire.Results):
                proposer.deliver(event)
            else:
                hub.publish(event)
        except Exception:  # one bad event must not stop the node's watches or writes
            log.exception("cannot handle %s", type(event).__name__)


async def _say_goodbye(app: web.Application) -> None:
    streams = app[STREAMS]
    sessions = [s for s in streams]
    await asyncio.gather(*(s.shutdown() for s in sessions), return_exceptions=True)
    if HUB in app:
        app[HUB].wake_all()
