"""Values the Raft core persists: log entries, hard state, membership, snapshot metadata.

These are plain frozen values shared by the core, the stores and the wire codec.
Node ids are short strings ("n1"); indexes and terms are ints starting at 1
(index 0 / term 0 mean "nothing").
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field


class EntryKind(enum.IntEnum):
    """What a log entry carries; the state machine only ever sees NORMAL data."""

    NORMAL = 0  # opaque command bytes for the state machine
    NOOP = 1  # appended by every new leader (paper §5.4.2, thesis §6.4)
    CONFIG = 2  # a full Membership, effective as soon as it is in the log (thesis §4.1)


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry."""

    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate encoded size, for message and in-flight byte limits."""
        return len(self.data) + 24


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it is sent."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Membership:
    """The cluster configuration: voters, learners and their addresses.

    Addresses ride along so every node learns how to reach its peers from the
    log itself; the core ignores them.
    """

    voters: tuple[str, ...] = ()
    learners: tuple[str, ...] = ()
    addresses: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "voters", tuple(sorted(set(self.voters))))
        object.__setattr__(self, "learners", tuple(sorted(set(self.learners) - set(self.voters))))
        object.__setattr__(self, "addresses", tuple(sorted(dict(self.addresses).items())))

    @property
    def members(self) -> tuple[str, ...]:
        """Every node that receives the log, voters first, each group sorted."""
        return self.voters + self.learners

    def address_of(self, node_id: str) -> str | None:
        return dict(self.addresses).get(node_id)

    def is_voter(self, node_id: str) -> bool:
        return node_id in self.voters

    def contains(self, node_id: str) -> bool:
        return node_id in self.voters or node_id in self.learners

    def encode(self) -> bytes:
        """Deterministic bytes for a CONFIG entry (sorted JSON)."""
        body = {"v": list(self.voters), "l": list(self.learners), "a": dict(self.addresses)}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Membership:
        body = json.loads(data)
        return cls(tuple(body["v"]), tuple(body["l"]), tuple(body["a"].items()))


class ConfChangeOp(enum.Enum):
    """Single-server membership changes (thesis §4.1, with the 2015 raft-dev fix)."""

    ADD_LEARNER = "add_learner"
    ADD_VOTER = "add_voter"  # add directly as a voter, or promote an existing learner
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A requested one-server membership change."""

    op: ConfChangeOp
    node_id: str
    address: str = ""

    def apply_to(self, old: Membership) -> Membership:
        """The membership that results from this change; raises ValueError if it is a no-op."""
        addresses = dict(old.addresses)
        voters, learners = set(old.voters), set(old.learners)
        if self.op is ConfChangeOp.REMOVE:
            if not old.contains(self.node_id):
                raise ValueError(f"{self.node_id} is not a member")
            voters.discard(self.node_id)
            learners.discard(self.node_id)
            addresses.pop(self.node_id, None)
            if not voters:
                raise ValueError("cannot remove the last voter")
        elif self.op is ConfChangeOp.ADD_LEARNER:
            if old.contains(self.node_id):
                raise ValueError(f"{self.node_id} is already a member")
            learners.add(self.node_id)
        else:
            if self.node_id in voters:
                raise ValueError(f"{self.node_id} is already a voter")
            learners.discard(self.node_id)
            voters.add(self.node_id)
        if self.address:
            addresses[self.node_id] = self.address
        return Membership(tuple(voters), tuple(learners), tuple(addresses.items()))


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Identifies a state-machine snapshot: the last index/term it covers and the
    membership in force at that index (paper Fig. 13)."""

    index: int
    term: int
    membership: Membership
