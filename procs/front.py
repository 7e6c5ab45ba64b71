"""The front role process: ``python -m procs.front --data DIR``.

A thin entry point so that the app itself stays importable and testable
in-process: it loads the node's configuration from ``{DIR}/node.json`` and the
environment and serves :func:`concordance.front.app.make_app` (wired to the
real role clients of ``concordance.front.ipc_clients``) on uvloop. Under the
node's supervisor it runs as the child of the front keeper
(``procs/front_keeper.py``) and serves on the listening socket the keeper
passes down (``CONCORDANCE_LISTEN_FD``), telling it when it serves
(``CONCORDANCE_READY_FD``); run by itself it binds ``cfg.listen``.

It accepts every connection itself and hands Raft peer connections to
consensus (PROTOCOL.md §6, ``concordance.front.accept``).

SIGTERM/SIGINT is a graceful stop: the front accepts no more connections
and waits ``FRONT_ACCEPT_GRACE``
for requests on connections it just accepted, then WebSocket sessions are
told ``watch/cancelled`` (``shutdown``) and closed, requests in flight get up
to ``FRONT_SHUTDOWN_GRACE`` seconds, and the role sockets close; exit 0. With
``--tls-cert`` it serves HTTPS/WSS (``concordance.security.tls``). SIGHUP re-reads the
key file (``--keys``) and the TLS certificate and key without a restart (send
it to the front keeper's pid, which ``concordance ctl --data DIR status``
shows, or to this process; not to supervisord, which restarts every role on
SIGHUP).

Exit codes: 0 after a requested stop, 1 when the front failed (its keeper
exits too and supervisord restarts both; clients reconnect and watchers
resubscribe), 2 for an unusable configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import resource
import signal
import socket
import sys
from typing import Any

from aiohttp import web

from concordance import config, environment
from concordance.front.accept import SortingSite
from concordance.front.app import make_app, reload
from concordance.front.app_state import GATE
from concordance.front.ipc_clients import connect
from concordance.front.supervisor import Supervisord
from concordance.ipc import fdpass
from concordance.security.tls import TlsContexts
from concordance.timing import FRONT_ACCEPT_GRACE, FRONT_SHUTDOWN_GRACE
from procs._launch import run_role
from procs.front_keeper import LISTEN_FD_ENV, READY_FD_ENV, bind

log = logging.getLogger("procs.front")


async def main(cfg: config.NodeConfig) -> None:
    """Serve the front of ``cfg``'s node until SIGTERM or SIGINT."""
    tls = TlsContexts(cfg) if cfg.tls else None
    supervisor = Supervisord(cfg.data_dir)  # the one way this front reaches supervisord
    connect_roles = functools.partial(connect, cfg.data_dir, supervisor.incarnation())
    app = make_app(cfg, connect_roles, supervisor=supervisor, tls=tls)
    _raise_descriptor_limit(cfg.limits.descriptors)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        shutdown_timeout=FRONT_SHUTDOWN_GRACE,
        keepalive_timeout=cfg.limits.keepalive_timeout,
    )
    await runner.setup()
    assert runner.server is not None
    app[GATE].install(runner.server)  # before the site accepts anything
    app[GATE].trust(await _peer_hosts(cfg))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, app)
    try:
        ssl_context = tls.server if tls is not None else None
        site = _site(runner, cfg, ssl_context)
        await site.start()
        log.info("front of %s listening on %s://%s", cfg.node_id, cfg.scheme, cfg.listen)
        _say_ready()
        await stop.wait()
        log.info("stopping")
        await site.stop()  # accept no more: the next front (if any) takes them all
        await asyncio.sleep(0)  # the listener's close completes on this loop turn
        _say_not_accepting()  # only now may a restart be reported done (the keeper)
        # Before the runner's cleanup, which stops reading every connection: a
        # connection accepted just now gets its request in (closing it as idle
        # would fail that request). Peer links are consensus's: not touched.
        await asyncio.sleep(FRONT_ACCEPT_GRACE)
    finally:
        for sig in (*signals, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def _raise_descriptor_limit(wanted: int) -> None:
    """Raise this process's soft descriptor limit to its hard limit (supervisord's
    ``minfds`` usually did already), and say so when even that is below ``wanted``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft < wanted:
        log.warning(
            "only %d file descriptors allowed, %d wanted for the connection cap: raise the"
            " hard limit (LimitNOFILE=, ulimit -Hn) or CONCORDANCE_MAX_CLIENT_CONNECTIONS",
            soft,
            wanted,
        )


async def _peer_hosts(cfg: config.NodeConfig, timeout: float = 2.0) -> set[str]:
    """The addresses of the peers named in the configuration (``--peers``, ``--join``,
    ``--peer-overrides``), which may use the connection reserve; unresolvable ones are
    skipped (logged)."""
    loop = asyncio.get_running_loop()
    named = [*cfg.peers.values(), *cfg.peer_overrides.values(), *filter(None, [cfg.join])]
    hosts: set[str] = set()
    for address in named:
        host, port = config.parse_address(address)
        try:
            async with asyncio.timeout(timeout):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as e:
            log.warning("peer %s not resolved (%s): it gets no connection reserve", address, e)
            continue
        hosts |= {str(info[4][0]) for info in infos}
    return hosts


def _site(runner: web.AppRunner, cfg: config.NodeConfig, ssl: Any) -> SortingSite:
    """On the socket the keeper passed down (``procs/front_keeper.py``), or, run
    by itself, on one of its own at ``cfg.listen``; peer connections go to
    consensus (``concordance.front.accept``)."""
    inherited = environment.inherited_fd(LISTEN_FD_ENV)
    sock = socket.socket(fileno=inherited) if inherited is not None else bind(cfg.listen)
    handoff = fdpass.FdSender(fdpass.socket_path(cfg.data_dir))
    return SortingSite(runner, sock, handoff, ssl_context=ssl, hot_routes=True)


def _say_ready() -> None:
    """Tell the keeper this front serves (one byte on its pipe), so it may stop the old
    one. The pipe stays open until this front stops accepting (``_say_not_accepting``)."""
    fd = environment.inherited_fd(READY_FD_ENV)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(fd, b"1")


def _say_not_accepting() -> None:
    """Close the keeper's pipe: this front accepts no more connections, so a hand-over
    may be reported done (the end of file also comes if this process dies)."""
    fd = environment.inherited_fd(READY_FD_ENV, take=True)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _reload(app: web.Application) -> None:
    log.info("SIGHUP: reloading the key file and TLS certificate")
    if not reload(app):
        log.error("SIGHUP: something could not be reloaded (see above); the rest was")


def cli(argv: list[str] | None = None) -> int:
    return run_role("front", main, argv, quiet=("aiohttp.access",))


if __name__ == "__main__":
    sys.exit(cli())
