"""Microbenchmark of the three msgpack codecs on the messages every write carries.

    python -m bench.codec [--repeat N]

Prints microseconds per call (best of ``--repeat`` timeit rounds) for encode
and decode of each kind; run it on two checkouts (``PYTHONPATH=...``) to
compare before/after. The values are shaped like a real write: 100-byte
commands, 120-byte entries, 64-item batches.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

from concordance.protocol import wire
from concordance.protocol.commands import Command, Set
from concordance.protocol.payloads import Change, Outcome
from concordance.protocol.payloads import Entry as Entry_
from concordance.raft import messages as rm
from concordance.raft.entries import Entry, EntryKind

KEY = "tenant:acme/user:u1/preferences/theme"
SET = Command("n1", 123456789, 1764230400123, Set(KEY, b'{"mode":"dark","n":1}', None, None))
CMD = SET.encode()


def _env(body: wire.Body, *, reply_to: int | None = None) -> wire.Envelope:
    deadline = None if reply_to is not None else 1764230401123
    return wire.Envelope(wire.type_name(body), 4611686018427387904, body, reply_to, deadline)


def _append(n: int) -> rm.AppendEntries:
    entries = tuple(Entry(7, 1000 + i, EntryKind.NORMAL, CMD) for i in range(n))
    return rm.AppendEntries(7, "n1", "n2", 999, 7, entries, 998)


def _cases() -> dict[str, tuple[Callable[[], Any], Callable[[], Any]]]:
    """Kind -> (encode thunk, decode thunk)."""
    cases: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {}

    def envelope(name: str, body: wire.Body, **kw: Any) -> None:
        env = _env(body, **kw)
        data = wire.encode_envelope(env)
        assert wire.decode_envelope(data) == env
        cases[name] = (lambda: wire.encode_envelope(env), lambda: wire.decode_envelope(data))

    def raft(name: str, msg: Any) -> None:
        data = wire.encode_raft(msg)
        assert wire.decode_raft(data) == msg
        cases[name] = (lambda: wire.encode_raft(msg), lambda: wire.decode_raft(data))

    for n in (1, 64):
        envelope(f"propose x{n}", wire.Propose((CMD,) * n))
        raft(f"AppendEntries x{n}", _append(n))
        envelope(f"apply x{n}", wire.Apply(tuple((1000 + i, 7, 0, CMD) for i in range(n))))
        entry = Entry_(KEY, b'{"mode":"dark"}', 3, 9, 1764230400000, 1764230400000, None)
        items = tuple(Outcome(123456789 + i, entry) for i in range(n))
        envelope(f"results x{n}", wire.Results("n1", items))
    events = tuple(
        Change("set", f"{KEY}{i}", b'{"mode":"dark"}', 3, i, 1764230400000) for i in range(64)
    )
    envelope("change_batch x64", wire.ChangeBatch(events, 64))
    envelope("proposed", wire.Proposed(1234), reply_to=4611686018427387904)
    raft("AppendEntriesResponse", rm.AppendEntriesResponse(7, "n2", "n1", True, 1063))
    cases["Command Set"] = (SET.encode, lambda: Command.decode(CMD))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"{'kind':<24}{'encode us':>11}{'decode us':>11}")
    for name, (enc, dec) in _cases().items():
        row = []
        for fn in (enc, dec):
            timer = timeit.Timer(fn)
            number, _ = timer.autorange()
            best = min(timer.repeat(args.repeat, number)) / number
            row.append(best * 1e6)
        print(f"{name:<24}{row[0]:>11.2f}{row[1]:>11.2f}")


if __name__ == "__main__":
    main()
