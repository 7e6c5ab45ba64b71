"""The real role clients (``ipc_clients``) against in-test consensus and storage roles.

One front app, wired exactly as ``procs/front.py`` wires it, talks to a tiny
consensus and storage served from this process, over real ZeroMQ sockets
and over the in-memory ends (``concordance.testing.memory_ipc``): writes go
through ``propose`` and come back on the events publisher, reads through the
storage socket. The retry and hold rules run on in-memory ends and a manual
clock: time moves only as far as each test says, and nothing sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from concordance import ipc
from concordance.errors import NotLeader, Unavailable
from concordance.front import retry
from concordance.front.app import make_app
from concordance.front.app_state import HUB
from concordance.front.ipc_clients import IpcConsensus, IpcStorage, connect
from concordance.front.retry import HOLD_POLL
from concordance.ipc import fronts
from concordance.ipc.sockets import Server, Sockets, ZmqSockets
from concordance.protocol import payloads, wire
from concordance.storage.fsm import StateMachine
from concordance.testing.clock import ManualClock
from concordance.testing.memory_ipc import MemoryIpc
from concordance.testing.poll import until_answered
from tests.unit.front.fakes import FULL, make_config, no_supervisor


def _by(who: str) -> payloads.Entry:
    """An entry that tells which storage answered."""
    return payloads.Entry(f"tenant:a/{who}", b"1", 1, 1, 0, 0, None)


class MiniNode:
    """Consensus and storage roles in one object: commits every proposal at once."""

    def __init__(self, data_dir: str, sockets: Sockets) -> None:
        self.data_dir = data_dir
        self.sockets = sockets
        self.sm = StateMachine(Path(data_dir) / "state.db")
        self.index = 0
        self.refuse = 0
        self.drop = 0  # forward this many proposals, then report them refused (dropped)
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        socks = self.sockets
        self.consensus = await socks.server(ipc.endpoint(self.data_dir, "consensus"))
        self.storage = await socks.server(ipc.endpoint(self.data_dir, "storage"))
        self.events = await socks.publisher(ipc.endpoint(self.data_dir, "events"))
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._serve_consensus()),
            loop.create_task(self._serve_storage()),
        ]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for sock in (self.consensus, self.storage, self.events):
            await sock.close()
        self.sm.close()

    async def _serve_consensus(self) -> None:
        while True:
            peer, req = await self.consensus.recv()
            body = req.body
            if isinstance(body, wire.Propose):
                if self.refuse:
                    self.refuse -= 1
                    await self.consensus.reply(peer, req, NotLeader(None))
                    continue
                if self.drop:
                    self.drop -= 1
                    await self.consensus.reply(peer, req, wire.Proposed(0, forwarded=True))
                    await self.consensus.send(peer, "dropped", wire.Dropped(body.commands))
                    continue
                await self.consensus.reply(
                    peer, req, wire.Proposed(self.index + len(body.commands))
                )
                for data in body.commands:
                    await self._apply(data)
            elif isinstance(body, wire.Status):
                st = wire.StatusOk("n1", "leader", 2, "n1", self.index, self.index, ())
                await self.consensus.reply(peer, req, st)
            elif isinstance(body, wire.ReadIndex):
                await self.consensus.reply(peer, req, wire.ReadIndexOk(self.index))

    async def _apply(self, data: bytes) -> None:
        self.index += 1
        for applied in self.sm.apply([(self.index, 1, data)]):
            if applied.events:
                batch = wire.ChangeBatch(tuple(applied.events), self.sm.revision)
                await self.events.publish("change_batch", batch)
            item = payloads.Outcome(applied.request_id, applied.outcome)
            await self.events.publish("results", wire.Results(applied.origin, (item,)))

    async def _serve_storage(self) -> None:
        while True:
            peer, req = await self.storage.recv()
            body: Any = req.body
            reply: wire.Body
            if isinstance(body, wire.Get):
                reply = wire.GetOk(self.sm.get(body.key, body.now))
            elif isinstance(body, wire.Changes):
                reply = self.sm.changes(body.prefix, body.since, body.limit)
            elif isinstance(body, wire.WaitApplied):
                reply = wire.WaitAppliedOk(self.sm.applied_index)
            elif isinstance(body, wire.StorageStatus):
                reply = wire.StorageStatusOk(self.sm.applied_index, 1, self.sm.revision)
            else:
                continue
            await self.storage.reply(peer, req, reply)

    async def announce(self, hub: Any) -> None:
        """Publish until the front's subscriber hears it (over ZeroMQ, a new SUB
        joins a while after it connects: the slow joiner)."""

        async def publish() -> bool:
            await self.events.publish("change_batch", wire.ChangeBatch((), self.sm.revision))
            return hub.last is not None  # heard one of those published so far

        await until_answered(publish, bool, "the front's subscription")


IPC_KINDS = ["zmq", "memory"]


@contextlib.asynccontextmanager
async def mini_front(
    kind: str, **cfg_overrides: Any
) -> AsyncIterator[tuple[TestClient[Any, Any], MiniNode]]:
    """The front app and a :class:`MiniNode`, on real ZeroMQ (``zmq``) or in memory."""
    with tempfile.TemporaryDirectory(prefix="ccf", dir="/tmp") as data_dir:
        ctx = ipc.context() if kind == "zmq" else None
        sockets: Sockets = ZmqSockets(ctx) if ctx is not None else MemoryIpc()
        node = MiniNode(data_dir, sockets)
        await node.start()
        cfg = make_config(Path(data_dir), **cfg_overrides)
        app = make_app(cfg, lambda: connect(data_dir, sockets=sockets), supervisor=no_supervisor())
        try:
            async with TestClient(TestServer(app)) as client:
                await node.announce(app[HUB])
                yield client, node
        finally:
            await node.stop()
            if ctx is not None:
                ctx.destroy(linger=0)


AUTH = {"Authorization": f"Bearer {FULL}"}


@pytest.mark.parametrize("kind", IPC_KINDS)
def test_write_read_watch_over_role_sockets(kind: str) -> None:
    async def main() -> None:
        async with mini_front(kind) as (client, node):
            ws = await client.ws_connect("/stream", headers=AUTH)
            await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "watch/subscribe",
                                "params": {"prefix": "tenant:a/"}})  # fmt: skip
            assert (await ws.receive_json(timeout=5))["result"]["revision"] == 0
            node.refuse = 1  # one "unavailable" is retried by the client
            async with client.put("/api/v1/kv/tenant:a/x", json={"value": [1]}, headers=AUTH) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["version"] == 1
            async with client.get("/api/v1/kv/tenant:a/x?consistent=true", headers=AUTH) as r:
                assert (await r.json())["value"] == [1]
            note = await ws.receive_json(timeout=5)
            assert note["method"] == "watch/change"
            assert note["params"]["events"][0]["value"] == [1]
            async with client.get("/api/v1/changes?prefix=tenant:a/", headers=AUTH) as r:
                assert [c["key"] for c in (await r.json())["changes"]] == ["tenant:a/x"]
            await ws.close()

    asyncio.run(main())


@pytest.mark.parametrize("kind", IPC_KINDS)
def test_a_refused_forward_reported_by_consensus_is_proposed_again(kind: str) -> None:
    """``dropped`` over the real consensus socket reaches the write that is waiting
    for its result: it is proposed again long before the (60 s) deadline and
    applied once."""

    async def main() -> None:
        async with mini_front(kind, request_timeout_ms=60_000) as (client, node):
            node.drop = 2
            put = client.put("/api/v1/kv/tenant:a/x", json={"value": 1}, headers=AUTH)
            async with asyncio.timeout(10):
                async with put as r:
                    assert r.status == 200 and (await r.json())["version"] == 1
                async with client.put(
                    "/api/v1/kv/tenant:a/x", json={"value": 2}, headers=AUTH
                ) as r:
                    assert r.status == 200 and (await r.json())["version"] == 2
            assert node.drop == 0

    asyncio.run(main())


class Roles:
    """The front's role clients of a data dir where no role runs yet, on in-memory
    ends and a manual clock; the test binds the roles' servers itself."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.clock = ManualClock()
        self.net = MemoryIpc(self.clock)
        self.consensus = IpcConsensus(self.net, data_dir, clock=self.clock)
        self.storage = IpcStorage(self.net, data_dir, clock=self.clock)

    async def bind(self, role: str) -> Server:
        return await self.net.server(ipc.endpoint(self.data_dir, role))

    async def outcome(self, task: asyncio.Future[Any], within: float = 60.0) -> Any:
        """Move the clock until ``task`` is done (its holds, retries and backoffs
        fire when due); its result or exception."""
        await self.clock.advance_until(task.done, "the request's outcome", within=within)
        return task.result()


@contextlib.asynccontextmanager
async def role_clients() -> AsyncIterator[Roles]:
    with tempfile.TemporaryDirectory(prefix="ccf", dir="/tmp") as data_dir:
        roles = Roles(data_dir)
        try:
            yield roles
        finally:
            await roles.consensus.close()
            await roles.storage.close()


async def serve_once(server: Server, answer: Callable[[Any], Any]) -> list[str]:
    """Answer requests with ``answer(body)`` until cancelled; the types seen (the
    front's ``front_hello`` aside: it is not a request)."""
    seen: list[str] = []
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            peer, req = await server.recv()
            if req.type == "front_hello":
                continue
            seen.append(req.type)
            await server.reply(peer, req, answer(req.body))
    return seen


def test_roles_that_do_not_answer_are_unavailable() -> None:
    """No role at all: reads and proposals are ``Unavailable`` at their deadline
    (the proposal certainly not sent: a 503, not a 504)."""

    async def main() -> None:
        async with role_clients() as r:
            for ask in (
                lambda: r.storage.get("tenant:a/x", 0, 0.1),
                lambda: r.consensus.status(0.1),
                lambda: r.consensus.propose([b"x"], 0.1),
            ):
                started = r.clock.monotonic()
                with pytest.raises(Unavailable):
                    await r.outcome(asyncio.ensure_future(ask()))
                assert r.clock.monotonic() - started <= 0.1 + HOLD_POLL

    asyncio.run(main())


def test_requests_to_a_role_not_yet_running_are_held_until_it_starts() -> None:
    """No role for a while (a restart): a read and a proposal are neither failed nor
    lost; each is sent once the role binds, within its own deadline."""

    async def main() -> None:
        async with role_clients() as r:
            read = asyncio.ensure_future(r.storage.get("tenant:a/x", 0, 5.0))
            propose = asyncio.ensure_future(r.consensus.propose([b"cmd"], 5.0))
            await r.clock.advance(3.0)  # far longer than one attempt with no holding
            assert not read.done() and not propose.done()
            s, c = await r.bind("storage"), await r.bind("consensus")
            tasks = [
                asyncio.ensure_future(serve_once(s, lambda b: wire.GetOk(None))),
                asyncio.ensure_future(serve_once(c, lambda b: wire.Proposed(7))),
            ]
            try:
                assert await r.outcome(read) is None
                assert await r.outcome(propose) == 7
            finally:
                for t in tasks:
                    t.cancel()
                seen = await asyncio.gather(*tasks)
                await s.close()
                await c.close()
            assert seen == [["get"], ["propose"]]  # each sent exactly once

    asyncio.run(main())


def test_a_proposal_is_503_once_its_hold_budget_is_spent() -> None:
    """A role that never comes back: the proposal is certainly not sent, so 503,
    and not before the hold budget (its deadline less the result margin)."""

    async def main() -> None:
        async with role_clients() as r:
            started = r.clock.monotonic()
            with pytest.raises(Unavailable):
                await r.outcome(asyncio.ensure_future(r.consensus.propose([b"cmd"], 0.6)))
            held = r.clock.monotonic() - started
            assert retry.hold_budget(0.6) <= held <= retry.hold_budget(0.6) + HOLD_POLL

    asyncio.run(main())


def test_unavailable_answers_to_reads_are_asked_again_within_the_deadline() -> None:
    """``read_index`` answered ``unavailable`` (no leader yet, consensus stopping)
    is asked again instead of failing the read at once."""

    async def main() -> None:
        async with role_clients() as r:
            c = await r.bind("consensus")
            refusals = [NotLeader(None), NotLeader(None)]

            def answer(_: Any) -> Any:
                return refusals.pop() if refusals else wire.ReadIndexOk(5)

            task = asyncio.ensure_future(serve_once(c, answer))
            try:
                assert await r.outcome(asyncio.ensure_future(r.consensus.read_index(3.0))) == 5
            finally:
                task.cancel()
                seen = await task
                await c.close()
            assert seen == ["read_index"] * 3

    asyncio.run(main())


def test_a_role_that_keeps_answering_unavailable_is_503_before_the_deadline() -> None:
    """No leader for good (cut off, removed): both a read and a proposal are
    ``Unavailable`` after ``UNAVAILABLE_RETRY`` of refusals, not at the deadline."""

    async def main() -> None:
        async with role_clients() as r:
            c = await r.bind("consensus")
            task = asyncio.ensure_future(serve_once(c, lambda _: NotLeader(None)))
            try:
                asks = (
                    lambda: r.consensus.read_index(30.0),
                    lambda: r.consensus.propose([b"c"], 30.0),
                )
                for ask in asks:
                    started = r.clock.monotonic()
                    with pytest.raises(Unavailable):
                        await r.outcome(asyncio.ensure_future(ask()))
                    asked_for = r.clock.monotonic() - started
                    # the last pause would end past the budget: it is not taken
                    budget = retry.UNAVAILABLE_RETRY
                    assert budget - 0.2 <= asked_for <= budget, asked_for
            finally:
                task.cancel()
                seen = await task
                await c.close()
            assert seen.count("read_index") > 1 and seen.count("propose") > 1  # asked again

    asyncio.run(main())


def test_after_stopping_requests_wait_for_the_next_incarnation() -> None:
    """A role that says ``stopping`` gets no new request, even while its connection
    lives on; they go to the process that binds after it."""

    async def main() -> None:
        async with role_clients() as r:
            old = await r.bind("storage")
            old_task = asyncio.ensure_future(serve_once(old, lambda b: wire.GetOk(_by("old"))))
            got = asyncio.ensure_future(r.storage.get("tenant:a/x", 0, 3.0))
            assert await r.outcome(got) == _by("old")
            await old.send(fronts.routing_id(0), "stopping", wire.Stopping("storage"))
            await r.clock.settle()  # the announcement is in
            read = asyncio.ensure_future(r.storage.get("tenant:a/x", 0, 5.0))
            await r.clock.advance(1.0)  # the old one still serves: nothing may reach it
            assert not read.done()
            old_task.cancel()
            assert await old_task == ["get"]
            await old.close()
            await r.clock.advance(HOLD_POLL)  # its connection is seen gone
            new = await r.bind("storage")
            new_task = asyncio.ensure_future(serve_once(new, lambda b: wire.GetOk(_by("new"))))
            try:
                assert await r.outcome(read) == _by("new")
            finally:
                new_task.cancel()
                await new_task
                await new.close()

    asyncio.run(main())


def test_a_stopping_told_to_one_front_holds_only_that_fronts_requests() -> None:
    """The ``stopping`` state belongs to the client it was told to: during a front
    hand-over two fronts' clients may share a process (here: this test), and the
    other front goes on reading from the same storage."""

    async def main() -> None:
        async with role_clients() as r:
            told = IpcStorage(r.net, r.data_dir, fronts.routing_id(1), clock=r.clock)
            other = IpcStorage(r.net, r.data_dir, fronts.routing_id(2), clock=r.clock)
            server = await r.bind("storage")
            serving = asyncio.ensure_future(serve_once(server, lambda b: wire.GetOk(_by("k"))))
            try:
                assert await r.outcome(
                    asyncio.ensure_future(told.get("tenant:a/x", 0, 3.0))
                ) == _by("k")
                assert await r.outcome(
                    asyncio.ensure_future(other.get("tenant:a/x", 0, 3.0))
                ) == _by("k")
                await server.send(fronts.routing_id(1), "stopping", wire.Stopping("storage"))
                await r.clock.settle()
                assert told._stopping.active
                assert not other._stopping.active
                assert await r.outcome(
                    asyncio.ensure_future(other.get("tenant:a/y", 0, 3.0))
                ) == _by("k")
                held = asyncio.ensure_future(told.get("tenant:a/z", 0, 0.3))
                with pytest.raises(Unavailable):  # held for a successor that never came
                    await r.outcome(held)
            finally:
                serving.cancel()
                await serving
                await server.close()
                await told.close()
                await other.close()

    asyncio.run(main())
