"""The verdicts of a chaos run, computed from what was recorded (no cluster access here).

Each check returns a :class:`Verdict`: ``ok`` True / False (None: undecided), a one-line
summary, and the evidence of each violation (capped). The checks:

* ``linearizable``: the whole client history, final reads included, per key
  (``concordance.testing.linearizability``);
* ``acknowledged-writes``: every acknowledged set/CAS/delete is in the authoritative change
  feed with its version (and revision); every value in the feed was written by a request
  that was acknowledged or whose outcome is unknown (never by one that failed); versions in
  the feed follow API.md §2; every node's final consistent read of every key is the feed's
  last state;
* ``watchers``: each watcher's events, across all its reconnects, equal the feed exactly
  (revision, key, type, version, value), with nothing repeated or out of order;
* ``planned-restarts``: no set or CAS sent to a node during a planned restart of one of its
  roles (``restart-role``) was answered 504 and then never applied (issue 21);
* ``read-your-writes``: a plain get on the node that acknowledged a client's write of a key
  returns that write or a later version (or 404 if the feed has a later delete);
* ``convergence``: every node's listing (all fields), revision, applied index and change feed
  are identical, and the listing is the state the feed leads to.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from concordance.testing import linearizability as lin
from tests.chaos.clients import LocalRead, Record
from tests.chaos.watchers import Watcher, event_tuple

MAX_EVIDENCE = 20


@dataclass
class Verdict:
    name: str
    ok: bool | None
    summary: str
    evidence: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.ok = False
        if len(self.evidence) < MAX_EVIDENCE:
            self.evidence.append(text)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "summary": self.summary, "evidence": self.evidence}


def linearizable(ops: list[lin.Operation], timeout_s: float) -> tuple[Verdict, lin.Report]:
    report = lin.check(ops, timeout_s=timeout_s)
    keys = len(report.results)
    states = sum(r.explored for r in report.results)
    took = sum(r.elapsed_s for r in report.results)
    v = Verdict(
        "linearizable",
        report.ok,
        f"{len(ops)} operations on {keys} keys, {states} states explored in {took:.2f}s",
    )
    if report.ok is not True:
        v.evidence = report.explain().splitlines()[:200]
    return v, report


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def feed_state(feed: list[dict[str, Any]]) -> dict[str, tuple[bool, Any, int, int]]:
    """key -> (exists, value, version, revision) after every change of the feed."""
    state: dict[str, tuple[bool, Any, int, int]] = {}
    for e in feed:
        if e["type"] == "set":
            state[e["key"]] = (True, e.get("value"), e["version"], e["revision"])
        else:
            state[e["key"]] = (False, None, e["version"], e["revision"])
    return state


def acknowledged_writes(
    records: list[Record], feed: list[dict[str, Any]], final_reads: dict[str, dict[str, Any]]
) -> Verdict:
    """``final_reads``: node id -> key -> (status, body) of a consistent get after healing."""
    v = Verdict("acknowledged-writes", True, "")
    sets = {(e["key"], e["version"]): e for e in feed if e["type"] == "set"}
    deletes = {(e["key"], e["version"]): e for e in feed if e["type"] == "delete"}
    by_value: dict[tuple[str, str], dict[str, Any]] = {}
    for e in feed:
        if e["type"] == "set":
            seen = by_value.setdefault((e["key"], _canon(e.get("value"))), e)
            if seen is not e:
                v.add(f"one write applied twice: {seen} and {e}")
    acked = unknown = 0
    written: dict[tuple[str, str], Record] = {}
    for r in records:
        op = r.op
        if op.kind in ("set", "cas") and isinstance(op.input, lin.Write):
            written[(op.key, _canon(op.input.value))] = r
        if op.status != "ok":
            unknown += op.status == "unknown" and op.kind != "get"
            continue
        out = op.output
        if isinstance(out, lin.Written):
            acked += 1
            assert isinstance(op.input, lin.Write)
            got = sets.get((op.key, out.version))
            if got is None or _canon(got.get("value")) != _canon(op.input.value):
                v.add(f"acknowledged write lost: {op.describe()} (feed has {got})")
            elif r.revision is not None and got["revision"] != r.revision:
                v.add(f"acknowledged at revision {r.revision}, feed has {got}: {op.describe()}")
        elif isinstance(out, lin.Deleted):
            acked += 1
            if (op.key, out.version) not in deletes:
                v.add(f"acknowledged delete lost: {op.describe()}")
    # every value in the feed comes from a write that may have applied
    for (key, value), e in by_value.items():
        writer = written.get((key, value))
        if writer is None:
            v.add(f"feed holds a value nobody wrote: {e}")
        elif writer.op.status == "fail":
            v.add(f"a write that failed (status {writer.status} {writer.error}) applied: {e}")
        elif isinstance(out := writer.op.output, lin.Written) and out.version != e["version"]:
            v.add(f"acknowledged as version {out.version}, feed has {e}")
    # deletes: no more applied than were attempted (acknowledged or unknown)
    tries = Counter(
        r.op.key for r in records if r.op.kind == "delete" and r.op.status in ("ok", "unknown")
    )
    for key, n in Counter(e["key"] for e in feed if e["type"] == "delete").items():
        if n > tries[key]:
            v.add(f"{key}: {n} deletes in the feed, only {tries[key]} could have applied")
    # the feed itself follows the version rules
    last_rev = 0
    state: dict[str, tuple[bool, int]] = {}
    for e in feed:
        exists, version = state.get(e["key"], (False, 0))
        if e["revision"] <= last_rev:
            v.add(f"feed out of revision order at {e}")
        last_rev = e["revision"]
        if e["type"] == "set" and e["version"] != version + 1:
            v.add(f"set after version {version} has version {e['version']}: {e}")
        if e["type"] in ("delete", "expire") and (not exists or e["version"] != version):
            v.add(f"{e['type']} of {'absent' if not exists else f'version {version}'}: {e}")
        state[e["key"]] = (e["type"] == "set", e["version"])
    # every node's final consistent read is where the feed ends
    final = feed_state(feed)
    reads = 0
    for node_id, got in final_reads.items():
        for key, (status, body) in got.items():
            reads += 1
            exists, value, version, _ = final.get(key, (False, None, 0, 0))
            if status == 200 and exists and body["version"] == version and body["value"] == value:
                continue
            if status == 404 and not exists:
                continue
            v.add(f"{node_id}: final read of {key} = {status} {body}; feed ends in "
                  f"{'absent' if not exists else (value, version)}")  # fmt: skip
    v.summary = (
        f"{acked} acknowledged writes, {unknown} writes with unknown outcome, "
        f"{len(feed)} changes in the feed, {reads} final reads"
    )
    return v


def planned_restarts(
    records: list[Record], feed: list[dict[str, Any]], windows: list[tuple[str, float, float]]
) -> Verdict:
    """A planned restart never answers ``504`` for a write that was not applied (issue 21).

    ``windows``: (node URL, start, end) of each ``restart-role`` fault, in monotonic
    seconds. A set or CAS sent to that node in that window and answered ``504`` must
    be in the feed (a 504 says "may or may not have been applied"; for a planned
    restart it must at least be true that it was)."""
    v = Verdict("planned-restarts", True, "")
    applied = {(e["key"], _canon(e.get("value"))) for e in feed if e["type"] == "set"}
    judged = 0
    for r in records:
        op = r.op
        if op.kind not in ("set", "cas") or not isinstance(op.input, lin.Write):
            continue
        if not any(r.node == url and start <= op.call <= end for url, start, end in windows):
            continue
        judged += 1
        if r.status == 504 and (op.key, _canon(op.input.value)) not in applied:
            v.add(f"answered 504 and never applied during a planned restart: {op.describe()}")
    v.summary = f"{len(windows)} planned restart windows, {judged} writes to the restarted node"
    return v


def read_your_writes(reads: list[LocalRead], feed: list[dict[str, Any]]) -> Verdict:
    v = Verdict("read-your-writes", True, "")
    deleted: dict[str, list[int]] = {}
    for e in feed:
        if e["type"] == "delete":
            deleted.setdefault(e["key"], []).append(e["version"])
    judged = 0
    for r in reads:
        if r.status == 200 and r.version is not None:
            judged += 1
            floor = r.acked_version + (r.acked == "delete")
            if r.version < floor:
                v.add(
                    f"c{r.client} on {r.node}: {r.key} at version {r.version} ({r.value!r}) after"
                    f" its {r.acked} of version {r.acked_version} was acknowledged there"
                )
        elif r.status == 404:
            judged += 1
            if r.acked == "set" and not any(d >= r.acked_version for d in deleted.get(r.key, [])):
                v.add(
                    f"c{r.client} on {r.node}: {r.key} absent after its set of version"
                    f" {r.acked_version} was acknowledged there, and no later delete"
                )
    v.summary = f"{judged} plain reads judged ({len(reads) - judged} without an answer)"
    return v


def watchers(ws: list[Watcher], feed: list[dict[str, Any]]) -> Verdict:
    want = [event_tuple(e) for e in feed]
    v = Verdict("watchers", True, "")
    parts = []
    for w in ws:
        sessions = len(w.sessions)
        parts.append(f"w{w.wid}: {len(w.events)} events over {sessions} subscriptions")
        for d in w.disorder[:5]:
            v.add(f"w{w.wid}: event at or below revision {d['after']}: {d['event']} "
                  f"from {d['node']}")  # fmt: skip
        if w.events != want:
            first = next(
                (i for i, (a, b) in enumerate(zip(w.events, want, strict=False)) if a != b),
                min(len(w.events), len(want)),
            )
            got = w.events[first] if first < len(w.events) else "nothing"
            exp = want[first] if first < len(want) else "nothing"
            v.add(f"w{w.wid}: {len(w.events)} events, feed has {len(want)}; first "
                  f"difference at #{first}: got {got}, feed has {exp}")  # fmt: skip
        for reason in w.cancels:
            if reason not in ("shutdown",):
                v.add(f"w{w.wid}: subscription cancelled ({reason})")
    v.summary = "; ".join(parts)
    return v


def convergence(states: dict[str, dict[str, Any]], feed: list[dict[str, Any]]) -> Verdict:
    """``states``: node id -> {"entries", "revision", "applied", "digest", "feed"}."""
    v = Verdict("convergence", True, "")
    if not states:
        v.add("no node answered")
        return v
    first_id = next(iter(states))
    first = states[first_id]
    for node_id, s in states.items():
        for field_name in ("digest", "revision", "applied"):
            if s.get(field_name) != first.get(field_name):
                v.add(f"{node_id} {field_name}={s.get(field_name)} but {first_id} has "
                      f"{first.get(field_name)}")  # fmt: skip
        if s.get("feed") != feed:
            v.add(f"{node_id}'s change feed differs from the leader's")
    final = feed_state(feed)
    listed = {e["key"]: e for e in first.get("entries", [])}
    for key, (exists, value, version, revision) in final.items():
        e = listed.get(key)
        if not exists:
            if e is not None:
                v.add(f"{key} is listed ({e}) but was deleted at revision {revision}")
        elif e is None or (e["value"], e["version"], e["revision"]) != (value, version, revision):
            v.add(f"{key} listed as {e}, the feed ends in {(value, version, revision)}")
    for key in listed.keys() - final.keys():
        v.add(f"{key} is listed but never appears in the feed")
    v.summary = (
        f"{len(states)} nodes, digest {first.get('digest')}, revision {first.get('revision')}, "
        f"applied index {first.get('applied')}, {len(listed)} live keys"
    )
    return v
