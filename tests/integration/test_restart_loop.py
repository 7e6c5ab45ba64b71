"""Planned restarts in a loop under write load: no write is answered 504 or lost (issue 21).

How an operator meets the bug: several writers against one node, each PUT on a
new connection with a key of its own, while ``ctl restart consensus`` (and
``storage``) runs on that node again and again, on a follower (every write
is forwarded to the leader) and on the leader. Asserted: every write is
answered 200 (a planned restart is invisible, so never a 503, and never a
504: before the fix, proposals a front held for a restarting consensus
reached the new process before its driver ran and were never served), and
every acknowledged write is there exactly once afterwards (version 1: a
write held across a restart is applied once).

``RESTART_LOOPS`` (default 4) sets the restarts per case: ``make test`` runs
it briefly; ``make chaos`` runs planned restarts for longer through the
nemesis (``restart-role``). ``RESTART_LOOP_HOG=1`` adds a process spinning one
core for the length of the loop (how CI machines often are), stopped by its pid.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.helpers import Cluster, Node, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PREFIX = "tenant:loop/"
WRITERS = 6
LOOPS = int(os.environ.get("RESTART_LOOPS", "4"))
HOG = os.environ.get("RESTART_LOOP_HOG", "") == "1"


class Writers:
    """``WRITERS`` threads, each writing its own new keys on new connections to ``node``."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}
        self.failed: list[str] = []
        self.longest = 0.0
        self.threads = [threading.Thread(target=self._write, args=(j,)) for j in range(WRITERS)]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def more_than(self, n: int) -> Callable[[], bool]:
        return lambda: len(self.acked) >= n

    def _write(self, j: int) -> None:
        i = 0
        while not self.stop.is_set():
            key = f"{PREFIX}w{j}/k{i}"
            started = time.monotonic()
            try:
                status = self.node.put(key, i).status
            except OSError as e:
                status, why = 0, repr(e)
            else:
                why = str(status)
            took = time.monotonic() - started
            with self.lock:
                self.longest = max(self.longest, took)
                if status == 200:
                    self.acked[key] = i
                else:
                    self.failed.append(f"PUT {key}: {why} after {took:.2f}s")
            i += 1


@pytest.fixture
def hog() -> Iterator[None]:
    """One core kept busy (bounded: it ends by itself after 10 minutes), if asked for."""
    if not HOG:
        yield
        return
    spin = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass"
    proc = subprocess.Popen([sys.executable, "-c", spin])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("which", ["follower", "leader"])
def test_planned_restarts_in_a_loop_lose_no_write(
    fresh_cluster: Cluster, hog: None, which: str
) -> None:
    leader = fresh_cluster.wait_for_leader()
    target = leader if which == "leader" else fresh_cluster.followers(leader)[0]
    roles = ["consensus", "storage"]
    with Writers(target) as writers:
        wait_for(lambda: len(writers.acked) >= 2 * WRITERS, 30, "writes flowing")
        for n in range(LOOPS):
            role = roles[n % len(roles)]
            target.control().restart(role)  # what ``ctl --data DIR restart ROLE`` does
            # a few writes through the new process before the next restart
            wait_for(writers.more_than(len(writers.acked) + WRITERS), 30, "writes again")
    print(f"{which}: {LOOPS} restarts, {len(writers.acked)} writes, longest {writers.longest:.2f}s")
    assert not writers.failed, (writers.failed[:10], target.logs(30))
    # An acknowledged write was applied on the node that answered it before the answer.
    entries = {e["key"]: e for e in target.list_all(PREFIX)[0]}
    wrong = [
        (key, value, entries.get(key))
        for key, value in writers.acked.items()
        if key not in entries or (entries[key]["value"], entries[key]["version"]) != (value, 1)
    ]
    assert not wrong, wrong[:10]
