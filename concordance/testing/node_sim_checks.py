"""What the node simulation checks against a converged ``state.db``, and its watchers.

Why a module of its own: the run (``node_sim``) drives roles and faults; these
are the properties it asserts at the end, each a pure function of the
simulation's records and one member's state machine (all members hold the
same one once the digests agree), returning what is wrong, if anything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from concordance.front.codec import Renderer
from concordance.protocol.payloads import Change
from concordance.security.crypto import Cipher
from concordance.storage.fsm import StateMachine

__all__ = ["Sink", "Watcher", "lost_writes", "torn_batches", "unreaped", "watch_gaps"]

PAGE = 1000  # changes read per page when rebuilding a watcher's expected stream
_RENDERER = Renderer(Cipher(()))


@dataclass
class Watcher:
    """One logical watch of a prefix, across the subscriptions that carry it (a client
    resubscribes from the last revision it saw)."""

    wid: int
    prefix: str
    start: int | None = None  # the revision the first subscription started after
    cursor: int = 0  # the last revision delivered
    events: list[tuple[int, str, str]] = field(default_factory=list)  # (revision, key, type)
    ended: str | None = None  # why the stream ended for good (``compacted``)
    problems: list[str] = field(default_factory=list)  # seen as events came


class Sink:
    """A subscription's sink (``front.watch.Sink``): what a WebSocket client receives."""

    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.cancelled_reason: str | None = None
        self.woken = asyncio.Event()
        self.closed = False  # the client left this subscription (closed its connection)

    def notify(self, subscription_id: int, events: list[dict[str, Any]], _json: str | None) -> bool:
        if self.closed:
            return True  # written to a connection the client closed: nobody reads it
        w = self.watcher
        for e in events:
            rev = int(e["revision"])
            if rev <= w.cursor and (rev, e["key"], e["type"]) in w.events[-50:]:
                w.problems.append(f"watch {w.wid}: revision {rev} ({e['key']}) delivered twice")
            elif rev < w.cursor:
                w.problems.append(f"watch {w.wid}: revision {rev} after {w.cursor}")
            w.events.append((rev, e["key"], e["type"]))
            w.cursor = max(w.cursor, rev)
        return True

    def cancelled(self, subscription_id: int, reason: str) -> None:
        self.cancelled_reason = reason
        self.woken.set()


def lost_writes(acked: dict[str, int], sm: StateMachine) -> list[str]:
    """Keys whose final version is below the highest version a write of theirs was
    acknowledged with (a tombstone keeps its version, so a delete loses nothing)."""
    out = []
    for key, version in sorted(acked.items()):
        row = sm._conn.execute("SELECT version FROM kv WHERE key = ?", (key,)).fetchone()
        final = row[0] if row else 0
        if final < version:
            out.append(f"{key}: acknowledged v{version}, final v{final}")
    return out


def unreaped(prefix: str, sm: StateMachine) -> list[str]:
    """Keys under ``prefix`` still live in state.db (expired ones must have been deleted)."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    rows = sm._conn.execute(
        "SELECT key FROM kv WHERE key >= ? AND key < ? AND deleted = 0", (prefix, end)
    )
    return [key for (key,) in rows]


def watch_gaps(w: Watcher, sm: StateMachine) -> str | None:
    """How ``w``'s stream differs from the change log of its prefix between the revision
    it started after and the last one it saw, or None: once each, in order, no gap."""
    if w.start is None:
        return None
    expected: list[tuple[int, str, str]] = []
    since = w.start
    while since < w.cursor:
        page = sm.changes(w.prefix, since, PAGE)
        expected += [_entry(c) for c in page.changes if c.revision <= w.cursor]
        if not page.changes or page.revision > page.changes[-1].revision:
            break  # complete (a page cut before a batch is short, too: not the end)
        since = page.revision
    if w.events == expected:
        return None
    missing = sorted(set(expected) - set(w.events))[:5]
    extra = sorted(set(w.events) - set(expected))[:5]
    return (
        f"watch {w.wid} from {w.start} to {w.cursor}: {len(w.events)} events,"
        f" {len(expected)} expected; missing {missing}, unexpected {extra}"
    )


def _entry(change: Change) -> tuple[int, str, str]:
    """A stored change as a watcher records it (the type as the front renders it)."""
    return change.revision, change.key, str(_RENDERER.event(change)["type"])


def torn_batches(
    batches: dict[tuple[int, int], frozenset[str]], entries: list[dict[str, Any]]
) -> list[str]:
    """What one list read of the batch keys shows of a batch only in part.

    ``batches`` maps a batch's value ``{"c": client, "n": n}`` to the keys it
    wrote, all in one entry, so at one revision. A list is one read of one
    state: where it shows key k with batch b's value at revision r, every other
    key of b was written at r too, and can since only have been overwritten, so
    it must be there at r or later. Batch keys are never deleted or expire.
    """
    shown = {e["key"]: e for e in entries}
    torn = []
    for entry in entries:
        value = entry.get("value")
        if not isinstance(value, dict):
            continue
        client, n = value.get("c"), value.get("n")
        keys = batches.get((client, n)) if isinstance(client, int) and isinstance(n, int) else None
        if keys is None:
            continue
        revision = entry["revision"]
        for key in sorted(keys - {entry["key"]}):
            other = shown.get(key)
            if other is None or other["revision"] < revision:
                seen = "missing" if other is None else f"at revision {other['revision']}"
                torn.append(
                    f"batch {value} wrote {sorted(keys)} at revision {revision}; "
                    f"the same list shows {entry['key']} from it but {key} {seen}"
                )
    return torn


@dataclass(frozen=True, slots=True)
class LocalRead:
    """A local (not consistent) ``get`` through ``node``'s front, and what it saw."""

    node: str
    key: str
    call: int  # steps of the run's one order of client events (not times)
    done: int
    version: int | None  # None: 404


@dataclass(frozen=True, slots=True)
class NodeAck:
    """A set or CAS that ``node``'s front answered 200 at ``at``, and its version."""

    node: str
    key: str
    version: int
    at: int  # the step of the answer, in the order of ``LocalRead``'s


def stale_local_reads(
    reads: list[LocalRead], acks: list[NodeAck], deletes: dict[str, int]
) -> tuple[list[str], int]:
    """Local reads that missed a write their node had answered before they began.

    API.md §3.1: a write is answered once applied on the node that answered it,
    "so a read on that same node afterwards sees it", whatever restarted in
    between (storage commits lazily and may lose its last batches in a crash:
    the front's read floor and storage's applied mark, PROTOCOL.md §3.8).
    Versions only grow, so the read
    must show at least the written version; a 404 only if some delete of the
    key was sent before the read ended (``deletes``: the first delete's call).
    Returns the stale ones and how many reads had such a write to see.
    """
    answered: dict[tuple[str, str], list[NodeAck]] = {}
    for ack in acks:
        answered.setdefault((ack.node, ack.key), []).append(ack)
    stale = []
    checked = 0
    for read in reads:
        before = [a.version for a in answered.get((read.node, read.key), []) if a.at < read.call]
        if not before:
            continue
        checked += 1
        floor = max(before)
        if read.version is None:
            if deletes.get(read.key, float("inf")) < read.done:
                continue
            stale.append(f"{read}: 404 after {read.node} answered version {floor}")
        elif read.version < floor:
            stale.append(f"{read}: after {read.node} answered version {floor}")
    return stale, checked
