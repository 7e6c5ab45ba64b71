"""Raft messages <-> msgpack frames: the peer half of ``concordance.wire``.

Kept apart from the IPC envelope because it is a different concern with a
different budget: this is the replication hot path (every AppendEntries goes
through it twice), so frames are positional arrays, not maps. Import it
through ``concordance.wire``, which re-exports ``encode_raft``,
``decode_raft`` and ``RAFT_TAGS``. The Raft core never sees bytes.

Rules / theory of operation (docs/PROTOCOL.md §3.5):

- A frame is ``[tag, *fields]`` in dataclass field order; nested values
  (Entry, SnapshotMeta, Membership, ConfChange) are arrays too. Tags come
  from the explicit table ``RAFT_TAGS`` and are never renumbered or reused.
- Encoding is one ``attrgetter`` plus ``packb`` with a ``default`` hook for
  the nested types. Decoding is one ``unpackb(use_list=False)`` plus one
  validator per field, chosen once at import from the dataclass type hints;
  an unsupported field type fails at import, not on the wire.
- Trailing fields that have a default may be missing (older senders); extra
  fields are rejected. Ints must be non-negative ints (bools are not ints here).
- Any decoding failure raises ``RemoteProtocolError`` chained to the cause.
"""

from __future__ import annotations

import operator
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, fields
from typing import Any, NoReturn

import msgpack  # type: ignore[import-untyped]

from concordance.errors import IpcError, RemoteProtocolError
from concordance.raft.entries import (
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    Membership,
    SnapshotMeta,
)
from concordance.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    Propose,
    ProposeConfChange,
    ProposeRefused,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
    TransferLeader,
)

__all__ = ["DECODE_ERRORS", "RAFT_TAGS", "decode_raft", "encode_raft"]

# Everything decoding hostile bytes may raise; msgpack's own errors are
# ValueError subclasses or UnpackException.
DECODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OverflowError,
    msgpack.UnpackException,
)

# Part of the wire format: never renumber or reuse a tag.
RAFT_TAGS: dict[type, int] = {
    RequestVote: 1,
    RequestVoteResponse: 2,
    AppendEntries: 3,
    AppendEntriesResponse: 4,
    Heartbeat: 5,
    HeartbeatResponse: 6,
    InstallSnapshot: 7,
    InstallSnapshotResponse: 8,
    TimeoutNow: 9,
    Propose: 10,
    ProposeConfChange: 11,
    TransferLeader: 12,
    ReadIndexRequest: 13,
    ReadIndexResponse: 14,
    ProposeRefused: 15,
}

_Check = Callable[[Any], Any]
_KINDS = {int(kind): kind for kind in EntryKind}
_OPS = {op.value: op for op in ConfChangeOp}


def _fail(what: str, value: Any) -> NoReturn:
    raise ValueError(f"expected {what}, got {type(value).__name__} {value!r:.60}")


def _uint(v: Any) -> int:
    if type(v) is int and v >= 0:
        return v
    _fail("a non-negative int", v)


def _str(v: Any) -> str:
    if type(v) is str:
        return v
    _fail("str", v)


def _bytes(v: Any) -> bytes:
    if type(v) is bytes:
        return v
    _fail("bytes", v)


def _bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    _fail("bool", v)


def _array(v: Any, n: int | None = None) -> tuple[Any, ...]:
    # Frames are unpacked with use_list=False: arrays arrive as tuples.
    if type(v) is tuple and (n is None or len(v) == n):
        return v
    _fail("an array" if n is None else f"an array of {n}", v)


def _bytes_tuple(v: Any) -> tuple[bytes, ...]:
    for item in _array(v):
        _bytes(item)
    return typing.cast(tuple[bytes, ...], v)


def _str_tuple(v: Any) -> tuple[str, ...]:
    for item in _array(v):
        _str(item)
    return typing.cast(tuple[str, ...], v)


def _entry(v: Any) -> Entry:
    # Inlined checks: this runs once per replicated entry.
    if type(v) is tuple and len(v) == 4:
        term, index, kind, data = v
        if (
            type(term) is int
            and term >= 0
            and type(index) is int
            and index >= 0
            and type(kind) is int
            and type(data) is bytes
        ):
            return Entry(term, index, _KINDS[kind], data)
    _fail("an entry [term, index, kind, data]", v)


def _entries(v: Any) -> tuple[Entry, ...]:
    return tuple([_entry(e) for e in _array(v)])


def _membership(v: Any) -> Membership:
    voters, learners, addresses = _array(v, 3)
    pairs = tuple((_str(p[0]), _str(p[1])) for p in (_array(a, 2) for a in _array(addresses)))
    return Membership(_str_tuple(voters), _str_tuple(learners), pairs)


def _snapshot_meta(v: Any) -> SnapshotMeta:
    index, term, membership = _array(v, 3)
    return SnapshotMeta(_uint(index), _uint(term), _membership(membership))


def _conf_change(v: Any) -> ConfChange:
    op, node_id, address = _array(v, 3)
    return ConfChange(_OPS[_str(op)], _str(node_id), _str(address))


_CHECKS: dict[Any, _Check] = {
    int: _uint,
    str: _str,
    bytes: _bytes,
    bool: _bool,
    tuple[Entry, ...]: _entries,
    tuple[bytes, ...]: _bytes_tuple,
    SnapshotMeta: _snapshot_meta,
    ConfChange: _conf_change,
}


def _pack_nested(obj: Any) -> Any:
    """msgpack ``default`` hook: the nested value types, as arrays."""
    cls = type(obj)
    if cls is Entry:
        return (obj.term, obj.index, int(obj.kind), obj.data)
    if cls is SnapshotMeta:
        return (obj.index, obj.term, obj.membership)
    if cls is Membership:
        return (obj.voters, obj.learners, obj.addresses)
    if cls is ConfChange:
        return (obj.op.value, obj.node_id, obj.address)
    raise TypeError(f"cannot encode {cls.__name__} in a Raft frame")


@dataclass(frozen=True, slots=True)
class _Spec:
    tag: int
    cls: type
    getter: Callable[[Any], tuple[Any, ...]]
    checks: tuple[_Check, ...]
    min_fields: int


def _spec(cls: type, tag: int) -> _Spec:
    hints = typing.get_type_hints(cls)
    dc_fields = fields(cls)
    checks = []
    for f in dc_fields:
        check = _CHECKS.get(hints[f.name])
        if check is None:
            raise TypeError(f"wire: no Raft codec for {cls.__name__}.{f.name}: {hints[f.name]}")
        checks.append(check)
    required = [f for f in dc_fields if f.default is MISSING and f.default_factory is MISSING]
    getter = operator.attrgetter(*(f.name for f in dc_fields))
    return _Spec(tag, cls, getter, tuple(checks), len(required))


_BY_CLASS: dict[type, _Spec] = {cls: _spec(cls, tag) for cls, tag in RAFT_TAGS.items()}
_BY_TAG: dict[int, _Spec] = {spec.tag: spec for spec in _BY_CLASS.values()}


def encode_raft(msg: Message) -> bytes:
    """One Raft message as one msgpack frame ``[tag, *fields]``.

    Raises:
        TypeError: ``msg`` is not a registered Raft message (a local bug).
        IpcError: a field holds something msgpack cannot pack.
    """
    spec = _BY_CLASS.get(type(msg))
    if spec is None:
        raise TypeError(f"not a registered Raft message: {type(msg).__name__}")
    try:
        frame: bytes = msgpack.packb(
            (spec.tag, *spec.getter(msg)), default=_pack_nested, use_bin_type=True
        )
    except (TypeError, ValueError, OverflowError) as e:
        raise IpcError(f"cannot encode {type(msg).__name__}: {e}") from e
    return frame


def decode_raft(data: bytes) -> Message:
    """The Raft message in one frame.

    Raises:
        RemoteProtocolError: undecodable bytes, unknown tag, wrong field count or type.
    """
    try:
        arr = msgpack.unpackb(data, raw=False, use_list=False)
        if type(arr) is not tuple or not arr:
            _fail("a non-empty array", arr)
        tag = arr[0]
        spec = _BY_TAG.get(tag) if type(tag) is int else None
        if spec is None:
            raise ValueError(f"unknown Raft message tag {tag!r}")
        n = len(arr) - 1
        if not spec.min_fields <= n <= len(spec.checks):
            raise ValueError(f"{spec.cls.__name__} has {n} fields, expected {len(spec.checks)}")
        msg = spec.cls(*[check(v) for check, v in zip(spec.checks, arr[1:], strict=False)])
    except DECODE_ERRORS as e:
        raise RemoteProtocolError(f"bad Raft frame: {e}") from e
    return typing.cast(Message, msg)
