"""Stand-ins for the consensus and storage roles, around a real StateMachine.

A proposal is "committed" at once: the fake consensus applies it to a real
``StateMachine`` (so versions, CAS, batches and change history behave as in
production) and publishes results and change batches, through the real wire
codec so shapes are exactly what the front receives. Knobs let tests refuse
proposals, swallow them, hold them, drop published batches (gaps) or take
storage down.

The app harness serves these roles on in-memory IPC ends (``ServedNode``
over ``concordance.testing.memory_ipc``), so the front under test talks to
them through its real role clients (``ipc_clients``), as in production.
Unit tests of one front part (the watch hub, the proposer) may use
``FakeNode.clients()`` directly: the front's role-client Protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from concordance import ipc
from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.config import NodeConfig, Secrets
from concordance.errors import ConcordanceError, IpcError, Unavailable
from concordance.front.accept import SortingSite
from concordance.front.app import make_app
from concordance.front.app_state import CONFIG, GATE, TLS
from concordance.front.clients import Clients, DroppedHandler
from concordance.front.ipc_clients import connect
from concordance.ipc import fdpass
from concordance.ipc.sockets import Server
from concordance.protocol import wire
from concordance.protocol.payloads import Entry, Outcome
from concordance.security.tls import TlsContexts
from concordance.storage.fsm import StateMachine
from concordance.testing.clock import ManualClock
from concordance.testing.memory_ipc import MemoryIpc, MemoryPublisher
from concordance.testing.poll import until
from concordance.testing.supervisor import MemorySupervisor

FULL = "full-key"
AGENT = "agent-key"
PEER = "cluster-key"
ENC_KEY = ("kid1", bytes(range(32)))
OLD_KEY = ("kid0", bytes(range(100, 132)))
T0 = 1_764_230_400_000
_T = TypeVar("_T")


def roundtrip(type_name: str, body: wire.Body) -> wire.Body:
    env = wire.decode_envelope(wire.encode_envelope(wire.Envelope(type_name, 1, body)))
    return env.body


class FakeClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@dataclass
class Knobs:
    unavailable: int = 0  # refuse this many proposals with Unavailable
    unknown: bool = False  # propose raises IpcError (outcome unknown), but applies
    swallow: bool = False  # accept proposals but never apply them (no result: 504)
    hold: bool = False  # queue proposals; apply with FakeNode.release()
    drop_batches: int = 0  # do not publish this many change batches (gaps)
    storage_down: bool = False
    leader: str | None = "n1"
    lag: int = 0  # storage reports applied = commit - lag
    read_index_calls: int = 0
    status_calls: int = 0  # consensus status requests (probes, cluster status)
    proposed: list[bytes] = field(default_factory=list)
    conf_changes: list[tuple[str, str, str]] = field(default_factory=list)
    transfers: list[str] = field(default_factory=list)


class FakeEvents:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[wire.ChangeBatch | wire.Results] = asyncio.Queue()

    async def recv(self) -> wire.ChangeBatch | wire.Results:
        return await self.queue.get()


class FakeNode:
    """Consensus + storage + events of one node over one StateMachine."""

    def __init__(self, path: Path, retention: int = 100_000) -> None:
        self.sm = StateMachine(path / "state.db", retention=retention)
        self.knobs = Knobs()
        self.events = FakeEvents()
        self.index = 0
        self.held: list[bytes] = []
        self.dropped: DroppedHandler | None = None
        self.members = [wire.MemberStatus("n1", "127.0.0.1:1", True, 0)]
        self.consensus = FakeConsensus(self)
        self.storage = FakeStorage(self)

    def clients(self) -> Clients:
        return Clients(self.consensus, self.storage, self.events)

    def apply(self, data: bytes, publish: bool = True) -> None:
        self.index += 1
        for applied in self.sm.apply([(self.index, 1, data)]):
            if applied.events:
                batch = wire.ChangeBatch(tuple(applied.events), self.sm.revision)
                if self.knobs.drop_batches > 0:
                    self.knobs.drop_batches -= 1
                elif publish:
                    self.events.queue.put_nowait(roundtrip("change_batch", batch))  # type: ignore[arg-type]
            item = Outcome(applied.request_id, applied.outcome)
            results = wire.Results(applied.origin, (item,), self.sm.applied_index)
            self.events.queue.put_nowait(roundtrip("results", results))  # type: ignore[arg-type]

    def release(self) -> None:
        held, self.held = self.held, []
        for data in held:
            self.apply(data)

    def refuse_held(self) -> None:
        """The leader refused the held (forwarded) proposals: consensus says ``dropped``."""
        held, self.held = self.held, []
        assert self.dropped is not None, "the front did not subscribe to dropped"
        self.dropped(roundtrip("dropped", wire.Dropped(tuple(held))))  # type: ignore[arg-type]

    def close(self) -> None:
        self.sm.close()


class FakeConsensus:
    def __init__(self, node: FakeNode) -> None:
        self.node = node

    async def propose(self, commands: Sequence[bytes], timeout: float) -> int:
        k = self.node.knobs
        if k.unavailable > 0:
            k.unavailable -= 1
            raise Unavailable("no leader")
        for data in commands:
            k.proposed.append(data)
            if k.swallow:
                continue
            if k.hold:
                self.node.held.append(data)
            else:
                self.node.apply(data)
        if k.unknown:
            raise IpcError("lost the reply")
        return self.node.index

    async def read_index(self, timeout: float) -> int:
        self.node.knobs.read_index_calls += 1
        if self.node.knobs.leader is None:
            raise Unavailable("no leader")
        return self.node.index

    async def status(self, timeout: float) -> wire.StatusOk:
        n = self.node
        n.knobs.status_calls += 1
        return wire.StatusOk("n1", "leader", 3, n.knobs.leader, n.index, n.index, tuple(n.members))

    async def peer_links(self, timeout: float) -> wire.PeerLinksOk:
        return wire.PeerLinksOk((wire.PeerStatus("n2", True, 10, 2, 1),), 3, 4)

    async def conf_change(self, op: str, node_id: str, address: str, timeout: float) -> None:
        self.node.knobs.conf_changes.append((op, node_id, address))
        others = [m for m in self.node.members if m.node_id != node_id]
        if op != "remove":
            others.append(wire.MemberStatus(node_id, address, op == "add_voter", 0))
        self.node.members = others

    async def transfer(self, to: str, timeout: float) -> None:
        self.node.knobs.transfers.append(to)

    async def snapshot_now(self, timeout: float) -> wire.SnapshotNowOk:
        return wire.SnapshotNowOk(self.node.index, 1, 4096)

    def on_dropped(self, handler: DroppedHandler) -> None:
        self.node.dropped = handler


class FakeStorage:
    def __init__(self, node: FakeNode) -> None:
        self.node = node
        self.changes_calls: list[tuple[str, int, int]] = []
        self.watching: list[bool] = []  # watch() / unwatch() calls, in order
        self.min_indexes: list[int] = []  # of every get and list, in order

    def _up(self) -> StateMachine:
        if self.node.knobs.storage_down:
            raise Unavailable("storage is down")
        return self.node.sm

    async def get(self, key: str, now: int, timeout: float, min_index: int = 0) -> Entry | None:
        self.min_indexes.append(min_index)
        await self.wait_applied(min_index, timeout)
        got = roundtrip("get_ok", wire.GetOk(self._up().get(key, now)))
        assert isinstance(got, wire.GetOk)
        return got.entry

    async def list(
        self,
        prefix: str,
        limit: int,
        cursor: str | None,
        now: int,
        timeout: float,
        min_index: int = 0,
    ) -> wire.ListOk:
        self.min_indexes.append(min_index)
        await self.wait_applied(min_index, timeout)
        page = self._up().list(prefix, limit, cursor, now)
        return roundtrip("list_ok", page)  # type: ignore[return-value]

    async def changes(self, prefix: str, since: int, limit: int, timeout: float) -> wire.ChangesOk:
        self.changes_calls.append((prefix, since, limit))
        page = self._up().changes(prefix, since, limit)
        return roundtrip("changes_ok", page)  # type: ignore[return-value]

    async def wait_applied(self, index: int, timeout: float) -> int:
        return self._up().applied_index - self.node.knobs.lag

    async def backup(self, path: str, timeout: float) -> wire.BackupOk:
        sm = self._up()
        sm.snapshot_to(path)
        return wire.BackupOk(path, Path(path).stat().st_size, sm.applied_index)

    async def status(self, timeout: float) -> wire.StorageStatusOk:
        sm = self._up()
        return wire.StorageStatusOk(sm.applied_index - self.node.knobs.lag, 1, sm.revision)

    async def watch(self) -> None:
        self.watching.append(True)

    def unwatch(self) -> None:
        self.watching.append(False)


class ServedNode:
    """A :class:`FakeNode`'s consensus, storage and events roles, served on the
    in-memory endpoints of ``data_dir``: requests arrive through the wire codec
    and are answered by the fakes above; an error they raise goes back as the
    role's error reply, and ``IpcError`` (outcome unknown) as no reply at all."""

    def __init__(self, node: FakeNode, net: MemoryIpc, data_dir: str) -> None:
        self.node = node
        self.net = net
        self.data_dir = data_dir
        self.fronts: set[bytes] = set()
        self.watching = False  # what the front last said (``front_watching``)
        self._tasks: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        self.consensus = await self.net.server(ipc.endpoint(self.data_dir, "consensus"))
        self.storage = await self.net.server(ipc.endpoint(self.data_dir, "storage"))
        self.events: MemoryPublisher = await self.net.publisher(
            ipc.endpoint(self.data_dir, "events")
        )
        self.consensus.deliver_to(lambda p, e: self._spawn(self._consensus(p, e)))
        self.storage.deliver_to(lambda p, e: self._spawn(self._storage(p, e)))
        self.node.dropped = lambda body: self._spawn(self._report_dropped(body))
        self._spawn(self._publish_events())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in (self.consensus, self.storage, self.events):
            await sock.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_events(self) -> None:
        queue = self.node.events.queue
        while True:
            event = await queue.get()
            kind = "results" if isinstance(event, wire.Results) else "change_batch"
            await self.events.publish(kind, event)

    async def _report_dropped(self, body: wire.Dropped) -> None:
        for front in self.fronts:
            with contextlib.suppress(IpcError):
                await self.consensus.send(front, "dropped", body)

    async def _answer(self, server: Server, peer: bytes, env: wire.Envelope, answer: Any) -> None:
        try:
            reply = await answer
        except ConcordanceError as e:
            await server.reply(peer, env, e)
        except IpcError:
            pass  # the outcome is unknown to the front: no reply, its request times out
        else:
            await server.reply(peer, env, reply)

    async def _consensus(self, peer: bytes, env: wire.Envelope) -> None:
        self.fronts.add(peer)
        fake, body = self.node.consensus, env.body
        timeout = 1.0
        if isinstance(body, wire.Propose):
            await self._answer(self.consensus, peer, env, self._proposed(body, timeout))
        elif isinstance(body, wire.ReadIndex):
            await self._answer(self.consensus, peer, env, self._read_index(timeout))
        elif isinstance(body, wire.Status):
            await self._answer(self.consensus, peer, env, fake.status(timeout))
        elif isinstance(body, wire.PeerLinks):
            await self._answer(self.consensus, peer, env, fake.peer_links(timeout))
        elif isinstance(body, wire.ConfChange):
            change = self._conf_changed(body.op, body.node_id, body.address)
            await self._answer(self.consensus, peer, env, change)
        elif isinstance(body, wire.Transfer):
            await self._answer(self.consensus, peer, env, self._transferred(body.to))
        elif isinstance(body, wire.SnapshotNow):
            await self._answer(self.consensus, peer, env, fake.snapshot_now(timeout))

    async def _proposed(self, body: wire.Propose, timeout: float) -> wire.Proposed:
        return wire.Proposed(await self.node.consensus.propose(body.commands, timeout))

    async def _read_index(self, timeout: float) -> wire.ReadIndexOk:
        return wire.ReadIndexOk(await self.node.consensus.read_index(timeout))

    async def _conf_changed(self, op: str, node_id: str, address: str) -> wire.Proposed:
        await self.node.consensus.conf_change(op, node_id, address, 1.0)
        return wire.Proposed(self.node.index)

    async def _transferred(self, to: str) -> wire.Ok:
        await self.node.consensus.transfer(to, 1.0)
        return wire.Ok()

    async def _storage(self, peer: bytes, env: wire.Envelope) -> None:
        fake, body = self.node.storage, env.body
        timeout = 1.0
        if isinstance(body, wire.FrontWatching):
            if body.watching != self.watching:  # the front repeats it with its hello
                self.watching = body.watching
                fake.watching.append(body.watching)
        elif isinstance(body, wire.Get):
            await self._answer(self.storage, peer, env, self._got(body, timeout))
        elif isinstance(body, wire.GetMany):
            await self._answer(self.storage, peer, env, self._got_many(body, timeout))
        elif isinstance(body, wire.List):
            args = (body.prefix, body.limit, body.cursor, body.now, timeout, body.min_index)
            await self._answer(self.storage, peer, env, fake.list(*args))
        elif isinstance(body, wire.Changes):
            page = fake.changes(body.prefix, body.since, body.limit, timeout)
            await self._answer(self.storage, peer, env, page)
        elif isinstance(body, wire.WaitApplied):
            await self._answer(self.storage, peer, env, self._applied(body.index, timeout))
        elif isinstance(body, wire.Backup):
            await self._answer(self.storage, peer, env, fake.backup(body.path, timeout))
        elif isinstance(body, wire.StorageStatus):
            await self._answer(self.storage, peer, env, fake.status(timeout))

    async def _got(self, body: wire.Get, timeout: float) -> wire.GetOk:
        entry = await self.node.storage.get(body.key, body.now, timeout, body.min_index)
        return wire.GetOk(entry)

    async def _got_many(self, body: wire.GetMany, timeout: float) -> wire.GetManyOk:
        storage = self.node.storage
        got = [await storage.get(k, body.now, timeout, body.min_index) for k in body.keys]
        return wire.GetManyOk(tuple(got))

    async def _applied(self, index: int, timeout: float) -> wire.WaitAppliedOk:
        return wire.WaitAppliedOk(await self.node.storage.wait_applied(index, timeout))


def make_config(path: Path, **overrides: Any) -> NodeConfig:
    secrets = overrides.pop(
        "secrets",
        Secrets(api_key=FULL, agent_key=AGENT, cluster_key=PEER, encryption_keys=(ENC_KEY,)),
    )
    base: dict[str, Any] = {
        "node_id": "n1",
        "listen": "127.0.0.1:1",
        "data_dir": str(path),
        "request_timeout_ms": 2000,
        "max_value_bytes": 1024,
    }
    base.update(overrides)
    return NodeConfig(secrets=secrets, **base)


def no_supervisor() -> MemorySupervisor:
    """A node without a supervisor: the front judges roles by their answers."""
    return MemorySupervisor(reachable=False)


@dataclass
class Harness:
    client: TestClient[web.Request, web.Application]
    node: FakeNode
    clock: FakeClock
    app: web.Application

    async def call(
        self, method: str, path: str, *, key: str | None = FULL, **kwargs: Any
    ) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.client.request(method, path, headers=headers, **kwargs) as resp:
            body = await resp.read()
            ctype = resp.headers.get("Content-Type", "")
            if ctype.startswith("application/json"):
                return resp.status, json.loads(body)
            return resp.status, body

    async def put(self, key: str, value: Any, **fields: Any) -> tuple[int, Any]:
        return await self.call("PUT", f"/api/v1/kv/{key}", json={"value": value, **fields})

    async def put_later(self, key: str, value: Any) -> asyncio.Task[tuple[int, Any]]:
        """Start a PUT and let it reach consensus (for use with ``knobs.hold``)."""
        before = len(self.node.knobs.proposed)
        task = asyncio.ensure_future(self.put(key, value))
        await until(lambda: len(self.node.knobs.proposed) > before, f"the PUT of {key} proposed")
        return task

    async def settle(self) -> None:
        """Let the event pump and watch tasks run until nothing is left to do."""
        for _ in range(50):
            await asyncio.sleep(0)
            if self.node.events.queue.empty():
                break
        for _ in range(20):
            await asyncio.sleep(0)


class FrontTestServer(TestServer):
    """The app served as a node's front serves it: the front's own accept loop
    (``SortingSite``) and, unless ``hot_routes=False``, the key-value hot routes
    outside aiohttp (``hot_path``); aiohttp's TestServer would bypass both."""

    def __init__(self, app: web.Application, path: Path, *, hot_routes: bool = True) -> None:
        super().__init__(app)
        self._fds = fdpass.FdSender(path / "no-consensus.sock")  # never a peer here
        self.hot_routes = hot_routes
        self.site: SortingSite | None = None

    async def start_server(self, loop: Any = None, **kwargs: Any) -> None:
        if self.runner:
            return
        cfg = self.app[CONFIG]
        self.runner = web.AppRunner(
            self.app, handle_signals=False, keepalive_timeout=cfg.limits.keepalive_timeout
        )
        await self.runner.setup()
        assert self.runner.server is not None
        self.app[GATE].install(self.runner.server)  # as procs/front.py does
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.host, self.port = sock.getsockname()[:2]
        ssl = self.app[TLS].server if TLS in self.app else None
        self.site = SortingSite(
            self.runner, sock, self._fds, ssl_context=ssl, hot_routes=self.hot_routes
        )
        await self.site.start()
        self.scheme = "https" if ssl else "http"
        self._root = URL(f"{self.scheme}://127.0.0.1:{self.port}")


@contextlib.asynccontextmanager
async def harness(path: Path, **overrides: Any) -> AsyncIterator[Harness]:
    """A front app on fake roles, served through the hot path (``hot_routes=False``:
    through aiohttp alone)."""
    hot_routes = overrides.pop("hot_routes", True)
    supervisor = overrides.pop("supervisor", None) or no_supervisor()
    retention = overrides.pop("retention", 100_000)
    timers: Clock = overrides.pop("timers", SYSTEM_CLOCK)
    node = FakeNode(path, retention=retention)
    net = MemoryIpc(timers)
    served = ServedNode(node, net, str(path))
    clock = FakeClock()
    cfg = make_config(path, **overrides)
    app = make_app(
        cfg,
        lambda: connect(str(path), 0, sockets=net, clock=timers),
        supervisor=supervisor,
        clock=clock,
        timers=timers,
        tls=TlsContexts(cfg) if cfg.tls else None,
    )
    try:
        await served.start()
        async with TestClient(FrontTestServer(app, path, hot_routes=hot_routes)) as client:
            yield Harness(client, node, clock, app)
    finally:
        await served.stop()
        node.close()
        shutil.rmtree(path / "backups", ignore_errors=True)


async def on_clock(clock: ManualClock, call: Awaitable[_T], within: float = 10.0) -> _T:
    """Run ``call`` while moving ``clock`` until it is done: the front's retries, holds
    and deadlines fire when due, and no real time is waited for them."""
    task = asyncio.ensure_future(call)
    await clock.advance_until(task.done, "the call's outcome", step=0.05, within=within)
    return task.result()
