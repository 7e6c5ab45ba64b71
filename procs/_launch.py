"""What every role entry point does: parse ``--data``, load the node's
configuration, log to stdout (supervisord keeps the per-role log file), run
the role's ``main`` on uvloop, and turn the outcome into an exit status.

Exit statuses: 0 after a requested stop (SIGTERM/SIGINT), 1 when the role
failed (supervisord restarts it), 2 for an unusable configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

import uvloop

from concordance import config, ipc, logfmt, supervise

RoleMain = Any  # Callable[[NodeConfig], Coroutine[Any, Any, int | None]]


def load_and_log(
    prog: str, role: str, argv: Sequence[str] | None, log_filter: logging.Filter | None = None
) -> config.NodeConfig | int:
    """Parse ``--data``, load the node's configuration and log to stdout as ``role``
    (``CONCORDANCE_LOG_FORMAT``: text or json; ``CONCORDANCE_LOG_LEVEL``); the
    configuration, or exit status 2 when it or the log settings are unusable."""
    parser = argparse.ArgumentParser(prog=prog, description=f"the {prog} process")
    parser.add_argument("--data", required=True, help="the node's data directory")
    args = parser.parse_args(argv)
    try:
        cfg = config.load(args.data, os.environ)
    except config.ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stdout)
    try:
        kind = os.environ.get("CONCORDANCE_LOG_FORMAT", "").strip().lower() or "text"
        handler.setFormatter(logfmt.formatter(kind, role, cfg.node_id))
        level = logfmt.level(os.environ.get("CONCORDANCE_LOG_LEVEL", ""))
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    if log_filter is not None:
        handler.addFilter(log_filter)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return cfg


def run_role(
    role: str,
    main: RoleMain,
    argv: Sequence[str] | None = None,
    *,
    log_filter: logging.Filter | None = None,
    quiet: Sequence[str] = (),
) -> int:
    cfg = load_and_log(f"procs.{role}", role, argv, log_filter)
    if isinstance(cfg, int):
        return cfg
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    log = logging.getLogger(f"procs.{role}")
    supervise.role_started(cfg.data_dir, role)
    try:
        coro: Coroutine[Any, Any, int | None] = main(cfg)
        status = uvloop.run(coro)
    except Exception:
        log.exception("%s failed", role)
        return 1
    finally:
        ipc.context().destroy(linger=0)
    log.info("%s stopped", role)
    return status or 0
