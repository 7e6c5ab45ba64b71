"""Self-tests of the linearizability checker (concordance.testing.linearizability)."""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace

import pytest

import concordance.testing.linearizability as lin
from concordance.testing.linearizability import (
    ABSENT,
    Absent,
    Conflict,
    Deleted,
    Found,
    KeyState,
    Operation,
    Write,
    Written,
    check,
    check_key,
    from_http,
)

K = "tenant:t/k"


def get(c, call, ret, out, key=K):
    return Operation(c, key, "get", None, out, call, ret)


def put(c, call, ret, value, version, key=K):
    return Operation(c, key, "set", Write(value), Written(version), call, ret)


def cas(c, call, ret, value, if_version, out, key=K):
    return Operation(c, key, "cas", Write(value, if_version), out, call, ret)


def delete(c, call, ret, out, if_version=None, key=K):
    return Operation(c, key, "delete", if_version, out, call, ret)


def unknown(op):
    return replace(op, output=None, ret=None, status="unknown")


@pytest.fixture(params=["with version facts", "search only"])
def search_only(request, monkeypatch):
    """Run a test also with the search alone (no version-fact shortcut)."""
    if request.param == "search only":
        monkeypatch.setattr(lin, "_contradiction", lambda done: None)


def verdict(history, **kw):
    return check(history, timeout_s=10.0, **kw).ok


# -- linearizable -----------------------------------------------------------------------------

GOOD = {
    "empty": [],
    "read absent key": [get(1, 0, 1, ABSENT), delete(2, 2, 3, ABSENT)],
    "sequential": [put(1, 0, 1, "a", 1), get(2, 2, 3, Found("a", 1)), put(1, 4, 5, "b", 2)],
    "concurrent sets, reads see either": [
        put(1, 0, 10, "a", 2),
        put(2, 0, 10, "b", 1),
        get(3, 1, 2, Found("b", 1)),
        get(4, 3, 4, Found("a", 2)),
        get(5, 11, 12, Found("a", 2)),
    ],
    "overlapping read sees old or new": [
        put(1, 0, 1, "a", 1),
        put(1, 2, 10, "b", 2),
        get(2, 3, 4, Found("a", 1)),
        get(3, 5, 6, Found("b", 2)),
        get(2, 7, 8, Found("b", 2)),
    ],
    "cas chain": [
        cas(1, 0, 1, "a", 0, Written(1)),
        cas(2, 2, 3, "b", 1, Written(2)),
        cas(3, 2, 4, "c", 1, Conflict(Found("b", 2))),
        cas(1, 5, 6, "d", 0, Conflict(None)),
        cas(3, 5, 6, "e", 2, Written(3)),
    ],
    "cas on a tombstone: only ifVersion 0": [
        put(1, 0, 1, "a", 1),
        delete(1, 2, 3, Deleted(1)),
        cas(2, 4, 5, "x", 1, Conflict(ABSENT)),
        cas(2, 6, 7, "y", 0, Written(2)),
    ],
    "delete and re-create continue the versions": [
        put(1, 0, 1, "a", 1),
        put(1, 2, 3, "b", 2),
        delete(2, 4, 5, Deleted(2)),
        get(3, 6, 7, ABSENT),
        delete(3, 8, 9, ABSENT),
        put(1, 10, 11, "c", 3),
        delete(2, 12, 13, Deleted(3), if_version=3),
        delete(2, 14, 15, ABSENT, if_version=0),
        delete(2, 16, 17, Conflict(ABSENT), if_version=3),
    ],
    "concurrent deletes: one wins": [
        put(1, 0, 1, "a", 1),
        delete(2, 2, 5, Deleted(1)),
        delete(3, 2, 5, ABSENT),
    ],
    "unknown set that applied": [
        unknown(put(1, 0, 1, "a", 1)),
        get(2, 5, 6, Found("a", 1)),
    ],
    "unknown set that did not apply": [
        unknown(put(1, 0, 1, "a", 1)),
        get(2, 5, 6, ABSENT),
        put(2, 7, 8, "b", 1),
        get(2, 9, 10, Found("b", 1)),
    ],
    "unknown set applied late": [
        put(2, 0, 1, "x", 1),
        unknown(put(1, 2, 3, "a", 2)),
        get(2, 50, 51, Found("x", 1)),
        put(2, 52, 53, "y", 2),
        get(2, 54, 55, Found("y", 2)),
        get(2, 56, 57, Found("a", 3)),
    ],
    "unknown delete and cas": [
        put(1, 0, 1, "a", 1),
        unknown(delete(1, 2, 3, None)),
        unknown(cas(2, 2, 3, "b", 1, None)),
        get(3, 10, 11, Found("b", 2)),
        get(3, 12, 13, ABSENT),
        put(3, 14, 15, "c", 3),
    ],
    "failed ops are ignored": [
        replace(put(1, 0, 1, "zzz", 1), status="fail"),
        replace(put(1, 0, 1, "yyy", 1), status="fail", ret=None),
        get(2, 2, 3, ABSENT),
    ],
    "tie: a read called when a write returns is concurrent with it": [
        put(1, 0, 1, "a", 1),
        put(1, 2, 5, "b", 2),
        get(2, 5, 6, Found("a", 1)),
    ],
    "JSON values compare as JSON": [
        put(1, 0, 1, {"a": [1, 2], "b": None}, 1),
        get(2, 2, 3, Found({"b": None, "a": (1, 2)}, 1)),
    ],
}

BAD = {
    "tie broken the other way: called just after the write returned": [
        put(1, 0, 1, "a", 1),
        put(1, 2, 5, "b", 2),
        get(2, 5.001, 6, Found("a", 1)),
    ],
    "stale read after a completed write": [
        put(1, 0, 1, "a", 1),
        put(1, 2, 3, "b", 2),
        get(2, 4, 5, Found("a", 1)),
    ],
    "read of a value never written": [put(1, 0, 1, "a", 1), get(2, 0, 5, Found("z", 1))],
    "two cas winners with the same ifVersion": [
        put(1, 0, 1, "a", 1),
        cas(2, 2, 5, "b", 1, Written(2)),
        cas(3, 2, 5, "c", 1, Written(2)),
    ],
    "version going backwards": [
        put(1, 0, 1, "a", 1),
        put(1, 2, 3, "b", 2),
        get(2, 4, 5, Found("b", 2)),
        get(2, 6, 7, Found("b", 1)),
    ],
    "read sees a write before its call": [
        get(2, 0, 1, Found("a", 1)),
        put(1, 2, 3, "a", 1),
    ],
    "lost acknowledged write": [
        put(1, 0, 1, "a", 1),
        get(2, 2, 3, ABSENT),
    ],
    "lost write across a delete": [
        put(1, 0, 1, "a", 1),
        delete(1, 2, 3, Deleted(1)),
        put(1, 4, 5, "b", 2),
        get(2, 6, 7, ABSENT),
    ],
    "duplicate apply (version skipped)": [
        put(1, 0, 1, "a", 1),
        put(1, 2, 3, "b", 3),
    ],
    "re-create restarts at version 1": [
        put(1, 0, 1, "a", 1),
        delete(1, 2, 3, Deleted(1)),
        put(1, 4, 5, "b", 1),
    ],
    "conflict although the version matched": [
        put(1, 0, 1, "a", 1),
        cas(2, 2, 3, "b", 1, Conflict(None)),
    ],
    "conflict reports a stale current": [
        put(1, 0, 1, "a", 1),
        put(1, 2, 3, "b", 2),
        cas(2, 4, 5, "c", 7, Conflict(Found("a", 1))),
    ],
    "404 on delete with a non-zero ifVersion": [delete(1, 0, 1, ABSENT, if_version=4)],
    "unknown write cannot explain two versions": [
        unknown(put(1, 0, 1, "a", 1)),
        get(2, 2, 3, Found("a", 1)),
        get(2, 4, 5, Found("a", 2)),
    ],
    "no bool/number confusion": [put(1, 0, 1, 1, 1), get(2, 2, 3, Found(True, 1))],
}


@pytest.mark.parametrize("name", GOOD)
def test_linearizable(name):
    report = check(GOOD[name], timeout_s=10.0)
    assert report.ok is True, report.explain()


@pytest.mark.parametrize("name", BAD)
def test_not_linearizable(name, search_only):
    report = check(BAD[name], timeout_s=10.0)
    assert report.ok is False, name
    assert report.failures[0].stuck is not None
    assert "NOT linearizable" in report.explain()


def test_keys_are_independent():
    other = "tenant:t/other"
    history = [*GOOD["cas chain"], put(1, 0, 1, "x", 1, key=other), get(2, 3, 4, ABSENT, key=other)]
    report = check(history)
    assert report.ok is False
    assert [r.key for r in report.failures] == [other]
    assert [r.ok for r in report.results] == [True, False]


def test_initial_state():
    history = [get(1, 0, 1, Found("pre", 4)), put(1, 2, 3, "a", 5)]
    assert verdict(history) is False
    assert verdict(history, initial={K: KeyState(True, "pre", 4)}) is True


def test_witness_and_explanation():
    ok = check_key(K, GOOD["cas chain"])
    assert ok.ok is True
    assert [op.input.value for op in ok.linearized] == ["a", "b", "c", "d", "e"]
    assert ok.state == KeyState(True, "e", 3)

    history = BAD["lost write across a delete"]
    bad = check_key(K, history)  # found by the search
    assert (bad.ok, bad.reason) == (False, "no linearization")
    assert bad.linearized == tuple(history[:3])
    assert bad.state == KeyState(True, "b", 2)
    assert (bad.stuck, bad.pending) == (history[3], ())
    text = bad.explain()
    assert "cannot be placed" in text and "get -> Absent()" in text, text

    history = BAD["stale read after a completed write"]
    bad = check_key(K, history)  # found from the version numbers alone
    assert (bad.ok, bad.explored) == (False, 0)
    assert "version went down" in bad.reason
    assert (bad.stuck, bad.pending) == (history[2], (history[1],))
    assert bad.explain().splitlines()[1:] == [
        f"  {history[1].describe()}",
        f"  {history[2].describe()}",
    ]


def test_timeout_gives_undecided():
    # 14 concurrent reads then an impossible one: 2**14 subsets to refute.
    history = [get(c, 0, 10, ABSENT) for c in range(14)] + [get(99, 11, 12, Found("x", 1))]
    assert check_key(K, history, timeout_s=0.0).ok is None
    assert check(history, timeout_s=0.0).ok is None
    assert check_key(K, history, timeout_s=60.0).ok is False


def test_malformed_histories_are_rejected():
    with pytest.raises(ValueError):
        check([put(1, 2, 1, "a", 1)])  # returns before its call
    with pytest.raises(ValueError):
        check([replace(put(1, 0, 1, "a", 1), status="unknown")])  # unknown with a ret
    with pytest.raises(ValueError):
        check([get(1, 0, 1, Written(1))])
    with pytest.raises(ValueError):
        check([Operation(1, K, "cas", Write("a"), Written(1), 0, 1)])  # cas without ifVersion
    with pytest.raises(ValueError):
        check([put(1, 0, 1, object(), 1)])


def test_from_http():
    def op(kind, inp, code, body=None):
        return from_http(1, K, kind, inp, 0.0, 1.0, code, body)

    entry = {"key": K, "value": {"x": 1}, "version": 3, "revision": 9}
    assert op("get", None, 200, entry).output == Found({"x": 1}, 3)
    assert op("get", None, 404).output == ABSENT
    assert op("set", Write(1), 200, entry).output == Written(3)
    assert op("delete", None, 200, {"deleted": True, "version": 3}).output == Deleted(3)
    assert op("delete", None, 404).output == ABSENT
    conflict = {"error": {"code": "version_conflict", "current": entry}}
    assert op("cas", Write(1, 2), 409, conflict).output == Conflict(Found({"x": 1}, 3))
    gone = {"error": {"code": "version_conflict", "current": None}}
    assert op("cas", Write(1, 2), 409, gone).output == Conflict(ABSENT)
    assert op("cas", Write(1, 2), 409, {"error": {}}).output == Conflict(None)
    assert op("set", Write(1), 503).status == "fail"
    assert op("set", Write(1), 400).status == "fail"
    for code in (504, 500, None):
        timed_out = op("set", Write(1), code)
        assert (timed_out.status, timed_out.ret) == ("unknown", None)


# -- randomized -------------------------------------------------------------------------------

VALUES = ["a", "b", "c", 1, {"v": [1]}]


def simulate(
    seed, n_ops=120, clients=4, keys=1, p_unknown=0.1, p_fail=0.05, grid=None, unique=False
):
    """A history of a real linearizable store: each op takes effect at a random instant
    inside [call, ret]; an unknown op at a random later instant (possibly after the client
    gave up) or never. ``grid`` rounds all timestamps to create ties. Values are drawn from
    a few (ambiguous), or ``unique`` per write as a real chaos workload does."""
    rng = random.Random(seed)
    names = [f"tenant:t/k{i}" for i in range(keys)]
    now = [rng.random() for _ in range(clients)]
    plans = []  # (linearization point or None, client, key, kind, call, ret, status)
    for _ in range(n_ops):
        c = min(range(clients), key=lambda i: now[i])
        call = now[c]
        ret = call + rng.expovariate(1.0)
        now[c] = ret + rng.expovariate(5.0)
        kind = rng.choices(["get", "set", "cas", "delete"], [4, 3, 2, 1])[0]
        status = "ok"
        lin = rng.uniform(call, ret)
        roll = rng.random()
        if roll < p_unknown:
            status = "unknown"
            lin = rng.uniform(call, ret + 5.0) if rng.random() < 0.5 else None
        elif roll < p_unknown + p_fail:
            status, lin = "fail", None
        plans.append((lin, c, rng.choice(names), kind, call, ret, status))
    if grid:
        q = lambda t: round(t / grid) * grid  # noqa: E731
        plans = [(lin, c, k, kd, q(a), q(b), s) for lin, c, k, kd, a, b, s in plans]
    state = {k: (False, None, 0) for k in names}  # exists, value, version
    order = sorted(range(len(plans)), key=lambda i: (plans[i][0] is None, plans[i][0] or 0))
    history = []
    for i in order:
        lin, c, key, kind, call, ret, status = plans[i]
        exists, value, version = state[key]
        live = version if exists else 0
        guess = rng.choice([live, live, 0, live + 1, max(live - 1, 0)])
        if kind == "get":
            inp, out = None, Found(value, version) if exists else ABSENT
        elif kind in ("set", "cas"):
            if_v = guess if kind == "cas" or rng.random() < 0.2 else None
            inp = Write(f"c{c}-{i}" if unique else rng.choice(VALUES), if_v)
            if if_v is None or if_v == live:
                out = Written(version + 1)
                if lin is not None:
                    state[key] = (True, inp.value, version + 1)
            else:
                current = Found(value, version) if exists else ABSENT
                out = Conflict(rng.choice([current, None]))
        else:
            inp = guess if rng.random() < 0.3 else None
            if inp is not None and inp != live:
                out = Conflict(Found(value, version) if exists else ABSENT)
            elif not exists:
                out = ABSENT
            else:
                out = Deleted(version)
                if lin is not None:
                    state[key] = (False, None, version)
        if status != "ok":
            out = None
        history.append(Operation(c, key, kind, inp, out, call, ret, status))
    return [
        replace(op, ret=None) if op.status == "unknown" else op
        for op in sorted(history, key=lambda o: o.call)
    ]


def corrupt_one_read(history, seed):
    """Replace one read's answer by another state the same key really had."""
    rng = random.Random(seed)
    reads = [i for i, op in enumerate(history) if op.kind == "get" and op.status == "ok"]
    i = rng.choice(reads)
    seen = {repr(op.output): op.output for op in history if op.kind == "get" and op.status == "ok"}
    seen.update({repr(o): o for o in (ABSENT,)})
    others = [o for r, o in sorted(seen.items()) if o != history[i].output] or [Found("?", 1)]
    return [*history[:i], replace(history[i], output=rng.choice(others)), *history[i + 1 :]]


@pytest.mark.parametrize("unique", [False, True], ids=["few values", "unique values"])
@pytest.mark.parametrize("seed", range(40))
def test_random_linearizable_histories_pass(seed, unique):
    grid = 0.25 if seed % 4 == 0 else None
    history = simulate(seed, keys=1 + seed % 3, grid=grid, unique=unique)
    report = check(history, timeout_s=10.0)
    assert report.ok is True, report.explain()


# Seeds for which corrupting one read was verified to give a non-linearizable history. The
# others are linearizable after all, e.g. few values, seed 15: the read's new answer,
# Absent, is explained by a concurrent unknown delete; unique values, seed 10: it sees the
# next version, written concurrently.
CORRUPT_FAILS = {
    False: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20],
    True: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 16, 17, 18, 19, 20, 21],
}


@pytest.mark.parametrize(
    ("unique", "seed"), [(u, seed) for u, seeds in CORRUPT_FAILS.items() for seed in seeds]
)
def test_corrupted_read_fails(unique, seed, search_only):
    history = corrupt_one_read(simulate(seed, unique=unique), seed)
    report = check(history, timeout_s=10.0)
    assert report.ok is False


@pytest.mark.parametrize("unique", [False, True], ids=["few values", "unique values"])
def test_corruption_is_caught_most_of_the_time(unique):
    caught = sum(
        check(corrupt_one_read(simulate(seed, unique=unique), seed), timeout_s=10.0).ok is False
        for seed in range(100, 140)
    )
    assert caught >= 36, caught  # 39 and 40 of 40 when written


def _apply(state, op):
    """An independent reference model: compute the answer the store would give in
    ``state`` and compare it with the observed one (unknown: the applied branch)."""
    exists, value, version = state
    live = version if exists else 0
    unknown = op.status == "unknown"
    if op.kind == "get":
        answer = Found(json.loads(value), version) if exists else ABSENT
        return state if unknown or answer == op.output else None
    if op.kind == "delete":
        applied = (False, None, version)
        if op.input is not None and op.input != live:
            answer = Conflict(Found(json.loads(value), version) if exists else ABSENT)
        else:
            answer = Deleted(version) if exists else ABSENT
    else:
        applied = (True, json.dumps(op.input.value, sort_keys=True), version + 1)
        if op.input.if_version is not None and op.input.if_version != live:
            answer = Conflict(Found(json.loads(value), version) if exists else ABSENT)
        else:
            answer = Written(version + 1)
    if unknown:
        return applied if not isinstance(answer, Conflict | Absent) else state
    if isinstance(op.output, Conflict) and isinstance(answer, Conflict):
        return state if op.output.current in (None, answer.current) else None
    if answer != op.output:
        return None
    return state if isinstance(answer, Conflict | Absent) else applied


def brute_force(history):
    """Linearizability of a one-key history straight from the definition."""
    ops = [op for op in history if op.status != "fail"]
    memo = {}

    def search(left, state):
        if (left, state) not in memo:
            memo[left, state] = all(ops[i].status == "unknown" for i in left) or any(
                not any(ops[j].status == "ok" and ops[j].ret < ops[i].call for j in left if j != i)
                and (new := _apply(state, ops[i])) is not None
                and search(left - {i}, new)
                for i in left
            )
        return memo[left, state]

    return search(frozenset(range(len(ops))), (False, None, 0))


def random_small_history(rng):
    history = []
    for c in range(rng.randint(1, 7)):
        call = rng.randint(0, 8)
        ret = call + rng.randint(0, 4)
        kind = rng.choice(["get", "set", "cas", "delete"])
        v = rng.randint(1, 3)
        if kind == "get":
            inp, out = None, rng.choice([ABSENT, Found(rng.choice("ab"), v)])  # c, d: unread
        elif kind == "delete":
            inp = rng.choice([None, 0, 1, 2])
            outs = [Deleted(v), ABSENT] + [Conflict(rng.choice([None, ABSENT]))] * (inp is not None)
            out = rng.choice(outs)
        else:
            inp = Write(rng.choice("abcd"), rng.choice([0, 1, 2]) if kind == "cas" else None)
            conflict = Conflict(rng.choice([None, ABSENT, Found(rng.choice("ab"), v)]))
            out = rng.choice([Written(v), conflict] if kind == "cas" else [Written(v)])
        op = Operation(c, K, kind, inp, out, call, ret)
        history.append(unknown(op) if rng.random() < 0.2 else op)
    return history


def test_agrees_with_brute_force_on_small_random_histories(search_only):
    rng = random.Random(7)
    verdicts = {True: 0, False: 0}
    for _ in range(3000):
        history = random_small_history(rng)
        expected = brute_force(history)
        assert check_key(K, history).ok is expected, history
        verdicts[expected] += 1
    assert min(verdicts.values()) > 300, verdicts


def test_agrees_with_brute_force_on_small_simulated_histories(search_only):
    for seed in range(300):
        history = simulate(seed, n_ops=8, clients=3, p_unknown=0.3, grid=0.5)
        assert brute_force(history) is True
        assert check_key(K.replace("k", "k0"), history).ok is True
        if any(op.kind == "get" and op.status == "ok" for op in history):
            bad = corrupt_one_read(history, seed)
            assert check_key(K.replace("k", "k0"), bad).ok is brute_force(bad), bad


@pytest.mark.slow
@pytest.mark.parametrize(
    ("keys", "p_unknown", "unique"),
    [(5, 0.05, False), (5, 0.05, True), (5, 0.15, True), (1, 0.15, False), (1, 0.15, True)],
)
def test_performance_2000_ops_8_clients(keys, p_unknown, unique):
    history = simulate(12345, 2000, clients=8, keys=keys, p_unknown=p_unknown, unique=unique)
    started = time.monotonic()
    report = check(history, timeout_s=60.0)
    elapsed = time.monotonic() - started
    values = "unique" if unique else "5"
    print(
        f"\n{len(history)} ops, {keys} keys, 8 clients, {p_unknown:.0%} unknown,"
        f" {values} values: {elapsed:.2f} s"
    )
    for r in report.results:
        print(f"  {r.key}: {r.operations} ops, {r.explored} states, {r.elapsed_s:.2f} s")
    assert report.ok is True, report.explain()
    bad = corrupt_one_read(history, 1)
    started = time.monotonic()
    report = check(bad, timeout_s=60.0)
    print(f"  with one corrupted read: {report.ok} in {time.monotonic() - started:.2f} s")
