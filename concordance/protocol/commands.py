"""State-machine commands: what a Raft NORMAL entry carries, and their bytes.

The front builds a :class:`Command` (origin node, request id, timestamp and
one op), encodes it and proposes the bytes; every node's storage decodes and
applies the same bytes, so everything that must be identical on every node is
fixed here by the proposer: the timestamp (createdAt/updatedAt, expiry
checks), absolute ``expires_at`` (ttlMs already resolved) and the value as its
canonical JSON text (storage never parses values).

Encoding (msgpack, ``use_bin_type=True``), positional and tagged to stay small
on the hot path::

    command  = [FORMAT, origin, request_id, timestamp_ms, op]
    op       = [SET, key, value_json(bin), if_version|nil, expires_at|nil]
             | [DELETE, key, if_version|nil]
             | [CHECK, key, version]
             | [DELETE_PREFIX, prefix]
             | [BATCH, [op, ...]]          ops: SET, DELETE or CHECK only, at least one
             | [EXPIRE, key, version, expires_at]

Log entries live forever (snapshots aside), so ``FORMAT`` is bumped rather
than the meaning of a field ever changed. Anything that does not decode to a
well-typed command with valid keys raises :class:`RemoteProtocolError`.
Each layout is a ``concordance.protocol.codec`` record (see the bottom of this module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgpack  # type: ignore[import-untyped]

from concordance.errors import InvalidKey, RemoteProtocolError
from concordance.protocol import codec
from concordance.protocol.kv_keys import validate_key, validate_prefix

__all__ = [
    "FORMAT",
    "Batch",
    "BatchOp",
    "Check",
    "Command",
    "Delete",
    "DeletePrefix",
    "Expire",
    "Op",
    "Set",
    "peek_request",
]

FORMAT: Final = 1

_SET, _DELETE, _CHECK, _DELETE_PREFIX, _BATCH, _EXPIRE = range(6)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True, slots=True)
class Set:
    """Write ``key``; ``if_version``: CAS (0 = absent only); ``expires_at`` None clears expiry."""

    key: str
    value_json: bytes
    if_version: int | None = None
    expires_at: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete ``key`` (a tombstone keeps its version); ``if_version`` is CAS."""

    key: str
    if_version: int | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """A batch guard: ``key`` must be at ``version`` (0 = absent)."""

    key: str
    version: int


@dataclass(frozen=True, slots=True)
class DeletePrefix:
    """Atomically delete every live key under ``prefix``."""

    prefix: str


@dataclass(frozen=True, slots=True)
class Batch:
    """Atomic ops sharing one revision; nothing applies if any condition fails."""

    ops: tuple[BatchOp, ...]


@dataclass(frozen=True, slots=True)
class Expire:
    """Delete ``key`` as expired, only if it still has this ``version`` and ``expires_at``.

    Proposed by the leader's TTL scan; the condition makes a stale or
    duplicated proposal harmless.
    """

    key: str
    version: int
    expires_at: int


BatchOp: TypeAlias = Set | Delete | Check
Op: TypeAlias = Set | Delete | Check | DeletePrefix | Batch | Expire


@dataclass(frozen=True, slots=True)
class Command:
    """One proposal: ``origin``/``request_id`` let the proposing node match its result."""

    origin: str
    request_id: int
    timestamp_ms: int
    op: Op

    def encode(self) -> bytes:
        """The entry data for the Raft log."""
        return _pack(_COMMAND.to_tuple(self))

    @classmethod
    def decode(cls, data: bytes) -> Command:
        """Parse entry data.

        Raises:
            RemoteProtocolError: if ``data`` is not a well-formed command.
        """
        body = _unpack(data)
        if not isinstance(body, list) or len(body) != 5 or body[0] != FORMAT:
            raise RemoteProtocolError("not a command (format or shape)")
        return _COMMAND.from_tuple(body)  # type: ignore[no-any-return]


def peek_request(data: bytes) -> tuple[str, int] | None:
    """``(origin, request_id)`` of entry data whose op may not decode, or None.

    Lets storage address an error result to the proposer of a malformed command.
    """
    try:
        body = _unpack(data)
    except RemoteProtocolError:
        return None
    if isinstance(body, list) and len(body) >= 3:
        origin, request_id = body[1], body[2]
        if isinstance(origin, str) and type(request_id) is int:
            return origin, request_id
    return None


def _unpack(data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RemoteProtocolError(f"command data is {type(data).__name__}, not bytes")
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise RemoteProtocolError(f"command does not decode: {e}") from e


# -- field validators: each returns the value or raises RemoteProtocolError ------------


def _key(raw: Any) -> str:
    try:
        return validate_key(raw)
    except InvalidKey as e:
        raise RemoteProtocolError(f"bad key in command: {e.message}") from e


def _prefix(raw: Any) -> str:
    try:
        return validate_prefix(raw)
    except InvalidKey as e:
        raise RemoteProtocolError(f"bad prefix in command: {e.message}") from e


def _origin(raw: Any) -> str:
    if not isinstance(raw, str):
        raise RemoteProtocolError("command origin is not a string")
    return raw


def _value(raw: Any) -> bytes:
    if not isinstance(raw, bytes):
        raise RemoteProtocolError("set value is not bytes")
    return raw


def _int(raw: Any) -> int:
    # bounded to SQLite's INTEGER: an unstorable number would fail every apply
    if type(raw) is not int or not _INT64_MIN <= raw <= _INT64_MAX:
        raise RemoteProtocolError(f"expected a 64-bit integer, got {raw!r}"[:100])
    return raw


def _uint(raw: Any) -> int:
    if type(raw) is not int or not 0 <= raw <= _INT64_MAX:
        raise RemoteProtocolError(f"expected a non-negative 64-bit integer, got {raw!r}"[:100])
    return raw


def _request_id(raw: Any) -> int:
    if type(raw) is not int or not 0 <= raw < 2**64:  # only echoed back, never stored
        raise RemoteProtocolError(f"expected a request id, got {raw!r}"[:100])
    return raw


def _opt_int(raw: Any) -> int | None:
    return None if raw is None else _int(raw)


def _opt_uint(raw: Any) -> int | None:
    return None if raw is None else _uint(raw)


def _top_op(raw: Any) -> Op:
    return _unpack_op(raw, top=True)


def _batch_ops(raw: Any) -> tuple[BatchOp, ...]:
    if not isinstance(raw, list) or not raw:
        raise RemoteProtocolError("batch ops is not a non-empty array")
    ops: list[BatchOp] = []
    for item in raw:
        op = _unpack_op(item, top=False)
        assert isinstance(op, Set | Delete | Check)  # top=False admits nothing else
        ops.append(op)
    return tuple(ops)


# -- records: the layout of each op and of the command itself --------------------------

# tag -> (record, allowed inside a batch)
_OPS: dict[int, tuple[codec.Record, bool]] = {
    _SET: (codec.record(Set, [_key, _value, _opt_uint, _opt_int], tag=_SET), True),
    _DELETE: (codec.record(Delete, [_key, _opt_uint], tag=_DELETE), True),
    _CHECK: (codec.record(Check, [_key, _uint], tag=_CHECK), True),
    _DELETE_PREFIX: (codec.record(DeletePrefix, [_prefix], tag=_DELETE_PREFIX), False),
    _BATCH: (codec.record(Batch, [_batch_ops], tag=_BATCH), False),
    _EXPIRE: (codec.record(Expire, [_key, _uint, _int], tag=_EXPIRE), False),
}
_OP_CLASSES: dict[type, codec.Record] = {rec.cls: rec for rec, _ in _OPS.values()}
_COMMAND = codec.record(Command, [_origin, _request_id, _int, _top_op], tag=FORMAT)


def _pack_op(op: Any) -> tuple[Any, ...]:
    """msgpack ``default`` hook: an op (also inside a batch) as its tagged array."""
    rec = _OP_CLASSES.get(type(op))
    if rec is None:
        raise TypeError(f"not an op: {op!r}")
    return rec.to_tuple(op)


_pack = codec.packer(default=_pack_op)


def _unpack_op(raw: Any, *, top: bool) -> Op:
    if not isinstance(raw, list) or not raw:
        raise RemoteProtocolError("op is not a non-empty array")
    tag, n = raw[0], len(raw)
    try:
        entry = _OPS.get(tag)
    except TypeError:  # an unhashable tag
        entry = None
    if entry is not None:
        rec, in_batch = entry
        if n == len(rec.names) + 1 and (top or in_batch):
            return rec.from_tuple(raw)  # type: ignore[no-any-return]
    where = "" if top else " inside a batch"
    raise RemoteProtocolError(f"unknown op tag {tag!r} with {n} fields{where}")
