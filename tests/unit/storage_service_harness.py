"""A bench for the storage role: real ZeroMQ over ipc, real SQLite, the other roles played here.

``FakeConsensus`` is a server bound on the node's consensus endpoint: it
records what storage sends (hello, applied, snapshot_taken, proposals),
answers each ``hello`` with ``leadership`` for a role the test picks (as the
real driver does), and pushes ``apply``/``restore``/``take_snapshot``.
``FakeFront`` is the front's DEALER and SUB. The service runs in-process on
the test's loop (``bench``) or as a real ``python -m procs.storage`` (tests
pick). ``bench`` uses real ZeroMQ sockets and the system clock unless the
test passes in-memory ends (``MemoryIpc``) and a ``ManualClock``: then
nothing touches a socket and time moves only when the test advances it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import Any

import zmq.asyncio

from concordance import errors, ipc
from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.config import NodeConfig
from concordance.ipc.sockets import Server, Sockets, ZmqSockets
from concordance.protocol import wire
from concordance.protocol.commands import Command, Op, Set
from concordance.raft.entries import EntryKind
from concordance.storage.service import ServiceTimings, StorageService
from concordance.storage.service_ttl import ReaperTimings

TEST_DEADLINE = 20.0  # seconds; every test body runs under it
WAIT = 5.0  # seconds any single expected message may take
T0 = 1_764_230_400_000
FAST = ServiceTimings(
    hello_interval=30.0,  # hellos only at start and on demand, unless a test wants them
    ack_delay=0.0,  # one ``applied`` per batch: tests wait for each (test_acks_* time them)
    reaper=ReaperTimings(interval=0.02, propose_timeout=1.0),
)

Entry = tuple[int, int, int, bytes]


def run(main: Callable[[zmq.asyncio.Context], Awaitable[None]]) -> None:
    """Run ``main(ctx)`` on a fresh loop and context, bounded by TEST_DEADLINE."""

    async def outer() -> None:
        ctx = zmq.asyncio.Context()
        try:
            await asyncio.wait_for(main(ctx), TEST_DEADLINE)
        finally:
            ctx.destroy(linger=0)

    asyncio.run(outer())


@contextmanager
def short_tmp() -> Iterator[str]:
    """A short temp dir under /tmp (``/tmp/cc-XXXX``)."""
    path = tempfile.mkdtemp(prefix="cc-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def node_config(data_dir: str, **overrides: Any) -> NodeConfig:
    cfg = NodeConfig(node_id="n1", listen="127.0.0.1:4100", data_dir=data_dir, insecure=True)
    return replace(cfg, **overrides).validate()


async def next_of(queue: asyncio.Queue[Any], timeout: float = WAIT) -> Any:
    return await asyncio.wait_for(queue.get(), timeout)


class FakeConsensus:
    """Plays the consensus role for one storage process."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.role = "leader"
        self.term = 1
        self.hellos: asyncio.Queue[wire.Hello] = asyncio.Queue()
        self.applied: asyncio.Queue[int] = asyncio.Queue()
        self.snapshots: asyncio.Queue[wire.SnapshotTaken] = asyncio.Queue()
        self.durables: asyncio.Queue[wire.Durable] = asyncio.Queue()
        self.proposals: list[Command] = []
        self.status_asked = 0
        self.proposed_ok = 0  # proposals answered ``proposed``
        self.propose_error: errors.ConcordanceError | None = None  # answer proposals with it
        self.other: list[wire.Envelope] = []
        self._next_index = 1000
        self._task = asyncio.create_task(self._loop())

    @classmethod
    async def open(
        cls, ctx: zmq.asyncio.Context | None, data_dir: str, sockets: Sockets | None = None
    ) -> FakeConsensus:
        sockets = sockets or ZmqSockets(ctx)
        return cls(await sockets.server(ipc.endpoint(data_dir, "consensus")))

    async def set_role(self, role: str) -> None:
        """Change role and push ``leadership``, as the driver does on a role change."""
        self.role = role
        await self._tell_leadership()

    async def _tell_leadership(self) -> None:
        # Storage not connected (yet): its next hello is answered.
        with contextlib.suppress(errors.IpcError):
            await self.send("leadership", wire.Leadership(self.role == "leader", self.term))

    async def _loop(self) -> None:
        while True:
            peer, env = await self.server.recv()
            body = env.body
            if isinstance(body, wire.Hello):
                self.hellos.put_nowait(body)
                await self._tell_leadership()
            elif isinstance(body, wire.Applied):
                self.applied.put_nowait(body.index)
            elif isinstance(body, wire.SnapshotTaken):
                self.snapshots.put_nowait(body)
            elif isinstance(body, wire.Durable):
                self.durables.put_nowait(body)
            elif isinstance(body, wire.Status):
                self.status_asked += 1
                status = wire.StatusOk("n1", self.role, 1, "n1", 0, 0, ())
                await self.server.reply(peer, env, status)
            elif isinstance(body, wire.Propose):
                self.proposals.extend(Command.decode(c) for c in body.commands)
                self._next_index += len(body.commands)
                answer = self.propose_error or wire.Proposed(self._next_index)
                self.proposed_ok += self.propose_error is None
                await self.server.reply(peer, env, answer)
            else:
                self.other.append(env)

    async def send(self, type: str, body: wire.Body) -> None:
        await self.server.send(b"storage", type, body)

    async def apply(self, *entries: Entry) -> None:
        await self.send("apply", wire.Apply(tuple(entries)))

    async def hello(self, index: int | None = None, timeout: float = WAIT) -> wire.Hello:
        """The next hello (with ``index``: the next one reporting it)."""
        while True:
            hello: wire.Hello = await next_of(self.hellos, timeout)
            if index is None or hello.applied_index == index:
                return hello

    async def acked(self, index: int) -> None:
        """Wait for ``applied {index}``."""
        while (await next_of(self.applied)) < index:
            pass

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.server.close()


class FakeFront:
    """The front's two sockets to storage."""

    def __init__(
        self, ctx: zmq.asyncio.Context | None, data_dir: str, sockets: Sockets | None = None
    ) -> None:
        sockets = sockets or ZmqSockets(ctx)
        self.client = sockets.client(ipc.endpoint(data_dir, "storage"), "front")
        self.sub = sockets.subscriber(ipc.endpoint(data_dir, "events"))

    async def request(self, type: str, body: wire.Body, timeout: float = 2.0) -> Any:
        return await self.client.request(type, body, timeout)

    async def event(self, timeout: float = WAIT) -> wire.Envelope:
        return await asyncio.wait_for(self.sub.recv(), timeout)

    async def changes(self, timeout: float = WAIT) -> wire.ChangeBatch:
        env = await self.event(timeout)
        assert isinstance(env.body, wire.ChangeBatch), env
        return env.body

    async def results(self, timeout: float = WAIT) -> wire.Results:
        env = await self.event(timeout)
        assert isinstance(env.body, wire.Results), env
        return env.body

    async def close(self) -> None:
        await self.client.close()
        await self.sub.close()


class Writer:
    """Numbers committed entries the way consensus would."""

    def __init__(self, index: int = 0, term: int = 1) -> None:
        self.index = index
        self.term = term
        self.request_id = 0

    def normal(self, op: Op, origin: str = "n1", ts: int = T0) -> Entry:
        self.index += 1
        self.request_id += 1
        data = Command(origin, self.request_id, ts, op).encode()
        return (self.index, self.term, int(EntryKind.NORMAL), data)

    def noop(self, kind: EntryKind = EntryKind.NOOP) -> Entry:
        self.index += 1
        return (self.index, self.term, int(kind), b"")

    def set(self, key: str, value: bytes = b'"v"', **kw: Any) -> Entry:
        return self.normal(
            Set(key, value, kw.pop("if_version", None), kw.pop("expires_at", None)), **kw
        )


@dataclass
class Bench:
    cfg: NodeConfig
    consensus: FakeConsensus
    front: FakeFront
    log: Writer
    service: StorageService | None = None
    task: asyncio.Task[None] | None = None
    start: Callable[[], StorageService] | None = None  # a new service on the same files

    async def crash_and_restart(self) -> wire.Hello:
        """End the service as a crash does (its tasks cancelled, no stop: what it did not
        commit is gone), start a new one on the same files; its first ``hello``."""
        assert self.task is not None and self.start is not None
        while not self.consensus.hellos.empty():  # the crashed one's
            self.consensus.hellos.get_nowait()
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.service = self.start()
        self.task = asyncio.create_task(self.service.run())
        return await self.consensus.hello()

    def reaper_in_flight(self) -> int:
        assert self.service is not None and self.service._reaper is not None
        return self.service._reaper.in_flight

    async def sync_events(self) -> None:
        """Apply probe writes until one's change_batch arrives (SUB joins asynchronously),
        then drain its results so each test starts with an empty event stream."""
        deadline = time.monotonic() + WAIT
        while True:
            key = f"tenant:probe/p{self.log.index + 1}"
            await self.consensus.apply(self.log.set(key, origin=""))
            try:
                env = await self.front.event(0.05)
            except TimeoutError:
                assert time.monotonic() < deadline, "events subscription never propagated"
                continue
            break
        # Subscribed now: skip to the last probe's batch (earlier ones may still be in flight).
        while not isinstance(env.body, wire.ChangeBatch) or env.body.events[-1].key != key:
            env = await self.front.event()
        await self.consensus.acked(self.log.index)


@asynccontextmanager
async def bench(
    ctx: zmq.asyncio.Context | None,
    data_dir: str,
    *,
    timings: ServiceTimings = FAST,
    sync: bool = True,
    sockets: Sockets | None = None,
    clock: Clock = SYSTEM_CLOCK,
    **cfg: Any,
) -> AsyncIterator[Bench]:
    """Consensus and front played here, the storage service in-process on this loop
    (over ``sockets``, ZeroMQ on ``ctx`` by default, and on ``clock``)."""
    config = node_config(data_dir, **cfg)
    sockets = sockets or ZmqSockets(ctx)
    consensus = await FakeConsensus.open(ctx, data_dir, sockets)

    def start() -> StorageService:
        return StorageService(config, timings=timings, clock=clock, sockets=sockets)

    service = start()
    task = asyncio.create_task(service.run())
    b: Bench | None = None
    try:
        hello = await consensus.hello()  # storage is bound: the front connects at once
        front = FakeFront(ctx, data_dir, sockets)
        b = Bench(config, consensus, front, Writer(hello.applied_index, max(hello.applied_term, 1)))
        b.service, b.task, b.start = service, task, start
        if sync:
            await b.sync_events()
        yield b
    finally:
        if b is not None and b.service is not None and b.task is not None:
            service, task = b.service, b.task  # restarted by the test, maybe
        service.stop()
        await asyncio.wait_for(task, WAIT)
        await consensus.close()
        if b is not None:
            await b.front.close()
            await b.consensus.close()  # a test may have restarted it
