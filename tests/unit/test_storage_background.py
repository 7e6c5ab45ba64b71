"""Storage's long copies run on workers of lower CPU priority than the role's loop."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import pytest

from concordance.storage import background
from concordance.storage.service_snapshots import copy_database
from tests.unit.test_storage_snapshot import filled

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice is Linux's")


def _my_niceness() -> tuple[int, int]:
    return threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@linux_only
def test_a_background_worker_runs_below_the_caller() -> None:
    caller = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    async def main() -> tuple[int, int]:
        return await background.run(_my_niceness)

    tid, niceness = asyncio.run(main())
    assert tid != threading.get_native_id()  # on a worker, not the loop's thread
    assert niceness == min(caller + background.NICE_INCREMENT, 19)
    # only that thread: the caller keeps its priority
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == caller


@linux_only
def test_lowering_stops_at_the_weakest_priority() -> None:
    def lower_twice() -> int | None:
        background.lower_this_thread(15)
        return background.lower_this_thread(15)

    result: list[int | None] = []
    worker = threading.Thread(target=lambda: result.append(lower_twice()))
    worker.start()
    worker.join()
    assert result == [19]


def test_a_snapshot_copy_on_a_worker_is_complete(tmp_path: Path) -> None:
    sm = filled(tmp_path / "state.db")

    async def main() -> tuple[int, int, int]:
        return await background.run(copy_database, tmp_path / "state.db", tmp_path / "copy")

    size, index, _term = asyncio.run(main())
    assert index == sm.applied_index
    assert size == (tmp_path / "copy").stat().st_size > 0
