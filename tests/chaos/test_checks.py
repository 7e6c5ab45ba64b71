"""The chaos checks catch what they claim to, on small hand-made histories (no cluster)."""

from __future__ import annotations

import random

from concordance.testing.linearizability import ABSENT, Deleted, Found, Operation, Write, Written
from tests.chaos import checks
from tests.chaos.clients import LocalRead, Record
from tests.chaos.watchers import Watcher

K = "tenant:chaos/k0"


def ev(rev: int, kind: str, version: int, value: object = None, key: str = K) -> dict:
    e = {"type": kind, "key": key, "version": version, "revision": rev, "timestamp": 0}
    if kind == "set":
        e["value"] = value
    return e


def put(value: str, version: int | None, status: str = "ok", t: float = 1.0) -> Record:
    out = Written(version) if version is not None and status == "ok" else None
    ret = None if status == "unknown" else t + 0.1
    op = Operation(0, K, "set", Write(value), out, t, ret, status)
    return Record(op, "n1", 200 if status == "ok" else 503 if status == "fail" else None)


FEED = [ev(1, "set", 1, "a"), ev(2, "set", 2, "b"), ev(3, "delete", 2), ev(4, "set", 3, "c")]
FINAL = {"n1": {K: (200, {"value": "c", "version": 3})}}


def deleted(version: int) -> Record:
    op = Operation(0, K, "delete", None, Deleted(version), 2.0, 2.1, "ok")
    return Record(op, "n1", 200)


def test_a_consistent_run_passes() -> None:
    records = [put("a", 1), put("b", 2), deleted(2), put("c", 3)]
    v = checks.acknowledged_writes(records, FEED, FINAL)
    assert v.ok, v.evidence


def test_a_lost_acknowledged_write_is_found() -> None:
    records = [put("a", 1), put("b", 2), deleted(2), put("c", 3), put("d", 4)]
    v = checks.acknowledged_writes(records, FEED, FINAL)
    assert not v.ok and "acknowledged write lost" in v.evidence[0]


def test_a_failed_write_that_applied_is_found() -> None:
    records = [put("a", 1), put("b", 2, status="fail"), deleted(2), put("c", 3)]
    v = checks.acknowledged_writes(records, FEED, FINAL)
    assert not v.ok and "failed" in v.evidence[0]


def test_an_unknown_write_may_apply_but_not_twice() -> None:
    records = [put("a", 1), put("b", None, status="unknown"), deleted(2), put("c", 3)]
    assert checks.acknowledged_writes(records, FEED, FINAL).ok
    twice = [*FEED, ev(5, "set", 4, "b")]
    final = {"n1": {K: (200, {"value": "b", "version": 4})}}
    v = checks.acknowledged_writes(records, twice, final)
    assert not v.ok and "applied twice" in v.evidence[0]


def test_a_stale_final_read_and_a_bad_version_are_found() -> None:
    records = [put("a", 1), put("b", 2), deleted(2), put("c", 3)]
    stale = {"n2": {K: (200, {"value": "b", "version": 2})}}
    assert "final read" in checks.acknowledged_writes(records, FEED, stale).evidence[0]
    bad = [*FEED[:3], ev(4, "set", 2, "c")]
    v = checks.acknowledged_writes(records, bad, {"n1": {K: (200, {"value": "c", "version": 2})}})
    assert any("has version 2" in e for e in v.evidence)


def test_watchers_must_match_the_feed_exactly() -> None:
    http: object = None
    good = Watcher(0, random.Random(0), list, "tenant:chaos/", http)  # type: ignore[arg-type]
    good._take(FEED[:2], "u")
    good._take(FEED[2:], "u")
    assert checks.watchers([good], FEED).ok
    dup = Watcher(1, random.Random(0), list, "tenant:chaos/", http)  # type: ignore[arg-type]
    dup._take(FEED[:3], "u")
    dup._take(FEED[2:], "u")  # a resubscription that replays one event again
    v = checks.watchers([dup], FEED)
    assert not v.ok and "at or below revision 3" in v.evidence[0]
    gap = Watcher(2, random.Random(0), list, "tenant:chaos/", http)  # type: ignore[arg-type]
    gap._take([FEED[0], FEED[2], FEED[3]], "u")
    v = checks.watchers([gap], FEED)
    assert not v.ok and "first difference at #1" in v.evidence[0]


def test_convergence_compares_every_node_and_the_feed() -> None:
    entry = {"key": K, "value": "c", "version": 3, "revision": 4}
    state = {"entries": [entry], "revision": 4, "applied": 9, "digest": "x", "feed": FEED}
    assert checks.convergence({"n1": state, "n2": dict(state)}, FEED).ok
    behind = {**state, "revision": 3, "digest": "y"}
    v = checks.convergence({"n1": state, "n2": behind}, FEED)
    assert not v.ok and "n2 digest=y" in v.evidence[0]
    wrong = {**state, "entries": [{**entry, "value": "b"}]}
    v = checks.convergence({"n1": wrong}, FEED)
    assert not v.ok and "the feed ends in" in v.evidence[0]


def test_read_your_writes() -> None:
    fine = LocalRead(0, K, "n1", "set", 2, 1.0, 200, 3, "c")
    gone = LocalRead(0, K, "n1", "set", 2, 1.0, 404)  # the feed deletes version 2 later
    assert checks.read_your_writes([fine, gone], FEED).ok
    stale = LocalRead(0, K, "n1", "set", 3, 1.0, 200, 2, "b")
    v = checks.read_your_writes([stale], FEED)
    assert not v.ok and "at version 2" in v.evidence[0]
    undeleted = LocalRead(0, K, "n1", "delete", 2, 1.0, 200, 2, "b")
    assert not checks.read_your_writes([undeleted], FEED).ok


def test_linearizability_verdict_explains_a_stale_read() -> None:
    ops = [
        Operation(0, K, "set", Write("a"), Written(1), 0.0, 1.0),
        Operation(1, K, "get", None, ABSENT, 2.0, 3.0),
        Operation(1, K, "get", None, Found("a", 1), 4.0, 5.0),
    ]
    v, report = checks.linearizable(ops, timeout_s=5)
    assert v.ok is False and report.ok is False and v.evidence


def test_ttl_expired_reads_and_missing_expiries_are_found() -> None:
    from tests.chaos import ttl
    from tests.chaos.clients import History

    client = ttl.TtlClient(500, random.Random(0), list, None, History())  # type: ignore[arg-type]
    key = f"{ttl.TTL_PREFIX}k0"
    client.ttl_of = {"x": 300, "y": None}
    feed = [ev(1, "set", 1, "x", key), ev(2, "expire", 1, key=key), ev(3, "set", 2, "y", key)]
    kept = {"key": key, "value": "y", "version": 2, "revision": 3, "expiresAt": None}
    assert ttl.check(client, feed, {"n1": [kept]}).ok
    client.reads = [ttl.TtlRead("n1", key, 5_000, False, 200, {"expiresAt": 4_000})]
    v = ttl.check(client, feed, {"n1": [kept]})
    assert not v.ok and "after it expired" in v.evidence[0]
    client.reads = []
    v = ttl.check(client, feed[:1], {"n1": []})
    assert not v.ok and "no expire change followed" in v.evidence[0]
    v = ttl.check(client, feed, {"n1": [{**kept, "expiresAt": 9}]})
    assert not v.ok and "without a TTL" in v.evidence[0]


def test_a_504_for_a_write_not_applied_during_a_planned_restart_is_found() -> None:
    """Inside a restart window on that node, a 504 is fine only for a write in the feed."""
    applied = put("b", None, status="unknown", t=5.0)
    applied.status = 504
    lost = put("z", None, status="unknown", t=5.5)
    lost.status = 504
    elsewhere = put("y", None, status="unknown", t=5.5)
    elsewhere.status, elsewhere.node = 504, "n2"
    later = put("x", None, status="unknown", t=9.0)
    later.status = 504
    windows = [("n1", 4.0, 6.0)]
    assert checks.planned_restarts([applied, elsewhere, later], FEED, windows).ok
    v = checks.planned_restarts([applied, lost], FEED, windows)
    assert not v.ok and "never applied" in v.evidence[0]
