"""A seeded, deterministic simulation of a whole Raft cluster in one process.

Every source of nondeterminism (network delay, drops, duplication, partitions,
crashes, client traffic, membership churn) is drawn from one
``random.Random(seed)``, so a seed replays exactly; ``trace_hash`` fingerprints
a run so two runs of one seed can be compared.

Each simulated node runs the real :class:`RaftCore` under a driver that follows
the package contract: persist the Ready (entries, hard state, snapshot) into a
:class:`MemoryRaftStore` (the node's "disk"), then send its messages, then
apply committed entries to a toy state machine, then ``advance``. A crash
throws away the core and the state machine, keeping only the disk; restart
rebuilds both from it (durable state + log replay).

Compaction follows the driver's rule: every ``snapshot_every`` applied
entries the state machine makes its state durable (as storage checkpoints
state.db) and the log is cut behind that, with no snapshot; a snapshot is
made only when the core asks for one (``Ready.snapshot_wanted``), sometimes
late, from the state machine as it is. A restart resumes from the durable
state, or from the log's base snapshot when a received one is newer; a log
cut beyond the durable state is a failure.

After every step the checker asserts the safety properties of the Raft paper
(Fig. 3): Election Safety, Leader Append-Only, Log Matching, Leader
Completeness, State Machine Safety, plus "no message leaves before the state it
reflects is durable". At the end the cluster is healed and must elect a leader
and commit within a bounded time (liveness), every acknowledged proposal must
have been applied exactly once in the same order on every member, and every
ReadIndex read must have seen every write acknowledged before it began.

Forwarded proposals that come back in ``Ready.dropped`` count as failed for
the client, and the checker holds the core to its word: a command reported
dropped must never be in any node's log (so never applied). The promise
needs a transport that delivers each ``Propose`` at most once, which the real
one does and this network does not (it duplicates messages): a command whose
``Propose`` was duplicated in flight is exempt.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from concordance.errors import NotLeader, ProposalDropped
from concordance.raft.config import RaftConfig
from concordance.raft.core import RaftCore
from concordance.raft.entries import (
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    Membership,
    SnapshotMeta,
)
from concordance.raft.messages import (
    AppendEntriesResponse,
    Message,
    Propose,
    RequestVote,
    RequestVoteResponse,
)
from concordance.raft.ready import Ready, Role
from concordance.raft.stores import MemoryRaftStore, MemorySnapshotStore

TICK = 10  # simulated time units per Raft tick


class SafetyViolation(AssertionError):
    """A Raft safety or client-visible correctness property failed."""


@dataclass
class SimOptions:
    """Fault and workload knobs; defaults give a hostile but healable network."""

    nodes: int = 3
    steps: int = 3000  # time units of faulty operation
    drop: float = 0.05
    duplicate: float = 0.03
    max_delay: int = 12  # time units; spread > TICK reorders messages
    partition_rate: float = 0.004
    crash_rate: float = 0.0003  # per node per time unit
    restart_rate: float = 0.01  # per down node per time unit
    torn_ready_rate: float = 0.0005  # crash in the middle of handling a Ready
    leader_fault_rate: float = 0.0  # crash or isolate the current leader, per time unit
    propose_rate: float = 0.15
    read_rate: float = 0.05
    churn_rate: float = 0.001
    transfer_rate: float = 0.001
    snapshot_every: int = 40  # applied entries between compactions
    heal_budget: int = 200 * TICK  # liveness bound after healing


@dataclass
class SimNode:
    node_id: str
    disk: MemoryRaftStore
    snapshots: MemorySnapshotStore
    core: RaftCore | None = None
    applied: list[str] = field(default_factory=list)  # state machine: ordered command ids
    applied_index: int = 0
    durable: tuple[tuple[str, ...], int] = ((), 0)  # the state machine's durable state, index
    incoming: dict[tuple[int, int], bytearray] = field(default_factory=dict)
    reads: list[tuple[bytes, int]] = field(default_factory=list)  # confirmed (ctx, index)

    @property
    def up(self) -> bool:
        return self.core is not None


@dataclass
class _Read:
    node: str
    acked_before: frozenset[str]


class Simulation:
    """One seeded run. ``run()`` raises :class:`SafetyViolation` on any failure."""

    def __init__(
        self,
        seed: int,
        options: SimOptions | None = None,
        core_factory: Callable[..., RaftCore] = RaftCore,
    ) -> None:
        self.seed = seed
        self.opt = options or SimOptions()
        self.rng = random.Random(seed)
        self.core_factory = core_factory
        self.cfg = RaftConfig(
            election_ticks=10,
            heartbeat_ticks=1,
            max_msg_bytes=2048,
            max_inflight_msgs=8,
            snapshot_chunk_bytes=256,
        )
        self.now = 0
        self._seq = 0
        self._queue: list[tuple[int, int, Message]] = []
        self.blocked: set[tuple[str, str]] = set()
        ids = [f"n{i}" for i in range(1, self.opt.nodes + 1)]
        boot = Membership(tuple(ids))
        self.nodes: dict[str, SimNode] = {}
        for nid in ids:
            node = SimNode(nid, MemoryRaftStore(), MemorySnapshotStore())
            node.disk.record_snapshot(SnapshotMeta(0, 0, boot))
            self.nodes[nid] = node
            self._start(node)
        # Global records for the checker.
        self.leaders: dict[int, str] = {}
        self.log_facts: dict[tuple[int, int], tuple[str, int]] = {}  # (i, t) -> (digest, prev t)
        self.committed: dict[int, int] = {}  # index -> term, as committed by anyone
        self.applied_global: dict[int, str] = {}
        self.max_durable_term: dict[str, int] = dict.fromkeys(ids, 0)
        # Client bookkeeping.
        self._next_cmd = 0
        self.acked: dict[str, int] = {}  # command id -> ack time
        self.probes: set[str] = set()  # the heal phase's own proposals, not the workload's
        self.proposed: dict[str, str] = {}  # command id -> origin node
        self.dropped: set[str] = set()  # reported not appended (Ready.dropped)
        self.appended: set[str] = set()  # commands in some node's log, ever
        self.duplicated: set[str] = set()  # commands whose Propose the network duplicated
        self.pending_reads: dict[bytes, _Read] = {}
        self.reads_checked = 0
        self.trace = hashlib.sha256()
        self.events = 0

    # ---------------------------------------------------------------- lifecycle
    def _start(self, node: SimNode) -> None:
        hard, snap = node.disk.initial_state()
        node.core = self.core_factory(
            node.node_id,
            node.disk,
            hard,
            snap,
            self.cfg,
            random.Random(self.rng.getrandbits(32)),
            snapshots=node.snapshots,
        )
        state, index = node.durable
        node.applied, node.applied_index = list(state), index
        if snap is not None and snap.index > index:  # a snapshot installed, not yet restored
            if not node.snapshots.has(snap):
                self._fail(f"{node.node_id}: log base {snap.index} beyond durable state {index}")
            state = json.loads(node.snapshots.get(snap))
            node.applied, node.applied_index = list(state), snap.index
            node.durable = (tuple(state), snap.index)
        node.incoming.clear()
        node.reads.clear()

    def _crash(self, node: SimNode) -> None:
        node.core = None
        self._note("crash", node.node_id)

    # ---------------------------------------------------------------- network
    def _deliver_later(self, msg: Message) -> None:
        if (msg.src, msg.dst) in self.blocked or self.rng.random() < self.opt.drop:
            return
        copies = 2 if self.rng.random() < self.opt.duplicate else 1
        if copies == 2 and isinstance(msg, Propose):
            self.duplicated.update(d.decode() for d in msg.data)
        for _ in range(copies):
            self._seq += 1
            at = self.now + self.rng.randint(1, self.opt.max_delay)
            heapq.heappush(self._queue, (at, self._seq, msg))

    def _partition(self) -> None:
        ids = sorted(self.nodes)
        kind = self.rng.choice(["isolate", "split", "oneway", "heal", "heal"])
        self.blocked.clear()
        if kind == "isolate":
            victim = self.rng.choice(ids)
            self.blocked |= {(victim, o) for o in ids} | {(o, victim) for o in ids}
        elif kind == "split":
            self.rng.shuffle(ids)
            cut = self.rng.randint(1, len(ids) - 1)
            left, right = ids[:cut], ids[cut:]
            self.blocked |= {(a, b) for a in left for b in right}
            self.blocked |= {(b, a) for a in left for b in right}
        elif kind == "oneway":
            a, b = self.rng.sample(ids, 2)
            self.blocked.add((a, b))
        self._note("partition", kind)

    def _fault_leader(self) -> None:
        """Target the leader: the hardest moments for Raft are mid-replication
        leader changes (the paper's Figure 8)."""
        leader = self._leader()
        if leader is None:
            return
        if self.rng.random() < 0.5:
            self._crash(leader)
        else:
            ids = sorted(self.nodes)
            victim = leader.node_id
            self.blocked = {(victim, o) for o in ids} | {(o, victim) for o in ids}
            self._note("partition", f"isolate leader {victim}")

    # ---------------------------------------------------------------- driver
    def _process_ready(self, node: SimNode) -> None:
        core = node.core
        assert core is not None
        wanted = 0
        while core.has_ready():
            rd = core.ready()
            self._check_ready(node, core, rd)
            for msg in rd.messages_first:  # a leader's appends may leave before its fsync
                self._check_durable_before_send(node, msg)
                self._deliver_later(msg)
            if self.rng.random() < self.opt.torn_ready_rate and rd.must_sync:
                # Power cut during the fsync: nothing of this Ready is durable or sent.
                self._crash(node)
                return
            for chunk in rd.snapshot_chunks:
                key = (chunk.meta.index, chunk.meta.term)
                if chunk.offset == 0:
                    node.incoming[key] = bytearray()
                node.incoming[key] += chunk.data
                if chunk.done:
                    node.snapshots.put(chunk.meta, bytes(node.incoming.pop(key)))
            if rd.must_sync or (rd.hard_state is not None and self.rng.random() < 0.5):
                # A commit-only hard state needs no fsync: model both its loss and its write.
                node.disk.persist(rd.hard_state, rd.entries, rd.snapshot)
            if rd.hard_state is not None and rd.must_sync:
                prev = self.max_durable_term[node.node_id]
                if rd.hard_state.term < prev:
                    self._fail(
                        f"{node.node_id} durable term went back {prev}->{rd.hard_state.term}"
                    )
                self.max_durable_term[node.node_id] = rd.hard_state.term
            for entry in rd.entries:
                self._record_entry(node, entry)
            if self.rng.random() < self.opt.torn_ready_rate:
                # Crash after the fsync, before any message left.
                self._crash(node)
                return
            for msg in rd.messages_after:
                self._check_durable_before_send(node, msg)
                self._deliver_later(msg)
            if rd.snapshot is not None:
                state = json.loads(node.snapshots.get(rd.snapshot))
                node.applied, node.applied_index = list(state), rd.snapshot.index
                node.durable = (tuple(state), rd.snapshot.index)  # a restore is durable
            wanted = max(wanted, rd.snapshot_wanted)
            for entry in rd.committed:
                self._apply(node, entry)
            for rs in rd.read_states:
                if rs.index == 0:
                    self.pending_reads.pop(rs.ctx, None)
                else:
                    node.reads.append((rs.ctx, rs.index))
            for data in rd.dropped:
                self._note_dropped(node, data.decode())
            core.advance(rd)
            self._record_commit(node, core)
        self._serve_reads(node)
        if wanted and self.rng.random() < 0.7:  # else late: the core asks again
            self._snapshot_on_demand(node, wanted)
        self._maybe_compact(node)

    def _apply(self, node: SimNode, entry: Entry) -> None:
        digest = _digest(entry)
        seen = self.applied_global.setdefault(entry.index, digest)
        if seen != digest:
            self._fail(f"state machine safety: index {entry.index} differs on {node.node_id}")
        if entry.index <= node.applied_index:
            return  # held durably already: after a restart the core hands it out again
        if entry.index != node.applied_index + 1:
            self._fail(f"{node.node_id} applied {entry.index} after {node.applied_index}")
        node.applied_index = entry.index
        if entry.kind is EntryKind.NORMAL:
            cmd = entry.data.decode()
            if cmd not in node.applied:  # commands carry ids: duplicates apply once
                node.applied.append(cmd)
                if self.proposed.get(cmd) == node.node_id and cmd not in self.acked:
                    self.acked[cmd] = self.now

    def _note_dropped(self, node: SimNode, cmd: str) -> None:
        """The client of ``node`` learns that ``cmd`` failed (not appended: retryable)."""
        if self.proposed.get(cmd) != node.node_id:
            self._fail(f"{node.node_id} was told of a dropped {cmd} it never forwarded")
        self.dropped.add(cmd)
        self._check_not_appended(cmd)

    def _check_not_appended(self, cmd: str) -> None:
        if cmd in self.dropped and cmd in self.appended and cmd not in self.duplicated:
            self._fail(f"{cmd} was reported dropped but is in a log")

    def _serve_reads(self, node: SimNode) -> None:
        keep = []
        for ctx, index in node.reads:
            if node.applied_index < index:
                keep.append((ctx, index))
                continue
            read = self.pending_reads.pop(ctx, None)
            if read is None:
                continue
            missing = read.acked_before - set(node.applied)
            if missing:
                self._fail(f"stale read on {node.node_id}: missing {sorted(missing)[:3]}")
            self.reads_checked += 1
        node.reads = keep

    def _maybe_compact(self, node: SimNode) -> None:
        """Make the state durable, then cut the log behind it (no snapshot)."""
        core = node.core
        assert core is not None
        if node.applied_index - node.durable[1] < self.opt.snapshot_every:
            return
        node.durable = (tuple(node.applied), node.applied_index)
        keep = self.rng.randint(0, 10)
        compact_to = min(node.durable[1] - keep, core.log.applied)
        if compact_to <= node.disk.first_index() - 1:
            return
        meta = core.base_meta(compact_to)
        node.disk.record_snapshot(meta)
        node.disk.compact(compact_to)
        core.compacted(compact_to)

    def _snapshot_on_demand(self, node: SimNode, wanted: int) -> None:
        """A snapshot of the state machine as it is, for a follower that needs one."""
        core = node.core
        assert core is not None
        index = node.applied_index
        if index != core.log.applied or index < wanted:
            return  # re-handing entries after a restart: the core asks again later
        if core.snapshot is not None and core.snapshot.index > index:
            return
        meta = core.snapshot_taken(index)
        node.snapshots.put(meta, json.dumps(node.applied).encode())

    # ---------------------------------------------------------------- checks
    def _fail(self, what: str) -> None:
        raise SafetyViolation(f"seed {self.seed} at t={self.now}: {what}")

    def _check_ready(self, node: SimNode, core: RaftCore, rd: Ready) -> None:
        if core.role is Role.LEADER:
            holder = self.leaders.setdefault(core.term, node.node_id)
            if holder != node.node_id:
                self._fail(f"election safety: {holder} and {node.node_id} lead term {core.term}")
            if rd.entries and rd.entries[0].index <= node.disk.last_index():
                first = rd.entries[0]
                if node.disk.term(first.index) == core.term and first.term == core.term:
                    self._fail(f"leader append-only: {node.node_id} rewrote {first.index}")
            if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
                self._check_leader_completeness(node, core)

    def _check_leader_completeness(self, node: SimNode, core: RaftCore) -> None:
        if not self.committed:
            return
        top = max(self.committed)
        if top < core.log.first_index() - 1:
            return
        if not core.log.matches(top, self.committed[top]):
            self._fail(f"leader completeness: {node.node_id} lacks committed {top}")

    def _record_entry(self, node: SimNode, entry: Entry) -> None:
        prev_term = node.disk.term(entry.index - 1) if entry.index > 1 else 0
        fact = (_digest(entry), prev_term)
        seen = self.log_facts.setdefault((entry.index, entry.term), fact)
        if seen != fact:
            self._fail(f"log matching: ({entry.index},{entry.term}) differs on {node.node_id}")
        if entry.kind is EntryKind.NORMAL:
            cmd = entry.data.decode()
            self.appended.add(cmd)
            self._check_not_appended(cmd)

    def _record_commit(self, node: SimNode, core: RaftCore) -> None:
        commit = min(core.log.commit, node.disk.last_index())
        if commit in self.committed or commit < node.disk.first_index() - 1 or commit == 0:
            return
        term = node.disk.term(commit)
        self.committed[commit] = term

    def _check_durable_before_send(self, node: SimNode, msg: Message) -> None:
        hard, _ = node.disk.initial_state()
        # Pre-votes speak of a future term on purpose; nothing else may.
        speculative = isinstance(msg, RequestVote | RequestVoteResponse) and msg.pre_vote
        if msg.term > hard.term and not speculative:
            self._fail(f"{node.node_id} sent term {msg.term} before persisting it")
        if (
            isinstance(msg, RequestVoteResponse)
            and msg.granted
            and not msg.pre_vote
            and (hard.vote != msg.dst or hard.term != msg.term)
        ):
            self._fail(f"{node.node_id} granted a vote before persisting it")
        if (
            isinstance(msg, AppendEntriesResponse)
            and msg.success
            and node.disk.last_index() < msg.match_index
        ):
            self._fail(f"{node.node_id} acked {msg.match_index} before persisting it")

    # ---------------------------------------------------------------- workload
    def _client_step(self) -> None:
        up = [n for n in self.nodes.values() if n.up]
        if not up:
            return
        if self.rng.random() < self.opt.propose_rate:
            node = self.rng.choice(up)
            self._next_cmd += 1
            cmd = f"c{self._next_cmd}"
            assert node.core is not None
            try:
                node.core.propose(cmd.encode())
                self.proposed[cmd] = node.node_id
            except (NotLeader, ProposalDropped):
                pass
        if self.rng.random() < self.opt.read_rate:
            node = self.rng.choice(up)
            self._next_cmd += 1
            ctx = f"r{self._next_cmd}".encode()
            assert node.core is not None
            try:
                node.core.read_index(ctx)
                self.pending_reads[ctx] = _Read(node.node_id, frozenset(self.acked))
            except NotLeader:
                pass
        if self.rng.random() < self.opt.churn_rate:
            self._churn()
        if self.rng.random() < self.opt.transfer_rate:
            leader = self._leader()
            if leader is not None and leader.core is not None:
                try:
                    leader.core.transfer_leadership("")
                    self._note("transfer", leader.node_id)
                except (NotLeader, ProposalDropped):
                    pass

    def _churn(self) -> None:
        leader = self._leader()
        if leader is None or leader.core is None:
            return
        members = leader.core.membership
        others = [n for n in sorted(self.nodes) if not members.contains(n)]
        learners = list(members.learners)
        voters = [v for v in members.voters if v != leader.node_id]
        if learners:
            change = ConfChange(ConfChangeOp.ADD_VOTER, self.rng.choice(learners))
        elif others:
            change = ConfChange(ConfChangeOp.ADD_LEARNER, self.rng.choice(others))
        elif len(members.voters) > 2 and voters:
            change = ConfChange(ConfChangeOp.REMOVE, self.rng.choice(voters))
        else:
            return
        try:
            leader.core.propose_conf_change(change)
            self._note("churn", f"{change.op.value} {change.node_id}")
        except (NotLeader, ProposalDropped):
            pass

    def _leader(self) -> SimNode | None:
        leaders = [
            (n.core.term, n.node_id)
            for n in self.nodes.values()
            if n.core is not None and n.core.role is Role.LEADER
        ]
        return self.nodes[max(leaders)[1]] if leaders else None

    # ---------------------------------------------------------------- main loop
    def _step(self, faults: bool) -> None:
        self.now += 1
        if faults:
            if self.rng.random() < self.opt.partition_rate:
                self._partition()
            if self.rng.random() < self.opt.leader_fault_rate:
                self._fault_leader()
            for node in self.nodes.values():
                if node.up and self.rng.random() < self.opt.crash_rate:
                    self._crash(node)
                elif not node.up and self.rng.random() < self.opt.restart_rate:
                    self._start(node)
                    self._note("restart", node.node_id)
        self._client_step()
        while self._queue and self._queue[0][0] <= self.now:
            _, _, msg = heapq.heappop(self._queue)
            target = self.nodes.get(msg.dst)
            if target is not None and target.core is not None:
                self.events += 1
                self.trace.update(repr(msg).encode())
                target.core.step(msg)
        if self.now % TICK == 0:
            for node in self.nodes.values():
                if node.core is not None:
                    node.core.tick()
        for node in self.nodes.values():
            if node.core is not None:
                self._process_ready(node)

    def _note(self, kind: str, detail: str) -> None:
        self.trace.update(f"{self.now}:{kind}:{detail}".encode())

    def run(self) -> SimResult:
        for _ in range(self.opt.steps):
            self._step(faults=True)
        self._heal_and_check()
        return SimResult(
            self.seed,
            len(self.acked.keys() - self.probes),
            self.reads_checked,
            self.events,
            self.trace.hexdigest(),
            len(self.dropped),
        )

    def _heal_and_check(self) -> None:
        self.blocked.clear()
        for node in self.nodes.values():
            if not node.up:
                self._start(node)
        self.opt.propose_rate = self.opt.read_rate = 0.0
        self.opt.churn_rate = self.opt.transfer_rate = 0.0
        self.opt.drop = self.opt.duplicate = self.opt.torn_ready_rate = 0.0
        deadline = self.now + self.opt.heal_budget
        probe: str | None = None
        probe_at = 0
        while self.now < deadline:
            self._step(faults=False)
            leader = self._leader()
            if leader is None or leader.core is None:
                continue
            if probe is None or self.now - probe_at > 30 * TICK:
                # A client retry: the previous probe may have died with a leader.
                self._next_cmd += 1
                probe, probe_at = f"c{self._next_cmd}", self.now
                self.probes.add(probe)
                try:
                    leader.core.propose(probe.encode())
                    self.proposed[probe] = leader.node_id
                except ProposalDropped:
                    probe = None
                continue
            if self._converged(leader, probe):
                self._check_final(leader)
                return
        self._fail(f"liveness: no convergence within {self.opt.heal_budget} after healing")

    def _converged(self, leader: SimNode, probe: str) -> bool:
        assert leader.core is not None
        members = leader.core.membership.members
        target = leader.core.log.last_index()
        return all(
            self.nodes[m].up
            and self.nodes[m].applied_index >= target
            and probe in self.nodes[m].applied
            for m in members
        )

    def _check_final(self, leader: SimNode) -> None:
        assert leader.core is not None
        reference = leader.applied
        for member in leader.core.membership.members:
            if self.nodes[member].applied != reference:
                self._fail(f"final state of {member} differs from leader {leader.node_id}")
        if len(set(reference)) != len(reference):
            self._fail("a command was applied twice")
        lost = [c for c in self.acked if c not in reference]
        if lost:
            self._fail(f"acknowledged commands lost: {lost[:5]}")


@dataclass(frozen=True)
class SimResult:
    seed: int
    acked: int  # workload writes acknowledged (the heal phase's probes not counted)
    reads: int
    events: int
    trace: str
    dropped: int = 0  # forwarded proposals reported refused (failed for the client)


def _digest(entry: Entry) -> str:
    return f"{entry.kind.value}:{entry.data.hex()}"
