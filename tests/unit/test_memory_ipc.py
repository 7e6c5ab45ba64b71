"""The in-memory IPC pair: every message type round-trips, and it keeps the ipc contract
(ids, deadlines, errors, handover, one binder) on a manual clock, with no sockets."""

from __future__ import annotations

import ast
import asyncio
import random
from pathlib import Path

import pytest

import concordance
from concordance import errors
from concordance.protocol import wire
from concordance.testing.clock import ManualClock
from concordance.testing.memory_ipc import MemoryIpc
from tests.unit.test_wire import IPC_EXAMPLES

EP = "ipc://@cc-test-consensus"
EVENTS = "ipc://@cc-test-events"


def run(main: object) -> None:
    asyncio.run(asyncio.wait_for(main, 10.0))  # type: ignore[arg-type]


def test_every_request_one_way_and_event_type_round_trips_unchanged() -> None:
    async def main() -> None:
        net = MemoryIpc(ManualClock())
        server = await net.server(EP)
        pushed: list[wire.Envelope] = []
        client = net.client(EP, "front", on_message=pushed.append)
        pub = await net.publisher(EVENTS)
        sub = net.subscriber(EVENTS)

        async def serve() -> None:
            while True:
                peer, env = await server.recv()
                if env.type in wire.REPLIES:
                    await server.reply(peer, env, IPC_EXAMPLES[wire.REPLIES[env.type]])
                else:
                    received.append(env)

        received: list[wire.Envelope] = []
        task = asyncio.ensure_future(serve())
        for name, reply_name in wire.REPLIES.items():
            got = await client.request(name, IPC_EXAMPLES[name], 1.0)
            assert got == IPC_EXAMPLES[reply_name]
        for name in sorted(wire.ONE_WAY):
            await client.send(name, IPC_EXAMPLES[name])
            await server.send(b"front", name, IPC_EXAMPLES[name])
        for name in wire.TOPICS:
            await pub.publish(name, IPC_EXAMPLES[name])
            assert (await sub.recv()).body == IPC_EXAMPLES[name]
        await net.clock.settle()  # type: ignore[attr-defined]
        assert [e.body for e in received] == [IPC_EXAMPLES[n] for n in sorted(wire.ONE_WAY)]
        assert [e.body for e in pushed] == [IPC_EXAMPLES[n] for n in sorted(wire.ONE_WAY)]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for end in (client, server, pub, sub):
            await end.close()

    run(main())


def test_errors_timeouts_and_deadlines_follow_the_clock() -> None:
    async def main() -> None:
        clock = ManualClock()
        net = MemoryIpc(clock)
        client = net.client(EP, "storage")
        assert not client.connected()
        with pytest.raises(errors.IpcError):
            client.send_nowait("hello", wire.Hello(1, 1))
        early = asyncio.ensure_future(client.request("status", wire.Status(), 2.0))
        await clock.advance(1.0)
        server = await net.server(EP)  # bound within the request's timeout: it goes out
        assert client.connected()
        peer, env = await server.recv()
        assert peer == b"storage" and env.deadline_ms == clock.wall_ms() + 1000
        await server.reply(peer, env, errors.Unavailable("no leader"))
        with pytest.raises(errors.Unavailable):
            await early
        unanswered = asyncio.ensure_future(client.request("status", wire.Status(), 2.0))
        await clock.advance(1.9)
        assert not unanswered.done()
        await clock.advance(0.1)
        with pytest.raises(errors.IpcTimeout):
            await unanswered
        _, late = await server.recv()
        await server.reply(b"storage", late, IPC_EXAMPLES["status_ok"])  # dropped: unmatched
        server.pause()  # as a full server does: what arrives waits
        stale = asyncio.ensure_future(client.request("status", wire.Status(), 1.0))
        await clock.advance(1.5)
        with pytest.raises(errors.IpcTimeout):
            await stale
        server.resume()
        await clock.settle()
        assert server.queued == 0  # its deadline passed before the server read it: dropped
        with pytest.raises(errors.IpcError):  # nobody of that identity is connected
            await server.send(b"front", "apply", wire.Apply(()))
        with pytest.raises(errors.IpcError):  # one binder per endpoint
            await net.server(EP)
        await server.close()
        await client.close()

    run(main())


def test_a_restarted_client_takes_over_its_identity() -> None:
    async def main() -> None:
        net = MemoryIpc(ManualClock())
        server = await net.server(EP)
        old_seen: list[wire.Envelope] = []
        new_seen: list[wire.Envelope] = []
        net.client(EP, "front", on_message=old_seen.append)
        new = net.client(EP, "front", on_message=new_seen.append)
        await server.send("front", "dropped", wire.Dropped((b"x",)))
        await asyncio.sleep(0)
        assert not old_seen and [e.body for e in new_seen] == [wire.Dropped((b"x",))]
        await server.close()
        with pytest.raises(errors.IpcError):
            await server.recv()
        await new.close()

    run(main())


def test_a_handler_set_late_gets_what_arrived_before_it_first() -> None:
    """``deliver_to`` hands over what arrived since the bind, in order, then the rest
    (as ``ipc.RpcServer`` does): a restarted consensus binds before it runs."""

    async def main() -> None:
        net = MemoryIpc()
        server = await net.server("ep")
        client = net.client("ep", "front.1")
        client.send_nowait("front_hello", wire.FrontHello(1))
        client.send_nowait("front_hello", wire.FrontHello(2))
        while server.queued < 2:
            await asyncio.sleep(0)
        seen: list[int] = []
        server.deliver_to(lambda peer, env: seen.append(env.body.incarnation))
        client.send_nowait("front_hello", wire.FrontHello(3))
        while len(seen) < 3:
            await asyncio.sleep(0)
        assert seen == [1, 2, 3]
        await client.close()
        await server.close()

    asyncio.run(main())


def test_with_latency_each_connection_keeps_its_order_and_others_overtake_it() -> None:
    """The node simulation's ``latency``: every message of one connection arrives after
    the ones sent before it on that connection; a message of another connection may
    arrive first (the interleavings of a node's separate ZeroMQ sockets)."""

    async def main() -> None:
        rng = random.Random(7)
        net = MemoryIpc(latency=lambda: rng.uniform(0.0, 0.003))
        server = await net.server("ep")
        arrived: list[tuple[bytes, int]] = []
        server.deliver_to(lambda peer, env: arrived.append((peer, env.body.incarnation)))
        a, b = net.client("ep", "front.a"), net.client("ep", "front.b")
        pushed: list[int] = []
        back = net.client(
            "ep", "front.c", on_message=lambda env: pushed.append(env.body.incarnation)
        )
        for i in range(50):
            a.send_nowait("front_hello", wire.FrontHello(i))
            b.send_nowait("front_hello", wire.FrontHello(i))
        back.send_nowait("front_hello", wire.FrontHello(0))  # connected before the pushes
        for i in range(50):
            await server.send(b"front.c", "front_hello", wire.FrontHello(i))
        while len(arrived) < 101 or len(pushed) < 50:
            await asyncio.sleep(0.001)
        assert [n for peer, n in arrived if peer == b"front.a"] == list(range(50))
        assert [n for peer, n in arrived if peer == b"front.b"] == list(range(50))
        assert pushed == list(range(50))
        order = [(n, peer) for peer, n in arrived if peer != b"front.c"]
        assert order != sorted(order)  # some b-message overtook an a-message sent before it
        for end in (a, b, back, server):
            await end.close()

    asyncio.run(main())


def test_nothing_that_ships_imports_the_test_support() -> None:
    root = Path(concordance.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.is_relative_to(root / "testing"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.startswith("concordance.testing") for n in names):
                offenders.append(str(path.relative_to(root)))
    assert offenders == []
