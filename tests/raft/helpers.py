"""Builders for Raft core tests: a node over a MemoryRaftStore, a driver loop and
a tiny in-memory network that delivers messages until the cluster is quiet."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from concordance.raft.config import RaftConfig
from concordance.raft.core import RaftCore
from concordance.raft.entries import Entry, EntryKind, HardState, Membership, SnapshotMeta
from concordance.raft.messages import Message
from concordance.raft.ready import ReadState, Ready
from concordance.raft.stores import MemoryRaftStore, MemorySnapshotStore

M = TypeVar("M")
IDS3 = ("n1", "n2", "n3")
IDS5 = ("n1", "n2", "n3", "n4", "n5")
# The plain algorithm of the paper; tests of the thesis extensions opt in.
PLAIN: dict[str, Any] = {"pre_vote": False, "check_quorum": False}


def config(**overrides: Any) -> RaftConfig:
    return RaftConfig(**{"election_ticks": 10, "heartbeat_ticks": 1, **PLAIN, **overrides})


@dataclass
class Node:
    """A core plus what its driver keeps: the durable store, snapshot bytes,
    and everything handed out so far."""

    core: RaftCore
    store: MemoryRaftStore
    snaps: MemorySnapshotStore
    cfg: RaftConfig
    applied: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    readys: list[Ready] = field(default_factory=list)
    incoming: bytearray = field(default_factory=bytearray)

    @property
    def id(self) -> str:
        return self.core.id


def make_node(
    node_id: str,
    voters: Sequence[str] = IDS3,
    learners: Sequence[str] = (),
    log: Sequence[int] = (),
    term: int | None = None,
    vote: str | None = None,
    commit: int = 0,
    seed: int = 0,
    **cfg: Any,
) -> Node:
    """A node whose store holds ``log`` (one term per entry, indexes from 1),
    the given hard state and, as the index-0 snapshot, the membership."""
    store, snaps = MemoryRaftStore(), MemorySnapshotStore()
    store.record_snapshot(SnapshotMeta(0, 0, Membership(tuple(voters), tuple(learners))))
    entries = [Entry(t, i, EntryKind.NORMAL, b"") for i, t in enumerate(log, 1)]
    term = max(log, default=0) if term is None else term
    store.persist(HardState(term, vote, commit), entries)
    hs, snap = store.initial_state()
    conf = config(**cfg)
    core = RaftCore(node_id, store, hs, snap, conf, random.Random(seed), snaps, applied=commit)
    return Node(core, store, snaps, conf)


def restart(node: Node, seed: int = 0) -> Node:
    """A crash and restart: a new core over the same durable store (volatile state lost)."""
    hs, snap = node.store.initial_state()
    core = RaftCore(node.id, node.store, hs, snap, node.cfg, random.Random(seed), node.snaps)
    return Node(core, node.store, node.snaps, node.cfg)


def drain(node: Node) -> list[Message]:
    """Handle every pending Ready like a driver: persist, collect, apply, advance."""
    out: list[Message] = []
    while node.core.has_ready():
        rd = node.core.ready()
        node.readys.append(rd)
        for chunk in rd.snapshot_chunks:
            if chunk.offset == 0:
                node.incoming = bytearray()
            node.incoming += chunk.data
            if chunk.done:
                node.snaps.put(chunk.meta, bytes(node.incoming))
        node.store.persist(rd.hard_state, rd.entries, rd.snapshot)
        out.extend(rd.messages)
        node.applied.extend(rd.committed)
        node.read_states.extend(rd.read_states)
        node.core.advance(rd)
    return out


def of_type(kind: type[M], msgs: Iterable[Message], dst: str | None = None) -> list[M]:
    return [m for m in msgs if isinstance(m, kind) and (dst is None or m.dst == dst)]


def log_terms(node: Node) -> list[int]:
    """Terms of the node's whole log as the core sees it (durable + unstable)."""
    lg = node.core.log
    return [lg.term(i) for i in range(lg.first_index(), lg.last_index() + 1)]


class Network:
    """Delivers messages between nodes in send order until no node has more to say."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes = {n.id: n for n in nodes}
        self.blocked: set[tuple[str, str]] = set()
        self.drop_if: Callable[[Message], bool] = lambda m: False
        self.pending: list[Message] = []
        self.delivered: list[Message] = []

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def cut(self, src: str, dst: str) -> None:
        """Drop every message from ``src`` to ``dst`` (one way)."""
        self.blocked.add((src, dst))

    def isolate(self, node_id: str) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut(node_id, other)
                self.cut(other, node_id)

    def heal(self) -> None:
        self.blocked.clear()
        self.drop_if = lambda m: False

    def collect(self) -> list[Message]:
        for node_id in sorted(self.nodes):
            self.pending.extend(drain(self.nodes[node_id]))
        return self.pending

    def deliver(self, msgs: Sequence[Message]) -> None:
        for msg in msgs:
            node = self.nodes.get(msg.dst)
            if node is None or (msg.src, msg.dst) in self.blocked or self.drop_if(msg):
                continue
            self.delivered.append(msg)
            node.core.step(msg)

    def stabilize(self, max_rounds: int = 200) -> list[Message]:
        """Deliver rounds of messages until quiet; returns what was delivered."""
        start = len(self.delivered)
        for _ in range(max_rounds):
            msgs, self.pending = self.collect(), []
            if not msgs:
                return self.delivered[start:]
            self.deliver(msgs)
        raise AssertionError("network did not settle")

    def tick(self, node_ids: Iterable[str] | None = None, n: int = 1) -> None:
        """Tick the nodes ``n`` times, settling the network after each tick."""
        for _ in range(n):
            for node_id in sorted(self.nodes) if node_ids is None else node_ids:
                self.nodes[node_id].core.tick()
            self.stabilize()

    def elect(self, node_id: str) -> Node:
        self.nodes[node_id].core.campaign()
        self.stabilize()
        assert self.nodes[node_id].core.role.value == "leader", self.nodes[node_id].core.role
        return self.nodes[node_id]


def cluster(
    voters: Sequence[str] = IDS3,
    learners: Sequence[str] = (),
    logs: Mapping[str, Sequence[int]] | None = None,
    **kw: Any,
) -> Network:
    """Nodes ``voters`` plus ``learners``, all knowing the same membership,
    each with its own log from ``logs`` and its own rng seed."""
    logs = logs or {}
    return Network(
        make_node(i, voters, learners, log=logs.get(i, ()), seed=n, **kw)
        for n, i in enumerate([*voters, *learners])
    )
