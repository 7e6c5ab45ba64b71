"""SIGKILL a process writing raft.db at random moments: nothing reported durable is lost.

The writer (``tests/raft/crash_writer.py``) announces each state before the call
that produces it (``intent``) and again once the call returned (``durable``).
After every kill the database must hold exactly the last durable state or the
pending intent (the commit landed, the report did not), every entry must be
intact, and the next writer continues from there.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from concordance.raft.entries import EntryKind
from concordance.raft.sqlite_store import SqliteRaftStore
from tests.raft.crash_writer import digest, payload

SEED = 20260527
KILLS = 30  # SIGKILLs per run; a busy machine takes longer, it does not do fewer
BUDGET = 180.0  # seconds: a safety cap only (about 12 s on an idle machine)
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Found:
    """What a reopened raft.db holds."""

    digest: str
    last_index: int
    last_term: int


@dataclass
class Tally:
    kills: int = 0
    before_start: int = 0  # killed while starting, opening or recovering
    durable_calls: int = 0
    landed_unreported: int = 0  # the state was the pending intent


def check_store(path: Path) -> Found:
    """Reopen raft.db and check every entry is whole, in place and consistent."""
    with SqliteRaftStore(path) as store:
        hard_state, snapshot = store.initial_state()
        first, last = store.first_index(), store.last_index()
        entries = store.entries(first, last + 1)
        assert [e.index for e in entries] == list(range(first, last + 1))
        previous = store.term(first - 1)
        for e in entries:
            assert (e.kind, e.data) == payload(e.term, e.index), f"entry {e.index} is torn"
            assert store.term(e.index) == e.term  # the cache agrees with the disk
            assert previous <= e.term <= hard_state.term, f"term goes back at {e.index}"
            previous = e.term
        assert hard_state.commit <= last
        assert store.config_entries() == [e for e in entries if e.kind is EntryKind.CONFIG]
        return Found(digest(store, hard_state, snapshot), last, store.term(last))


def outcomes(known: str, lines: list[str]) -> tuple[str, str | None, tuple[int, int] | None]:
    """From the writer's report: the last durable digest, a pending intent, and
    the (last_index, term) reported with that durable state."""
    confirmed, pending, position = known, None, None
    for line in lines:
        word, *rest = line.split()
        if word == "start":
            assert rest[0] == known, "the writer reopened something else than we checked"
        elif word == "intent":
            pending = rest[0]
        elif word == "durable":
            assert rest[2] == pending, "a call returned a state other than the announced one"
            confirmed, pending, position = rest[2], None, (int(rest[0]), int(rest[1]))
    return confirmed, pending, position


def run_writer_once(db: Path, seed: int, rng: random.Random, tally: Tally) -> list[str]:
    """Start a writer, SIGKILL it at a random moment, return its complete lines."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "tests.raft.crash_writer", str(db), str(seed)]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        head = ""
        if rng.random() < 0.2:
            tally.before_start += 1
            time.sleep(rng.uniform(0.0, 0.06))  # during interpreter start, open or recovery
        else:
            ready, _, _ = select.select([proc.stdout], [], [], 30.0)
            assert ready, "the writer never started"
            head = proc.stdout.readline()
            # Kill after a random amount of work, not time: on a busy machine a
            # random delay may pass before the writer did anything at all.
            for _ in range(rng.randint(20, 60)):  # intent + durable lines
                ready, _, _ = select.select([proc.stdout], [], [], 30.0)
                assert ready, "the writer stopped writing"
                head += proc.stdout.readline()
            time.sleep(rng.uniform(0.0, 0.02))
        proc.kill()
        proc.wait(timeout=30)
        out, err = head + proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"writer exited {proc.returncode}:\n{err}"
    complete, _, _torn = out.rpartition("\n")
    return complete.splitlines()


@pytest.mark.slow
def test_sigkill_never_loses_or_tears_what_was_reported_durable(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    db = tmp_path / "raft.db"
    known = check_store(db).digest
    tally = Tally()
    deadline = time.monotonic() + BUDGET
    while tally.kills < KILLS and time.monotonic() < deadline:
        lines = run_writer_once(db, SEED * 1000 + tally.kills, rng, tally)
        tally.kills += 1
        confirmed, pending, position = outcomes(known, lines)
        tally.durable_calls += sum(line.startswith("durable") for line in lines)
        found = check_store(db)
        context = f"seed {SEED}, kill {tally.kills}"
        assert found.digest in (confirmed, pending), f"{context}: lost or invented a write"
        if found.digest == pending:
            tally.landed_unreported += 1
        elif position is not None:
            assert (found.last_index, found.last_term) == position, context
        known = found.digest
    print(
        f"\n{tally.kills} kills ({tally.before_start} before start), "
        f"{tally.durable_calls} durable calls, {tally.landed_unreported} landed unreported"
    )
    assert tally.kills >= KILLS, f"only {tally.kills} kills in {BUDGET}s"
    # the writer did real work between kills (at least 10 calls after each start)
    assert tally.durable_calls >= 10 * (tally.kills - tally.before_start)
