"""Messages exchanged between Raft cores, named after the paper's RPCs.

Every message carries ``term``, ``src`` and ``dst``. Responses are separate
messages (the core is asynchronous: nothing waits for a reply). The wire codec
(``concordance.protocol.wire``) turns these into bytes; the core never sees bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from concordance.raft.entries import ConfChange, Entry, SnapshotMeta


@dataclass(frozen=True, slots=True)
class RequestVote:
    """A (pre-)vote request (paper §5.2, thesis §9.6 PreVote).

    ``pre_vote`` carries the term the candidate *would* use, without anyone
    changing term; ``transfer`` marks a campaign started by TimeoutNow, which
    bypasses leader stickiness (thesis §3.10, §4.2.3).
    """

    term: int
    src: str
    dst: str
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    term: int
    src: str
    dst: str
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Log replication (paper §5.3). ``entries`` may be empty (a probe).

    ``reply=False`` marks a commit notice: no entries, sent to a follower the
    leader already knows holds its whole log, so a success tells the leader
    nothing and the follower stays silent (a refusal is still answered).
    """

    term: int
    src: str
    dst: str
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    reply: bool = True


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Success carries the follower's ``match_index``; a rejection carries a
    backtracking hint: ``conflict_index`` is where the leader should retry and
    ``conflict_term`` the follower's term there (0 if its log is too short)."""

    term: int
    src: str
    dst: str
    success: bool
    match_index: int = 0
    conflict_index: int = 0
    conflict_term: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader liveness plus commit propagation, and a ReadIndex round marker.

    ``commit`` is capped at the follower's known match index so a follower never
    learns a commit index beyond its log; ``read_seq`` is echoed back so reads
    queued before that round can be served (thesis §6.4).
    """

    term: int
    src: str
    dst: str
    commit: int
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    term: int
    src: str
    dst: str
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """One chunk of a snapshot (paper Fig. 13); chunks are sent in order."""

    term: int
    src: str
    dst: str
    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class InstallSnapshotResponse:
    """Acknowledges chunks: ``next_offset`` is the byte the follower wants next;
    ``done`` is set once the whole snapshot is installed and durable."""

    term: int
    src: str
    dst: str
    index: int
    next_offset: int
    done: bool = False


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leadership transfer: the target campaigns at once (thesis §3.10)."""

    term: int
    src: str
    dst: str


@dataclass(frozen=True, slots=True)
class Propose:
    """Proposals forwarded from a follower to the leader. The leader appends them
    or answers :class:`ProposeRefused`; only the network loses them silently."""

    term: int
    src: str
    dst: str
    data: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ProposeRefused:
    """A forwarded ``Propose`` its receiver did not append, handed back to the sender.

    Sent by a leader that refuses it (transfer in progress, too much
    uncommitted data) and by any node that is not the leader (a follower never
    forwards a forwarded proposal again; a candidate has no leader). ``data``
    is the refused ``Propose.data``, unchanged; ``reason`` is for logs only.
    The sender surfaces ``data`` in ``Ready.dropped``.
    """

    term: int
    src: str
    dst: str
    data: tuple[bytes, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class ProposeConfChange:
    """A membership change forwarded from a follower to the leader."""

    term: int
    src: str
    dst: str
    change: ConfChange


@dataclass(frozen=True, slots=True)
class TransferLeader:
    """A leadership transfer request forwarded to the leader (``target`` may be
    empty: the leader then picks the most up-to-date voter)."""

    term: int
    src: str
    dst: str
    target: str


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """A follower asks the leader for a read index (thesis §6.4 step 'followers')."""

    term: int
    src: str
    dst: str
    ctx: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    """``index`` is 0 when the leader refused (not leader any more)."""

    term: int
    src: str
    dst: str
    ctx: bytes
    index: int


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | InstallSnapshotResponse
    | TimeoutNow
    | Propose
    | ProposeRefused
    | ProposeConfChange
    | TransferLeader
    | ReadIndexRequest
    | ReadIndexResponse
)

MESSAGE_TYPES: tuple[type, ...] = (
    RequestVote,
    RequestVoteResponse,
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    TimeoutNow,
    Propose,
    ProposeConfChange,
    TransferLeader,
    ReadIndexRequest,
    ReadIndexResponse,
    ProposeRefused,
)
