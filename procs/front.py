"""The front role process: ``python -m procs.front --data DIR``.

A thin entry point so that supervisord has one command per role and the app
itself stays importable and testable in-process: it loads the node's
configuration from ``{DIR}/node.json`` and the environment, serves
:func:`concordance.front.app.make_app` (wired to the real role clients of
``concordance.front.ipc_clients``) on uvloop at ``cfg.listen``, and turns
SIGTERM/SIGINT into a graceful stop: the listener closes, WebSocket sessions
are told ``watch/cancelled`` (``shutdown``) and closed, requests in flight get
up to ``SHUTDOWN_GRACE`` seconds, then the role sockets close; exit 0.
With ``--tls-cert`` it serves HTTPS/WSS (``concordance.tls``). SIGHUP re-reads
the key file (``--keys``) and the TLS certificate and key without a restart
(send it to the front's pid, not to supervisord, which restarts every role on
SIGHUP: ``concordance ctl --data DIR status`` shows the pid).

Exit codes: 0 after a requested stop, 1 when the front failed (supervisord
restarts it; clients reconnect and watchers resubscribe), 2 for an unusable
configuration.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys

from aiohttp import web

from concordance import config
from concordance.front.app import make_app, reload
from concordance.front.ipc_clients import connect
from concordance.tls import TlsContexts
from procs._launch import run_role

log = logging.getLogger("procs.front")

SHUTDOWN_GRACE = 5.0  # seconds requests in flight may take after SIGTERM (< stopwaitsecs)


async def main(cfg: config.NodeConfig) -> None:
    """Serve the front of ``cfg``'s node until SIGTERM or SIGINT."""
    tls = TlsContexts(cfg) if cfg.tls else None
    app = make_app(cfg, functools.partial(connect, cfg.data_dir), tls=tls)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload, app)
    try:
        host, port = config.parse_address(cfg.listen)
        ssl_context = tls.server if tls is not None else None
        site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ssl_context)
        await site.start()
        log.info("front of %s listening on %s://%s", cfg.node_id, cfg.scheme, cfg.listen)
        await stop.wait()
        log.info("stopping")
    finally:
        for sig in (*signals, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def _reload(app: web.Application) -> None:
    log.info("SIGHUP: reloading the key file and TLS certificate")
    if not reload(app):
        log.error("SIGHUP: something could not be reloaded (see above); the rest was")


def cli(argv: list[str] | None = None) -> int:
    return run_role("front", main, argv, quiet=("aiohttp.access",))


if __name__ == "__main__":
    sys.exit(cli())
