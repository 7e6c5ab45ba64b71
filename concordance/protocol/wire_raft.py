"""Raft messages <-> msgpack frames: the peer half of ``concordance.protocol.wire``.

Kept apart from the IPC envelope because it is a different concern with a
different budget: this is the replication hot path (every AppendEntries goes
through it twice), so frames are positional arrays, not maps. Import it
through ``concordance.protocol.wire``, which re-exports ``encode_raft``,
``decode_raft`` and ``RAFT_TAGS``. The Raft core never sees bytes.

Rules / theory of operation (docs/PROTOCOL.md §3.5):

- A frame is ``[tag, *fields]`` in dataclass field order; nested values
  (Entry, SnapshotMeta, Membership, ConfChange) are arrays too. Tags come
  from the explicit table ``RAFT_TAGS`` and are never renumbered or reused.
- Each message type is a ``concordance.protocol.codec`` record built at import from
  the dataclass type hints (an unsupported field type fails at import, not
  on the wire). Encoding is the record's field tuple packed with a ``default``
  hook for the nested types; decoding is one ``unpackb(use_list=False)`` plus
  one validator per field.
- Trailing fields that have a default may be missing (older senders); extra
  fields are rejected. ``AppendEntries.reply`` is sent only when false.
  Ints must be non-negative ints (bools are not ints here).
- Any decoding failure raises ``RemoteProtocolError`` chained to the cause.
"""

from __future__ import annotations

import typing
from dataclasses import fields
from typing import Any

import msgpack  # type: ignore[import-untyped]

from concordance.errors import IpcError, RemoteProtocolError
from concordance.protocol import codec
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

DECODE_ERRORS = codec.DECODE_ERRORS  # re-exported for wire's users

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

_KINDS = {int(kind): kind for kind in EntryKind}
_OPS = {op.value: op for op in ConfChangeOp}
_make_entry = codec.maker(Entry)
_uint = codec.uint
_str = codec.exact(str)
_bytes = codec.exact(bytes)
_bool = codec.exact(bool)


def _array(v: Any, n: int | None = None) -> tuple[Any, ...]:
    # Frames are unpacked with use_list=False: arrays arrive as tuples.
    if type(v) is tuple and (n is None or len(v) == n):
        return v
    codec.fail("an array" if n is None else f"an array of {n}", v)


def _str_tuple(v: Any) -> tuple[str, ...]:
    for item in _array(v):
        _str(item)
    return typing.cast(tuple[str, ...], v)


def _entries(v: Any) -> tuple[Entry, ...]:
    # One loop, checks inlined: this runs once per replicated entry.
    out: list[Entry] = []
    append = out.append
    for e in _array(v):
        if type(e) is tuple and len(e) == 4:
            term, index, kind, data = e
            if (
                type(term) is int
                and term >= 0
                and type(index) is int
                and index >= 0
                and type(kind) is int
                and type(data) is bytes
            ):
                append(_make_entry(term, index, _KINDS[kind], data))
                continue
        codec.fail("an entry [term, index, kind, data]", e)
    return tuple(out)


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


_CHECKS: dict[Any, codec.Check] = {
    int: _uint,
    str: _str,
    bytes: _bytes,
    bool: _bool,
    tuple[Entry, ...]: _entries,
    tuple[bytes, ...]: codec.array_of(_bytes),
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


def _record(cls: type, tag: int) -> codec.Record:
    hints = typing.get_type_hints(cls)
    checks = []
    for f in fields(cls):
        check = _CHECKS.get(hints[f.name])
        if check is None:
            raise TypeError(f"wire: no Raft codec for {cls.__name__}.{f.name}: {hints[f.name]}")
        checks.append(check)
    return codec.record(cls, checks, tag=tag)


_BY_CLASS: dict[type, codec.Record] = {cls: _record(cls, tag) for cls, tag in RAFT_TAGS.items()}
_BY_TAG: dict[int, codec.Record] = {RAFT_TAGS[cls]: rec for cls, rec in _BY_CLASS.items()}
_pack = codec.packer(default=_pack_nested)
_APPEND = _BY_CLASS[AppendEntries]


def encode_raft(msg: Message) -> bytes:
    """One Raft message as one msgpack frame ``[tag, *fields]``.

    Raises:
        TypeError: ``msg`` is not a registered Raft message (a local bug).
        IpcError: a field holds something msgpack cannot pack.
    """
    rec = _BY_CLASS.get(type(msg))
    if rec is None:
        raise TypeError(f"not a registered Raft message: {type(msg).__name__}")
    frame = rec.to_tuple(msg)
    if rec is _APPEND and frame[-1] is True:
        # ``reply`` at its default is left out: a node from before the field
        # reads every append but the commit notice.
        frame = frame[:-1]
    try:
        return _pack(frame)
    except (TypeError, ValueError, OverflowError) as e:
        raise IpcError(f"cannot encode {type(msg).__name__}: {e}") from e


def decode_raft(data: bytes) -> Message:
    """The Raft message in one frame.

    Raises:
        RemoteProtocolError: undecodable bytes, unknown tag, wrong field count or type.
    """
    try:
        arr = msgpack.unpackb(data, raw=False, use_list=False)
        if type(arr) is not tuple or not arr:
            codec.fail("a non-empty array", arr)
        tag = arr[0]
        rec = _BY_TAG.get(tag) if type(tag) is int else None
        if rec is None:
            raise ValueError(f"unknown Raft message tag {tag!r}")
        if len(arr) == len(rec.names) + 1:
            msg = rec.from_tuple(arr)
        else:  # trailing defaults left out, or a wrong field count
            msg = codec.decode_array(rec, arr[1:])
    except DECODE_ERRORS as e:
        raise RemoteProtocolError(f"bad Raft frame: {e}") from e
    return typing.cast(Message, msg)
