"""Crash-test writer: drives a SqliteRaftStore with random calls until it is SIGKILLed.

Run as ``python -m tests.raft.crash_writer DB SEED`` (test_sqlite_store_crash does).
It reopens DB, continues from whatever it finds, and reports on stdout, one
flushed line each::

    start <digest>                          the state found on opening DB
    intent <digest>                         the state the next call will leave
    durable <last_index> <term> <digest>    that call returned

so after a kill DB must hold exactly the last reported state, or the one
announced by a trailing ``intent`` (the call committed, the report did not get
out). The intended state comes from applying each call to a MemoryRaftStore
first, so the run also checks that both stores agree. Entry content is a pure
function of (term, index), see :func:`payload`, so a torn or misplaced entry
shows when read back.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from typing import Any

from concordance.raft.entries import Entry, EntryKind, HardState, Membership, SnapshotMeta
from concordance.raft.sqlite_store import SqliteRaftStore
from concordance.raft.stores import LogStore, MemoryRaftStore, RaftStore

LIFETIME = 60.0  # seconds; never outlive a test that failed to kill us
NODES = ("n1", "n2", "n3", "n4", "n5")

Op = tuple[Any, ...]


def payload(term: int, index: int) -> tuple[EntryKind, bytes]:
    """The kind and data of the entry (term, index): mostly small, sometimes tens of KB."""
    seed = hashlib.sha256(f"{term}:{index}".encode()).digest()
    kind = (
        EntryKind.CONFIG if seed[0] < 12 else EntryKind.NOOP if seed[0] < 24 else EntryKind.NORMAL
    )
    size = 8192 + seed[1] * 160 if seed[2] < 24 else seed[1] * 8
    return kind, hashlib.shake_256(seed).digest(size)


def entry(term: int, index: int) -> Entry:
    kind, data = payload(term, index)
    return Entry(term, index, kind, data)


def digest(log: LogStore, hard_state: HardState, snapshot: SnapshotMeta | None) -> str:
    """A short fingerprint of everything a RaftStore holds."""
    first, last = log.first_index(), log.last_index()
    h = hashlib.sha256(repr((first, last, log.term(first - 1), hard_state, snapshot)).encode())
    for e in log.entries(first, last + 1):
        h.update(repr((e.index, e.term, int(e.kind), len(e.data))).encode())
        h.update(e.data)
    return h.hexdigest()[:20]


def mirror_of(store: SqliteRaftStore) -> MemoryRaftStore:
    """A MemoryRaftStore holding the same log and hard state (its snapshot meta is unused)."""
    mirror = MemoryRaftStore()
    base = store.first_index() - 1
    if base > 0:
        mirror.persist(None, [], SnapshotMeta(base, store.term(base), Membership()))
    hard_state, _ = store.initial_state()
    mirror.persist(hard_state, store.entries(base + 1, store.last_index() + 1))
    return mirror


def next_op(rng: random.Random, log: LogStore, hs: HardState) -> Op:
    """One plausible call: entries never outrun hs.term, the commit never goes back."""
    first, last = log.first_index(), log.last_index()
    base, commit = first - 1, hs.commit
    roll = rng.random()
    if hs.term == 0:
        return ("persist", HardState(1, "n1", 0), [], None)
    if last - base > 300 and commit > base:
        roll = 0.8  # keep the log (and the digest work) bounded
    if roll < 0.5 or (roll < 0.62 and last <= max(base, commit)):
        count = rng.randint(150, 250) if rng.random() < 0.08 else rng.randint(1, 30)
        batch = [entry(hs.term, i) for i in range(last + 1, last + 1 + count)]
        new_hs = HardState(hs.term, hs.vote, rng.randint(commit, last))
        return ("persist", new_hs if rng.random() < 0.5 else None, batch, None)
    if roll < 0.62:  # a new leader overwrites an uncommitted suffix
        term, at = hs.term + 1, rng.randint(max(first, commit + 1), last)
        batch = [entry(term, i) for i in range(at, at + rng.randint(1, 30))]
        return ("persist", HardState(term, rng.choice(NODES), commit), batch, None)
    if roll < 0.72:
        term = hs.term + rng.randint(0, 1)
        vote = rng.choice(NODES) if term != hs.term else hs.vote
        return ("persist", HardState(term, vote, rng.randint(commit, last)), [], None)
    if roll < 0.85:
        return ("compact", rng.randint(base + 1, commit)) if commit > base else ("noop",)
    members = Membership(tuple(rng.sample(NODES, 3)))
    if roll < 0.9:  # a snapshot from the leader
        if rng.random() < 0.5:
            at = rng.randint(base, last)
            snap = SnapshotMeta(at, log.term(at), members)  # matches: the suffix stays
        else:
            at = last + rng.randint(1, 40)
            snap = SnapshotMeta(at, hs.term, members)  # does not: the log goes
        start = max(at, last) + 1
        batch = [entry(hs.term, i) for i in range(start, start + rng.randint(0, 5))]
        return ("persist", HardState(hs.term, hs.vote, max(commit, at)), batch, snap)
    at = rng.randint(base, max(base, commit))
    return ("record", SnapshotMeta(at, log.term(at), members))


def apply(store: RaftStore, op: Op) -> None:
    if op[0] == "persist":
        store.persist(op[1], op[2], op[3])
    elif op[0] == "compact":
        store.compact(op[1])
    elif op[0] == "record":
        store.record_snapshot(op[1])


def after(
    op: Op, hs: HardState, snap: SnapshotMeta | None
) -> tuple[HardState, SnapshotMeta | None]:
    """The hard state and snapshot meta once ``op`` is applied."""
    if op[0] == "persist":
        return op[1] or hs, op[3] or snap
    if op[0] == "record":
        return hs, op[1]
    return hs, snap


def emit(*words: object) -> None:
    print(*words, flush=True)


def main(path: str, seed: int) -> None:
    rng = random.Random(seed)
    stop = time.monotonic() + LIFETIME
    store = SqliteRaftStore(path)
    mirror = mirror_of(store)
    hs, snap = store.initial_state()
    emit("start", digest(store, hs, snap))
    while time.monotonic() < stop:
        op = next_op(rng, mirror, hs)
        apply(mirror, op)
        hs, snap = after(op, hs, snap)
        expected = digest(mirror, hs, snap)
        emit("intent", expected)
        apply(store, op)
        if (store.last_index(), store.first_index()) != (mirror.last_index(), mirror.first_index()):
            raise AssertionError(f"sqlite and memory stores disagree after {op[0]}")
        emit("durable", store.last_index(), store.term(store.last_index()), expected)
    store.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
