"""What the leader knows about each follower's log, and its flow control.

Theory of operation (thesis §10.2.2, as etcd's tracker):

* PROBE: the leader does not know where the follower's log matches; it sends
  at most one AppendEntries per heartbeat interval and backs ``next`` off on
  each rejection.
* REPLICATE: the follower is known to match; the leader streams entries
  optimistically (``next`` advances as it sends) with at most
  ``max_inflight`` messages unacknowledged.
* SNAPSHOT: the follower needs entries the leader compacted; the leader sends
  snapshot chunks and nothing else until the follower has installed it.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass(slots=True)
class Progress:
    """Replication state of one follower or learner, kept by the leader only."""

    match: int = 0
    next: int = 1
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    recent_active: bool = False
    inflight: deque[int] = field(default_factory=deque)  # last index of each message
    snapshot_index: int = 0
    snapshot_offset: int = 0
    snapshot_idle_ticks: int = 0
    stalled_heartbeats: int = 0

    def paused(self, max_inflight: int) -> bool:
        """True when no new AppendEntries may be sent to this follower now."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True

    def become_probe(self) -> None:
        # After a snapshot, resume right after it; otherwise just after match.
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.snapshot_index + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight.clear()
        self.snapshot_index = self.snapshot_offset = 0

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot_index = index
        self.snapshot_offset = 0
        self.snapshot_idle_ticks = 0
        self.inflight.clear()

    def sent_entries(self, last_index: int) -> None:
        """Record an AppendEntries carrying entries up to ``last_index``."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflight.append(last_index)
        else:
            self.probe_sent = True

    def update_match(self, index: int) -> bool:
        """Record an acknowledgement; returns True if ``match`` moved forward."""
        self.probe_sent = False
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if index <= self.match:
            return False
        self.stalled_heartbeats = 0
        self.match = index
        self.next = max(self.next, index + 1)
        return True

    def acknowledge(self, index: int) -> bool:
        """A successful AppendEntries response for ``index``; True if ``match``
        moved forward. A probed follower whose answer confirms where its log
        matches moves to REPLICATE even if ``match`` did not move; a follower
        past its snapshot leaves SNAPSHOT the same way."""
        old_state = self.state
        if self.update_match(index):
            if self.state is ProgressState.PROBE:
                self.become_replicate()
            elif self.state is ProgressState.SNAPSHOT and self.match >= self.snapshot_index:
                self.become_probe()
                self.become_replicate()
            return True
        if old_state is ProgressState.PROBE and self.match == index:
            self.become_replicate()
        return False

    def back_off(self, rejected: int, hint_next: int) -> bool:
        """Handle a rejection of the AppendEntries whose prev index was ``rejected``.

        Returns False for a stale rejection that must be ignored.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.become_probe()
            self.next = max(self.match + 1, min(hint_next, rejected))
            return True
        if rejected != self.next - 1:
            return False
        self.next = max(self.match + 1, min(hint_next, rejected))
        self.probe_sent = False
        return True
