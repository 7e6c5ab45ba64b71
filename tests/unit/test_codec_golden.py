"""Golden bytes: the codec engine must encode every message, body and command exactly as
the hand-written codecs it replaced did, and decode those bytes back to an equal value.

``testdata/codec_golden.json`` was written by the pre-engine code (``python -m
tests.unit.test_codec_golden`` on commit 6e57eba). Running that again only adds
cases the file lacks (a type added since); an existing entry is never rewritten
to make a failing test pass: a difference is a wire-format change. The
bodies that carry storage's payloads (``get_ok``, ``get_many_ok``, ``list_ok``,
``changes_ok``, ``change_batch``, ``results``) were re-pinned once, on purpose,
when those payloads became tagged records (PROTOCOL.md §3.7), and ``results``
and ``hello`` once more when they gained ``applied`` and ``incarnation`` (8
December; their older bytes still decode, below).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from concordance.protocol import wire
from concordance.protocol.commands import Batch, Command, Delete, Set
from concordance.raft import messages as rm
from concordance.raft.entries import Entry, EntryKind
from tests.unit.test_commands import KEY, OPS
from tests.unit.test_wire import IPC_EXAMPLES, RAFT_EXAMPLES

GOLDEN = Path(__file__).parent / "testdata" / "codec_golden.json"


def _cases() -> dict[str, tuple[Any, Callable[[Any], bytes], Callable[[bytes], Any]]]:
    """Name -> (value, encode, decode) for every type the three codecs know."""
    cases: dict[str, tuple[Any, Callable[[Any], bytes], Callable[[bytes], Any]]] = {}
    for i, msg in enumerate(RAFT_EXAMPLES):
        cases[f"raft/{i}/{type(msg).__name__}"] = (msg, wire.encode_raft, wire.decode_raft)
    entries = tuple(Entry(7, 1000 + i, EntryKind(i % 3), bytes([i]) * i) for i in range(64))
    big = rm.AppendEntries(7, "n1", "n2", 999, 7, entries, 998)
    cases["raft/AppendEntries x64"] = (big, wire.encode_raft, wire.decode_raft)
    for name, body in IPC_EXAMPLES.items():
        for re, dl in ((None, None), (2**62 + 5, None), (None, 1764230400123)):
            env = wire.Envelope(name, 4611686018427387904 + 17, body, re, dl)
            cases[f"ipc/{name}/{re}/{dl}"] = (env, wire.encode_envelope, wire.decode_envelope)
    status = wire.StatusOk("n1", "follower", 3, None, 5, 4, (), 7, (1, 0, 2), 12345)
    cases["ipc/status_ok full"] = (
        wire.Envelope("status_ok", 1, status, 0),
        wire.encode_envelope,
        wire.decode_envelope,
    )
    storage = wire.StorageStatusOk(1, 2, 3, (4, 5), 6)
    cases["ipc/storage_status_ok full"] = (
        wire.Envelope("storage_status_ok", 1, storage, 0),
        wire.encode_envelope,
        wire.decode_envelope,
    )
    commands = [*OPS, Batch((Delete(KEY, 9), Set(KEY, b"x", 1, 2)))]
    for i, op in enumerate(commands):
        cmd = Command("n3", 2**64 - 1 - i, 1764230400000 + i, op)
        cases[f"command/{i}/{type(op).__name__}"] = (cmd, Command.encode, Command.decode)
    return cases


CASES = _cases()


def test_every_golden_case_is_still_checked() -> None:
    assert set(json.loads(GOLDEN.read_text())) <= set(CASES)


def test_every_type_has_a_golden_case() -> None:
    raft_types = {type(v) for k, (v, _, _) in CASES.items() if k.startswith("raft/")}
    assert raft_types == set(wire.RAFT_TAGS)
    ipc_types = {v.type for k, (v, _, _) in CASES.items() if k.startswith("ipc/")}
    assert ipc_types == set(wire.IPC_TYPES)


@pytest.mark.parametrize("name", CASES)
def test_bytes_are_unchanged_and_decode_back(name: str) -> None:
    value, encode, decode = CASES[name]
    golden = json.loads(GOLDEN.read_text()).get(name)
    if golden is None:  # a type newer than the file: round-trips until it is pinned
        assert decode(encode(value)) == value
        return
    expected = bytes.fromhex(golden)
    assert encode(value) == expected
    assert decode(expected) == value


def _without(body: wire.Body, field: str) -> wire.Body:
    """``body`` encoded as a role from before ``field`` sent it, decoded now."""
    raw = msgpack.unpackb(wire.encode_envelope(wire.Envelope(wire.type_name(body), 5, body)))
    del raw["b"][field]
    return wire.decode_envelope(msgpack.packb(raw, use_bin_type=True)).body


def test_bodies_from_before_their_last_field_decode_with_its_default() -> None:
    """A storage from before ``applied`` and ``incarnation`` still resolves a newer front's
    writes (whose local reads then wait for nothing more) and still feeds a newer
    consensus (which then rewinds for it only as it did before)."""
    items = IPC_EXAMPLES["results"].items  # type: ignore[attr-defined]
    assert _without(wire.Results("n1", items, 77), "applied") == wire.Results("n1", items, 0)
    assert _without(wire.Hello(9, 2, 123), "incarnation") == wire.Hello(9, 2, 0)


if __name__ == "__main__":  # pin the cases the file lacks; never rewrite one it has
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    for name, (value, encode, _) in CASES.items():
        golden.setdefault(name, encode(value).hex())
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(golden, indent=0, sort_keys=True) + "\n")
