"""Test doubles for the roles around a consensus driver: a storage and a front.

The driver under test is the real one (real raft.db); its IPC ends are
in memory (``concordance.testing.memory_ipc``, one ``MemoryIpc`` per test
run, on a ``ManualClock``: see :func:`run`), and the doubles play the
*other* roles through the same ``Sockets`` with the routing ids those roles
use (``storage``, ``front``). The process tests pass ``ZmqSockets``
instead, to reach a driver running as its own process. Waits move the
manual clock, or poll a condition against a deadline
(``concordance.testing.poll``); nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import zmq.asyncio

from concordance import ipc
from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.config import NodeConfig, Secrets
from concordance.consensus import ConsensusDriver
from concordance.consensus.peers import Deliver
from concordance.front.ipc_clients import greet
from concordance.ipc import fronts
from concordance.ipc.sockets import Sockets, ZmqSockets
from concordance.protocol import wire
from concordance.protocol.wire_raft import decode_raft
from concordance.raft.messages import InstallSnapshot
from concordance.testing.clock import ManualClock
from concordance.testing.memory_ipc import MemoryIpc
from concordance.testing.poll import until, until_answered
from concordance.testing.sim_net import MemoryLinks
from concordance.timing import CONSENSUS_FLUSH

DEADLINE = 20.0  # seconds; a whole test body runs under it


def run(
    main: Callable[[MemoryIpc], Awaitable[None]],
    deadline: float = DEADLINE,
    clock: Clock | None = None,
) -> None:
    """Run ``main(net)`` on a fresh loop and in-memory IPC, bounded by ``deadline``
    (of real time: it only fails the test).

    ``net.clock`` is the clock of the IPC ends and of every driver and double
    started on ``net``: a ``ManualClock`` unless told otherwise, so ticks,
    elections and deadlines move only when the test moves them (its waits
    pass ``clock=net.clock`` to ``concordance.testing.poll``). A test whose
    progress waits on the db thread (snapshot files) passes ``SYSTEM_CLOCK``:
    a manual clock moved meanwhile would let elections overtake that I/O."""

    async def outer() -> None:
        await asyncio.wait_for(main(MemoryIpc(clock or ManualClock())), deadline)

    asyncio.run(outer())


def run_zmq(main: Callable[[ZmqSockets], Awaitable[None]], deadline: float = DEADLINE) -> None:
    """:func:`run` on real ZeroMQ (a fresh context): to reach a driver that runs as its
    own process (``procs.consensus``)."""

    async def outer() -> None:
        ctx = zmq.asyncio.Context()
        try:
            await asyncio.wait_for(main(ZmqSockets(ctx)), deadline)
        finally:
            ctx.destroy(linger=0)

    asyncio.run(outer())


def clock_of(sockets: Sockets) -> Clock:
    """The clock of a test's IPC ends: the drivers and doubles started on them share it."""
    return sockets.clock if isinstance(sockets, MemoryIpc) else SYSTEM_CLOCK


def manual(net: MemoryIpc) -> ManualClock:
    """The manual clock of a :func:`run` (the test moves it)."""
    assert isinstance(net.clock, ManualClock), "this test runs on a manual clock"
    return net.clock


@contextmanager
def temp_dir() -> Iterator[str]:
    """A short data dir under /tmp (ipc endpoints derive from its path)."""
    path = tempfile.mkdtemp(prefix="cc-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_cfg(data_dir: str, node_id: str = "n1", **overrides: Any) -> NodeConfig:
    settings: dict[str, Any] = {
        "node_id": node_id,
        "listen": "127.0.0.1:4100",
        "data_dir": data_dir,
        "insecure": True,
        "tick_ms": 10,
        "election_ticks": 30,  # 300 ms: a busy machine stalls a process for 100 ms
        "heartbeat_ticks": 1,
        # a cluster key of their own: required with other members (API.md v1.1 §1)
        "secrets": Secrets(cluster_key="harness-cluster-key"),
    }
    settings.update(overrides)
    return NodeConfig(**settings).validate()


class MemoryNet(MemoryLinks):
    """One driver's peer links, in memory: what it sends is recorded by its hub and
    handed (on the next loop turn) to the destination's driver if that one runs."""

    def __init__(self, hub: Hub, node_id: str, deliver: Deliver) -> None:
        self.hub = hub
        super().__init__(hub.nets, node_id, deliver)

    def send(self, peer: str, address: str, frames: list[bytes]) -> None:
        self.hub.sent.append((self.node_id, peer, address, list(frames)))
        dst = self.hub.nets.get(peer)
        if dst is None:
            self.unroutable += len(frames)
            return
        loop = asyncio.get_running_loop()
        for frame in frames:
            loop.call_soon(dst.deliver, frame)


class Hub:
    """The in-memory network between the drivers of one test (``MemoryNet``)."""

    def __init__(self) -> None:
        self.nets: dict[str, MemoryNet] = {}
        self.sent: list[tuple[str, str, str, list[bytes]]] = []  # (src, dst, address, frames)

    def factory(self, node_id: str) -> Callable[[Deliver], MemoryNet]:
        return lambda deliver: MemoryNet(self, node_id, deliver)

    def inject(self, dst: str, frames: list[bytes]) -> None:
        """Frames arriving at ``dst`` as if from a peer link."""
        for frame in frames:
            self.nets[dst].deliver(frame)


class Node:
    """A running driver plus the task running it (its peer links on a ``Hub``)."""

    def __init__(
        self, driver: ConsensusDriver, task: asyncio.Task[None], hub: Hub, clock: Clock
    ) -> None:
        self.driver = driver
        self.task = task
        self.hub = hub
        self.clock = clock

    @classmethod
    async def start(cls, cfg: NodeConfig, sockets: Sockets, hub: Hub | None = None) -> Node:
        hub = hub or Hub()
        clock = clock_of(sockets)
        driver = await ConsensusDriver.open(cfg, sockets, clock, net=hub.factory(cfg.node_id))
        return cls(driver, asyncio.create_task(driver.run()), hub, clock)

    async def finished(self) -> None:
        """Wait for the driver's task to end, and raise what it raised. On a manual
        clock, move it past the bounded waits of a stop (the flush to the fronts)
        meanwhile; closing raft.db is real I/O, waited for in real time."""
        while not self.task.done():
            if isinstance(self.clock, ManualClock):
                await self.clock.advance(CONSENSUS_FLUSH)
            await asyncio.wait([self.task], timeout=0.05)
        await self.task

    async def stop(self) -> None:
        self.driver.stop()
        await self.finished()


@asynccontextmanager
async def running(cfg: NodeConfig, sockets: Sockets) -> AsyncIterator[Node]:
    node = await Node.start(cfg, sockets)
    try:
        yield node
    finally:
        if not node.task.done():
            await node.stop()


class FakeStorage:
    """Plays the storage role: says hello, applies ``apply`` by index, acks, answers
    ``checkpoint`` (everything applied counts as durable) and snapshots.

    ``entries`` maps index -> (term, kind, data) of everything applied;
    ``batches`` lists the index ranges of every ``apply`` received.
    """

    def __init__(
        self,
        sockets: Sockets,
        data_dir: str,
        applied: int = 0,
        applied_term: int = 0,
        auto_ack: bool = True,
        snapshot_dir: str | None = None,
    ) -> None:
        self.applied = applied
        self.applied_term = applied_term
        self.auto_ack = auto_ack
        self.entries: dict[int, tuple[int, int, bytes]] = {}
        self.batches: list[tuple[int, int]] = []
        self.restores: list[wire.Restore] = []
        self.snapshots_written: list[str] = []
        self.checkpoints = 0  # ``checkpoint`` requests received
        self.durable_answers = True  # answer them with ``durable`` (its applied index)
        self.snapshot_padding = 0  # bytes added to each snapshot file written
        self.snapshot_dir = Path(snapshot_dir or data_dir)
        self._outbox: asyncio.Queue[tuple[str, wire.Body]] = asyncio.Queue()
        self.client = sockets.client(
            ipc.endpoint(data_dir, "consensus"), "storage", on_message=self._on_message
        )
        self._task = asyncio.create_task(self._send_loop())

    async def hello(self, timeout: float = 5.0) -> None:
        """Say hello (the real storage also repeats it every second); waits for the
        connection, which after a driver restart takes one zmq reconnect interval.
        Reports already queued go first: the real storage sends hello and applied
        down one ordered pipe, and the driver relies on that order."""
        await self._outbox.join()
        await self.client.send("hello", wire.Hello(self.applied, self.applied_term), timeout)

    def _on_message(self, env: wire.Envelope) -> None:
        body = env.body
        if isinstance(body, wire.Apply):
            self.batches.append((body.entries[0][0], body.entries[-1][0]))
            first = body.entries[0][0]
            if first > self.applied + 1:
                self._outbox.put_nowait(("hello", wire.Hello(self.applied, self.applied_term)))
                return
            for index, term, kind, data in body.entries:
                if index <= self.applied:
                    continue
                self.entries[index] = (term, kind, data)
                self.applied, self.applied_term = index, term
            if self.auto_ack:
                self._outbox.put_nowait(("applied", wire.Applied(self.applied)))
        elif isinstance(body, wire.Restore):
            self.restores.append(body)
            assert Path(body.path).exists(), body.path
            self.applied, self.applied_term = body.index, body.term
            self._outbox.put_nowait(("hello", wire.Hello(self.applied, self.applied_term)))
        elif isinstance(body, wire.TakeSnapshot):
            path = self.snapshot_dir / f"storage-snap-{self.applied}-{time.monotonic_ns()}"
            path.write_bytes(b"state up to %d\n" % self.applied + b"p" * self.snapshot_padding)
            self.snapshots_written.append(str(path))
            taken = wire.SnapshotTaken(self.applied, self.applied_term, str(path))
            self._outbox.put_nowait(("snapshot_taken", taken))
        elif isinstance(body, wire.Checkpoint):
            self.checkpoints += 1
            if self.durable_answers:
                self._outbox.put_nowait(("durable", wire.Durable(self.applied)))

    async def _send_loop(self) -> None:
        while True:
            type_, body = await self._outbox.get()
            # The driver may be stopping; a lost report is repaired by the next hello.
            try:
                with contextlib.suppress(Exception):
                    await self.client.send(type_, body)
            finally:
                self._outbox.task_done()

    def commands(self) -> list[bytes]:
        """The NORMAL entries applied, in index order."""
        return [data for _, (_, kind, data) in sorted(self.entries.items()) if kind == 0]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.client.close()


class FakeFront:
    """Plays the front role: makes requests and records ``dropped``."""

    def __init__(self, sockets: Sockets, data_dir: str) -> None:
        self.clock = clock_of(sockets)
        self.dropped: list[bytes] = []
        self.acks_stopping = False  # answer ``stopping``, as the real front does
        self.stopping = 0  # ``stopping`` announcements received
        self.client = sockets.client(
            ipc.endpoint(data_dir, "consensus"), fronts.routing_id(0), on_message=self._on_message
        )
        # as the real front does: consensus pushes only to fronts it has heard from
        self._greeting = asyncio.ensure_future(
            greet({self.client: lambda: [("front_hello", wire.FrontHello(0))]})
        )

    def _on_message(self, env: wire.Envelope) -> None:
        if isinstance(env.body, wire.Dropped):
            self.dropped.extend(env.body.commands)
        elif isinstance(env.body, wire.Stopping):
            self.stopping += 1
            if self.acks_stopping:
                self.client.send_nowait("stopping_ack", wire.StoppingAck(0))

    async def request(self, type_: str, body: wire.Body, timeout: float = 3.0) -> Any:
        return await self.client.request(type_, body, timeout)

    async def propose(self, *commands: bytes, timeout: float = 3.0) -> wire.Proposed:
        reply = await self.request("propose", wire.Propose(tuple(commands)), timeout)
        assert isinstance(reply, wire.Proposed)
        return reply

    async def status(self) -> wire.StatusOk:
        reply = await self.request("status", wire.Status())
        assert isinstance(reply, wire.StatusOk)
        return reply

    async def read_index(self, timeout: float = 3.0) -> int:
        reply = await self.request("read_index", wire.ReadIndex(), timeout)
        assert isinstance(reply, wire.ReadIndexOk)
        return reply.index

    async def close(self) -> None:
        self._greeting.cancel()
        await asyncio.gather(self._greeting, return_exceptions=True)
        await self.client.close()


async def wait_leader(front: FakeFront, timeout: float = 10.0) -> wire.StatusOk:
    return await wait_status(front, lambda s: s.role == "leader", timeout)


async def wait_status(
    front: FakeFront, pred: Callable[[wire.StatusOk], bool], timeout: float = 10.0
) -> wire.StatusOk:
    """Ask ``status`` until ``pred`` holds."""
    return await until_answered(front.status, pred, "a status", timeout, clock=front.clock)


class Cluster:
    """N drivers in one process joined by a ``Hub`` (their peer links in memory;
    the real ones are tested in ``test_consensus_peers.py``). A stopped node's
    frames are dropped."""

    def __init__(self, sockets: Sockets, dirs: list[str], joiners: int = 0, **cfg: Any) -> None:
        self.sockets = sockets
        self.clock = clock_of(sockets)
        ids = [f"n{i}" for i in range(1, len(dirs) + 1)]
        members = ids[: len(ids) - joiners]
        peers = {nid: f"127.0.0.1:{4100 + i}" for i, nid in enumerate(members, 1)}
        self.cfgs = {}
        for n, (nid, d) in enumerate(zip(ids, dirs, strict=True), 1):
            if nid in peers:
                self.cfgs[nid] = make_cfg(d, nid, listen=peers[nid], peers=peers, **cfg)
            else:  # started with --join: waits to be added
                join = peers[members[0]]
                self.cfgs[nid] = make_cfg(d, nid, listen=f"127.0.0.1:{4100 + n}", join=join, **cfg)
        self.nodes: dict[str, Node] = {}
        self.fronts: dict[str, FakeFront] = {}
        self.storages: dict[str, FakeStorage] = {}
        self.hub = Hub()

    async def start(self) -> None:
        for nid, cfg in self.cfgs.items():
            self.fronts[nid] = FakeFront(self.sockets, cfg.data_dir)
        for nid in self.cfgs:
            await self.start_node(nid)

    async def start_node(self, nid: str) -> None:
        cfg = self.cfgs[nid]
        self.nodes[nid] = await Node.start(cfg, self.sockets, self.hub)
        storage = self.storages.get(nid)
        if storage is None:
            storage = self.storages[nid] = FakeStorage(self.sockets, cfg.data_dir)
        await storage.hello()

    async def stop_node(self, nid: str) -> None:
        node = self.nodes.pop(nid)
        await node.stop()

    @property
    def snapshot_chunks(self) -> list[tuple[str, int, int]]:
        """(to, offset, bytes) of every InstallSnapshot chunk sent on the peer links."""
        chunks = []
        for _src, dst, _address, frames in self.hub.sent:
            for frame in frames:
                msg = decode_raft(frame)
                if isinstance(msg, InstallSnapshot):
                    chunks.append((dst, msg.offset, len(msg.data)))
        return chunks

    def leaders(self) -> list[str]:
        from concordance.raft.ready import Role

        return [nid for nid, n in self.nodes.items() if n.driver.core.role is Role.LEADER]

    async def wait_one_leader(self, timeout: float = 10.0) -> str:
        def one() -> str | None:
            leaders = self.leaders()
            if len(leaders) != 1:
                return None
            term = self.nodes[leaders[0]].driver.core.term
            known = all(
                n.driver.core.leader_id == leaders[0] and n.driver.core.term == term
                for n in self.nodes.values()
                if n.driver.core.membership.contains(n.driver.core.id)  # not a joiner yet
            )
            return leaders[0] if known else None

        leader = await until(one, "one leader known to all", timeout, clock=self.clock)
        assert leader is not None
        return leader

    async def close(self) -> None:
        for nid in list(self.nodes):
            await self.stop_node(nid)
        for front in self.fronts.values():
            await front.close()
        for storage in self.storages.values():
            await storage.close()


@asynccontextmanager
async def cluster(
    sockets: Sockets, n: int = 3, joiners: int = 0, **cfg: Any
) -> AsyncIterator[Cluster]:
    """``n`` voters from --peers, plus ``joiners`` nodes started with --join."""
    dirs = [tempfile.mkdtemp(prefix="cc-", dir="/tmp") for _ in range(n + joiners)]
    c = Cluster(sockets, dirs, joiners, **cfg)
    try:
        await c.start()
        yield c
    finally:
        await c.close()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
