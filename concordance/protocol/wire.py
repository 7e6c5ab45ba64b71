"""IPC envelope and message bodies between a node's roles, and the one door to all wire formats.

docs/PROTOCOL.md is the contract; this module (with ``wire_raft`` for peer
frames, re-exported here) is the only place that turns it into bytes, so the
roles only ever handle typed values and ``ipc.py`` only moves bytes. No
sockets here.

Rules / theory of operation:

- An envelope (PROTOCOL.md §2) is a msgpack map ``{v, t, id, re?, dl?, b}``;
  the body ``b`` is a map of the body dataclass's fields by name (clear on
  the wire and cheap enough off the replication hot path).
- Body classes are frozen dataclasses registered by type name in
  ``IPC_TYPES``; ``REPLIES``, ``ONE_WAY`` and ``TOPICS`` say how each type is
  used. Validators are built once at import from the type hints into
  ``concordance.protocol.codec`` records, so adding a field is adding an annotated
  attribute; an unsupported annotation fails at import.
- Decoding is strict: unknown keys or fields, missing required fields and
  wrong types raise ``RemoteProtocolError`` chained to the cause. Encoding a
  body under the wrong type name is a local bug (``TypeError``); a value
  msgpack cannot pack raises ``IpcError``.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import msgpack  # type: ignore[import-untyped]

from concordance.errors import ConcordanceError, IpcError, RemoteProtocolError
from concordance.protocol import codec, payloads
from concordance.protocol.wire_raft import (
    RAFT_TAGS as RAFT_TAGS,  # re-exported: wire is the one door
)
from concordance.protocol.wire_raft import decode_raft as decode_raft
from concordance.protocol.wire_raft import encode_raft as encode_raft

PROTOCOL_VERSION = 1

# --------------------------------------------------------------------------
# IPC bodies (PROTOCOL.md §3)
# --------------------------------------------------------------------------


class Body:
    """Base of every IPC message body, so annotations can say "any body"."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Ok(Body):
    """Generic success reply with nothing to say."""


@dataclass(frozen=True, slots=True)
class ErrorReply(Body):
    """A ConcordanceError crossing processes (rebuilt by ``ConcordanceError.from_dict``)."""

    code: str
    message: str
    extra: dict[str, Any]

    @classmethod
    def from_exception(cls, exc: ConcordanceError) -> ErrorReply:
        return cls(exc.code, exc.message, dict(exc.extra))

    def to_exception(self) -> ConcordanceError:
        # "code" and "message" inside extra lose to the reply's own.
        return ConcordanceError.from_dict(
            {**self.extra, "code": self.code, "message": self.message}
        )


# -- to consensus ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Propose(Body):
    """Append opaque FSM commands to the log (front, or storage for TTL expiry)."""

    commands: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Proposed(Body):
    """``index`` of the last appended command, or 0 with ``forwarded`` when sent to the leader."""

    index: int
    forwarded: bool = False


@dataclass(frozen=True, slots=True)
class ConfChange(Body):
    """Single-server membership change; ``op`` is a ``ConfChangeOp`` value."""

    op: str
    node_id: str
    address: str = ""


@dataclass(frozen=True, slots=True)
class ReadIndex(Body):
    """Ask for a linearizable read index (thesis §6.4)."""


@dataclass(frozen=True, slots=True)
class ReadIndexOk(Body):
    index: int


@dataclass(frozen=True, slots=True)
class Status(Body):
    """Ask consensus for the node's Raft view."""


@dataclass(frozen=True, slots=True)
class MemberStatus(Body):
    """One member in ``StatusOk.members`` (nested, not a message type of its own)."""

    node_id: str
    address: str
    voter: bool
    match: int


@dataclass(frozen=True, slots=True)
class PeerStatus(Body):
    """One outgoing peer link in ``PeerLinksOk.peers`` (nested)."""

    peer: str
    connected: bool
    queued_bytes: int
    dropped_full: int
    dropped_stale: int


@dataclass(frozen=True, slots=True)
class StatusOk(Body):
    node_id: str
    role: str
    term: int
    leader_id: str | None
    commit: int
    applied: int
    members: tuple[MemberStatus, ...]
    leader_changes: int = 0  # times this process saw the leader change to a new node
    fsync_counts: tuple[int, ...] = ()  # Ready fsyncs per latency.BUCKETS (+ overflow)
    fsync_total_us: int = 0


@dataclass(frozen=True, slots=True)
class PeerLinks(Body):
    """Ask consensus for its peer links' counters (``/metrics``)."""


@dataclass(frozen=True, slots=True)
class PeerLinksOk(Body):
    peers: tuple[PeerStatus, ...]  # outgoing links, by peer id
    unroutable: int  # frames dropped: no address and no incoming connection of that peer
    refused: int  # incoming connections refused (TLS, hello, cluster key)


@dataclass(frozen=True, slots=True)
class Transfer(Body):
    """Leadership transfer; empty ``to`` lets the leader pick."""

    to: str = ""


@dataclass(frozen=True, slots=True)
class SnapshotNow(Body):
    """Take a snapshot at the applied index and compact the log."""


@dataclass(frozen=True, slots=True)
class SnapshotNowOk(Body):
    index: int
    term: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Dropped(Body):
    """Forwarded proposals the receiver refused: certainly not appended (consensus -> front)."""

    commands: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Stopping(Body):
    """A role's planned stop has begun (consensus or storage -> front): the front holds
    new requests to it until its successor connects, so none is lost in the close."""

    role: str


@dataclass(frozen=True, slots=True)
class FrontHello(Body):
    """A front is here (to consensus and storage, at connection and every 0.2 s): how
    a role learns which fronts to push to (PROTOCOL.md §1, ``concordance.ipc.fronts``)."""

    incarnation: int


@dataclass(frozen=True, slots=True)
class FrontWatching(Body):
    """Whether this front has a watch subscription or long-poll, so needs change
    batches (front -> storage, with every ``front_hello`` and at once on a change)."""

    watching: bool


@dataclass(frozen=True, slots=True)
class StoppingAck(Body):
    """A front's answer to consensus's ``stopping``: the last message it sends that
    process, so everything it sent before has arrived (ZeroMQ keeps order)."""

    incarnation: int


@dataclass(frozen=True, slots=True)
class Hello(Body):
    """Storage liveness and position: at start and every second. ``incarnation`` names the
    storage process (0: not said); a new one lost what its predecessor had in flight."""

    applied_index: int
    applied_term: int
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class Applied(Body):
    """Storage applied everything up to ``index``."""

    index: int


@dataclass(frozen=True, slots=True)
class Durable(Body):
    """Every entry up to ``index`` is fsynced in state.db: the answer to ``checkpoint``."""

    index: int


@dataclass(frozen=True, slots=True)
class SnapshotTaken(Body):
    """Storage wrote a snapshot covering ``index``/``term`` at ``path``."""

    index: int
    term: int
    path: str


# -- consensus -> storage ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Apply(Body):
    """Committed entries ``(index, term, kind, data)`` in index order."""

    entries: tuple[tuple[int, int, int, bytes], ...]


@dataclass(frozen=True, slots=True)
class Restore(Body):
    """Replace the state with the snapshot file at ``path``."""

    path: str
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class TakeSnapshot(Body):
    """Write a snapshot and answer with ``snapshot_taken``."""


@dataclass(frozen=True, slots=True)
class Checkpoint(Body):
    """Make what is applied durable (a WAL checkpoint) and answer with ``durable``."""


@dataclass(frozen=True, slots=True)
class Leadership(Body):
    """Whether this node leads at ``term``: pushed on a change and in answer to ``hello``."""

    leading: bool
    term: int


# -- to storage --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Get(Body):
    """Read one key; ``now`` (epoch ms) hides expired entries. With ``min_index``,
    answer only once that index is applied (a consistent read in one round trip)."""

    key: str
    now: int
    min_index: int = 0


@dataclass(frozen=True, slots=True)
class GetOk(Body):
    entry: payloads.Entry | None


@dataclass(frozen=True, slots=True)
class GetMany(Body):
    """Read several keys at once (the single-key reads of one loop turn of the front),
    as ``Get`` does each, at one ``now`` and ``min_index``."""

    keys: tuple[str, ...]
    now: int
    min_index: int = 0


@dataclass(frozen=True, slots=True)
class GetManyOk(Body):
    entries: tuple[payloads.Entry | None, ...]  # one per key, in order


@dataclass(frozen=True, slots=True)
class List(Body):
    """List keys under ``prefix`` in key order."""

    prefix: str
    limit: int
    cursor: str | None
    now: int
    min_index: int = 0  # as for Get


@dataclass(frozen=True, slots=True)
class ListOk(Body):
    entries: tuple[payloads.Entry, ...]
    next: str | None
    revision: int


@dataclass(frozen=True, slots=True)
class Changes(Body):
    """Change events under ``prefix`` with revision > ``since``."""

    prefix: str
    since: int
    limit: int


@dataclass(frozen=True, slots=True)
class ChangesOk(Body):
    changes: tuple[payloads.Change, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class WaitApplied(Body):
    """Answer once storage has applied ``index``."""

    index: int


@dataclass(frozen=True, slots=True)
class WaitAppliedOk(Body):
    applied: int


@dataclass(frozen=True, slots=True)
class Backup(Body):
    """Write the whole state as a SQLite file at ``path``."""

    path: str


@dataclass(frozen=True, slots=True)
class BackupOk(Body):
    path: str
    bytes: int
    index: int


@dataclass(frozen=True, slots=True)
class StorageStatus(Body):
    """Ask storage for its position."""


@dataclass(frozen=True, slots=True)
class StorageStatusOk(Body):
    applied_index: int
    applied_term: int
    revision: int
    apply_counts: tuple[int, ...] = ()  # applied batches per latency.BUCKETS (+ overflow)
    apply_total_us: int = 0


# -- events (PUB) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChangeBatch(Body):
    """Applied change events (API.md §3.2) of one batch, topic ``c``."""

    events: tuple[payloads.Change, ...]
    revision: int


@dataclass(frozen=True, slots=True)
class Results(Body):
    """Write outcomes for ``origin``'s front, topic ``r``; ``applied``: storage's applied
    index when it published them (the front's local reads wait for it, PROTOCOL.md)."""

    origin: str
    items: tuple[payloads.Outcome, ...]
    applied: int = 0


IPC_TYPES: dict[str, type[Body]] = {
    "ok": Ok,
    "error": ErrorReply,
    "propose": Propose,
    "proposed": Proposed,
    "conf_change": ConfChange,
    "read_index": ReadIndex,
    "read_index_ok": ReadIndexOk,
    "status": Status,
    "status_ok": StatusOk,
    "peer_links": PeerLinks,
    "peer_links_ok": PeerLinksOk,
    "transfer": Transfer,
    "snapshot_now": SnapshotNow,
    "snapshot_now_ok": SnapshotNowOk,
    "dropped": Dropped,
    "stopping": Stopping,
    "front_hello": FrontHello,
    "front_watching": FrontWatching,
    "stopping_ack": StoppingAck,
    "hello": Hello,
    "applied": Applied,
    "durable": Durable,
    "snapshot_taken": SnapshotTaken,
    "apply": Apply,
    "restore": Restore,
    "take_snapshot": TakeSnapshot,
    "checkpoint": Checkpoint,
    "leadership": Leadership,
    "get": Get,
    "get_ok": GetOk,
    "get_many": GetMany,
    "get_many_ok": GetManyOk,
    "list": List,
    "list_ok": ListOk,
    "changes": Changes,
    "changes_ok": ChangesOk,
    "wait_applied": WaitApplied,
    "wait_applied_ok": WaitAppliedOk,
    "backup": Backup,
    "backup_ok": BackupOk,
    "storage_status": StorageStatus,
    "storage_status_ok": StorageStatusOk,
    "change_batch": ChangeBatch,
    "results": Results,
}
TYPE_NAMES: dict[type[Body], str] = {cls: name for name, cls in IPC_TYPES.items()}

# Request type -> its reply type (``error`` is always possible too).
REPLIES: dict[str, str] = {
    "propose": "proposed",
    "conf_change": "proposed",
    "read_index": "read_index_ok",
    "status": "status_ok",
    "peer_links": "peer_links_ok",
    "transfer": "ok",
    "snapshot_now": "snapshot_now_ok",
    "get": "get_ok",
    "get_many": "get_many_ok",
    "list": "list_ok",
    "changes": "changes_ok",
    "wait_applied": "wait_applied_ok",
    "backup": "backup_ok",
    "storage_status": "storage_status_ok",
}
ONE_WAY: frozenset[str] = frozenset(
    {
        "dropped",
        "stopping",
        "front_hello",
        "front_watching",
        "stopping_ack",
        "hello",
        "applied",
        "durable",
        "snapshot_taken",
        "apply",
        "restore",
        "take_snapshot",
        "checkpoint",
        "leadership",
    }
)
TOPICS: dict[str, bytes] = {"change_batch": b"c", "results": b"r"}


def type_name(body: Body) -> str:
    """The registered type name of a body."""
    try:
        return TYPE_NAMES[type(body)]
    except KeyError:
        raise TypeError(f"not a registered IPC body: {type(body).__name__}") from None


# -- body codec, built from the type hints ------------------------------------

_SCALARS: dict[Any, codec.Check] = {t: codec.exact(t) for t in (int, str, bytes, bool)}
_SCALARS[Any] = codec.any_value
_int = _SCALARS[int]


def _check(hint: Any) -> codec.Check:
    """The validator (decoded value -> field value) for one field type."""
    if hint in _SCALARS:
        return _SCALARS[hint]
    if isinstance(hint, type) and issubclass(hint, Body):
        rec = _record(hint)  # nested: encoded by _pack's default hook
        return lambda v: codec.decode_map(rec, v)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in payloads.TAGS or (
        origin is types.UnionType and all(a in payloads.TAGS or a is type(None) for a in args)
    ):
        return _tagged(args or (hint,))
    if origin is types.UnionType and len(args) == 2 and type(None) in args:
        return codec.optional(_check(next(a for a in args if a is not type(None))))
    if origin is dict and args == (str, Any):
        return codec.str_map
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return codec.array_of(_check(args[0]))
    if origin is tuple and Ellipsis not in args:
        if any(isinstance(a, type) and issubclass(a, Body) for a in args):
            raise TypeError(f"wire: nested bodies inside a fixed tuple are not supported: {hint}")
        return codec.fixed_array([_check(a) for a in args])
    raise TypeError(f"wire: unsupported IPC field type {hint!r}")


_RECORDS: dict[type, codec.Record] = {}
# payload class -> (its record, array length with the tag); packed by _nested as arrays
_TAGGED: dict[type, tuple[codec.Record, int]] = {}


def _tagged(classes: tuple[Any, ...]) -> codec.Check:
    """The validator of a field holding one of ``classes`` (payload records, maybe
    None), each a tagged array ``[tag, *fields]`` (PROTOCOL.md §3.7)."""
    nullable = type(None) in classes
    by_tag: dict[int, tuple[codec.Record, int]] = {}
    for cls in classes:
        if cls is not type(None):
            by_tag[payloads.TAGS[cls]] = _tagged_record(cls)
    what = " | ".join(c.__name__ for c in classes)
    if len(by_tag) == 1:  # one kind (maybe None): compare the tag, no lookup
        [(tag, (rec, size))] = by_tag.items()
        from_tuple = rec.from_tuple

        def check_one(v: Any) -> Any:
            if type(v) is list and len(v) == size and v[0] == tag and type(v[0]) is int:
                return from_tuple(v)
            if v is None and nullable:
                return None
            if type(v) is tuple and len(v) == size and v[0] == tag and type(v[0]) is int:
                return from_tuple(v)
            codec.fail(f"a tagged {what}", v)

        return check_one

    def check(v: Any) -> Any:
        if v is None and nullable:
            return None
        if (type(v) is list or type(v) is tuple) and v and type(v[0]) is int:
            found = by_tag.get(v[0])
            if found is not None and len(v) == found[1]:
                return found[0].from_tuple(v)
        codec.fail(f"a tagged {what}", v)

    return check


def _tagged_record(cls: type) -> tuple[codec.Record, int]:
    got = _TAGGED.get(cls)
    if got is None:
        hints = typing.get_type_hints(cls)
        checks = [_check(hints[f.name]) for f in fields(cls)]
        rec = codec.record(cls, checks, tag=payloads.TAGS[cls])
        got = _TAGGED[cls] = (rec, len(checks) + 1)
    return got


def _record(cls: type) -> codec.Record:
    rec = _RECORDS.get(cls)
    if rec is None:
        hints = typing.get_type_hints(cls)
        checks = [_check(hints[f.name]) for f in fields(cls)]
        rec = _RECORDS[cls] = codec.record(cls, checks)
    return rec


def _nested(obj: Any) -> Any:
    """msgpack ``default`` hook: a payload record as a tagged array, a body nested in a
    body as a map."""
    tagged = _TAGGED.get(type(obj))
    if tagged is not None:
        return tagged[0].to_tuple(obj)
    rec = _RECORDS.get(type(obj))
    if rec is None:
        raise TypeError(f"cannot pack {type(obj).__name__}")
    return rec.to_map(obj)


_pack = codec.packer(default=_nested)
_TYPE_RECORDS: dict[str, codec.Record] = {name: _record(cls) for name, cls in IPC_TYPES.items()}


# -- envelope ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Envelope:
    """One IPC message: ``type`` names ``body``'s class; ``reply_to`` is set on replies,
    ``deadline_ms`` (epoch ms) on requests."""

    type: str
    id: int
    body: Body
    reply_to: int | None = None
    deadline_ms: int | None = None

    KEYS: ClassVar[frozenset[str]] = frozenset({"v", "t", "id", "re", "dl", "b"})


_make_envelope = codec.maker(Envelope)


def encode_envelope(env: Envelope) -> bytes:
    """The msgpack payload frame of an envelope (PROTOCOL.md §2)."""
    rec = _TYPE_RECORDS.get(env.type)
    if rec is None or type(env.body) is not rec.cls:
        raise TypeError(f"body {type(env.body).__name__} does not match IPC type {env.type!r}")
    # Key order is part of the bytes: v, t, id, re?, dl?, b.
    out: dict[str, Any] = {"v": PROTOCOL_VERSION, "t": env.type, "id": env.id}
    if env.reply_to is not None:
        out["re"] = env.reply_to
    if env.deadline_ms is not None:
        out["dl"] = env.deadline_ms
    out["b"] = rec.to_map(env.body)
    try:
        return _pack(out)
    except (TypeError, ValueError, OverflowError) as e:
        raise IpcError(f"cannot encode {env.type!r}: {e}") from e


def decode_envelope(data: bytes) -> Envelope:
    """The envelope in one payload frame.

    Raises:
        RemoteProtocolError: undecodable bytes, wrong version, unknown type or bad body.
    """
    try:
        m = msgpack.unpackb(data, raw=False)
        if type(m) is not dict:
            codec.fail("an envelope map", m)
        if not m.keys() <= Envelope.KEYS:
            raise ValueError(
                f"unknown envelope key(s) {sorted(map(str, m.keys() - Envelope.KEYS))}"
            )
        if m.get("v") != PROTOCOL_VERSION or type(m.get("v")) is not int:
            raise ValueError(f"unsupported protocol version {m.get('v')!r}")
        name = m.get("t")
        rec = _TYPE_RECORDS.get(name) if type(name) is str else None
        if rec is None or type(name) is not str:
            raise ValueError(f"unknown message type {name!r}")
        reply_to, deadline = m.get("re"), m.get("dl")
        env: Envelope = _make_envelope(
            name,
            _int(m.get("id")),
            codec.decode_map(rec, m.get("b")),
            None if reply_to is None else _int(reply_to),
            None if deadline is None else _int(deadline),
        )
    except codec.DECODE_ERRORS as e:
        raise RemoteProtocolError(f"bad IPC message: {e}") from e
    return env
