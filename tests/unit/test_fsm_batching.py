"""How entries are grouped into ``apply`` calls never changes what they do.

Within one call the state machine reads every key's row once and writes kv
and change rows at the end (fsm.py), so a later entry of a call reads what an
earlier one wrote from memory, not from SQLite. Nodes group the same entries
differently (batches depend on timing), so the same random workload is
applied one entry per call, in random groups, and in random groups left
uncommitted for a while, and everything observable must be equal: each
entry's result and events, the change history, the state digest and the
positions. The workload mixes every command kind on few keys, with
retention small enough that history is pruned inside calls.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from concordance.protocol.commands import (
    Batch,
    Check,
    Command,
    Delete,
    DeletePrefix,
    Expire,
    Op,
    Set,
)
from concordance.storage.fsm import StateMachine

T0 = 1_764_230_400_000
KEYS = [f"tenant:t{t}/k{k}" for t in range(3) for k in range(5)]
Entry = tuple[int, int, bytes | None]


def _op(rng: random.Random) -> Op:
    key = rng.choice(KEYS)
    roll = rng.random()
    if roll < 0.45:
        expires = rng.choice([None, None, T0 + rng.randrange(60)])
        return Set(key, b"%d" % rng.randrange(100), rng.choice([None, None, 0, 1, 2]), expires)
    if roll < 0.6:
        return Delete(key, rng.choice([None, None, 1, 2]))
    if roll < 0.65:
        return Check(key, rng.randrange(3))
    if roll < 0.85:
        choices = [
            lambda: Set(rng.choice(KEYS), b'"b"'),
            lambda: Delete(rng.choice(KEYS)),
            lambda: Check(rng.choice(KEYS), rng.randrange(3)),
        ]
        return Batch(tuple(rng.choice(choices)() for _ in range(rng.randrange(1, 5))))
    if roll < 0.9:
        return DeletePrefix(f"tenant:t{rng.randrange(3)}/")
    return Expire(key, rng.randrange(1, 4), T0 + rng.randrange(60))


def _workload(seed: int, n: int = 400) -> list[Entry]:
    rng = random.Random(seed)
    entries: list[Entry] = []
    for index in range(1, n + 1):
        roll = rng.random()
        if roll < 0.04:
            entries.append((index, 1, None))  # a no-op or config entry
        elif roll < 0.06:
            entries.append((index, 1, b"\xc1 not a command"))
        else:
            entries.append((index, 1, Command("n1", index, T0 + index, _op(rng)).encode()))
    return entries


def _run(
    path: Path, entries: list[Entry], groups: random.Random | None, lazy: bool
) -> tuple[list[str], str, str]:
    """Apply ``entries`` one per call (``groups`` None) or in random groups, some left
    uncommitted when ``lazy``; (every result, the last history, the final state)."""
    results: list[str] = []
    sm = StateMachine(path, retention=8, retention_bytes=400)
    at = 0
    while at < len(entries):
        size = 1 if groups is None else groups.randrange(1, 25)
        commit = not lazy or groups is None or groups.random() < 0.3
        results += [repr(a) for a in sm.apply(entries[at : at + size], commit=commit)]
        at += size
    history = repr(sm.changes("", sm.oldest_revision - 1, 10_000))
    final = repr((sm.digest(), sm.applied_index, sm.revision, sm.oldest_revision))
    sm.close()
    return results, history, final


@pytest.mark.parametrize("seed", range(6))
def test_grouping_entries_into_calls_changes_nothing(tmp_path: Path, seed: int) -> None:
    entries = _workload(seed)
    one_by_one = _run(tmp_path / "one.db", entries, None, lazy=False)
    assert len(one_by_one[0]) > 300 and "version_conflict" in "".join(one_by_one[0])
    for name, lazy in (("grouped", False), ("lazy", True)):
        assert _run(tmp_path / f"{name}.db", entries, random.Random(seed), lazy) == one_by_one
