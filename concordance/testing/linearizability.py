"""Linearizability checker for histories of Concordance KV operations.

A *history* is what clients observed: per request, who sent it, when
(``call``), when the answer came (``ret``) and what it said. It is linearizable
if some total order of the operations respects real time (if A returned before
B was called, A comes first) and is legal for one sequential copy of the store.
Only ``?consistent=true`` reads belong in a history; TTLs and batches are not
modelled.

Model (API.md §2-3), per key: ``(exists, value, version)``, initially absent at
version 0. ``set`` makes version + 1, also over a tombstone (a re-created key
continues the numbering); ``ifVersion: N`` is CAS against the live version (0
when absent or deleted, so 0 = "only if absent"), a mismatch is 409 and changes
nothing. ``delete`` leaves a tombstone that keeps (and reports) the version; it
is 404 on an absent key (409 first if ``ifVersion`` is set and not 0). Values
compare as canonical JSON (sorted keys; ``1 != True``), which is also their hash.

Algorithm: Wing & Gong's search with Lowe's improvements ("Testing for
Linearizability", 2017), as in Porcupine.

* P-compositionality (Horn & Kroening): every operation touches one key and
  linearizability is local, so each key's sub-history is checked alone.
* Calls and returns sorted by time form a doubly linked list. The search walks
  it from the head; at a *call* it tries to linearize that operation next: if
  the model allows it and (bitset of linearized operations, new state) is not
  in the memo, it pushes (entry, old state), unlinks the call and its return
  ("lift") and restarts from the head, else goes on. Reaching a *return* means
  nothing fits before that operation's deadline: pop the last choice, relink it
  ("unlift", LIFO as in dancing links) and go on after it. An empty stack there
  means no linearization exists. The memo prunes a partial linearization of the
  same operations ending in the same state as one explored: same future.
* Ties: a call and a return at the same time are ordered calls first, so the
  two operations are concurrent. That only drops real-time constraints: clock
  granularity cannot fail a correct history (it can hide a one-tick violation).
* Unknown outcome (504, client timeout, reset): the operation took effect at
  some instant after its call, or never: its return is at +infinity. It never
  blocks anything, so it has no return entry; it waits in a second list, in
  call order, and is a candidate once its call is no later than the first
  pending return. Only "applied" is modelled: "not applied" is leaving it out,
  allowed at the end (the history passes once every completed operation is
  placed). Unknown gets and ``fail`` operations (not applied) are dropped.
* To keep unknown operations from exploding the search: completed operations
  are tried first; an unknown one is not applied past the version a pending
  operation still needs (versions never go down); of unknown writes with equal
  effect the earlier-called is used first (they commute); and values that no
  operation observed are one value to the model.
* Before searching, version facts are checked in O(n log n): one set creates
  each version (so two writes reporting it, or a read seeing another value at
  it or before its writer was called, is a violation) and versions never go
  down in real time. These answer at once where the search would have to
  exhaust every interleaving before the violation.
* ``timeout_s`` per key: past it the answer is ``ok=None`` (undecided): the
  problem is NP-complete, and refuting a violation deep in a history with heavy
  concurrency on one key and many unknown outcomes can exceed any budget. A
  failure reports the deepest point reached: the longest linearizable prefix,
  the operation whose return could not be passed, the others pending there.

HTTP outcomes (:func:`from_http`), status ``ok``: 200 GET ``Found(value,
version)``; 404 GET or DELETE ``ABSENT``; 200 PUT ``Written(version)``; 200
DELETE ``Deleted(version)``; 409 ``Conflict(current)`` with the error's
``current`` as ``Found``/``ABSENT`` (None: not checked). 503 and other 4xx:
``fail`` (dropped). 504, other 5xx, no answer: ``unknown``, ``ret=None``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias

Kind: TypeAlias = Literal["get", "set", "cas", "delete"]
Status: TypeAlias = Literal["ok", "fail", "unknown"]


@dataclass(frozen=True)
class Found:
    """A get that found the key (200 with the entry), or a 409's ``current`` entry."""

    value: Any
    version: int


@dataclass(frozen=True)
class Absent:
    """The key does not exist: 404 on get or delete, ``"current": null`` in a 409."""


ABSENT: Final = Absent()


@dataclass(frozen=True)
class Written:
    """A set or cas that applied (200): the version of the new entry."""

    version: int


@dataclass(frozen=True)
class Deleted:
    """A delete that applied (200): the version the tombstone keeps."""

    version: int


@dataclass(frozen=True)
class Conflict:
    """409 version_conflict: nothing applied. ``current`` is checked unless None."""

    current: Found | Absent | None = None


@dataclass(frozen=True)
class Write:
    """Input of set/cas: the value and the optional ``ifVersion`` (0 = only if absent)."""

    value: Any
    if_version: int | None = None


Output: TypeAlias = Found | Absent | Written | Deleted | Conflict | None


@dataclass(frozen=True)
class Operation:
    """One client request as observed.

    ``input``: None for get, :class:`Write` for set/cas, the ``ifVersion`` (int or
    None) for delete. ``ret`` is None (+infinity) iff ``status`` is ``unknown``;
    the output of ``fail`` and ``unknown`` operations is ignored.
    """

    client: int
    key: str
    kind: Kind
    input: Write | int | None
    output: Output
    call: float
    ret: float | None
    status: Status = "ok"

    def describe(self) -> str:
        arg = "" if self.input is None else f" {self.input!r}"
        if self.kind == "delete" and self.input is not None:
            arg = f" ifVersion={self.input}"
        res = self.output if self.status == "ok" else self.status.upper()
        end = "inf" if self.ret is None else f"{self.ret:.6f}"
        return f"[{self.call:.6f}, {end}] c{self.client} {self.kind}{arg} -> {res}"


@dataclass(frozen=True)
class KeyState:
    """A model state of one key, for ``initial`` and in explanations."""

    exists: bool = False
    value: Any = None
    version: int = 0


@dataclass(frozen=True)
class CheckResult:
    """The verdict for one key: True, False, or None (undecided within the budget).

    On success ``linearized`` is a linearization (unknown operations left out did
    not apply). On failure, ``reason`` says why; after a search, ``linearized`` is
    the longest linearizable prefix found, ending in ``state``, ``stuck`` the
    operation whose return could not be passed from there and ``pending`` the
    other unplaced operations called by then. A version contradiction found
    before searching names the two operations: ``pending[0]`` and ``stuck``.
    """

    key: str
    ok: bool | None
    operations: int
    elapsed_s: float
    explored: int
    linearized: tuple[Operation, ...] = ()
    state: KeyState | None = None
    stuck: Operation | None = None
    pending: tuple[Operation, ...] = ()
    reason: str = ""

    def explain(self, context: int = 10) -> str:
        verdict = {True: "linearizable", False: "NOT linearizable", None: "undecided"}[self.ok]
        lines = [
            f"key {self.key!r}: {verdict} ({self.operations} ops, {self.explored} states, "
            f"{self.elapsed_s:.3f} s) {self.reason}"
        ]
        if self.ok is False and self.state is None and self.stuck is not None:
            lines += [f"  {op.describe()}" for op in (*self.pending, self.stuck)]
        elif self.ok is False:
            if self.state is not None:
                tail = self.linearized[-context:]
                lines.append(f"  linearizable prefix: {len(self.linearized)} ops, the last:")
                lines += [f"    {op.describe()}" for op in tail]
                lines.append(f"  ending in {self.state}")
            if self.stuck is not None:
                lines.append(f"  cannot be placed: {self.stuck.describe()}")
            lines += [f"  also pending:     {op.describe()}" for op in self.pending[:context]]
        return "\n".join(lines)


@dataclass(frozen=True)
class Report:
    """The verdicts of all keys, sorted by key."""

    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool | None:
        """False if any key failed, else None if any is undecided, else True."""
        if any(r.ok is False for r in self.results):
            return False
        return None if any(r.ok is None for r in self.results) else True

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if r.ok is False)

    def explain(self) -> str:
        return "\n".join(r.explain() for r in self.results if r.ok is not True) or "all keys OK"


# -- the model -------------------------------------------------------------------------------

_State: TypeAlias = tuple[bool, str | None, int]  # (exists, canonical JSON of value, version)
_Step: TypeAlias = Callable[[_State], _State | None]
_ANY: Final = 1 << 62  # "no version requirement"
_UNSEEN: Final = "?"  # not canonical JSON


def canonical(value: Any) -> str:
    """The identity of a JSON value: equal iff equal as JSON (object key order ignored)."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"not a JSON value: {value!r}") from e


def _seen(value: Any, observed: set[str]) -> str:
    """A value no operation observed is only ever compared unequal: all are one to the model."""
    c = canonical(value)
    return c if c in observed else _UNSEEN


def _from_state(s: _State, lin: Iterable[Operation], initial: KeyState) -> KeyState:
    if s[1] != _UNSEEN:
        return KeyState(s[0], None if s[1] is None else json.loads(s[1]), s[2])
    applied = (o for o in lin if isinstance(o.output, Written) or o.status == "unknown")
    sets = [o.input.value for o in applied if isinstance(o.input, Write)]
    return KeyState(True, sets[-1] if sets else initial.value, s[2])


def _conflict(if_version: int, current: Found | Absent | None) -> _Step:
    seen: _State | None = None
    if isinstance(current, Found):
        seen = (True, canonical(current.value), current.version)

    def step(s: _State) -> _State | None:
        if (s[2] if s[0] else 0) == if_version:
            return None  # the condition held: it would have applied
        if current is None:
            return s
        if seen is None:
            return None if s[0] else s
        return s if s == seen else None

    return step


def _compile(op: Operation, observed: set[str]) -> _Step:
    """The model's transition for ``op``: the new state, or None if illegal in ``s``."""
    out, unknown = op.output, op.status == "unknown"
    if op.kind == "get":
        if isinstance(out, Found):
            want: _State = (True, canonical(out.value), out.version)
            return lambda s: s if s == want else None
        if isinstance(out, Absent):
            return lambda s: None if s[0] else s
    elif op.kind in ("set", "cas"):
        w = op.input
        if not isinstance(w, Write) or (op.kind == "cas" and w.if_version is None):
            raise ValueError(f"{op.kind} needs a Write input (cas with if_version): {op}")
        if_version, value = w.if_version, _seen(w.value, observed)
        if unknown or isinstance(out, Written):
            expect = out.version if isinstance(out, Written) and not unknown else None

            def put(s: _State) -> _State | None:
                if if_version is not None and (s[2] if s[0] else 0) != if_version:
                    return None
                if expect is not None and s[2] + 1 != expect:
                    return None
                return (True, value, s[2] + 1)

            return put
        if isinstance(out, Conflict) and if_version is not None:
            return _conflict(if_version, out.current)
    elif op.kind == "delete":
        if_v = op.input
        if not (if_v is None or (isinstance(if_v, int) and not isinstance(if_v, bool))):
            raise ValueError(f"delete input must be its ifVersion (int or None): {op}")
        if unknown or isinstance(out, Deleted):
            gone = out.version if isinstance(out, Deleted) and not unknown else None

            def delete(s: _State) -> _State | None:
                if not s[0] or (if_v is not None and s[2] != if_v):
                    return None
                return None if gone is not None and s[2] != gone else (False, None, s[2])

            return delete
        if isinstance(out, Absent):
            legal = if_v is None or if_v == 0  # else the server answers 409, not 404
            return lambda s: s if legal and not s[0] else None
        if isinstance(out, Conflict) and if_v is not None:
            return _conflict(if_v, out.current)
    raise ValueError(f"output {out!r} is impossible for {op.kind} {op.input!r}: {op}")


def _version_before(op: Operation) -> int:
    """The exact version ``op`` must find, or _ANY."""
    out = op.output
    if isinstance(out, Conflict):
        out = out.current
    if isinstance(out, Found | Deleted):
        return out.version
    return out.version - 1 if isinstance(out, Written) else _ANY


def _version_after(op: Operation) -> int:
    """The exact version ``op`` leaves, or -1."""
    v = _version_before(op)
    return -1 if v == _ANY else v + isinstance(op.output, Written)


def _ret(op: Operation) -> float:
    return float("inf") if op.ret is None else op.ret


def _contradiction(done: list[Operation]) -> tuple[str, Operation, Operation] | None:
    """Version facts any linearization obeys (completed operations only)."""
    made: dict[int, Operation] = {}
    for op in done:
        if isinstance(op.output, Written):
            first = made.setdefault(op.output.version, op)
            if first is not op:
                return "two writes created the same version", first, op
    for op in done:  # op finds the version w created: w takes effect first
        w = made.get(_version_before(op))
        if w is None or w is op or not isinstance(w.input, Write):
            continue
        seen = op.output.current if isinstance(op.output, Conflict) else op.output
        if isinstance(seen, Found) and canonical(w.input.value) != canonical(seen.value):
            return "another value at the version that write created", w, op
        if _ret(op) < w.call:
            return "saw a version before the write creating it was called", w, op
    by_ret = sorted((op for op in done if _version_after(op) >= 0), key=_ret)
    by_call = sorted((op for op in done if _version_before(op) != _ANY), key=lambda op: op.call)
    top: Operation | None = None
    k = 0
    for op in by_call:
        while k < len(by_ret) and _ret(by_ret[k]) < op.call:
            if top is None or _version_after(by_ret[k]) > _version_after(top):
                top = by_ret[k]
            k += 1
        if top is not None and _version_after(top) > _version_before(op):
            return "the version went down after the first returned", top, op
    return None


# -- the search ------------------------------------------------------------------------------


def check_key(
    key: str,
    history: Iterable[Operation],
    timeout_s: float = 10.0,
    initial: KeyState | None = None,
) -> CheckResult:
    """Check the operations of one key (all must have ``op.key == key``)."""
    started = time.monotonic()
    deadline = started + timeout_s
    done: list[Operation] = []
    unsure: list[Operation] = []
    for op in history:
        if op.key != key or op.status not in ("ok", "fail", "unknown"):
            raise ValueError(f"not a {key!r} operation with a valid status: {op}")
        if op.status != "fail" and (
            (op.status == "unknown") != (op.ret is None) or _ret(op) < op.call
        ):
            raise ValueError(f"ret must be None iff unknown, else >= call: {op}")
        if op.status == "ok":
            done.append(op)
        elif op.status == "unknown" and op.kind != "get":
            unsure.append(op)
    unsure.sort(key=lambda op: op.call)
    ops = done + unsure
    observed = set()
    for op in done:
        out = op.output.current if isinstance(op.output, Conflict) else op.output
        if isinstance(out, Found):
            observed.add(canonical(out.value))
    steps = [_compile(op, observed) for op in ops]
    found = _contradiction(done)
    if found is not None:
        why, a, b = found
        return CheckResult(
            key, False, len(ops), time.monotonic() - started, 0, (), None, b, (a,), why
        )
    need = [_version_before(op) for op in ops]

    # Entries: 0 = head, 1..m the calls and returns of completed operations in time order
    # (calls first at equal times), tail; uhead, the unknown operations' calls, utail.
    events = sorted(
        [(op.call, 0, i) for i, op in enumerate(done)]
        + [(_ret(op), 1, i) for i, op in enumerate(done)]
    )
    m = len(events)
    tail, uhead, utail = m + 1, m + 2, m + len(unsure) + 3
    nxt = [*range(1, utail + 1), utail]
    prv = [0, *range(utail)]
    nxt[tail], prv[uhead] = tail, uhead
    at = [0.0] * (utail + 1)
    op_of = [-1] * (utail + 1)
    is_call = [False] * (utail + 1)
    match = [0] * (utail + 1)  # call entry -> its return entry (0: none, unknown op)
    call_entry = [0] * len(ops)
    for e, (t, kind, i) in enumerate(events, start=1):
        at[e], op_of[e], is_call[e] = t, i, kind == 0
        if kind == 0:
            call_entry[i] = e
        else:
            match[call_entry[i]] = e
    later = [_ANY] * (tail + 1)  # the lowest version needed by an op called after entry e
    for e in range(m, 0, -1):
        later[e - 1] = min(later[e], need[op_of[e]]) if is_call[e] else later[e]
    prior = [-1] * len(ops)  # the earlier-called unknown op with the same effect
    last: dict[tuple[str, int | None], int] = {}
    for j, op in enumerate(unsure):
        e, i = uhead + 1 + j, len(done) + j
        at[e], op_of[e], is_call[e] = op.call, i, True
        w = op.input
        effect = (_seen(w.value, observed), w.if_version) if isinstance(w, Write) else ("", w)
        prior[i] = last.get(effect, -1)
        last[effect] = i

    initial = initial or KeyState()
    state = (
        initial.exists,
        _seen(initial.value, observed) if initial.exists else None,
        initial.version,
    )
    bits = 0
    stack: list[tuple[int, _State, int, int]] = []  # (lifted entry, state before, R, floor)
    cache: set[tuple[int, _State]] = set()
    best, best_state, stuck = -1, state, -1
    best_lin: list[int] = []
    pending: list[int] = []
    ret_entry, floor, ticks = 0, _ANY, 0
    entry = nxt[0]
    verdict: bool | None = True
    while nxt[0] != tail:
        ticks += 1
        if ticks & 0xFFF == 0 and time.monotonic() > deadline:
            verdict = None
            break
        i = op_of[entry]
        if entry < tail:  # completed operations called before the first pending return
            if not is_call[entry]:  # that return R: now the unknown operations
                ret_entry, floor, e = entry, later[entry], nxt[0]
                while e != entry:
                    floor = min(floor, need[op_of[e]])
                    e = nxt[e]
                entry = nxt[uhead]
                continue
            new = steps[i](state)
        elif entry != utail and at[entry] <= at[ret_entry]:  # unknown ops called by R
            if prior[i] >= 0 and not (bits >> prior[i]) & 1:
                entry = nxt[entry]
                continue
            new = steps[i](state)
            if new is not None and new[2] > floor:  # a pending op needs a lower version
                new = None
        else:  # nothing fits before R: backtrack
            if len(stack) > best:
                best, best_state, stuck = len(stack), state, op_of[ret_entry]
                best_lin = [op_of[e] for e, _, _, _ in stack]
                pending.clear()
                e = nxt[0]
                while e != ret_entry:
                    if op_of[e] != stuck:
                        pending.append(op_of[e])
                    e = nxt[e]
                e = nxt[uhead]
                while e != utail and at[e] <= at[ret_entry]:
                    pending.append(op_of[e])
                    e = nxt[e]
            if not stack:
                verdict = False
                break
            entry, state, ret_entry, floor = stack.pop()
            bits ^= 1 << op_of[entry]
            r = match[entry]  # unlift: relink the return, then the call
            if r:
                nxt[prv[r]] = prv[nxt[r]] = r
            nxt[prv[entry]] = prv[nxt[entry]] = entry
            entry = nxt[entry]
            continue
        if new is not None:
            memo = (bits | 1 << i, new)
            if memo not in cache:
                cache.add(memo)
                stack.append((entry, state, ret_entry, floor))
                bits, state = memo
                nxt[prv[entry]], prv[nxt[entry]] = nxt[entry], prv[entry]  # lift
                r = match[entry]
                if r:
                    nxt[prv[r]], prv[nxt[r]] = nxt[r], prv[r]
                entry = nxt[0]
                continue
        entry = nxt[entry]

    took, n = time.monotonic() - started, len(ops)
    if verdict is None:
        return CheckResult(key, None, n, took, len(cache), reason=f"after {timeout_s} s")
    if verdict:
        lin = tuple(ops[op_of[e]] for e, _, _, _ in stack)
        return CheckResult(key, True, n, took, len(cache), lin, _from_state(state, lin, initial))
    lin, rest = tuple(ops[i] for i in best_lin), tuple(ops[i] for i in pending)
    end = _from_state(best_state, lin, initial)
    return CheckResult(
        key, False, n, took, len(cache), lin, end, ops[stuck], rest, "no linearization"
    )


def check(
    history: Iterable[Operation],
    timeout_s: float = 10.0,
    initial: Mapping[str, KeyState] | None = None,
) -> Report:
    """Check a whole history key by key; ``timeout_s`` is the budget of each key.

    ``initial``: the state of keys that existed before the history began (default:
    absent at version 0).
    """
    by_key: dict[str, list[Operation]] = {}
    for op in history:
        by_key.setdefault(op.key, []).append(op)
    init = initial or {}
    return Report(tuple(check_key(k, by_key[k], timeout_s, init.get(k)) for k in sorted(by_key)))


def from_http(
    client: int,
    key: str,
    kind: Kind,
    input: Write | int | None,
    call: float,
    ret: float | None,
    status_code: int | None,
    body: Any = None,
) -> Operation:
    """An :class:`Operation` from an HTTP exchange (``body``: the decoded JSON answer).

    ``status_code`` None means no answer (connection error, client-side timeout).
    """
    if status_code is None or (status_code >= 500 and status_code != 503):
        return Operation(client, key, kind, input, None, call, None, "unknown")
    if status_code == 503 or (400 <= status_code < 500 and status_code not in (404, 409)):
        return Operation(client, key, kind, input, None, call, ret, "fail")
    out: Output
    if status_code == 200:
        if kind == "get":
            out = Found(body["value"], body["version"])
        else:
            out = Deleted(body["version"]) if kind == "delete" else Written(body["version"])
    elif status_code == 404:
        out = ABSENT
    elif status_code == 409:
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict) or "current" not in err:
            out = Conflict(None)
        else:
            cur = err["current"]
            out = Conflict(ABSENT if cur is None else Found(cur["value"], cur["version"]))
    else:
        raise ValueError(f"unexpected HTTP status {status_code} for {kind} {key!r}")
    return Operation(client, key, kind, input, out, call, ret, "ok")
