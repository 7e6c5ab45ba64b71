"""Scenario tests for the Raft core: tests/raft/testdata/*.txt, run by tests/raft/datadriven.py.

Each file drives a small cluster of real cores (over the helpers' memory
stores and driver) command by command; under each command is what it
produced. Node ``N`` is ``nN``; entries and last-log positions read
``term/index``. ``REWRITE=1 pytest tests/raft/test_datadriven.py`` writes
the actual outputs back; review the diff like code.

Commands (``ID`` is a node number):

* ``add-nodes N [learners=4,5] [log-ID=1,1,2] [term-ID=3] [pre-vote=true]
  [check-quorum=true] [election=10] [heartbeat=1] [inflight=64]
  [max-msg-bytes=..] [chunk-bytes=..] [max-uncommitted=..]`` -- nodes 1..N,
  voters except ``learners``; each with its own log of empty entries.
* ``campaign ID``, ``propose ID DATA``, ``read-index ID CTX``,
  ``transfer-leadership ID [TARGET]``, ``add-learner ID NODE``, ``add-voter ID
  NODE``, ``remove-node ID NODE`` -- inputs to node ``ID``; a node added by
  ``add-*`` is created empty (no log, no membership) if it does not exist.
* ``tick ID... [n=1]``, ``tick-election ID`` (until its election timeout, or
  a leader's CheckQuorum window, elapses), ``tick-heartbeat ID``.
* ``process-ready [ID...]`` -- hand out each node's Ready like a driver
  (persist, apply, advance) and queue its messages; prints the Readys.
* ``deliver-msgs [ID...] [from=ID] [type=AppendEntries]`` -- deliver queued
  messages to those nodes (all by default), printing them; ``drop-msgs``
  takes the same filters and drops them.
* ``stabilize`` -- process-ready and deliver until nothing moves; prints the
  Readys (whose ``send`` lines are the messages) and any message dropped.
* ``isolate ID``, ``cut FROM TO`` (one way), ``heal``; ``restart ID`` (a crash:
  a new core over the same durable store, queued messages kept).
* ``snapshot ID`` (at the applied index), ``compact ID [INDEX]``.
* ``status ID``, ``log ID``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from concordance.errors import ConcordanceError
from concordance.raft.entries import (
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    Membership,
)
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
    TransferLeader,
)
from concordance.raft.ready import Ready, Role
from tests.raft.datadriven import Command, run_file
from tests.raft.helpers import Network, Node, drain, make_node, restart

TESTDATA = Path(__file__).parent / "testdata"

_CONFIG_KEYS = {
    "pre-vote": "pre_vote",
    "check-quorum": "check_quorum",
    "election": "election_ticks",
    "heartbeat": "heartbeat_ticks",
    "inflight": "max_inflight_msgs",
    "max-msg-bytes": "max_msg_bytes",
    "chunk-bytes": "snapshot_chunk_bytes",
    "max-uncommitted": "max_uncommitted_bytes",
}


# --------------------------------------------------------------------- rendering
def fmt_members(m: Membership) -> str:
    out = "v=" + ",".join(m.voters)
    return out + (" l=" + ",".join(m.learners) if m.learners else "")


def fmt_entry(e: Entry) -> str:
    if e.kind is EntryKind.NOOP:
        body = "noop"
    elif e.kind is EntryKind.CONFIG:
        body = "conf " + fmt_members(Membership.decode(e.data))
    else:
        body = f'"{e.data.decode()}"'
    return f"{e.term}/{e.index} {body}"


def fmt_msg(m: Message) -> str:
    head = f"{m.src}->{m.dst} {type(m).__name__} term={m.term}"
    match m:
        case RequestVote():
            tail = f" last={m.last_log_term}/{m.last_log_index}"
            tail += " pre" * m.pre_vote + " transfer" * m.transfer
        case RequestVoteResponse():
            tail = (" granted" if m.granted else " rejected") + " pre" * m.pre_vote
        case AppendEntries():
            tail = f" prev={m.prev_term}/{m.prev_index} commit={m.commit}"
            if m.entries:
                tail += " entries=[" + ", ".join(fmt_entry(e) for e in m.entries) + "]"
            tail += " noreply" * (not m.reply)
        case AppendEntriesResponse() if m.success:
            tail = f" ok match={m.match_index}"
        case AppendEntriesResponse():
            tail = f" reject prev={m.match_index} hint={m.conflict_term}/{m.conflict_index}"
        case Heartbeat():
            tail = f" commit={m.commit}" + (f" read={m.read_seq}" if m.read_seq else "")
        case HeartbeatResponse():
            tail = f" read={m.read_seq}" if m.read_seq else ""
        case InstallSnapshot():
            tail = f" snap={m.meta.term}/{m.meta.index} offset={m.offset} len={len(m.data)}"
            tail += " done" * m.done
        case InstallSnapshotResponse():
            tail = f" index={m.index} next={m.next_offset}" + " done" * m.done
        case Propose():
            tail = " data=" + ",".join(d.decode() for d in m.data)
        case ProposeRefused():
            tail = " data=" + ",".join(d.decode() for d in m.data) + f" ({m.reason})"
        case ProposeConfChange():
            tail = f" {m.change.op.value} {m.change.node_id}"
        case TransferLeader():
            tail = f" target={m.target or '-'}"
        case ReadIndexRequest():
            tail = f" ctx={m.ctx.decode()}"
        case ReadIndexResponse():
            tail = f" ctx={m.ctx.decode()} index={m.index}"
        case _:
            tail = ""
    return head + tail


def fmt_ready(node_id: str, rd: Ready) -> list[str]:
    out = [f"{node_id} ready:"]
    if rd.soft_state is not None:
        s = rd.soft_state
        out.append(f"  state: {s.role.value} term={s.term} lead={s.leader_id or '-'}")
    if rd.hard_state is not None:
        h = rd.hard_state
        out.append(f"  hard: term={h.term} vote={h.vote or '-'} commit={h.commit}")
    if rd.entries:
        out.append("  entries: " + ", ".join(fmt_entry(e) for e in rd.entries))
    if rd.snapshot is not None:
        snap = rd.snapshot
        out.append(f"  snapshot: {snap.term}/{snap.index} {fmt_members(snap.membership)}")
    for c in rd.snapshot_chunks:
        out.append(f"  chunk: offset={c.offset} len={len(c.data)}" + " done" * c.done)
    if rd.committed:
        out.append("  apply: " + ", ".join(fmt_entry(e) for e in rd.committed))
    out += [f"  read: ctx={r.ctx.decode()} index={r.index}" for r in rd.read_states]
    out += [f"  dropped: {d.decode()}" for d in rd.dropped]
    out += [f"  send: {fmt_msg(m)}" for m in rd.messages]
    return out


# --------------------------------------------------------------------- environment
class Env:
    """A cluster under test: nodes, their state machines and the messages in flight."""

    def __init__(self) -> None:
        self.net = Network([])
        self.cfg: dict[str, object] = {}
        self.sm: dict[str, list[str]] = {}  # applied NORMAL data, per node

    def node(self, ref: str) -> Node:
        return self.net[self.nid(ref)]

    @staticmethod
    def nid(ref: str) -> str:
        return ref if ref.startswith("n") else f"n{ref}"

    def handle(self, cmd: Command) -> str:
        handler: Callable[[Command], list[str] | None] = getattr(
            self, "cmd_" + cmd.name.replace("-", "_")
        )
        try:
            return "\n".join(handler(cmd) or [])
        except ConcordanceError as e:
            return f"error: {type(e).__name__}: {e}"

    def _add(self, node_id: str, **kw: object) -> Node:
        num = int(node_id[1:])
        node = make_node(node_id, seed=num, **kw, **self.cfg)  # type: ignore[arg-type]
        self.net.nodes[node_id] = node
        self.sm[node_id] = []
        return node

    def _process(self, node: Node) -> list[str]:
        """Drain ``node`` like a driver; returns the rendered Readys."""
        if not node.core.has_ready():
            return []
        first = len(node.readys)
        self.net.pending.extend(drain(node))
        out: list[str] = []
        for rd in node.readys[first:]:
            if rd.snapshot is not None:  # restore the state machine, then apply
                data = node.snaps.get(rd.snapshot).decode()
                self.sm[node.id] = [v for v in data.split(",") if v]
            self.sm[node.id] += [
                e.data.decode() for e in rd.committed if e.data and e.kind is EntryKind.NORMAL
            ]
            out += fmt_ready(node.id, rd)
        return out

    def _ids(self, cmd: Command) -> list[str]:
        return sorted(self.nid(a) for a in cmd.args) or sorted(self.net.nodes)

    # ------------------------------------------------------------------ setup
    def cmd_add_nodes(self, cmd: Command) -> list[str]:
        kw = dict(cmd.kwargs)
        learners = [self.nid(x) for x in kw.pop("learners", "").split(",") if x]
        for key in [k for k in kw if k in _CONFIG_KEYS]:
            value = kw.pop(key)
            self.cfg[_CONFIG_KEYS[key]] = (
                value == "true" if value in ("true", "false") else int(value)
            )
        count = int(cmd.args[0])
        ids = [f"n{i}" for i in range(1, count + 1)]
        voters = [i for i in ids if i not in learners]
        for node_id in ids:
            log = [int(t) for t in kw.pop(f"log-{node_id[1:]}", "").split(",") if t]
            term = kw.pop(f"term-{node_id[1:]}", None)
            self._add(
                node_id, voters=voters, learners=learners, log=log, term=int(term) if term else None
            )
        assert not kw, f"unknown options {kw}"
        return [self._status(self.net[i]) for i in ids]

    # ------------------------------------------------------------------ inputs
    def cmd_campaign(self, cmd: Command) -> None:
        self.node(cmd.args[0]).core.campaign()

    def cmd_propose(self, cmd: Command) -> list[str]:
        index = self.node(cmd.args[0]).core.propose(cmd.args[1].encode())
        return [f"index {index}" if index is not None else "forwarded"]

    def cmd_read_index(self, cmd: Command) -> None:
        self.node(cmd.args[0]).core.read_index(cmd.args[1].encode())

    def cmd_transfer_leadership(self, cmd: Command) -> None:
        target = self.nid(cmd.args[1]) if len(cmd.args) > 1 else ""
        self.node(cmd.args[0]).core.transfer_leadership(target)

    def _conf_change(self, cmd: Command, op: ConfChangeOp) -> list[str]:
        target = self.nid(cmd.args[1])
        if op is not ConfChangeOp.REMOVE and target not in self.net.nodes:
            self._add(target, voters=(), learners=())
        index = self.node(cmd.args[0]).core.propose_conf_change(ConfChange(op, target))
        return [f"index {index}" if index is not None else "forwarded"]

    def cmd_add_learner(self, cmd: Command) -> list[str]:
        return self._conf_change(cmd, ConfChangeOp.ADD_LEARNER)

    def cmd_add_voter(self, cmd: Command) -> list[str]:
        return self._conf_change(cmd, ConfChangeOp.ADD_VOTER)

    def cmd_remove_node(self, cmd: Command) -> list[str]:
        return self._conf_change(cmd, ConfChangeOp.REMOVE)

    def cmd_tick(self, cmd: Command) -> None:
        for _ in range(int(cmd.kwargs.get("n", "1"))):
            for node_id in self._ids(cmd):
                self.net[node_id].core.tick()

    def cmd_tick_election(self, cmd: Command) -> list[str]:
        core = self.node(cmd.args[0]).core
        if core.role is Role.LEADER:
            n = core.cfg.election_ticks - core.election_elapsed
        else:
            n = core.randomized_timeout - core.election_elapsed
        for _ in range(max(n, 1)):
            core.tick()
        return [f"{core.id} ticked {max(n, 1)}"]

    def cmd_tick_heartbeat(self, cmd: Command) -> None:
        core = self.node(cmd.args[0]).core
        for _ in range(max(core.cfg.heartbeat_ticks - core.heartbeat_elapsed, 1)):
            core.tick()

    # ------------------------------------------------------------------ driving
    def cmd_process_ready(self, cmd: Command) -> list[str]:
        return [line for i in self._ids(cmd) for line in self._process(self.net[i])]

    @staticmethod
    def _selected(cmd: Command | None) -> Callable[[Message], bool]:
        """The ``from=ID`` and ``type=Name`` filters of deliver-msgs and drop-msgs."""
        src = Env.nid(cmd.kwargs["from"]) if cmd and "from" in cmd.kwargs else None
        kind = cmd.kwargs.get("type") if cmd else None
        return lambda m: (
            (src is None or m.src == src) and (kind is None or type(m).__name__ == kind)
        )

    def _deliver(self, ids: list[str], show: bool, cmd: Command | None = None) -> list[str]:
        out, keep = [], []
        selected = self._selected(cmd)
        for msg in self.net.pending:
            if msg.dst not in ids or not selected(msg):
                keep.append(msg)
            elif (msg.src, msg.dst) in self.net.blocked or msg.dst not in self.net.nodes:
                out.append(f"dropped: {fmt_msg(msg)}")
            else:
                if show:
                    out.append(f"deliver: {fmt_msg(msg)}")
                self.net[msg.dst].core.step(msg)
        self.net.pending = keep
        return out

    def cmd_deliver_msgs(self, cmd: Command) -> list[str]:
        return self._deliver(self._ids(cmd), show=True, cmd=cmd)

    def cmd_drop_msgs(self, cmd: Command) -> list[str]:
        ids, selected = self._ids(cmd), self._selected(cmd)
        out = [f"dropped: {fmt_msg(m)}" for m in self.net.pending if m.dst in ids and selected(m)]
        self.net.pending = [m for m in self.net.pending if not (m.dst in ids and selected(m))]
        return out

    def cmd_stabilize(self, cmd: Command) -> list[str]:
        out: list[str] = []
        ids = sorted(self.net.nodes)
        for _ in range(100):
            out += [line for i in ids for line in self._process(self.net[i])]
            if not self.net.pending:
                return out
            out += self._deliver(ids, show=False)
        raise AssertionError("the cluster did not settle in 100 rounds")

    # ------------------------------------------------------------------ faults
    def cmd_isolate(self, cmd: Command) -> None:
        self.net.isolate(self.nid(cmd.args[0]))

    def cmd_cut(self, cmd: Command) -> None:
        self.net.cut(self.nid(cmd.args[0]), self.nid(cmd.args[1]))

    def cmd_heal(self, cmd: Command) -> None:
        self.net.heal()

    def cmd_restart(self, cmd: Command) -> list[str]:
        old = self.node(cmd.args[0])
        node = restart(old, seed=int(old.id[1:]))
        self.net.nodes[node.id] = node
        snap = node.core.snapshot
        data = node.snaps.get(snap).decode() if snap is not None and snap.index else ""
        self.sm[node.id] = [v for v in data.split(",") if v]
        return [self._status(node)]

    # ------------------------------------------------------------------ snapshots
    def cmd_snapshot(self, cmd: Command) -> list[str]:
        node = self.node(cmd.args[0])
        meta = node.core.snapshot_taken(node.core.log.applied)
        node.snaps.put(meta, ",".join(self.sm[node.id]).encode())
        node.store.record_snapshot(meta)
        return [f"snapshot {meta.term}/{meta.index} {fmt_members(meta.membership)}"]

    def cmd_compact(self, cmd: Command) -> list[str]:
        node = self.node(cmd.args[0])
        snap = node.core.snapshot
        index = int(cmd.args[1]) if len(cmd.args) > 1 else (snap.index if snap else 0)
        node.store.compact(index)
        node.core.compacted(index)
        return [f"{node.id} log now starts at {node.core.log.first_index()}"]

    # ------------------------------------------------------------------ queries
    def _status(self, node: Node) -> str:
        c = node.core
        timer = (
            "" if c.role is Role.LEADER else f" ticks={c.election_elapsed}/{c.randomized_timeout}"
        )
        return (
            f"{c.id}: {c.role.value} term={c.term} vote={c.vote or '-'} lead={c.leader_id or '-'}"
            f" commit={c.log.commit} applied={c.log.applied}"
            f" last={c.log.last_term()}/{c.log.last_index()} {fmt_members(c.membership)}{timer}"
        )

    def cmd_status(self, cmd: Command) -> list[str]:
        out = []
        for node_id in self._ids(cmd):
            node = self.net[node_id]
            out.append(self._status(node))
            out.append("  sm: " + (",".join(self.sm[node_id]) or "-"))
            if node.core.role is Role.LEADER:
                for peer, pr in sorted(node.core.progress.items()):
                    if peer == node_id:
                        out.append(f"  {peer}: match={pr.match} (self, durable)")
                        continue
                    line = f"  {peer}: match={pr.match} next={pr.next} {pr.state.value}"
                    if pr.snapshot_index:
                        line += f" snapshot={pr.snapshot_index}"
                    out.append(line)
        return out

    def cmd_log(self, cmd: Command) -> list[str]:
        out = []
        for node_id in self._ids(cmd):
            lg = self.net[node_id].core.log
            entries = lg.slice(lg.first_index(), lg.last_index() + 1)
            out.append(f"{node_id}: " + (", ".join(fmt_entry(e) for e in entries) or "empty"))
        return out


@pytest.mark.parametrize("path", sorted(TESTDATA.glob("*.txt")), ids=lambda p: p.stem)
def test_scenario(path: Path) -> None:
    run_file(path, Env().handle)


def test_every_scenario_file_is_found() -> None:
    assert len(list(TESTDATA.glob("*.txt"))) >= 10
