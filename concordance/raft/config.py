"""Tunables of the Raft core, in ticks and bytes, and the randomness it is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Timing is in ticks: the driver decides how long a tick is (e.g. 100 ms).

    ``election_ticks`` should be about 10x ``heartbeat_ticks`` (thesis §3.9
    timing rule); each node's election timeout is drawn uniformly from
    [election_ticks, 2 * election_ticks - 1].
    """

    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_msg_bytes: int = 1 << 20
    max_inflight_msgs: int = 64
    max_uncommitted_bytes: int = 64 << 20
    max_committed_bytes_per_ready: int = 8 << 20
    snapshot_chunk_bytes: int = 1 << 20
    pre_vote: bool = True
    check_quorum: bool = True

    def validate(self) -> RaftConfig:
        if self.heartbeat_ticks < 1:
            raise ValueError("heartbeat_ticks must be >= 1")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must exceed heartbeat_ticks")
        for name in (
            "max_msg_bytes",
            "max_inflight_msgs",
            "max_uncommitted_bytes",
            "max_committed_bytes_per_ready",
            "snapshot_chunk_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        return self


class Rng(Protocol):
    """The slice of ``random.Random`` the core uses (election timeouts): a
    seeded instance replays a whole cluster exactly."""

    def randrange(self, start: int, stop: int) -> int: ...
