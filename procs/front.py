"""The front role process: ``python -m procs.front --data DIR``.

A thin entry point so that supervisord has one command per role and the app
itself stays importable and testable in-process: it loads the node's
configuration from ``{DIR}/node.json`` and the environment, serves
:func:`concordance.front.app.make_app` (wired to the real role clients of
``concordance.front.ipc_clients``) on uvloop at ``cfg.listen``, and turns
SIGTERM/SIGINT into a graceful stop: the listener closes, WebSocket sessions
are told ``watch/cancelled`` (``shutdown``) and closed, requests in flight get
up to ``SHUTDOWN_GRACE`` seconds, then the role sockets close; exit 0.

Exit codes: 0 after a requested stop, 1 when the front failed (supervisord
restarts it; clients reconnect and watchers resubscribe), 2 for an unusable
configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import Sequence

import uvloop
from aiohttp import web

from concordance import config, ipc, supervise
from concordance.front.app import make_app
from concordance.front.ipc_clients import connect

log = logging.getLogger("procs.front")

SHUTDOWN_GRACE = 5.0  # seconds requests in flight may take after SIGTERM (< stopwaitsecs)


async def main(cfg: config.NodeConfig) -> None:
    """Serve the front of ``cfg``'s node until SIGTERM or SIGINT."""
    app = make_app(cfg, functools.partial(connect, cfg.data_dir))
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        host, port = config.parse_address(cfg.listen)
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        log.info("front of %s listening on %s", cfg.node_id, cfg.listen)
        await stop.wait()
        log.info("stopping")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await runner.cleanup()


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="procs.front", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the node's data directory")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s front %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        cfg = config.load(args.data, os.environ)
    except config.ConfigError as e:
        log.error("%s", e)
        return 2
    supervise.role_started(cfg.data_dir, "front")
    try:
        uvloop.run(main(cfg))
    except Exception:
        log.exception("front failed")
        return 1
    finally:
        ipc.context().destroy(linger=0)
    log.info("front stopped")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
