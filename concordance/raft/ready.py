"""What the core hands its driver: roles, read states and the Ready batch."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from concordance.raft.entries import Entry, HardState, SnapshotMeta
from concordance.raft.messages import AppendEntries, Heartbeat, Message


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"  # a follower that is not a voter (learner or not yet a member)


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting; never persisted."""

    role: Role
    leader_id: str | None
    term: int


@dataclass(frozen=True, slots=True)
class ReadState:
    """A confirmed read index for the read that asked with ``ctx``.

    ``index`` is 0 when leadership could not be confirmed: the read must fail
    (unavailable) rather than be served possibly stale.
    """

    ctx: bytes
    index: int


@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """Snapshot bytes received from the leader, to be written at ``offset``."""

    meta: SnapshotMeta
    offset: int
    data: bytes
    done: bool


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the driver. See the package docstring for the order.

    ``dropped`` holds proposals this node forwarded that the receiver refused
    (``ProposeRefused``): certainly not appended by that forward, so their
    proposers may fail them now (safe to retry) instead of at their deadline.

    ``early`` says that the leader's appends and heartbeats among ``messages``
    (:attr:`messages_first`) may be sent before, or while, this Ready is
    persisted (thesis §10.2.1): the leader counts its own log towards a commit
    only once ``advance`` says it is durable, so a follower may store an entry
    before its leader does. It is never set when term or vote change.

    ``snapshot_wanted`` (0: no) asks the driver for a snapshot file at an index
    at least this one (the log's base): a follower needs one and the latest
    snapshot is missing or older. The driver has the state machine write one
    and reports it with ``snapshot_taken``; asking again meanwhile is harmless.

    ``commit_only`` says that ``hard_state`` differs from the durable one in
    ``commit`` alone. Writing it is then optional and needs no fsync (the commit
    index is re-learned from the leader after a restart), so such a Ready
    persists nothing unless it also carries entries or a snapshot.
    """

    soft_state: SoftState | None
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: SnapshotMeta | None
    snapshot_chunks: tuple[SnapshotChunk, ...]
    messages: tuple[Message, ...]
    committed: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    dropped: tuple[bytes, ...] = ()
    early: bool = False
    commit_only: bool = False
    snapshot_wanted: int = 0

    @property
    def must_sync(self) -> bool:
        """Whether persisting this Ready needs an fsync (term, vote, log or snapshot changed)."""
        durable_hard = self.hard_state is not None and not self.commit_only
        return bool(self.entries or self.snapshot is not None or durable_hard)

    @property
    def messages_first(self) -> tuple[Message, ...]:
        """What may be sent before the persist: a leader's appends and heartbeats."""
        if not self.early:
            return ()
        return tuple(m for m in self.messages if isinstance(m, _EARLY))

    @property
    def messages_after(self) -> tuple[Message, ...]:
        """What must wait until the persist is durable: the rest of ``messages``."""
        if not self.early:
            return self.messages
        return tuple(m for m in self.messages if not isinstance(m, _EARLY))


_EARLY = (AppendEntries, Heartbeat)


@dataclass(slots=True)
class Outbox:
    """What the core produced since the last Ready, in production order."""

    messages: list[Message] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    chunks: list[SnapshotChunk] = field(default_factory=list)
    dropped: list[bytes] = field(default_factory=list)  # forwarded proposals refused

    def __bool__(self) -> bool:
        return bool(self.messages or self.read_states or self.chunks or self.dropped)
