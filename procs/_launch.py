"""What every role entry point does: parse ``--data``, load the node's
configuration, log to stdout (supervisord keeps the per-role log file), run
the role's ``main`` on uvloop, and turn the outcome into an exit status.

Under a role keeper (``procs/role_keeper.py``) the process first says its
imports are done and waits to be told to go on (the keeper stops the old
process meanwhile); it dies with the keeper by SIGKILL, a crash as before.

The keepers import this module too, and nothing else of the roles: the role's
runtime (``concordance.ipc`` with ZeroMQ and the wire types, uvloop) is
imported only by ``run_role``, in the role process. A keeper that imported it
spent 0.2-0.5 s of CPU at every node start, beside the roles' own imports, on
modules it never uses (tests/unit/test_launch_imports.py keeps it so).

Exit statuses: 0 after a requested stop (SIGTERM/SIGINT) or when the keeper
gave up on it before it ran, 1 when the role failed (supervisord restarts it),
2 for an unusable configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

from concordance import config, environment
from concordance.node import logfmt, supervise

RoleMain = Any  # Callable[[NodeConfig], Coroutine[Any, Any, int | None]]

ROLE_READY_FD_ENV = "CONCORDANCE_ROLE_READY_FD"  # the keeper's pipe: "imported" (one byte)
GO_FD_ENV = "CONCORDANCE_ROLE_GO_FD"  # the keeper's pipe: one byte to run, end of file to exit


def wait_for_go() -> bool:
    """Under a role keeper: say the imports are done, then wait for its word (True: run;
    False: it gave up on this process). Without a keeper: True at once."""
    ready = environment.inherited_fd(ROLE_READY_FD_ENV, take=True)
    go = environment.inherited_fd(GO_FD_ENV, take=True)
    if ready is None or go is None:
        return True
    try:
        os.write(ready, b"1")
        said = os.read(go, 1)
    except OSError:
        said = b""
    finally:
        for fd in (ready, go):
            with contextlib.suppress(OSError):
                os.close(fd)
    return said == b"1"


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
        env = environment.read_node()
        cfg = config.load(args.data, env)
    except config.ConfigError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logfmt.formatter(env.log_format, role, cfg.node_id))
    if log_filter is not None:
        handler.addFilter(log_filter)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(env.log_level)
    return cfg


def run_role(
    role: str,
    main: RoleMain,
    argv: Sequence[str] | None = None,
    *,
    log_filter: logging.Filter | None = None,
    quiet: Sequence[str] = (),
) -> int:
    import uvloop  # the role's runtime, never the keepers' (module docstring)

    from concordance import ipc

    cfg = load_and_log(f"procs.{role}", role, argv, log_filter)
    if isinstance(cfg, int):
        return cfg
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
    log = logging.getLogger(f"procs.{role}")
    kept = environment.inherited_fd(GO_FD_ENV) is not None
    if not wait_for_go():
        return 0
    supervise.role_started(cfg.data_dir, role, signal.SIGKILL if kept else signal.SIGTERM)
    try:
        coro: Coroutine[Any, Any, int | None] = main(cfg)
        status = uvloop.run(coro)
    except Exception:
        log.exception("%s failed", role)
        return 1
    finally:
        ipc.context().destroy(linger=0)
    log.info("%s stopped", role)
    if kept:
        _exit_now(status or 0)
    return status or 0


def _exit_now(status: int) -> None:
    """End a kept role's process as soon as it stopped: its keeper starts the successor
    on this exit, and the interpreter's own teardown (modules, threads) took 0.25-0.4 s
    of the time requests are held. Everything durable is closed by now (the role's
    ``main`` returned); the log handlers are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
