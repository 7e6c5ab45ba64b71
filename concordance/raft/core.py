"""RaftCore: a pure, deterministic Raft state machine (no I/O, no clock, no randomness).

Theory of operation:

* Inputs: ``step(msg)``, ``tick()``, ``propose(data)``, ``read_index(ctx)``,
  ``propose_conf_change(change)``, ``transfer_leadership(to)``,
  ``snapshot_taken(index)``. Outputs accumulate until the driver calls
  ``ready()``, handles the Ready in order (persist, send, apply) and calls
  ``advance(ready)``; see the package docstring for the contract.
* Roles are functions: ``_step_role`` and ``_tick_role`` are swapped only in the
  ``_become_*`` methods, each of which logs one line.
* The randomness for election timeouts is an injected ``random.Random``-like
  object, so a seed replays a whole cluster exactly.
* Membership is single-server change: a CONFIG entry takes effect as soon as it
  is in the log (thesis §4.1), a leader appends one only after committing an
  entry of its own term and with no other change uncommitted (raft-dev 2015).
* Forwarded proposals: a follower sends ``Propose`` to the leader it knows.
  Whoever receives one and does not append it (a leader refusing it, any node
  that is not leader, or one that sees it at a stale term) answers
  ``ProposeRefused`` with the same data, and the forwarder hands the data out
  in ``Ready.dropped``. A follower never forwards a forwarded proposal again: a
  refusal from the next hop would reach it, not the origin. ``ProposeRefused``
  is accepted at any term and changes no term or role: it only says "not
  appended by its sender", which stays true.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from concordance.errors import NotLeader, ProposalDropped
from concordance.raft import quorum
from concordance.raft.config import RaftConfig
from concordance.raft.entries import (
    ConfChange,
    Entry,
    EntryKind,
    HardState,
    Membership,
    SnapshotMeta,
)
from concordance.raft.log import RaftLog
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
from concordance.raft.progress import Progress, ProgressState
from concordance.raft.read_only import ReadIndexQueue
from concordance.raft.ready import ReadState, Ready, Role, SnapshotChunk, SoftState
from concordance.raft.stores import LogCompacted, LogStore, SnapshotStore

log = logging.getLogger("concordance.raft")


class Rng(Protocol):
    """The slice of ``random.Random`` the core uses."""

    def randrange(self, start: int, stop: int) -> int: ...


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
        self._snapshots = snapshots
        self.snapshot = snapshot  # latest snapshot this node can send
        base = snapshot.index if snapshot else 0
        self.log = RaftLog(
            store, commit=max(hard_state.commit, base), applied=max(base, applied or 0)
        )
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.leader_id: str | None = None
        # Membership history: base (at the snapshot) + CONFIG entries in the log.
        self._config_base = snapshot.membership if snapshot else Membership()
        self._config_base_index = base
        self._configs: list[tuple[int, Membership]] = [
            (e.index, Membership.decode(e.data)) for e in store.config_entries() if e.index > base
        ]
        self.role = Role.FOLLOWER
        self._step_role: Callable[[Message], None] = self._step_follower
        self._tick_role: Callable[[], None] = self._tick_election
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self.cfg.election_ticks
        self.votes: dict[str, bool] = {}
        self.progress: dict[str, Progress] = {}
        self.lead_transferee: str | None = None
        self._transfer_elapsed = 0
        self._uncommitted: deque[tuple[int, int]] = deque()  # (index, bytes) this term
        self._uncommitted_bytes = 0
        # ReadIndex (thesis §6.4).
        self._reads = ReadIndexQueue()
        # Snapshot being received from the leader: (meta, next offset).
        self._receiving: tuple[SnapshotMeta, int] | None = None
        # Outputs, drained by ready().
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._chunks: list[SnapshotChunk] = []
        self._dropped: list[bytes] = []  # forwarded proposals refused by their receiver
        self._needs_broadcast = False
        self._prev_hard = hard_state
        self._prev_soft = SoftState(self.role, None, self.term)
        self._become_follower(self.term, None)

    # ------------------------------------------------------------------ queries
    @property
    def membership(self) -> Membership:
        return self._configs[-1][1] if self._configs else self._config_base

    def membership_at(self, index: int) -> Membership:
        """The configuration in force at log position ``index``."""
        current = self._config_base
        for at, members in self._configs:
            if at > index:
                break
            current = members
        return current

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
            self._dropped.extend(msg.data)
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
        if self._configs and self._configs[-1][0] > self.log.commit:
            raise ProposalDropped("another membership change is still uncommitted")
        try:
            new = change.apply_to(self.membership)
        except ValueError as e:
            raise ProposalDropped(str(e)) from e
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
        """The state machine snapshotted itself at ``index`` (<= applied).

        Returns the metadata the driver records with the snapshot; the driver
        may then compact the store up to ``index`` and call :meth:`compacted`.
        """
        if index > self.log.applied or index < self.log.first_index() - 1:
            raise ValueError(f"cannot snapshot at {index}")
        if self.snapshot is not None and index <= self.snapshot.index:
            raise ValueError(f"snapshot at {index} is not newer than {self.snapshot.index}")
        meta = SnapshotMeta(index, self.log.term(index), self.membership_at(index))
        self.snapshot = meta  # only once its file is durable: the leader will send it
        return meta

    def compacted(self, index: int) -> None:
        """The store dropped entries <= ``index``: fold older configs into the base."""
        keep: list[tuple[int, Membership]] = []
        for at, members in self._configs:
            if at <= index:
                self._config_base, self._config_base_index = members, at
            else:
                keep.append((at, members))
        self._configs = keep

    # ------------------------------------------------------------------ ready
    def has_ready(self) -> bool:
        return bool(
            self._msgs
            or self._needs_broadcast
            or self._read_states
            or self._dropped
            or self._chunks
            or self.log.unstable
            or self.log.pending_snapshot is not None
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
        soft = self.soft_state
        hard = self.hard_state
        prev = self._prev_hard
        same_term_vote = (hard.term, hard.vote) == (prev.term, prev.vote)
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != prev else None,
            entries=tuple(self.log.unstable),
            snapshot=self.log.pending_snapshot,
            snapshot_chunks=tuple(self._chunks),
            messages=tuple(self._msgs),
            committed=tuple(self.log.committed_to_apply(self.cfg.max_committed_bytes_per_ready)),
            read_states=tuple(self._read_states),
            dropped=tuple(self._dropped),
            early=same_term_vote and self.role is Role.LEADER,
            commit_only=hard != prev and same_term_vote,
        )
        self._msgs, self._read_states, self._chunks, self._dropped = [], [], [], []
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
            self._abort_reads()
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
        last = self.log.last_index()
        self.progress = {
            peer: Progress(match=0, next=last + 1, recent_active=True)
            for peer in self.membership.members
        }
        self.progress.setdefault(self.id, Progress(next=last + 1))
        self.progress[self.id].match = self.log.durable_last_index()
        self._uncommitted.clear()
        self._uncommitted_bytes = 0
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
            if self.cfg.check_quorum and not self._quorum_active():
                log.info(
                    "%s lost contact with a quorum; stepping down at term %d", self.id, self.term
                )
                self._become_follower(self.term, None)
                return
            for peer, pr in self.progress.items():
                pr.recent_active = peer == self.id
            if self.lead_transferee is not None:
                self.lead_transferee = None  # transfer timed out (thesis §3.10)
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            # Carrying the latest read round lets a round whose messages were
            # lost be confirmed by a later heartbeat (sent after those reads).
            self._broadcast_heartbeat(read_seq=self._reads.latest_round)
            self._tick_snapshots()

    def _in_lease(self) -> bool:
        return (
            self.cfg.check_quorum
            and self.leader_id is not None
            and self.election_elapsed < self.cfg.election_ticks
        )

    def _quorum_active(self) -> bool:
        voters = self.membership.voters
        active = sum(
            1
            for v in voters
            if v == self.id or (v in self.progress and self.progress[v].recent_active)
        )
        return active >= quorum.quorum_size(len(voters))

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
            self._read_states.append(ReadState(msg.ctx, msg.index))
        elif isinstance(msg, Propose):
            # Never forwarded again: the next hop's refusal would come back to us,
            # not to the origin, which would wait for its deadline. Refused now,
            # it fails fast and is retried once the origin knows the leader.
            self._refuse(msg)
        elif isinstance(msg, ProposeConfChange | ReadIndexRequest | TransferLeader):
            if self.leader_id is not None and self.leader_id != msg.src:
                self._send(_redirect(msg, self.term, self.id, self.leader_id))
            else:
                self._refuse(msg)

    def _accept_leader(self, leader: str) -> None:
        self.election_elapsed = 0
        self.leader_id = leader

    def _handle_append(self, msg: AppendEntries) -> None:
        if msg.prev_index < self.log.commit:
            self._send(AppendEntriesResponse(self.term, self.id, msg.src, True, self.log.commit))
            return
        last_new = self.log.maybe_append(msg.prev_index, msg.prev_term, msg.entries)
        if last_new is not None:
            if msg.entries:
                self._track_configs(msg.entries, last_new)
            self.log.commit_to(min(msg.commit, last_new))
            self._send(AppendEntriesResponse(self.term, self.id, msg.src, True, last_new))
            return
        # Fast backtracking: point the leader at the start of our conflicting term.
        if msg.prev_index > self.log.last_index():
            hint, hint_term = self.log.last_index() + 1, 0
        else:
            hint_term = self.log.term_or_zero(msg.prev_index)
            hint = self.log.last_index_of_term_at_most(hint_term - 1, msg.prev_index) + 1
        self._send(
            AppendEntriesResponse(
                self.term, self.id, msg.src, False, msg.prev_index, hint, hint_term
            )
        )

    def _track_configs(self, entries: Sequence[Entry], last_new: int) -> None:
        """Keep the membership history in step with a log just rewritten by
        AppendEntries: configs the message carried replace whatever stood at
        those indexes, and configs past a truncated end are gone."""
        first, log_last = entries[0].index, self.log.last_index()
        carried = [
            (e.index, Membership.decode(e.data)) for e in entries if e.kind is EntryKind.CONFIG
        ]
        before = [(i, m) for i, m in self._configs if i < first]
        after = [(i, m) for i, m in self._configs if last_new < i <= log_last]
        self._configs = before + carried + after
        if self.role in (Role.FOLLOWER, Role.LEARNER):
            self.role = Role.FOLLOWER if self.promotable else Role.LEARNER

    def _handle_snapshot_chunk(self, msg: InstallSnapshot) -> None:
        meta = msg.meta
        if meta.index <= self.log.commit:
            self._receiving = None
            self._send(
                InstallSnapshotResponse(
                    self.term, self.id, msg.src, meta.index, msg.offset, done=True
                )
            )
            return
        if msg.offset == 0:
            self._receiving = (meta, 0)
        if self._receiving is None or self._receiving[0] != meta:
            self._send(InstallSnapshotResponse(self.term, self.id, msg.src, meta.index, 0))
            return
        expected = self._receiving[1]
        if msg.offset != expected:
            self._send(InstallSnapshotResponse(self.term, self.id, msg.src, meta.index, expected))
            return
        self._chunks.append(SnapshotChunk(meta, msg.offset, msg.data, msg.done))
        expected += len(msg.data)
        if not msg.done:
            self._receiving = (meta, expected)
            self._send(InstallSnapshotResponse(self.term, self.id, msg.src, meta.index, expected))
            return
        self._receiving = None
        if self.log.matches(meta.index, meta.term):
            self.log.commit_to(meta.index)  # we already hold it: just fast-forward
        else:
            log.info("%s installing snapshot at index %d term %d", self.id, meta.index, meta.term)
            self.log.restore(meta)
            self.snapshot = meta
            self._config_base, self._config_base_index = meta.membership, meta.index
            self._configs = []
            if self.role in (Role.FOLLOWER, Role.LEARNER):
                self.role = Role.FOLLOWER if self.promotable else Role.LEARNER
        self._send(
            InstallSnapshotResponse(self.term, self.id, msg.src, meta.index, expected, done=True)
        )

    def _refuse(self, msg: Message) -> None:
        """Answer a forwarded request we cannot serve so the asker fails fast."""
        if isinstance(msg, ReadIndexRequest):
            self._send(ReadIndexResponse(self.term, self.id, msg.src, msg.ctx, 0))
        elif isinstance(msg, Propose):
            leader = f"; leader is {self.leader_id}" if self.leader_id else ""
            self._refuse_proposal(msg, f"{self.id} is not the leader{leader}")

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
            self._handle_snapshot_response(msg)
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
        if self._uncommitted_bytes + size > self.cfg.max_uncommitted_bytes and self._uncommitted:
            raise ProposalDropped("too much uncommitted data; slow down")

    def _append_new(self, items: Sequence[tuple[EntryKind, bytes]]) -> int:
        index = self.log.last_index()
        entries = []
        for kind, data in items:
            index += 1
            entries.append(Entry(self.term, index, kind, data))
        self.log.append(entries)
        for entry in entries:
            self._uncommitted.append((entry.index, entry.size()))
            self._uncommitted_bytes += entry.size()
            if entry.kind is EntryKind.CONFIG:
                self._configs.append((entry.index, Membership.decode(entry.data)))
                self._sync_progress_to_membership()
        self._needs_broadcast = True
        self._maybe_commit()  # a cluster of one commits once the entry is durable
        return index

    def _sync_progress_to_membership(self) -> None:
        # A peer being removed keeps its progress until the removal commits, so
        # the entry that removes it reaches it too: it then knows it is out
        # (and never campaigns) instead of believing it is still a voter.
        committed = self.membership_at(self.log.commit)
        members = set(self.membership.members) | set(committed.members) | {self.id}
        last = self.log.last_index()
        for peer in sorted(members - self.progress.keys()):
            self.progress[peer] = Progress(match=0, next=last + 1, recent_active=True)
        for peer in sorted(self.progress.keys() - members):
            del self.progress[peer]

    def _maybe_commit(self) -> None:
        voters = self.membership.voters
        matches = [self.progress[v].match if v in self.progress else 0 for v in voters]
        index = quorum.quorum_index(matches)
        # Paper §5.4.2: only entries of the current term are committed by counting.
        if index > self.log.commit and self.log.term_or_zero(index) == self.term:
            first_of_term = self.log.term_or_zero(self.log.commit) != self.term
            committed_config = bool(self._configs) and (
                self.log.commit < self._configs[-1][0] <= index
            )
            self.log.commit_to(index)
            while self._uncommitted and self._uncommitted[0][0] <= index:
                self._uncommitted_bytes -= self._uncommitted.popleft()[1]
            if committed_config:
                self._sync_progress_to_membership()  # a removed peer is dropped now
            self._needs_broadcast = True  # followers learn the commit promptly
            if first_of_term:
                self._release_reads_after_noop()
            self._maybe_finish_removal()

    def _maybe_finish_removal(self) -> None:
        """A leader removed from the configuration steps down once that commits."""
        removed = not self.membership.contains(self.id)
        if removed and self._configs and self._configs[-1][0] <= self.log.commit:
            log.info("%s was removed from the cluster; stepping down", self.id)
            self._broadcast_append()  # still leader of this term: tell the commit
            self._become_follower(self.term, None)

    def _broadcast_append(self) -> None:
        self._needs_broadcast = False
        for peer in self.progress:
            if peer != self.id:
                self._send_append(peer, allow_empty=True)

    def _send_append(self, peer: str, allow_empty: bool = False) -> None:
        """Send the next batch of entries to ``peer`` if its flow control allows.

        With nothing new to send, ``allow_empty`` still sends an empty
        AppendEntries (a probe, or a commit update to an idle follower).
        """
        pr = self.progress[peer]
        if pr.paused(self.cfg.max_inflight_msgs):
            return
        if pr.next < self.log.first_index():
            self._start_snapshot(peer, pr)
            return
        last = self.log.last_index()
        if pr.next > last and (
            not allow_empty or (pr.state is ProgressState.REPLICATE and pr.inflight)
        ):
            return
        try:
            prev_term = self.log.term(pr.next - 1)
            entries = self.log.slice(pr.next, last + 1, self.cfg.max_msg_bytes)
        except LogCompacted:
            self._start_snapshot(peer, pr)
            return
        self._send(
            AppendEntries(
                self.term, self.id, peer, pr.next - 1, prev_term, tuple(entries), self.log.commit
            )
        )
        if entries:
            pr.sent_entries(entries[-1].index)
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True

    def _handle_append_response(self, msg: AppendEntriesResponse) -> None:
        pr = self.progress.get(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        if not msg.success:
            if msg.conflict_term:
                found = self.log.last_index_of_term_at_most(msg.conflict_term, msg.match_index)
                hint = (
                    found + 1
                    if self.log.term_or_zero(found) == msg.conflict_term
                    else msg.conflict_index
                )
            else:
                hint = msg.conflict_index or msg.match_index
            if pr.back_off(msg.match_index, hint):
                self._send_append(msg.src)
            return
        old_state = pr.state
        if pr.update_match(msg.match_index):
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.snapshot_index:
                pr.become_probe()
                pr.become_replicate()
            self._maybe_commit()
            if msg.src == self.lead_transferee and pr.match == self.log.last_index():
                self._send(TimeoutNow(self.term, self.id, msg.src))
        elif old_state is ProgressState.PROBE and pr.match == msg.match_index:
            pr.become_replicate()
        while pr.next <= self.log.last_index() and not pr.paused(self.cfg.max_inflight_msgs):
            before = pr.next
            self._send_append(msg.src)
            if pr.next == before:
                break

    def _handle_heartbeat_response(self, msg: HeartbeatResponse) -> None:
        pr = self.progress.get(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        pr.probe_sent = False
        if pr.match < self.log.last_index():
            # Two heartbeat rounds without progress: an AppendEntries was lost;
            # fall back to probing from the last known match.
            pr.stalled_heartbeats += 1
            if pr.state is ProgressState.REPLICATE and pr.stalled_heartbeats >= 2:
                pr.become_probe()
            self._send_append(msg.src)
        if msg.read_seq:
            self._reads.ack(msg.src, msg.read_seq)
            for read in self._reads.confirmed(self.membership.voters, self.id):
                self._answer_read(read.ctx, read.requester, read.index)

    def _broadcast_heartbeat(self, read_seq: int) -> None:
        for peer, pr in self.progress.items():
            if peer != self.id:
                commit = min(pr.match, self.log.commit)
                self._send(Heartbeat(self.term, self.id, peer, commit, read_seq))

    # ------------------------------------------------------------------ snapshots
    def _start_snapshot(self, peer: str, pr: Progress) -> None:
        if self.snapshot is None or self._snapshots is None:
            log.warning("%s needs a snapshot for %s but has none", self.id, peer)
            return
        pr.become_snapshot(self.snapshot.index)
        self._send_chunk(peer, pr)

    def _send_chunk(self, peer: str, pr: Progress) -> None:
        assert self.snapshot is not None and self._snapshots is not None
        meta = self.snapshot
        if pr.snapshot_index != meta.index:
            pr.become_snapshot(meta.index)
        size = self._snapshots.size(meta)
        data = self._snapshots.read_chunk(meta, pr.snapshot_offset, self.cfg.snapshot_chunk_bytes)
        done = pr.snapshot_offset + len(data) >= size
        pr.snapshot_idle_ticks = 0
        self._send(InstallSnapshot(self.term, self.id, peer, meta, pr.snapshot_offset, data, done))

    def _handle_snapshot_response(self, msg: InstallSnapshotResponse) -> None:
        pr = self.progress.get(msg.src)
        if pr is None:
            return
        pr.recent_active = True
        if pr.state is not ProgressState.SNAPSHOT or msg.index != pr.snapshot_index:
            return
        if msg.done:
            pr.update_match(msg.index)
            pr.become_probe()
            self._send_append(msg.src)
            return
        pr.snapshot_offset = msg.next_offset
        self._send_chunk(msg.src, pr)

    def _tick_snapshots(self) -> None:
        """Resend the current chunk to followers whose snapshot transfer stalled."""
        for peer, pr in self.progress.items():
            if pr.state is ProgressState.SNAPSHOT and peer != self.id:
                pr.snapshot_idle_ticks += 1
                if pr.snapshot_idle_ticks >= self.cfg.election_ticks:
                    self._send_chunk(peer, pr)

    # ------------------------------------------------------------------ ReadIndex
    def _leader_read(self, ctx: bytes, requester: str) -> None:
        if self.log.term_or_zero(self.log.commit) != self.term:
            self._reads.defer(ctx, requester)  # thesis §6.4 step 1: wait for the no-op
            return
        index = self.log.commit
        if len(self.membership.voters) <= 1 and self.membership.is_voter(self.id):
            self._answer_read(ctx, requester, index)
            return
        new_round = self._reads.add(ctx, requester, index)
        if new_round is not None:
            self._broadcast_heartbeat(new_round)

    def _release_reads_after_noop(self) -> None:
        for ctx, requester in self._reads.take_deferred():
            self._leader_read(ctx, requester)

    def _answer_read(self, ctx: bytes, requester: str, index: int) -> None:
        if requester == self.id:
            self._read_states.append(ReadState(ctx, index))
        else:
            self._send(ReadIndexResponse(self.term, self.id, requester, ctx, index))

    def _abort_reads(self) -> None:
        for ctx, requester in self._reads.abort():
            if requester == self.id:
                self._read_states.append(ReadState(ctx, 0))
            # Remote askers time out; a stale-term answer would be ignored anyway.

    # ------------------------------------------------------------------ transfer
    def _start_transfer(self, to: str) -> None:
        voters = [v for v in self.membership.voters if v != self.id]
        if not to:
            if not voters:
                raise ProposalDropped("no other voter to transfer leadership to")
            to = max(voters, key=lambda v: (self.progress[v].match, v))
        if to == self.id:
            return
        if to not in voters:
            raise ProposalDropped(f"{to} is not a voter")
        if self.lead_transferee == to:
            return
        log.info("%s transferring leadership to %s at term %d", self.id, to, self.term)
        self.lead_transferee = to
        self.election_elapsed = 0
        pr = self.progress[to]
        if pr.match == self.log.last_index():
            self._send(TimeoutNow(self.term, self.id, to))
        else:
            self._send_append(to)

    # ------------------------------------------------------------------ output
    def _send(self, msg: Message) -> None:
        self._msgs.append(msg)


def _redirect(msg: Message, term: int, src: str, leader: str) -> Message:
    """Forward a request that reached a follower to the leader it knows
    (never a ``Propose``: a follower refuses those, see ``_step_follower``)."""
    if isinstance(msg, ProposeConfChange):
        return ProposeConfChange(term, src, leader, msg.change)
    if isinstance(msg, TransferLeader):
        return TransferLeader(term, src, leader, msg.target)
    assert isinstance(msg, ReadIndexRequest)
    # Re-asking on behalf of the origin would mis-route the answer: refuse instead.
    return ReadIndexResponse(term, src, msg.src, msg.ctx, 0)
