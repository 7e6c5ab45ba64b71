"""Commands round-trip through their log bytes; anything else is a RemoteProtocolError."""

from __future__ import annotations

from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from concordance.errors import RemoteProtocolError
from concordance.protocol.commands import (
    FORMAT,
    Batch,
    Check,
    Command,
    Delete,
    DeletePrefix,
    Expire,
    Op,
    Set,
    peek_request,
)

KEY = "tenant:acme/user:u1/preferences/theme"

OPS: list[Op] = [
    Set(KEY, b'"dark"'),
    Set(KEY, b'{"a":[1,2,{"b":null}]}', if_version=0, expires_at=1_764_230_400_000),
    Set(KEY, b"1", if_version=7, expires_at=None),
    Set("tenant:acme/日本語/🎉", b'"\\u00e9"', None, 5),
    Set(KEY, b"", None, -1),  # storage carries bytes; it does not judge them
    Set(KEY, b"1", 2**63 - 1, 2**63 - 1),  # the largest numbers SQLite can store
    Set(KEY, b"1", 0, -(2**63)),
    Delete(KEY),
    Delete(KEY, if_version=3),
    Check(KEY, 0),
    Check(KEY, 12),
    DeletePrefix("tenant:acme/"),
    DeletePrefix("tenant:acme/user:u1/pre"),
    Batch((Set(KEY, b"1"),)),
    Batch((Check(KEY, 1), Set(KEY, b"2", 1, None), Delete("tenant:acme/x", 0))),
    Expire(KEY, 4, 1_764_230_400_000),
]


@pytest.mark.parametrize("op", OPS, ids=lambda op: type(op).__name__)
def test_every_op_round_trips(op: Op) -> None:
    cmd = Command("n1", 42, 1_764_230_460_000, op)
    assert Command.decode(cmd.encode()) == cmd


@pytest.mark.parametrize("request_id", [0, 1, 2**32, 2**64 - 1])
def test_envelope_round_trips(request_id: int) -> None:
    cmd = Command("node-with-a-long-name", request_id, 0, Delete(KEY))
    decoded = Command.decode(cmd.encode())
    assert decoded == cmd
    assert isinstance(decoded.op, Delete)


def test_decoded_batch_holds_a_tuple_of_ops() -> None:
    cmd = Command("n1", 1, 2, Batch((Set(KEY, b"1"), Check(KEY, 0))))
    decoded = Command.decode(cmd.encode())
    assert isinstance(decoded.op, Batch)
    assert decoded.op.ops == (Set(KEY, b"1"), Check(KEY, 0))


def test_a_small_set_stays_small() -> None:
    data = Command("n1", 12345, 1_764_230_460_000, Set("tenant:a/k", b"1")).encode()
    # envelope + tag + key + value + two nils: no field names on the wire
    assert len(data) <= 40
    assert b"key" not in data


def test_encoding_is_deterministic() -> None:
    cmd = Command("n1", 1, 2, Batch((Set(KEY, b"1", 0, 9), Delete(KEY))))
    assert cmd.encode() == Command.decode(cmd.encode()).encode()


def _pack(body: Any) -> bytes:
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def _cmd(op: Any) -> bytes:
    return _pack([FORMAT, "n1", 1, 1000, op])


GARBAGE: list[tuple[str, Any]] = [
    ("empty", b""),
    ("not msgpack", b"\xc1"),
    ("text", b"garbage"),
    ("truncated", Command("n1", 1, 2, Set(KEY, b"1")).encode()[:-3]),
    ("trailing bytes", Command("n1", 1, 2, Set(KEY, b"1")).encode() + b"\x00"),
    ("str not bytes", "a string"),
    ("none", None),
    ("a map", _pack({"origin": "n1"})),
    ("an int", _pack(7)),
    ("future format", _pack([FORMAT + 1, "n1", 1, 1000, [0, KEY, b"1", None, None]])),
    ("short envelope", _pack([FORMAT, "n1", 1, 1000])),
    ("origin not str", _pack([FORMAT, 1, 1, 1000, [1, KEY, None]])),
    ("bytes origin", _pack([FORMAT, b"n1", 1, 1000, [1, KEY, None]])),
    ("negative request id", _pack([FORMAT, "n1", -1, 1000, [1, KEY, None]])),
    ("float timestamp", _pack([FORMAT, "n1", 1, 1000.5, [1, KEY, None]])),
    ("bool request id", _pack([FORMAT, "n1", True, 1000, [1, KEY, None]])),
    ("op not a list", _cmd("set")),
    ("empty op", _cmd([])),
    ("unknown tag", _cmd([99, KEY])),
    ("str tag", _cmd(["set", KEY, b"1", None, None])),
    ("set arity", _cmd([0, KEY, b"1", None])),
    ("set str value", _cmd([0, KEY, "1", None, None])),
    ("set bad key", _cmd([0, "tenant:acme//x", b"1", None, None])),
    ("set bytes key", _cmd([0, KEY.encode(), b"1", None, None])),
    ("set negative if_version", _cmd([0, KEY, b"1", -1, None])),
    ("set bool if_version", _cmd([0, KEY, b"1", False, None])),
    ("set str expiry", _cmd([0, KEY, b"1", None, "soon"])),
    ("delete arity", _cmd([1, KEY])),
    ("delete unscoped key", _cmd([1, "tenant:acme", None])),
    ("check without version", _cmd([2, KEY, None])),
    ("prefix without slash", _cmd([3, "tenant:acme"])),
    ("prefix not str", _cmd([3, 5])),
    ("empty batch", _cmd([4, []])),
    ("batch not list", _cmd([4, "ops"])),
    ("nested batch", _cmd([4, [[4, [[1, KEY, None]]]]])),
    ("prefix delete in batch", _cmd([4, [[3, "tenant:acme/"]]])),
    ("expire in batch", _cmd([4, [[5, KEY, 1, 2]]])),
    ("bad op in batch", _cmd([4, [[1, KEY, None], [0, KEY]]])),
    ("expire negative version", _cmd([5, KEY, -1, 2])),
    ("expiry beyond int64", _cmd([0, KEY, b"1", None, 2**63])),
    ("version beyond int64", _cmd([2, KEY, 2**64 - 1])),
    ("timestamp beyond int64", _pack([FORMAT, "n1", 1, 2**63, [1, KEY, None]])),
    ("ext type", _pack([FORMAT, "n1", 1, msgpack.ExtType(1, b"x"), [1, KEY, None]])),
    ("deep nesting", b"\x91" * 100_000),
]


@pytest.mark.parametrize(("name", "data"), GARBAGE, ids=[name for name, _ in GARBAGE])
def test_garbage_raises_remote_protocol_error(name: str, data: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        Command.decode(data)


def test_peek_request_reads_the_envelope_of_a_good_command() -> None:
    assert peek_request(Command("n2", 77, 1, Delete(KEY)).encode()) == ("n2", 77)


def test_peek_request_reads_the_envelope_even_when_the_op_is_broken() -> None:
    data = _pack([FORMAT, "n3", 9, 1000, [99]])
    with pytest.raises(RemoteProtocolError):
        Command.decode(data)
    assert peek_request(data) == ("n3", 9)


@pytest.mark.parametrize("data", [b"", b"\xc1", _pack({"a": 1}), _pack([FORMAT, 5, 9])])
def test_peek_request_gives_none_for_garbage(data: bytes) -> None:
    assert peek_request(data) is None
