"""The leader's side of log replication: what each follower is sent, and what its answers mean.

Rules (paper §5.3, thesis §10.2.2 flow control; states in ``progress.py``):

* The leader keeps one :class:`Progress` per member of the log (voters,
  learners, itself, and a peer being removed until its removal commits).
* Entries go out in batches of at most ``max_msg_bytes``, with at most
  ``max_inflight_msgs`` unacknowledged per follower in REPLICATE and one probe
  at a time in PROBE. A follower whose next entry is compacted gets the
  latest snapshot instead (``snapshot_transfer.py``).
* A rejection carries the follower's conflicting term; the leader skips the
  whole term at once (paper §5.3, "the leader can decrement nextIndex to
  bypass all of the conflicting entries in that term").
* A follower that answers heartbeats but not appends for two rounds lost an
  AppendEntries: its progress falls back to PROBE from the last match.

The replicator never commits or changes role: the core does, from what
:meth:`Progress.acknowledge` reports.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from concordance.errors import ProposalDropped
from concordance.raft import quorum
from concordance.raft.config import RaftConfig
from concordance.raft.entries import Entry, SnapshotMeta
from concordance.raft.log import RaftLog
from concordance.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshotResponse,
    Message,
)
from concordance.raft.progress import Progress, ProgressState
from concordance.raft.snapshot_transfer import SnapshotSender
from concordance.raft.stores import LogCompacted, SnapshotStore


class LeaderView(Protocol):
    """What the replicator reads from its core: the term to send at, and the
    latest snapshot (both change under it)."""

    @property
    def term(self) -> int: ...

    @property
    def snapshot(self) -> SnapshotMeta | None: ...


class Replicator:
    """Per-follower progress and the AppendEntries, heartbeats and snapshot
    chunks that follow from it. Used by the core only while it leads."""

    __slots__ = (
        "_cfg",
        "_id",
        "_log",
        "_send",
        "_snapshots",
        "_view",
        "progress",
        "snapshot_wanted",
    )

    def __init__(
        self,
        node_id: str,
        log: RaftLog,
        cfg: RaftConfig,
        snapshots: SnapshotStore | None,
        view: LeaderView,
        send: Callable[[Message], None],
    ) -> None:
        self._id = node_id
        self._log = log
        self._cfg = cfg
        self._view = view
        self._send = send
        self._snapshots = SnapshotSender(
            node_id, snapshots, cfg.snapshot_chunk_bytes, cfg.election_ticks, send
        )
        self.progress: dict[str, Progress] = {}
        self.snapshot_wanted = False  # a follower needs a snapshot reaching the log's base

    # ------------------------------------------------------------------ membership
    def reset(self, members: Iterable[str]) -> None:
        """A new leadership: nothing is known about any follower's log yet."""
        last = self._log.last_index()
        self.progress = {
            peer: Progress(match=0, next=last + 1, recent_active=True) for peer in members
        }
        self.progress.setdefault(self._id, Progress(next=last + 1))
        self.progress[self._id].match = self._log.durable_last_index()

    def track(self, members: set[str]) -> None:
        """Start tracking new members and forget those no longer in ``members``."""
        last = self._log.last_index()
        for peer in sorted(members - self.progress.keys()):
            self.progress[peer] = Progress(match=0, next=last + 1, recent_active=True)
        for peer in sorted(self.progress.keys() - members):
            del self.progress[peer]

    # ------------------------------------------------------------------ sending
    def broadcast_append(self) -> None:
        """Send every follower what it lacks, or an empty append carrying the commit."""
        for peer in self.progress:
            if peer != self._id:
                self.send_append(peer, allow_empty=True)

    def send_append(self, peer: str, allow_empty: bool = False) -> None:
        """Send the next batch of entries to ``peer`` if its flow control allows.

        With nothing new to send, ``allow_empty`` still sends an empty
        AppendEntries (a probe, or a commit update to an idle follower).
        """
        pr, lg = self.progress[peer], self._log
        if pr.paused(self._cfg.max_inflight_msgs):
            return
        if pr.next < lg.first_index():
            self._start_snapshot(peer, pr)
            return
        last = lg.last_index()
        if pr.next > last and (
            not allow_empty or (pr.state is ProgressState.REPLICATE and pr.inflight)
        ):
            return
        try:
            prev_term = lg.term(pr.next - 1)
            entries = lg.slice(pr.next, last + 1, self._cfg.max_msg_bytes)
        except LogCompacted:
            self._start_snapshot(peer, pr)
            return
        # A commit notice to a follower known to hold the whole log: its
        # success would tell nothing, so it is not asked for (heartbeats keep
        # the liveness and read-index rounds).
        reply = bool(entries) or pr.state is not ProgressState.REPLICATE or pr.match != last
        self._send(
            AppendEntries(
                self._view.term,
                self._id,
                peer,
                pr.next - 1,
                prev_term,
                tuple(entries),
                lg.commit,
                reply,
            )
        )
        if entries:
            pr.sent_entries(entries[-1].index)
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True

    def _start_snapshot(self, peer: str, pr: Progress) -> None:
        floor = self._log.first_index() - 1
        if not self._snapshots.start(self._view.term, peer, pr, self._view.snapshot, floor):
            self.snapshot_wanted = True  # Ready.snapshot_wanted; the next probe starts it

    def send_more(self, peer: str) -> None:
        """Stream what flow control allows after an acknowledgement."""
        pr = self.progress[peer]
        while pr.next <= self._log.last_index() and not pr.paused(self._cfg.max_inflight_msgs):
            before = pr.next
            self.send_append(peer)
            if pr.next == before:
                break

    def broadcast_heartbeat(self, read_seq: int) -> None:
        """Heartbeats carry a commit no follower can lack (its match, at most)."""
        for peer, pr in self.progress.items():
            if peer != self._id:
                commit = min(pr.match, self._log.commit)
                self._send(Heartbeat(self._view.term, self._id, peer, commit, read_seq))

    def tick_snapshots(self) -> None:
        self._snapshots.tick(self._view.term, self.progress, self._view.snapshot)

    # ------------------------------------------------------------------ answers
    def on_append_response(self, msg: AppendEntriesResponse) -> Progress | None:
        """Note the follower is alive and back off on a rejection. Returns its
        progress for a success, for the caller to acknowledge; None otherwise."""
        pr = self.progress.get(msg.src)
        if pr is None:
            return None
        pr.recent_active = True
        if msg.success:
            return pr
        self._back_off(msg, pr)
        return None

    def _back_off(self, msg: AppendEntriesResponse, pr: Progress) -> None:
        """After a refused AppendEntries, retry skipping the conflicting term."""
        lg = self._log
        if msg.conflict_term:
            found = lg.last_index_of_term_at_most(msg.conflict_term, msg.match_index)
            hint = found + 1 if lg.term_or_zero(found) == msg.conflict_term else msg.conflict_index
        else:
            hint = msg.conflict_index or msg.match_index
        if pr.back_off(msg.match_index, hint):
            self.send_append(msg.src)

    def on_heartbeat_response(self, msg: HeartbeatResponse) -> bool:
        """Probe a follower that is behind; False if ``msg.src`` is not tracked."""
        pr = self.progress.get(msg.src)
        if pr is None:
            return False
        pr.recent_active = True
        pr.probe_sent = False
        if pr.match < self._log.last_index():
            # Two heartbeat rounds without progress: an AppendEntries was lost;
            # fall back to probing from the last known match.
            pr.stalled_heartbeats += 1
            if pr.state is ProgressState.REPLICATE and pr.stalled_heartbeats >= 2:
                pr.become_probe()
            # A probe may be empty: a probe lost before the follower answered it left
            # ``next`` past the last entry (a member added with an empty log), and a
            # non-empty send would never go, leaving that follower behind for good.
            self.send_append(msg.src, allow_empty=pr.state is ProgressState.PROBE)
        return True

    def on_snapshot_response(self, msg: InstallSnapshotResponse) -> None:
        pr = self.progress.get(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        if self._snapshots.on_response(self._view.term, msg, pr, self._view.snapshot):
            self.send_append(msg.src)

    # ------------------------------------------------------------------ CheckQuorum
    def quorum_active(self, voters: tuple[str, ...]) -> bool:
        """Whether a quorum of ``voters`` was heard from since the last reset."""
        active = sum(
            1
            for v in voters
            if v == self._id or (v in self.progress and self.progress[v].recent_active)
        )
        return active >= quorum.quorum_size(len(voters))

    def transfer_target(self, voters: Sequence[str], to: str) -> str:
        """Check a leadership transfer target (thesis §3.10), or with ``to`` empty
        pick the most caught-up other voter. Raises ProposalDropped."""
        others = [v for v in voters if v != self._id]
        if not to:
            if not others:
                raise ProposalDropped("no other voter to transfer leadership to")
            return max(others, key=lambda v: (self.progress[v].match, v))
        if to != self._id and to not in others:
            raise ProposalDropped(f"{to} is not a voter")
        return to

    def forget_activity(self) -> None:
        """Start a new CheckQuorum window: only the leader itself counts as heard."""
        for peer, pr in self.progress.items():
            pr.recent_active = peer == self._id


class UncommittedBudget:
    """Bounds the bytes a leader holds uncommitted in its term, so a leader that
    cannot commit (lost quorum, slow disks) refuses proposals instead of
    growing its log without end. One proposal is always let in, whatever its size."""

    __slots__ = ("_bytes", "_entries", "_limit")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._entries: deque[tuple[int, int]] = deque()  # (index, size)
        self._bytes = 0

    def check(self, size: int) -> None:
        """Raises ProposalDropped if ``size`` more bytes would exceed the limit."""
        if self._bytes + size > self._limit and self._entries:
            raise ProposalDropped("too much uncommitted data; slow down")

    def add(self, entries: Sequence[Entry]) -> None:
        for entry in entries:
            self._entries.append((entry.index, entry.size()))
            self._bytes += entry.size()

    def release(self, commit: int) -> None:
        """Entries up to ``commit`` no longer count."""
        while self._entries and self._entries[0][0] <= commit:
            self._bytes -= self._entries.popleft()[1]

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


def still_needed(progress: Mapping[str, Progress], leader: str, last: int) -> int | None:
    """The lowest log index a recently active follower still needs from a leader's
    log (the snapshot it is receiving, else its match), or None if none is behind.

    A driver compacts no further than this (within a bound): a member catching
    up through a large snapshot then finds the log going on right after it,
    instead of needing another one because the log moved on meanwhile. A
    follower silent for an election timeout holds nothing (CheckQuorum clears
    ``recent_active``).
    """
    needs = [
        pr.snapshot_index if pr.state is ProgressState.SNAPSHOT else pr.match
        for peer, pr in progress.items()
        if peer != leader and pr.recent_active
    ]
    needs = [n for n in needs if n < last]
    return min(needs) if needs else None
