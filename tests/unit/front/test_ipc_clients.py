"""The real role clients (``ipc_clients``) against in-test consensus/storage servers over ZeroMQ.

One front app, wired exactly as ``procs/front.py`` wires it, talks to a tiny
consensus and storage served from this process over real abstract-namespace
ipc sockets: writes go through ``propose`` and come back on the events PUB,
reads through the storage socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from concordance import fronts, ipc, payloads, wire
from concordance.errors import NotLeader, Unavailable
from concordance.front import ipc_clients
from concordance.front.app import make_app
from concordance.front.appkeys import HUB
from concordance.front.ipc_clients import IpcConsensus, IpcStorage, connect
from concordance.storage.fsm import StateMachine
from tests.unit.front.fakes import FULL, make_config, no_supervisor


def _by(who: str) -> payloads.Entry:
    """An entry that tells which storage answered."""
    return payloads.Entry(f"tenant:a/{who}", b"1", 1, 1, 0, 0, None)


class MiniNode:
    """Consensus and storage roles in one object: commits every proposal at once."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = data_dir
        self.sm = StateMachine(Path(data_dir) / "state.db")
        self.index = 0
        self.refuse = 0
        self.drop = 0  # forward this many proposals, then report them refused (dropped)
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        ctx = ipc.context()
        self.consensus = await ipc.RpcServer.open(ctx, ipc.endpoint(self.data_dir, "consensus"))
        self.storage = await ipc.RpcServer.open(ctx, ipc.endpoint(self.data_dir, "storage"))
        self.events = await ipc.Publisher.open(ctx, ipc.endpoint(self.data_dir, "events"))
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
        """Publish until the front's SUB is connected (PUB/SUB slow joiner)."""
        for _ in range(500):
            await self.events.publish("change_batch", wire.ChangeBatch((), self.sm.revision))
            await asyncio.sleep(0.002)
            if hub.last is not None:
                return
        raise AssertionError("the front never subscribed")


@contextlib.asynccontextmanager
async def mini_front(**cfg_overrides: Any) -> AsyncIterator[tuple[TestClient[Any, Any], MiniNode]]:
    with tempfile.TemporaryDirectory(prefix="ccf", dir="/tmp") as data_dir:
        node = MiniNode(data_dir)
        await node.start()
        cfg = make_config(Path(data_dir), **cfg_overrides)
        app = make_app(cfg, lambda: connect(data_dir), supervisor=no_supervisor())
        try:
            async with TestClient(TestServer(app)) as client:
                await node.announce(app[HUB])
                yield client, node
        finally:
            await node.stop()
            ipc.context().destroy(linger=0)


AUTH = {"Authorization": f"Bearer {FULL}"}


def test_write_read_watch_and_peer_frames_over_real_ipc() -> None:
    async def main() -> None:
        async with mini_front() as (client, node):
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


def test_a_refused_forward_reported_by_consensus_is_proposed_again() -> None:
    """``dropped`` over the real consensus socket reaches the write that is waiting
    for its result: it is proposed again long before the (60 s) deadline and
    applied once."""

    async def main() -> None:
        async with mini_front(request_timeout_ms=60_000) as (client, node):
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


@pytest.mark.slow
def test_roles_that_do_not_answer_are_unavailable() -> None:
    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="ccf", dir="/tmp") as data_dir:
            ctx = ipc.context()
            consensus, storage = IpcConsensus(ctx, data_dir), IpcStorage(ctx, data_dir)
            try:
                with pytest.raises(Unavailable):
                    await storage.get("tenant:a/x", 0, 0.1)
                with pytest.raises(Unavailable):
                    await consensus.status(0.1)
                with pytest.raises(Unavailable):  # certainly not sent: a 503, not a 504
                    await consensus.propose([b"x"], 0.1)
            finally:
                await consensus.close()
                await storage.close()
                ctx.destroy(linger=0)

    asyncio.run(main())


def _connected_to(consensus: IpcConsensus) -> bool:
    from concordance.front.ipc_clients import _connected

    return _connected(consensus._rpc, consensus._stopping)


@contextlib.asynccontextmanager
async def role_clients() -> AsyncIterator[tuple[str, IpcConsensus, IpcStorage]]:
    """The front's role clients of a data dir where no role runs yet."""
    with tempfile.TemporaryDirectory(prefix="ccf", dir="/tmp") as data_dir:
        ctx = ipc.context()
        consensus, storage = IpcConsensus(ctx, data_dir), IpcStorage(ctx, data_dir)
        try:
            yield data_dir, consensus, storage
        finally:
            await consensus.close()
            await storage.close()
            ctx.destroy(linger=0)


async def serve_once(server: ipc.RpcServer, answer: Any) -> list[str]:
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


def test_requests_to_a_role_not_yet_running_are_held_until_it_starts() -> None:
    """No role for a while (a restart): a read and a proposal are neither failed nor
    lost; each is sent once the role binds, within its own deadline."""

    async def main() -> None:
        async with role_clients() as (data_dir, consensus, storage):
            read = asyncio.ensure_future(storage.get("tenant:a/x", 0, 5.0))
            propose = asyncio.ensure_future(consensus.propose([b"cmd"], 5.0))
            await asyncio.sleep(0.3)  # longer than one attempt would take with no holding
            assert not read.done() and not propose.done()
            ctx = ipc.context()
            s = await ipc.RpcServer.open(ctx, ipc.endpoint(data_dir, "storage"))
            c = await ipc.RpcServer.open(ctx, ipc.endpoint(data_dir, "consensus"))
            tasks = [
                asyncio.ensure_future(serve_once(s, lambda b: wire.GetOk(None))),
                asyncio.ensure_future(serve_once(c, lambda b: wire.Proposed(7))),
            ]
            try:
                async with asyncio.timeout(5):
                    assert await read is None
                    assert await propose == 7
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
        async with role_clients() as (_, consensus, _storage):
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(Unavailable):
                await consensus.propose([b"cmd"], 0.6)
            assert loop.time() - started >= ipc_clients.hold_budget(0.6) * 0.9

    asyncio.run(main())


def test_unavailable_answers_to_reads_are_asked_again_within_the_deadline() -> None:
    """``read_index`` answered ``unavailable`` (no leader yet, consensus stopping)
    is asked again instead of failing the read at once."""

    async def main() -> None:
        async with role_clients() as (data_dir, consensus, _storage):
            c = await ipc.RpcServer.open(ipc.context(), ipc.endpoint(data_dir, "consensus"))
            refusals = [NotLeader(None), NotLeader(None)]

            def answer(_: Any) -> Any:
                return refusals.pop() if refusals else wire.ReadIndexOk(5)

            task = asyncio.ensure_future(serve_once(c, answer))
            try:
                async with asyncio.timeout(5):
                    assert await consensus.read_index(3.0) == 5
            finally:
                task.cancel()
                seen = await task
                await c.close()
            assert seen == ["read_index"] * 3

    asyncio.run(main())


def test_a_role_that_keeps_answering_unavailable_is_503_before_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No leader for good (cut off, removed): both a read and a proposal are
    ``Unavailable`` after ``UNAVAILABLE_RETRY`` of refusals, not at the deadline."""
    monkeypatch.setattr(ipc_clients, "UNAVAILABLE_RETRY", 0.3)

    async def main() -> None:
        async with role_clients() as (data_dir, consensus, _storage):
            c = await ipc.RpcServer.open(ipc.context(), ipc.endpoint(data_dir, "consensus"))
            task = asyncio.ensure_future(serve_once(c, lambda _: NotLeader(None)))
            loop = asyncio.get_running_loop()
            try:
                asks = (lambda: consensus.read_index(30.0), lambda: consensus.propose([b"c"], 30.0))
                for ask in asks:
                    started = loop.time()
                    with pytest.raises(Unavailable):
                        await asyncio.wait_for(ask(), 10)
                    assert 0.1 <= loop.time() - started < 5.0
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
        async with role_clients() as (data_dir, _consensus, storage):
            ctx = ipc.context()
            where = ipc.endpoint(data_dir, "storage")
            old = await ipc.RpcServer.open(ctx, where)
            old_task = asyncio.ensure_future(serve_once(old, lambda b: wire.GetOk(_by("old"))))
            async with asyncio.timeout(5):
                assert await storage.get("tenant:a/x", 0, 3.0) == _by("old")
            await old.send(fronts.routing_id(0), "stopping", wire.Stopping("storage"))
            await asyncio.sleep(0.05)  # the announcement is in
            read = asyncio.ensure_future(storage.get("tenant:a/x", 0, 5.0))
            await asyncio.sleep(0.2)  # the old one still serves: nothing may reach it
            assert not read.done()
            old_task.cancel()
            assert await old_task == ["get"]
            await old.close()
            await asyncio.sleep(0.05)
            new = await ipc.RpcServer.open(ctx, where)
            new_task = asyncio.ensure_future(serve_once(new, lambda b: wire.GetOk(_by("new"))))
            try:
                async with asyncio.timeout(5):
                    assert await read == _by("new")
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
        with tempfile.TemporaryDirectory(prefix="ccf", dir="/tmp") as data_dir:
            ctx = ipc.context()
            told = IpcStorage(ctx, data_dir, fronts.routing_id(0))
            other = IpcStorage(ctx, data_dir, fronts.routing_id(1))
            server = await ipc.RpcServer.open(ctx, ipc.endpoint(data_dir, "storage"))
            serving = asyncio.ensure_future(serve_once(server, lambda b: wire.GetOk(_by("k"))))
            try:
                async with asyncio.timeout(5):
                    assert await told.get("tenant:a/x", 0, 3.0) == _by("k")
                    assert await other.get("tenant:a/x", 0, 3.0) == _by("k")
                    await server.send(fronts.routing_id(0), "stopping", wire.Stopping("storage"))
                    while not told._stopping.active:
                        await asyncio.sleep(0.005)
                    assert not other._stopping.active
                    assert await other.get("tenant:a/y", 0, 3.0) == _by("k")
                    held = asyncio.ensure_future(told.get("tenant:a/z", 0, 0.3))
                    with pytest.raises(Unavailable):  # held for a successor that never came
                        await held
            finally:
                serving.cancel()
                await serving
                await server.close()
                await told.close()
                await other.close()
                ctx.destroy(linger=0)

    asyncio.run(main())
