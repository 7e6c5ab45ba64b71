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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import msgpack  # type: ignore[import-untyped]

from concordance.errors import InvalidKey, RemoteProtocolError
from concordance.keys import validate_key, validate_prefix

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
        body = [FORMAT, self.origin, self.request_id, self.timestamp_ms, _pack_op(self.op)]
        return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]

    @classmethod
    def decode(cls, data: bytes) -> Command:
        """Parse entry data.

        Raises:
            RemoteProtocolError: if ``data`` is not a well-formed command.
        """
        body = _unpack(data)
        if not isinstance(body, list) or len(body) != 5 or body[0] != FORMAT:
            raise RemoteProtocolError("not a command (format or shape)")
        _, origin, request_id, timestamp_ms, op = body
        if not isinstance(origin, str):
            raise RemoteProtocolError("command origin is not a string")
        return cls(origin, _request_id(request_id), _int(timestamp_ms), _unpack_op(op, top=True))


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


def _pack_op(op: Op) -> list[Any]:
    if isinstance(op, Set):
        return [_SET, op.key, op.value_json, op.if_version, op.expires_at]
    if isinstance(op, Delete):
        return [_DELETE, op.key, op.if_version]
    if isinstance(op, Check):
        return [_CHECK, op.key, op.version]
    if isinstance(op, DeletePrefix):
        return [_DELETE_PREFIX, op.prefix]
    if isinstance(op, Batch):
        return [_BATCH, [_pack_op(o) for o in op.ops]]
    if isinstance(op, Expire):
        return [_EXPIRE, op.key, op.version, op.expires_at]
    raise TypeError(f"not an op: {op!r}")


def _unpack(data: bytes) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise RemoteProtocolError(f"command data is {type(data).__name__}, not bytes")
    try:
        return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise RemoteProtocolError(f"command does not decode: {e}") from e


def _unpack_op(raw: Any, *, top: bool) -> Op:
    if not isinstance(raw, list) or not raw:
        raise RemoteProtocolError("op is not a non-empty array")
    tag, n = raw[0], len(raw)
    if tag == _SET and n == 5:
        value = raw[2]
        if not isinstance(value, bytes):
            raise RemoteProtocolError("set value is not bytes")
        return Set(_key(raw[1]), value, _opt_uint(raw[3]), _opt_int(raw[4]))
    if tag == _DELETE and n == 3:
        return Delete(_key(raw[1]), _opt_uint(raw[2]))
    if tag == _CHECK and n == 3:
        return Check(_key(raw[1]), _uint(raw[2]))
    if top and tag == _DELETE_PREFIX and n == 2:
        try:
            return DeletePrefix(validate_prefix(raw[1]))
        except InvalidKey as e:
            raise RemoteProtocolError(f"bad prefix in command: {e.message}") from e
    if top and tag == _BATCH and n == 2:
        return Batch(_unpack_batch_ops(raw[1]))
    if top and tag == _EXPIRE and n == 4:
        return Expire(_key(raw[1]), _uint(raw[2]), _int(raw[3]))
    where = "" if top else " inside a batch"
    raise RemoteProtocolError(f"unknown op tag {tag!r} with {n} fields{where}")


def _unpack_batch_ops(raw: Any) -> tuple[BatchOp, ...]:
    if not isinstance(raw, list) or not raw:
        raise RemoteProtocolError("batch ops is not a non-empty array")
    ops: list[BatchOp] = []
    for item in raw:
        op = _unpack_op(item, top=False)
        assert isinstance(op, Set | Delete | Check)  # top=False admits nothing else
        ops.append(op)
    return tuple(ops)


def _key(raw: Any) -> str:
    try:
        return validate_key(raw)
    except InvalidKey as e:
        raise RemoteProtocolError(f"bad key in command: {e.message}") from e


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
