"""Storage's long copies and syncs, on worker threads of lower CPU priority.

A snapshot or backup copies the whole state.db, and a checkpoint moves the
WAL into it: seconds of CPU and I/O at a gigabyte. On a node with two cores
they compete with the applies and reads clients wait for (issue 18 measured a
write's p99 up to 2.7x of normal while a snapshot was taken and sent). Linux
gives every thread its own nice value, so these workers lower only themselves:
the scheduler then serves the role's main thread, and the other roles, first,
and the copy still gets every idle cycle. Where that is not possible (not
Linux, or not permitted) they run at the role's priority, as before.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

log = logging.getLogger(__name__)

NICE_INCREMENT = 10
"""How far below the role a worker runs: at +10 the kernel weighs it about a tenth."""
WORKERS = 2  # a copy and a checkpoint may run together; copies take a lock in turn

_P = ParamSpec("_P")
_T = TypeVar("_T")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def lower_this_thread(increment: int = NICE_INCREMENT) -> int | None:
    """Raise the calling thread's nice value by ``increment`` (capped at 19); return
    the new value, or None when the platform does not allow it."""
    try:
        tid = threading.get_native_id()
        niceness = min(os.getpriority(os.PRIO_PROCESS, tid) + increment, 19)
        os.setpriority(os.PRIO_PROCESS, tid, niceness)
    except (AttributeError, OSError) as e:  # not Linux, or a sandbox that forbids it
        log.debug("storage: background worker keeps the role's priority: %s", e)
        return None
    return niceness


def _worker_start() -> None:
    lower_this_thread()


def executor() -> ThreadPoolExecutor:
    """The role's background workers, started on first use."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(
                WORKERS, thread_name_prefix="storage-background", initializer=_worker_start
            )
        return _executor


async def run(func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``asyncio.to_thread`` on a lower-priority worker."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor(), functools.partial(func, *args, **kwargs))
