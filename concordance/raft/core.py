"""RaftCore: a pure, deterministic Raft state machine (no I/O, no clock, no randomness).

Theory of operation:

* Inputs: ``step(msg)``, ``tick()``, ``propose(data)``, ``read_index(ctx)``, etc.
  (the package docstring lists them). Outputs accumulate until the driver calls
  ``ready()``, handles the Ready in order (persist, send, apply) and calls
  ``advance(ready)``; see the package docstring for the contract.
* Roles are functions: ``_step_role`` and ``_tick_role`` are swapped only in the
  ``_become_*`` methods, each of which logs one line.
* The randomness for election timeouts is an injected ``random.Random``-like
  object, so a seed replays a whole cluster exactly.
* Membership is single-server change: a CONFIG entry takes effect as soon as it
  is in the log (thesis §4.1), a leader appends one only after committing an
  entry of its own term and with no other change uncommitted (raft-dev 2015).
* Collaborators own one concern each: ``membership_history.py`` (which
  configuration is in force where), ``replication.py`` (per-follower progress
  and what to send), ``snapshot_transfer.py`` (chunked InstallSnapshot),
  ``read_only.py`` (when a ReadIndex read may be answered) and ``forwarding.py``
  (leader-only requests reaching another node, including the
  ``Propose``/``ProposeRefused`` rules).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from concordance.errors import NotLeader, ProposalDropped
from concordance.raft import forwarding, quorum
from concordance.raft.config import RaftConfig, Rng
from concordance.raft.entries import (
    ConfChange,
    Entry,
    EntryKind,
    HardState,
    Membership,
    SnapshotMeta,
)
from concordance.raft.log import RaftLog
from concordance.raft.membership_history import MembershipHistory
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
from concordance.raft.progress import Progress
from concordance.raft.read_only import LeaderReads
from concordance.raft.ready import Outbox, ReadState, Ready, Role, SoftState
from concordance.raft.replication import Replicator, UncommittedBudget
from concordance.raft.snapshot_transfer import SnapshotReceiver
from concordance.raft.stores import LogStore, SnapshotStore

log = logging.getLogger("concordance.raft")


class RaftCore:
    """One node's Raft. Not thread-safe: the driver calls it from one task."""

    def __init__(
        self,
        node_id: str,
        store: LogStore,
        hard_state: HardState,
        snapshot: SnapshotMeta | None,
        config: RaftConfig,
        rng: Rng,
        snapshots: SnapshotStore | None = None,
        applied: int | None = None,
    ) -> None:
        self.id = node_id
        self.cfg = config.validate()
        self._rng = rng
        self.snapshot = snapshot  # latest snapshot this node can send
        base = snapshot.index if snapshot else 0
        self.log = RaftLog(
            store, commit=max(hard_state.commit, base), applied=max(base, applied or 0)
        )
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.leader_id: str | None = None
        self._history = MembershipHistory.load(store, snapshot)
        self.role = Role.FOLLOWER
        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick_role: Callable[[], None] = self._tick_election
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self.cfg.election_ticks
        self.votes: dict[str, bool] = {}
        self.lead_transferee: str | None = None
        self._uncommitted = UncommittedBudget(self.cfg.max_uncommitted_bytes)
        self._repl = Replicator(node_id, self.log, self.cfg, snapshots, self, self._send)
        self._reads = LeaderReads(node_id, self._answer_read, self._repl.broadcast_heartbeat)
        self._snapshot_in = SnapshotReceiver()
        # Outputs, drained by ready().
        self._out = Outbox()
        self._needs_broadcast = False
        self._prev_hard = hard_state
        self._prev_soft = SoftState(self.role, None, self.term)
        self._become_follower(self.term, None)

    # ------------------------------------------------------------------ queries
    @property
    def membership(self) -> Membership:
        """The configuration in force: the last one in the log (thesis §4.1)."""
        return self._history.current

    def membership_at(self, index: int) -> Membership:
        """The configuration in force at log position ``index``."""
        return self._history.at(index)

    @property
    def progress(self) -> dict[str, Progress]:
        """The leader's view of each member's log (stale when not leader)."""
        return self._repl.progress

    @property
    def promotable(self) -> bool:
        """Only voters campaign; learners and removed nodes never do."""
        return self.membership.is_voter(self.id)

    @property
    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.commit)

    @property
    def soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader_id, self.term)

    # ------------------------------------------------------------------ inputs
    def tick(self) -> None:
        """Advance logical time by one tick."""
        self._tick_role()

    def step(self, msg: Message) -> None:
        """Feed one message from a peer (or a forwarded request)."""
        if msg.dst != self.id:
            return
        if isinstance(msg, ProposeRefused):
            # Outside the term rules: a refusal carries no Raft state, and "not
            # appended by its sender" stays true whatever term it comes from.
            self._out.dropped.extend(msg.data)
            return
        if msg.term > self.term:
            if isinstance(msg, RequestVote):
                if self._in_lease() and not msg.transfer:
                    return  # leader stickiness (thesis §4.2.3)
                if msg.pre_vote:
                    self._handle_vote(msg)  # pre-votes never change our term
                    return
                self._become_follower(msg.term, None)
            elif isinstance(msg, RequestVoteResponse) and msg.pre_vote and msg.granted:
                pass  # a granted pre-vote echoes the future term
            elif isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot | TimeoutNow):
                self._become_follower(msg.term, msg.src)
            else:
                self._become_follower(msg.term, None)
        elif msg.term < self.term:
            self._step_stale(msg)
            return
        if isinstance(msg, RequestVote):
            self._handle_vote(msg)
        else:
            self._step_role(msg)

    def propose(self, data: bytes) -> int | None:
        """Propose a command. Returns its index on the leader, None if forwarded.

        Raises NotLeader when no leader is known, ProposalDropped when the leader
        refuses (transfer in progress, too much uncommitted data). A forwarded
        proposal that its receiver does not append comes back in ``Ready.dropped``.
        """
        return self.propose_batch([data])

    def propose_batch(self, batch: Sequence[bytes]) -> int | None:
        """Propose many commands at once; returns the index of the last one."""
        if self.role is Role.LEADER:
            self._check_can_accept(sum(len(d) for d in batch))
            return self._append_new([(EntryKind.NORMAL, d) for d in batch])
        if self.leader_id is None:
            raise NotLeader(None)
        self._send(Propose(self.term, self.id, self.leader_id, tuple(batch)))
        return None

    def propose_conf_change(self, change: ConfChange) -> int | None:
        """Propose a one-server membership change (thesis §4.1).

        On a follower the request is forwarded to the leader; the leader refuses
        it unless an entry of its term is committed and no change is pending.
        """
        if self.role is not Role.LEADER:
            if self.leader_id is None:
                raise NotLeader(None)
            self._send(ProposeConfChange(self.term, self.id, self.leader_id, change))
            return None
        self._check_can_accept(0)
        if self.log.term_or_zero(self.log.commit) != self.term:
            raise ProposalDropped("the new leader has not committed an entry of its term yet")
        new = self._history.next_config(change, self.log.commit)
        return self._append_new([(EntryKind.CONFIG, new.encode())])

    def read_index(self, ctx: bytes) -> None:
        """Ask for a linearizable read index; the answer arrives as a ReadState."""
        if self.role is Role.LEADER:
            self._leader_read(ctx, self.id)
        elif self.leader_id is None:
            raise NotLeader(None)
        else:
            self._send(ReadIndexRequest(self.term, self.id, self.leader_id, ctx))

    def transfer_leadership(self, to: str = "") -> None:
        """Hand leadership to ``to`` (or the most caught-up voter) via TimeoutNow."""
        if self.role is not Role.LEADER:
            if self.leader_id is None:
                raise NotLeader(None)
            self._send(TransferLeader(self.term, self.id, self.leader_id, to))
            return
        self._start_transfer(to)

    def campaign(self) -> None:
        """Start an election now (tests and single-node bootstrap)."""
        if self.promotable and self.role is not Role.LEADER:
            self._campaign(pre=self.cfg.pre_vote, transfer=False)

    def snapshot_taken(self, index: int) -> SnapshotMeta:
        """A durable snapshot file of the state at ``index`` exists: the leader may send it."""
        if self.snapshot is not None and index < self.snapshot.index:
            raise ValueError(f"snapshot at {index} is older than {self.snapshot.index}")
        self.snapshot = meta = self.base_meta(index)
        return meta

    def applied_elsewhere(self, index: int, term: int) -> None:
        """The state machine holds the entry at ``index`` of ``term`` (storage's ``hello``).

        It was committed when it was handed out, maybe by an earlier incarnation of
        this node; when this log holds that same entry (its term there, durable),
        Log Matching makes this log's prefix up to it the committed one, so the
        commit index moves there. Why: the commit index is not durable at once, so a
        restarted leader may know less than its state machine applied. If the
        followers it needs for a quorum are behind its compacted log, they need a
        snapshot file, which storage can only take at its applied index; the file,
        past what the core knew committed, was refused, and nothing committed again.
        Found by the node simulation.
        """
        if index <= self.log.commit or index > self.log.durable_last_index():
            return
        if self.log.term_or_zero(index) == term:
            self.log.commit_to(index)

    def snapshot_on_disk(self, meta: SnapshotMeta) -> None:
        """A snapshot file the store already holds, found by a restarted driver. The core
        starts from the log's base record, which has no file when the log was compacted
        behind a checkpoint; without this a follower behind that base would wait for a
        snapshot forever (the driver sees a file reaching it and asks for none). Only a
        newer one than the core knows replaces it."""
        if self.snapshot is None or meta.index > self.snapshot.index:
            self.snapshot = meta

    def base_meta(self, index: int) -> SnapshotMeta:
        """The metadata of the state at ``index`` (<= applied, >= the log's base): for a
        snapshot, or for a compaction with none (package docstring)."""
        if index > self.log.applied or index < self.log.first_index() - 1:
            raise ValueError(f"cannot snapshot or compact at {index}")
        return SnapshotMeta(index, self.log.term(index), self.membership_at(index))

    def compacted(self, index: int) -> None:
        """The store dropped entries <= ``index``: fold older configs into the base."""
        self._history.compacted(index)

    # ------------------------------------------------------------------ ready
    def has_ready(self) -> bool:
        return bool(
            self._out
            or self._needs_broadcast
            or self.log.unstable
            or self.log.pending_snapshot is not None
            or self._repl.snapshot_wanted
            or self.hard_state != self._prev_hard
            or self.soft_state != self._prev_soft
            or (
                self.log.commit > self.log.applied
                and self.log.durable_last_index() > self.log.applied
            )
        )

    def ready(self) -> Ready:
        """Collect pending work. The driver must call :meth:`advance` with it."""
        if self._needs_broadcast:
            self._broadcast_append()
        out, self._out = self._out, Outbox()
        soft = self.soft_state
        hard = self.hard_state
        prev = self._prev_hard
        same_term_vote = (hard.term, hard.vote) == (prev.term, prev.vote)
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != prev else None,
            entries=tuple(self.log.unstable),
            snapshot=self.log.pending_snapshot,
            snapshot_chunks=tuple(out.chunks),
            messages=tuple(out.messages),
            committed=tuple(self.log.committed_to_apply(self.cfg.max_committed_bytes_per_ready)),
            read_states=tuple(out.read_states),
            dropped=tuple(out.dropped),
            early=same_term_vote and self.role is Role.LEADER,
            commit_only=hard != prev and same_term_vote,
            snapshot_wanted=self.log.first_index() - 1 if self._repl.snapshot_wanted else 0,
        )
        self._repl.snapshot_wanted = False
        self._reads.seal()  # reads from now on need a fresh heartbeat round
        self._prev_soft = soft
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and handed out everything in ``rd``."""
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            self.log.snapshot_persisted(rd.snapshot)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed:
            self.log.applied = max(self.log.applied, rd.committed[-1].index)
        if self.role is Role.LEADER:
            mine = self.progress.get(self.id)
            if mine is not None and mine.update_match(self.log.durable_last_index()):
                self._maybe_commit()

    # ------------------------------------------------------------------ roles
    def _become_follower(self, term: int, leader: str | None) -> None:
        was_leader = self.role is Role.LEADER
        if term != self.term:
            self.term, self.vote = term, None
        self.leader_id = leader
        self.role = Role.FOLLOWER if self.promotable else Role.LEARNER
        self._step_role = self._step_follower
        self._tick_role = self._tick_election
        self._reset_timers()
        if was_leader:
            self._reads.abort()
            # A broadcast still owed from our leadership must not go out now:
            # ready() would send it at our *current* term, posing as a leader.
            self._needs_broadcast = False
        log.debug("%s became %s at term %d", self.id, self.role.value, term)

    def _become_pre_candidate(self) -> None:
        self.role = Role.PRE_CANDIDATE
        self.leader_id = None
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election
        self._reset_timers()
        self.votes = {}
        log.debug("%s became pre-candidate at term %d", self.id, self.term)

    def _become_candidate(self) -> None:
        self.term += 1
        self.vote = self.id
        self.role = Role.CANDIDATE
        self.leader_id = None
        self._step_role = self._step_candidate
        self._tick_role = self._tick_election
        self._reset_timers()
        self.votes = {}
        log.debug("%s became candidate at term %d", self.id, self.term)

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self.leader_id = self.id
        self._step_role = self._step_leader
        self._tick_role = self._tick_heartbeat
        self._reset_timers()
        self._repl.reset(self.membership.members)
        self._uncommitted.clear()
        self._append_new([(EntryKind.NOOP, b"")])  # paper §5.4.2 / thesis §6.4
        log.info("%s became leader at term %d", self.id, self.term)

    def _reset_timers(self) -> None:
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self._rng.randrange(
            self.cfg.election_ticks, 2 * self.cfg.election_ticks
        )
        self.lead_transferee = None

    # ------------------------------------------------------------------ ticks
    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.promotable and self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            self._campaign(pre=self.cfg.pre_vote, transfer=False)

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.cfg.election_ticks:
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._repl.quorum_active(self.membership.voters):
                log.info(
                    "%s lost contact with a quorum; stepping down at term %d", self.id, self.term
                )
                self._become_follower(self.term, None)
                return
            self._repl.forget_activity()
            if self.lead_transferee is not None:
                self.lead_transferee = None  # transfer timed out (thesis §3.10)
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            # Carrying the latest read round lets a round whose messages were
            # lost be confirmed by a later heartbeat (sent after those reads).
            self._repl.broadcast_heartbeat(read_seq=self._reads.latest_round)
            self._repl.tick_snapshots()

    def _in_lease(self) -> bool:
        return (
            self.cfg.check_quorum
            and self.leader_id is not None
            and self.election_elapsed < self.cfg.election_ticks
        )

    # ------------------------------------------------------------------ elections
    def _campaign(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self.votes[self.id] = True
        if self._tally(pre):
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for peer in self.membership.voters:  # sorted: deterministic message order
            if peer != self.id:
                self._send(RequestVote(term, self.id, peer, last_index, last_term, pre, transfer))

    def _tally(self, pre: bool) -> bool:
        """Count votes; act on a decided election. Returns True if decided."""
        result = quorum.vote_result(self.membership.voters, self.votes)
        if result is quorum.VoteResult.WON:
            if pre:
                self._campaign(pre=False, transfer=False)
            else:
                self._become_leader()
            return True
        if result is quorum.VoteResult.LOST:
            self._become_follower(self.term, None)
            return True
        return False

    def _handle_vote(self, msg: RequestVote) -> None:
        if msg.pre_vote:
            # Grant a pre-vote for a future term if the log is up to date and
            # we do not currently follow a live leader (checked in step()).
            can_vote = msg.term > self.term
        else:
            can_vote = self.vote == msg.src or (self.vote is None and self.leader_id is None)
        granted = can_vote and self.log.is_up_to_date(msg.last_log_index, msg.last_log_term)
        if granted and not msg.pre_vote:
            self.vote = msg.src
            self.election_elapsed = 0
        reply_term = msg.term if granted and msg.pre_vote else self.term
        self._send(RequestVoteResponse(reply_term, self.id, msg.src, granted, msg.pre_vote))

    def _step_stale(self, msg: Message) -> None:
        """A message from an older term: answer only where it helps the sender."""
        if isinstance(msg, AppendEntries | Heartbeat) and (
            self.cfg.check_quorum or self.cfg.pre_vote
        ):
            # Lets a deposed leader learn the new term (it may be cut off from votes).
            self._send(AppendEntriesResponse(self.term, self.id, msg.src, False))
        elif isinstance(msg, RequestVote) and msg.pre_vote:
            self._send(RequestVoteResponse(self.term, self.id, msg.src, False, True))
        elif isinstance(msg, Propose):
            # Its sender follows a leader of an older term: not appended, say so.
            self._refuse_proposal(msg, f"stale term {msg.term} < {self.term}")

    def _step_candidate(self, msg: Message) -> None:
        pre = self.role is Role.PRE_CANDIDATE
        if isinstance(msg, RequestVoteResponse):
            if msg.pre_vote == pre:
                self.votes[msg.src] = msg.granted
                self._tally(pre)
        elif isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot):
            self._become_follower(msg.term, msg.src)
            self._step_follower(msg)
        elif isinstance(msg, Propose | ProposeConfChange | ReadIndexRequest | TransferLeader):
            self._refuse(msg)

    # ------------------------------------------------------------------ follower
    def _step_follower(self, msg: Message) -> None:
        if isinstance(msg, AppendEntries):
            self._accept_leader(msg.src)
            self._handle_append(msg)
        elif isinstance(msg, Heartbeat):
            self._accept_leader(msg.src)
            self.log.commit_to(min(msg.commit, self.log.last_index()))
            self._send(HeartbeatResponse(self.term, self.id, msg.src, msg.read_seq))
        elif isinstance(msg, InstallSnapshot):
            self._accept_leader(msg.src)
            self._handle_snapshot_chunk(msg)
        elif isinstance(msg, TimeoutNow):
            if self.promotable:
                log.info("%s received TimeoutNow at term %d; campaigning", self.id, self.term)
                self._campaign(pre=False, transfer=True)
        elif isinstance(msg, ReadIndexResponse):
            self._out.read_states.append(ReadState(msg.ctx, msg.index))
        elif isinstance(msg, Propose | ProposeConfChange | ReadIndexRequest | TransferLeader):
            self._refuse(msg)  # a proposal is never forwarded twice: see forwarding.py

    def _accept_leader(self, leader: str) -> None:
        self.election_elapsed = 0
        self.leader_id = leader

    def _handle_append(self, msg: AppendEntries) -> None:
        if msg.prev_index < self.log.commit:
            self._send(AppendEntriesResponse(self.term, self.id, msg.src, True, self.log.commit))
            return
        last_new = self.log.maybe_append(msg.prev_index, msg.prev_term, msg.entries)
        if last_new is not None:
            if msg.entries:  # the log may have changed its configurations (thesis §4.1)
                self._history.rewritten(msg.entries, last_new, self.log.last_index())
                self._refresh_follower_role()
            self.log.commit_to(min(msg.commit, last_new))
            if msg.reply:
                self._send(AppendEntriesResponse(self.term, self.id, msg.src, True, last_new))
            return
        hint, hint_term = self.log.conflict_hint(msg.prev_index)
        self._send(
            AppendEntriesResponse(
                self.term, self.id, msg.src, False, msg.prev_index, hint, hint_term
            )
        )

    def _refresh_follower_role(self) -> None:
        """A follower becomes a learner when it stops being a voter, and back."""
        if self.role in (Role.FOLLOWER, Role.LEARNER):
            self.role = Role.FOLLOWER if self.promotable else Role.LEARNER

    def _handle_snapshot_chunk(self, msg: InstallSnapshot) -> None:
        answer, chunk = self._snapshot_in.on_chunk(msg, self.term, self.id, self.log.commit)
        if chunk is not None:
            self._out.chunks.append(chunk)
            if chunk.done:
                self._install_snapshot(chunk.meta)
        self._send(answer)

    def _install_snapshot(self, meta: SnapshotMeta) -> None:
        """Every chunk of ``meta`` has arrived: adopt it unless our log already has it.

        Either way the file is complete in the snapshot store, so it is the latest
        snapshot this node can send: as leader it must know it, since its driver
        asks storage for no copy while a file reaching the log's base exists (a
        follower behind that base then waited for good; found by the node
        simulation, seed 1353867)."""
        if self.snapshot is None or meta.index > self.snapshot.index:
            self.snapshot = meta
        if self.log.matches(meta.index, meta.term):
            self.log.commit_to(meta.index)  # we already hold it: just fast-forward
            return
        log.info("%s installing snapshot at index %d term %d", self.id, meta.index, meta.term)
        self.log.restore(meta)
        self._history.restored(meta)
        self._refresh_follower_role()

    def _refuse(self, msg: Message) -> None:
        """A leader-only request reached a non-leader: refuse a proposal so the
        asker fails fast; forward or refuse the others (forwarding.py)."""
        if isinstance(msg, Propose):
            self._refuse_proposal(msg, forwarding.not_leader(self.id, self.leader_id))
        elif isinstance(msg, ProposeConfChange | ReadIndexRequest | TransferLeader):
            reply = forwarding.redirect_or_refuse(msg, self.term, self.id, self.leader_id)
            if reply is not None:
                self._send(reply)

    def _refuse_proposal(self, msg: Propose, reason: str) -> None:
        """Hand a forwarded proposal back: certainly not appended here."""
        log.debug("%s refused %d proposal(s) from %s: %s", self.id, len(msg.data), msg.src, reason)
        self._send(ProposeRefused(self.term, self.id, msg.src, msg.data, reason))

    # ------------------------------------------------------------------ leader
    def _step_leader(self, msg: Message) -> None:
        if isinstance(msg, AppendEntriesResponse):
            self._handle_append_response(msg)
        elif isinstance(msg, HeartbeatResponse):
            self._handle_heartbeat_response(msg)
        elif isinstance(msg, InstallSnapshotResponse):
            self._repl.on_snapshot_response(msg)
        elif isinstance(msg, Propose):
            try:
                self.propose_batch(msg.data)
            except ProposalDropped as e:
                self._refuse_proposal(msg, e.reason)
        elif isinstance(msg, ProposeConfChange):
            try:
                self.propose_conf_change(msg.change)
            except ProposalDropped as e:
                log.info("%s refused membership change from %s: %s", self.id, msg.src, e)
        elif isinstance(msg, ReadIndexRequest):
            self._leader_read(msg.ctx, msg.src)
        elif isinstance(msg, TransferLeader):
            try:
                self._start_transfer(msg.target)
            except ProposalDropped as e:  # a peer's bad request must not raise out of step()
                log.info("%s refused leadership transfer from %s: %s", self.id, msg.src, e)

    def _check_can_accept(self, size: int) -> None:
        if self.lead_transferee is not None:
            raise ProposalDropped("leadership transfer in progress")
        self._uncommitted.check(size)

    def _append_new(self, items: Sequence[tuple[EntryKind, bytes]]) -> int:
        index = self.log.last_index()
        entries = []
        for kind, data in items:
            index += 1
            entries.append(Entry(self.term, index, kind, data))
        self.log.append(entries)
        self._uncommitted.add(entries)
        if self._history.appended(entries):
            self._sync_progress_to_membership()
        self._needs_broadcast = True
        self._maybe_commit()  # a cluster of one commits once the entry is durable
        return index

    def _sync_progress_to_membership(self) -> None:
        """Track every member, and a removed peer until its removal commits."""
        self._repl.track(self._history.tracked(self.id, self.log.commit))

    def _maybe_commit(self) -> None:
        voters = self.membership.voters
        matches = [self.progress[v].match if v in self.progress else 0 for v in voters]
        index = quorum.quorum_index(matches)
        # Paper §5.4.2: only entries of the current term are committed by counting.
        if index > self.log.commit and self.log.term_or_zero(index) == self.term:
            first_of_term = self.log.term_or_zero(self.log.commit) != self.term
            committed_config = self._history.commits_between(self.log.commit, index)
            self.log.commit_to(index)
            self._uncommitted.release(index)
            if committed_config:
                self._sync_progress_to_membership()  # a removed peer is dropped now
            self._needs_broadcast = True  # followers learn the commit promptly
            if first_of_term:
                self._reads.noop_committed(self.log.commit, self.membership.voters)
            self._maybe_finish_removal()

    def _maybe_finish_removal(self) -> None:
        """A leader removed from the configuration steps down once that commits."""
        if self._history.removal_committed(self.id, self.log.commit):
            log.info("%s was removed from the cluster; stepping down", self.id)
            self._broadcast_append()  # still leader of this term: tell the commit
            self._become_follower(self.term, None)

    def _broadcast_append(self) -> None:
        self._needs_broadcast = False
        self._repl.broadcast_append()

    def _handle_append_response(self, msg: AppendEntriesResponse) -> None:
        pr = self._repl.on_append_response(msg)
        if pr is None:
            return
        if pr.acknowledge(msg.match_index):
            self._maybe_commit()
            if msg.src == self.lead_transferee and pr.match == self.log.last_index():
                self._send(TimeoutNow(self.term, self.id, msg.src))
        self._repl.send_more(msg.src)

    def _handle_heartbeat_response(self, msg: HeartbeatResponse) -> None:
        if not self._repl.on_heartbeat_response(msg):
            return
        if msg.read_seq:
            self._reads.acknowledged(msg.src, msg.read_seq, self.membership.voters)

    # ------------------------------------------------------------------ ReadIndex
    def _leader_read(self, ctx: bytes, requester: str) -> None:
        noop_committed = self.log.term_or_zero(self.log.commit) == self.term
        self._reads.request(ctx, requester, self.log.commit, noop_committed, self.membership.voters)

    def _answer_read(self, ctx: bytes, requester: str, index: int) -> None:
        if requester == self.id:
            self._out.read_states.append(ReadState(ctx, index))
        else:
            self._send(ReadIndexResponse(self.term, self.id, requester, ctx, index))

    # ------------------------------------------------------------------ transfer
    def _start_transfer(self, to: str) -> None:
        to = self._repl.transfer_target(self.membership.voters, to)
        if to in (self.id, self.lead_transferee):
            return
        log.info("%s transferring leadership to %s at term %d", self.id, to, self.term)
        self.lead_transferee = to
        self.election_elapsed = 0
        pr = self.progress[to]
        if pr.match == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, to))
        else:
            self._repl.send_append(to)

    # ------------------------------------------------------------------ output
    def _send(self, msg: Message) -> None:
        self._out.messages.append(msg)
