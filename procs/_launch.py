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


def run_role(
    role: str,
    main: RoleMain,
    argv: Sequence[str] | None = None,
    *,
    log_filter: logging.Filter | None = None,
    quiet: Sequence[str] = (),
) -> int:
    parser = argparse.ArgumentParser(prog=f"procs.{role}", description=f"the {role} role")
    parser.add_argument("--data", required=True, help="the node's data directory")
    args = parser.parse_args(argv)
    try:
        cfg = config.load(args.data, os.environ)
    except config.ConfigError as e:
        print(f"{role}: {e}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stdout)
    try:  # CONCORDANCE_LOG_FORMAT: text (default) or json
        kind = os.environ.get("CONCORDANCE_LOG_FORMAT", "").strip().lower() or "text"
        handler.setFormatter(logfmt.formatter(kind, role, cfg.node_id))
        level = logfmt.level(os.environ.get("CONCORDANCE_LOG_LEVEL", ""))
    except ValueError as e:
        print(f"{role}: {e}", file=sys.stderr)
        return 2
    if log_filter is not None:
        handler.addFilter(log_filter)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
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
