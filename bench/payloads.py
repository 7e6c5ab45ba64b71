"""Microbenchmark of a write's payloads between roles: a write result and a change event.

    python -m bench.payloads [--repeat N]

For each, microseconds per call (best of ``--repeat`` timeit rounds) of the
three steps every write pays: storage builds the payload from its row and
encodes the ``results`` / ``change_batch`` envelope; the front decodes it;
the front renders it to the API's JSON text. Run it on two checkouts
(``PYTHONPATH=...``) to compare before/after; the machine's load moves the
numbers, so compare runs taken back to back.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from typing import Any

from concordance.front.codec import Renderer, dumps
from concordance.protocol import wire
from concordance.protocol.payloads import Change, Rejected, new_change, new_outcome
from concordance.security.crypto import Cipher
from concordance.storage.db import Row, entry_of

KEY = "tenant:acme/user:u1/preferences/theme"
VALUE = b'{"mode":"dark","n":1}'
ROW = Row(KEY, VALUE, 3, 1042, 1764230400000, 1764230460000, None, 0, 17)
RENDER = Renderer(Cipher(()))


def _event(row: Row) -> Change:
    """The change event storage builds for a set (as ``StateMachine._emit`` does)."""
    return new_change("set", row.key, row.value, row.version, row.revision, row.updated_at)


def _cases() -> dict[str, tuple[Callable[[], Any], ...]]:
    """Kind -> (storage: build + encode, front: decode, front: render to JSON)."""

    def result() -> bytes:
        body = wire.Results("n1", (new_outcome(123456789, entry_of(ROW)),))
        return wire.encode_envelope(wire.Envelope("results", 4611686018427387904, body))

    def event() -> bytes:
        body = wire.ChangeBatch((_event(ROW),), ROW.revision)
        return wire.encode_envelope(wire.Envelope("change_batch", 4611686018427387904, body))

    result_bytes, event_bytes = result(), event()
    got_result = wire.decode_envelope(result_bytes).body
    got_event = wire.decode_envelope(event_bytes).body
    assert isinstance(got_result, wire.Results) and isinstance(got_event, wire.ChangeBatch)

    def render_result() -> str:
        result = got_result.items[0].result
        assert result is not None and not isinstance(result, Rejected)
        return dumps(RENDER.result(result))

    def render_event() -> str:
        return dumps([RENDER.event(e) for e in got_event.events])

    return {
        "write result": (
            result,
            lambda: wire.decode_envelope(result_bytes),
            render_result,
        ),
        "change event": (event, lambda: wire.decode_envelope(event_bytes), render_event),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"{'payload':<16}{'encode us':>11}{'decode us':>11}{'render us':>11}{'total us':>11}")
    for name, fns in _cases().items():
        row = []
        for fn in fns:
            timer = timeit.Timer(fn)
            number, _ = timer.autorange()
            row.append(min(timer.repeat(args.repeat, number)) / number * 1e6)
        cells = "".join(f"{v:>11.2f}" for v in [*row, sum(row)])
        print(f"{name:<16}{cells}")


if __name__ == "__main__":
    main()
