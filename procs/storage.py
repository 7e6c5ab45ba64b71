"""The storage role process: ``python -m procs.storage --data DIR``.

A thin entry point so that supervisord has one command per role and the
service itself stays importable and testable in-process: it loads the node's
configuration from ``{DIR}/node.json`` and the environment, runs
:class:`~concordance.storage.service.StorageService` on uvloop, and turns
SIGTERM/SIGINT into a graceful stop (sockets closed, state.db closed, exit 0).

Exit codes: 0 after a requested stop, 1 when the service failed (supervisord
restarts it; state.db resumes from its durable applied index), 2 for an
unusable configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import uvloop

from concordance import config, ipc, supervise
from concordance.storage.service import StorageService

log = logging.getLogger("procs.storage")


async def main(cfg: config.NodeConfig) -> None:
    """Serve the storage role of ``cfg``'s node until SIGTERM or SIGINT."""
    service = StorageService(cfg)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, service.stop)
    try:
        await service.run()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="procs.storage", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the node's data directory")
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stdout,
        level=logging.INFO,
        format="%(asctime)s storage %(levelname)s %(name)s: %(message)s",
    )
    try:
        cfg = config.load(args.data, os.environ)
    except config.ConfigError as e:
        log.error("%s", e)
        return 2
    supervise.role_started(cfg.data_dir, "storage")
    try:
        uvloop.run(main(cfg))
    except Exception:
        log.exception("storage failed")
        return 1
    finally:
        ipc.context().destroy(linger=0)
    log.info("storage stopped")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
