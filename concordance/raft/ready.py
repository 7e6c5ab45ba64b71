"""What the core hands its driver: roles, read states and the Ready batch."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from concordance.raft.entries import Entry, HardState, SnapshotMeta
from concordance.raft.messages import Message


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

    @property
    def must_sync(self) -> bool:
        """Whether persisting this Ready needs an fsync (anything durable changed)."""
        return bool(self.entries or self.snapshot is not None or self.hard_state is not None)
