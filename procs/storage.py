"""The storage role process: ``python -m procs.storage --data DIR``.

A thin entry point so that supervisord has one command per role and the
service itself stays importable and testable in-process: it loads the node's
configuration from ``{DIR}/node.json`` and the environment, runs
:class:`~concordance.storage.service.StorageService` on uvloop, and turns
SIGTERM/SIGINT into a graceful stop (the front told ``stopping``, requests
already sent answered, sockets closed, state.db closed, exit 0).

Exit codes: 0 after a requested stop, 1 when the service failed (supervisord
restarts it; state.db resumes from its durable applied index), 2 for an
unusable configuration.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from concordance import config
from concordance.storage.service import StorageService
from procs._launch import run_role

log = logging.getLogger("procs.storage")


async def main(cfg: config.NodeConfig) -> None:
    """Serve the storage role of ``cfg``'s node until SIGTERM or SIGINT."""
    service = StorageService(cfg)
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, service.shutdown)  # planned: drain, flush
    try:
        await service.run()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def cli(argv: list[str] | None = None) -> int:
    return run_role("storage", main, argv)


if __name__ == "__main__":
    sys.exit(cli())
