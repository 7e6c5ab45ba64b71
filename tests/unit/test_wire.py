"""Pair tests for concordance.protocol.wire: every Raft and IPC message type round-trips unchanged,
and anything else is a RemoteProtocolError."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

from concordance import errors
from concordance.protocol import payloads, wire
from concordance.raft import messages as rm
from concordance.raft.entries import (
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    Membership,
    SnapshotMeta,
)

MEMBERSHIP = Membership(
    voters=("n1", "n2", "n3"),
    learners=("n4",),
    addresses=(("n1", "127.0.0.1:4100"), ("n4", "10.0.0.4:4100")),
)
ENTRIES = (
    Entry(3, 10, EntryKind.NOOP, b""),
    Entry(3, 11, EntryKind.NORMAL, b"\x00\xffset k v"),
    Entry(4, 12, EntryKind.CONFIG, MEMBERSHIP.encode()),
)

# One example of every Raft message, with non-default values wherever there is one.
RAFT_EXAMPLES: list[Any] = [
    rm.RequestVote(5, "n1", "n2", 12, 4, pre_vote=True, transfer=True),
    rm.RequestVoteResponse(5, "n2", "n1", granted=True, pre_vote=True),
    rm.AppendEntries(4, "n1", "n2", 9, 3, ENTRIES, 11),
    rm.AppendEntries(4, "n1", "n2", 9, 3, (), 11),
    rm.AppendEntriesResponse(4, "n2", "n1", False, 0, 7, 2),
    rm.Heartbeat(4, "n1", "n3", 11, read_seq=99),
    rm.HeartbeatResponse(4, "n3", "n1", read_seq=99),
    rm.InstallSnapshot(4, "n1", "n4", SnapshotMeta(100, 4, MEMBERSHIP), 65536, b"\x01" * 300, True),
    rm.InstallSnapshotResponse(4, "n4", "n1", 100, 65836, done=True),
    rm.TimeoutNow(4, "n1", "n2"),
    rm.Propose(4, "n2", "n1", (b"cmd1", b"", b"\x80cmd3")),
    rm.ProposeConfChange(4, "n2", "n1", ConfChange(ConfChangeOp.ADD_LEARNER, "n5", "h:1")),
    rm.ProposeConfChange(4, "n2", "n1", ConfChange(ConfChangeOp.REMOVE, "n3")),
    rm.TransferLeader(4, "n2", "n1", ""),
    rm.ReadIndexRequest(4, "n2", "n1", b"ctx-1"),
    rm.ReadIndexResponse(4, "n1", "n2", b"ctx-1", 11),
    rm.ProposeRefused(4, "n1", "n2", (b"cmd1", b""), "leadership transfer in progress"),
    rm.AppendEntries(4, "n1", "n2", 9, 3, (), 11, reply=False),
]


def test_raft_registry_covers_every_message_type() -> None:
    assert set(wire.RAFT_TAGS) == set(rm.MESSAGE_TYPES)
    assert len(set(wire.RAFT_TAGS.values())) == len(wire.RAFT_TAGS)


def test_raft_examples_cover_every_message_type() -> None:
    assert {type(m) for m in RAFT_EXAMPLES} == set(rm.MESSAGE_TYPES)


@pytest.mark.parametrize("msg", RAFT_EXAMPLES, ids=lambda m: type(m).__name__)
def test_raft_round_trip(msg: Any) -> None:
    data = wire.encode_raft(msg)
    back = wire.decode_raft(data)
    assert back == msg
    assert type(back) is type(msg)
    for f in dataclasses.fields(msg):
        assert type(getattr(back, f.name)) is type(getattr(msg, f.name)), f.name


def test_raft_frame_is_a_positional_array() -> None:
    msg = rm.TimeoutNow(4, "n1", "n2")
    assert msgpack.unpackb(wire.encode_raft(msg)) == [wire.RAFT_TAGS[rm.TimeoutNow], 4, "n1", "n2"]


def test_propose_refused_is_tag_15_with_the_data_echoed() -> None:
    """PROTOCOL.md §3.5: tags are never reused; ProposeRefused got the next one."""
    msg = rm.ProposeRefused(4, "n1", "n2", (b"a", b"b"), "why")
    assert msgpack.unpackb(wire.encode_raft(msg)) == [15, 4, "n1", "n2", [b"a", b"b"], "why"]


def test_raft_entry_kinds_decode_to_the_enum() -> None:
    back = wire.decode_raft(wire.encode_raft(RAFT_EXAMPLES[2]))
    assert isinstance(back, rm.AppendEntries)
    assert [e.kind for e in back.entries] == [EntryKind.NOOP, EntryKind.NORMAL, EntryKind.CONFIG]
    assert all(type(e.kind) is EntryKind for e in back.entries)


def test_raft_missing_trailing_defaults_are_filled_in() -> None:
    tag = wire.RAFT_TAGS[rm.RequestVote]
    old_sender = msgpack.packb([tag, 5, "n1", "n2", 12, 4])
    assert wire.decode_raft(old_sender) == rm.RequestVote(5, "n1", "n2", 12, 4)


def test_append_reply_is_sent_only_when_false() -> None:
    """PROTOCOL.md §3.5: an append that asks for an answer is the frame of a node
    from before ``reply``, so such a node still reads it; a commit notice is not."""
    tag = wire.RAFT_TAGS[rm.AppendEntries]
    asks = rm.AppendEntries(4, "n1", "n2", 9, 3, (), 11)
    assert msgpack.unpackb(wire.encode_raft(asks)) == [tag, 4, "n1", "n2", 9, 3, [], 11]
    notice = rm.AppendEntries(4, "n1", "n2", 9, 3, (), 11, reply=False)
    assert msgpack.unpackb(wire.encode_raft(notice)) == [tag, 4, "n1", "n2", 9, 3, [], 11, False]


def test_encode_raft_rejects_unregistered_types() -> None:
    with pytest.raises(TypeError):
        wire.encode_raft(Entry(1, 1))  # type: ignore[arg-type]


def _frame(*items: Any) -> bytes:
    return msgpack.packb(list(items))  # type: ignore[no-any-return]


AE = wire.RAFT_TAGS[rm.AppendEntries]
RV = wire.RAFT_TAGS[rm.RequestVote]
IS = wire.RAFT_TAGS[rm.InstallSnapshot]
PCC = wire.RAFT_TAGS[rm.ProposeConfChange]
MEMBERS = [["n1"], [], [["n1", "a:1"]]]
RAFT_GARBAGE = {
    "empty": b"",
    "reserved byte": b"\xc1",
    "truncated": wire.encode_raft(RAFT_EXAMPLES[2])[:-3],
    "trailing bytes": wire.encode_raft(RAFT_EXAMPLES[0]) + b"\x00",
    "not an array": msgpack.packb({"t": 1}),
    "empty array": _frame(),
    "unknown tag": _frame(999, 1, "a", "b"),
    "bool tag": _frame(True, 5, "n1", "n2", 12, 4),
    "str tag": _frame("1", 5, "n1", "n2", 12, 4),
    "too few fields": _frame(RV, 5, "n1", "n2", 12),
    "too many fields": _frame(RV, 5, "n1", "n2", 12, 4, False, False, 1),
    "negative term": _frame(RV, -1, "n1", "n2", 12, 4),
    "bool as int": _frame(RV, True, "n1", "n2", 12, 4),
    "float as int": _frame(RV, 5.0, "n1", "n2", 12, 4),
    "int as bool": _frame(RV, 5, "n1", "n2", 12, 4, 1),
    "bytes as str": _frame(RV, 5, b"n1", "n2", 12, 4),
    "entry kind unknown": _frame(AE, 4, "n1", "n2", 9, 3, [[3, 10, 7, b""]], 11),
    "entry too short": _frame(AE, 4, "n1", "n2", 9, 3, [[3, 10, 0]], 11),
    "entry data str": _frame(AE, 4, "n1", "n2", 9, 3, [[3, 10, 0, "x"]], 11),
    "entries not array": _frame(AE, 4, "n1", "n2", 9, 3, b"", 11),
    "meta bad membership": _frame(IS, 4, "n1", "n4", [100, 4, [["n1"], []]], 0, b"", True),
    "meta bad address pair": _frame(
        IS, 4, "n1", "n4", [100, 4, [["n1"], [], [["n1"]]]], 0, b"", True
    ),
    "conf change unknown op": _frame(PCC, 4, "n2", "n1", ["promote", "n5", ""]),
    "ext type": msgpack.packb([RV, msgpack.ExtType(5, b"x"), "n1", "n2", 12, 4]),
    "membership ok but done int": _frame(IS, 4, "n1", "n4", [100, 4, MEMBERS], 0, b"", 1),
}


@pytest.mark.parametrize("data", RAFT_GARBAGE.values(), ids=RAFT_GARBAGE.keys())
def test_raft_garbage_is_a_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(errors.RemoteProtocolError) as info:
        wire.decode_raft(data)
    assert info.value.__cause__ is not None


# --------------------------------------------------------------------------- IPC


ENTRY = payloads.Entry("tenant:acme/a", b'{"x":[1,2.5,null]}', 2, 41, 1, 2, None)

IPC_EXAMPLES: dict[str, wire.Body] = {
    "ok": wire.Ok(),
    "error": wire.ErrorReply("version_conflict", "version mismatch", {"current": None, "index": 2}),
    "propose": wire.Propose((b"cmd-1", b"\x00\xff")),
    "proposed": wire.Proposed(0, forwarded=True),
    "conf_change": wire.ConfChange("add_voter", "n4", "10.0.0.4:4100"),
    "read_index": wire.ReadIndex(),
    "read_index_ok": wire.ReadIndexOk(120),
    "status": wire.Status(),
    "peer_links": wire.PeerLinks(),
    "peer_links_ok": wire.PeerLinksOk((wire.PeerStatus("n2", True, 7, 1, 2),), 3, 4),
    "status_ok": wire.StatusOk(
        "n1",
        "leader",
        7,
        "n1",
        120,
        119,
        (
            wire.MemberStatus("n1", "127.0.0.1:4100", True, 120),
            wire.MemberStatus("n4", "127.0.0.1:4103", False, 80),
        ),
    ),
    "transfer": wire.Transfer("n2"),
    "snapshot_now": wire.SnapshotNow(),
    "snapshot_now_ok": wire.SnapshotNowOk(100, 4, 1 << 20),
    "dropped": wire.Dropped((b"cmd-1", b"\x00\xff")),
    "stopping": wire.Stopping("storage"),
    "front_watching": wire.FrontWatching(False),
    "hello": wire.Hello(119, 7),
    "applied": wire.Applied(120),
    "durable": wire.Durable(100),
    "snapshot_taken": wire.SnapshotTaken(100, 4, "/data/n1/snap/100-4.db"),
    "apply": wire.Apply(((11, 3, 0, b"set"), (12, 4, 2, b'{"v":[]}'))),
    "restore": wire.Restore("/data/n1/snap/100-4.db", 100, 4),
    "take_snapshot": wire.TakeSnapshot(),
    "checkpoint": wire.Checkpoint(),
    "leadership": wire.Leadership(True, 7),
    "front_hello": wire.FrontHello(3),
    "stopping_ack": wire.StoppingAck(3),
    "get": wire.Get("tenant:acme/a", 1764230400000),
    "get_ok": wire.GetOk(ENTRY),
    "get_many": wire.GetMany(("tenant:acme/a", "tenant:acme/b"), 1764230400000, 7),
    "get_many_ok": wire.GetManyOk((ENTRY, None)),
    "list": wire.List("tenant:acme/", 100, None, 1764230400000),
    "list_ok": wire.ListOk((ENTRY, payloads.Entry("tenant:acme/b", b"1", 1, 2, 3, 4, 5)), "b", 42),
    "changes": wire.Changes("tenant:acme/", 40, 1000),
    "changes_ok": wire.ChangesOk((payloads.Change("delete", "tenant:acme/a", None, 2, 41, 9),), 42),
    "wait_applied": wire.WaitApplied(120),
    "wait_applied_ok": wire.WaitAppliedOk(121),
    "backup": wire.Backup("/tmp/backup.db"),
    "backup_ok": wire.BackupOk("/tmp/backup.db", 8192, 120),
    "storage_status": wire.StorageStatus(),
    "storage_status_ok": wire.StorageStatusOk(120, 7, 98),
    "change_batch": wire.ChangeBatch((payloads.Change("set", "k", b'"dark"', 3, 43, 9),), 43),
    "results": wire.Results(
        "n1",
        (
            payloads.Outcome(17, ENTRY),
            payloads.Outcome(18, payloads.Rejected("not_found", "k does not exist", None, 1)),
            payloads.Outcome(19, payloads.Rejected("version_conflict", "at 2", ENTRY)),
            payloads.Outcome(20, payloads.Deleted("k", 2, 44)),
            payloads.Outcome(21, payloads.Expired("k", 2, 45)),
            payloads.Outcome(22, payloads.PrefixDeleted(3, 46)),
            payloads.Outcome(
                23, payloads.BatchDone((ENTRY, None, payloads.Deleted("k", 2, 47)), 47)
            ),
            payloads.Outcome(24, None),
        ),
    ),
}


def _body_classes() -> set[type]:
    return {
        obj
        for obj in vars(wire).values()
        if isinstance(obj, type) and issubclass(obj, wire.Body) and obj is not wire.Body
    }


def test_ipc_registry_covers_every_body_class() -> None:
    nested_only = {wire.MemberStatus, wire.PeerStatus}
    assert set(wire.IPC_TYPES.values()) == _body_classes() - nested_only
    assert all(dataclasses.is_dataclass(cls) for cls in _body_classes())


def test_ipc_examples_cover_every_type() -> None:
    assert set(IPC_EXAMPLES) == set(wire.IPC_TYPES)
    assert all(type(body) is wire.IPC_TYPES[name] for name, body in IPC_EXAMPLES.items())


def test_ipc_usage_tables_name_registered_types() -> None:
    used = set(wire.REPLIES) | set(wire.REPLIES.values()) | wire.ONE_WAY | set(wire.TOPICS)
    assert used | {"error"} == set(wire.IPC_TYPES)
    assert not set(wire.REPLIES) & wire.ONE_WAY


@pytest.mark.parametrize("name", IPC_EXAMPLES)
@pytest.mark.parametrize("reply_to,deadline", [(None, None), (7, None), (None, 1764230400123)])
def test_ipc_round_trip(name: str, reply_to: int | None, deadline: int | None) -> None:
    env = wire.Envelope(name, 2**62 + 5, IPC_EXAMPLES[name], reply_to, deadline)
    back = wire.decode_envelope(wire.encode_envelope(env))
    assert back == env
    assert type(back.body) is type(env.body)


def test_envelope_layout() -> None:
    env = wire.Envelope("applied", 9, wire.Applied(3), reply_to=8, deadline_ms=100)
    assert msgpack.unpackb(wire.encode_envelope(env)) == {
        "v": 1,
        "t": "applied",
        "id": 9,
        "re": 8,
        "dl": 100,
        "b": {"index": 3},
    }


def test_fields_with_defaults_may_be_omitted() -> None:
    data = msgpack.packb({"v": 1, "t": "proposed", "id": 1, "b": {"index": 5}})
    assert wire.decode_envelope(data).body == wire.Proposed(5, forwarded=False)


def test_encode_envelope_rejects_a_body_under_the_wrong_type() -> None:
    with pytest.raises(TypeError):
        wire.encode_envelope(wire.Envelope("get", 1, wire.Applied(3)))
    with pytest.raises(TypeError):
        wire.encode_envelope(wire.Envelope("nope", 1, wire.Ok()))


def test_encode_envelope_unpackable_value_is_an_ipc_error() -> None:
    env = wire.Envelope("error", 1, wire.ErrorReply("x", "y", {"v": object()}))
    with pytest.raises(errors.IpcError):
        wire.encode_envelope(env)


def _env(**overrides: Any) -> bytes:
    m: dict[str, Any] = {"v": 1, "t": "get", "id": 1, "b": {"key": "k", "now": 5}}
    m.update(overrides)
    return msgpack.packb({k: v for k, v in m.items() if v is not ...})  # type: ignore[no-any-return]


IPC_GARBAGE = {
    "empty": b"",
    "not a map": msgpack.packb([1, "get", 1, {}]),
    "int keys": b"\x81\x01\x01",
    "version 2": _env(v=2),
    "version true": _env(v=True),
    "no version": _env(v=...),
    "unknown type": _env(t="launch"),
    "type not str": _env(t=1),
    "id missing": _env(id=...),
    "id bool": _env(id=True),
    "id str": _env(id="1"),
    "re str": _env(re="1"),
    "dl float": _env(dl=1.5),
    "extra envelope key": _env(x=1),
    "body missing": _env(b=...),
    "body not a map": _env(b=["k", 5]),
    "unknown body field": _env(b={"key": "k", "now": 5, "x": 1}),
    "missing body field": _env(b={"key": "k"}),
    "wrong field type": _env(b={"key": b"k", "now": 5}),
    "int field bool": _env(b={"key": "k", "now": False}),
    "tuple item type": _env(t="propose", b={"commands": ["text"]}),
    "fixed tuple length": _env(t="apply", b={"entries": [[1, 2, 0]]}),
    "nested body field": _env(
        t="status_ok",
        b={
            "node_id": "n1",
            "role": "leader",
            "term": 1,
            "leader_id": None,
            "commit": 1,
            "applied": 1,
            "members": [{"node_id": "n1"}],
        },
    ),
    "map with bytes keys": _env(t="get_ok", b={"entry": {b"key": 1}}),
    "entry as a map": _env(t="get_ok", b={"entry": {"key": "k"}}),
    "entry with an unknown tag": _env(t="get_ok", b={"entry": [99, "k", b"1", 1, 2, 3, 4, None]}),
    "entry too short": _env(t="get_ok", b={"entry": [1, "k", b"1", 1, 2, 3, 4]}),
    "entry too long": _env(t="get_ok", b={"entry": [1, "k", b"1", 1, 2, 3, 4, None, 0]}),
    "entry value str": _env(t="get_ok", b={"entry": [1, "k", "1", 1, 2, 3, 4, None]}),
    "entry tag bool": _env(t="get_ok", b={"entry": [True, "k", b"1", 1, 2, 3, 4, None]}),
    "change where an entry goes": _env(t="get_ok", b={"entry": [2, "set", "k", b"1", 1, 2, 3]}),
    "entry where a change goes": _env(
        t="change_batch", b={"events": [[1, "k", b"1", 1, 2, 3, 4, None]], "revision": 2}
    ),
    "null outcome": _env(t="results", b={"origin": "n1", "items": [None]}),
    "batch item of a wrong kind": _env(
        t="results", b={"origin": "n1", "items": [[8, 1, [6, [[5, 1, 2]], 2]]]}
    ),
    "trailing bytes": _env() + b"\x00",
}


@pytest.mark.parametrize("data", IPC_GARBAGE.values(), ids=IPC_GARBAGE.keys())
def test_ipc_garbage_is_a_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(errors.RemoteProtocolError) as info:
        wire.decode_envelope(data)
    assert info.value.__cause__ is not None


def test_error_reply_rebuilds_the_error() -> None:
    exc = errors.VersionConflict("version mismatch", current={"key": "k", "version": 4})
    reply = wire.ErrorReply.from_exception(exc)
    env = wire.Envelope("error", 3, reply, reply_to=2)
    back = wire.decode_envelope(wire.encode_envelope(env)).body
    assert isinstance(back, wire.ErrorReply)
    rebuilt = back.to_exception()
    assert type(rebuilt) is errors.VersionConflict
    assert rebuilt.to_dict() == exc.to_dict()


def test_error_reply_unknown_code_is_unavailable() -> None:
    rebuilt = wire.ErrorReply("internal", "boom", {}).to_exception()
    assert isinstance(rebuilt, errors.Unavailable)


def test_error_reply_ignores_extra_keys_that_clash() -> None:
    rebuilt = wire.ErrorReply(
        "not_found", "gone", {"code": "x", "message": "y", "k": 1}
    ).to_exception()
    assert type(rebuilt) is errors.NotFound
    assert rebuilt.to_dict() == {"code": "not_found", "message": "gone", "k": 1}


def test_type_name() -> None:
    assert wire.type_name(wire.Hello(1, 1)) == "hello"
    with pytest.raises(TypeError):
        wire.type_name(wire.MemberStatus("n1", "", True, 0))
