"""Entry point of the consensus role: ``python -m procs.consensus --data DIR``.

Thin on purpose (the logic is in ``concordance.consensus``): read the node's
configuration, run the driver on uvloop, stop cleanly on SIGTERM/SIGINT (a
planned stop: a leader hands leadership over first, see the driver). SIGHUP
re-reads the TLS certificate and key its peer links use (the front's SIGHUP
does the same for the front: send it to both processes).
supervisord captures stdout, so logs go there, one line per event.
Exit status: 0 after a clean stop, 1 when the driver failed (supervisord
restarts the role, which then resumes from what raft.db holds), 2 on a bad
configuration.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from concordance import config
from concordance.consensus import ConsensusDriver
from procs._launch import run_role

log = logging.getLogger("concordance.consensus")


class _NoCoreRoleLines(logging.Filter):
    """The driver logs every role change itself; drop the core's own "became" lines
    so each change appears once."""

    def filter(self, record: logging.LogRecord) -> bool:
        core_line = record.name == "concordance.raft" and isinstance(record.msg, str)
        return not (core_line and record.msg.startswith("%s became "))


async def main(cfg: config.NodeConfig) -> int:
    """Run the consensus driver until SIGTERM/SIGINT; the exit status."""
    try:
        driver = await ConsensusDriver.open(cfg)
    except Exception:
        log.exception("%s consensus cannot start", cfg.node_id)
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, driver.shutdown)  # planned: hand over, drain
    loop.add_signal_handler(signal.SIGHUP, _reload, driver)
    log.info("%s consensus started (data %s)", cfg.node_id, cfg.data_dir)
    try:
        await driver.run()
    except Exception:
        log.exception("%s consensus failed", cfg.node_id)
        return 1
    log.info("%s consensus stopped: %s", cfg.node_id, driver.summary())
    return 0


def _reload(driver: ConsensusDriver) -> None:
    log.info("SIGHUP: reloading the TLS certificate of the peer links")
    if not driver.reload_tls():
        log.error("SIGHUP: the certificate could not be reloaded; the old one stays")


def run(argv: list[str] | None = None) -> int:
    return run_role("consensus", main, argv, log_filter=_NoCoreRoleLines())


if __name__ == "__main__":
    sys.exit(run())
