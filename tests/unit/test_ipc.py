"""Pair tests for concordance.ipc: real ZeroMQ over abstract-namespace ipc, both ends in one
process on one event loop. Waits are bounded by deadlines; the only sleeps are tiny polls for
subscription propagation."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
import zmq
import zmq.asyncio

from concordance import errors, ipc
from concordance.protocol import payloads, wire
from concordance.testing.poll import until

TEST_DEADLINE = 10.0  # seconds; every test body runs under it


def _entry(key: str) -> payloads.Entry:
    return payloads.Entry(key, b"1", 1, 1, 0, 0, None)


def run(main: Callable[[zmq.asyncio.Context], Awaitable[None]]) -> None:
    """Run ``main(ctx)`` on a fresh loop and context, bounded by TEST_DEADLINE."""

    async def outer() -> None:
        ctx = zmq.asyncio.Context()
        try:
            await asyncio.wait_for(main(ctx), TEST_DEADLINE)
        finally:
            ctx.destroy(linger=0)

    asyncio.run(outer())


@pytest.fixture
def data_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="cc", dir="/tmp") as d:
        yield d


async def serve(server: ipc.RpcServer, answer: Callable[[wire.Envelope], Any]) -> None:
    """Answer every request with ``answer(request)`` (a body or an error); forever."""
    while True:
        peer, request = await server.recv()
        await server.reply(peer, request, answer(request))


@asynccontextmanager
async def background(coro: Awaitable[None]) -> AsyncIterator[None]:
    task = asyncio.ensure_future(coro)
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# --------------------------------------------------------------------------- endpoints


def test_endpoint_is_short_unique_private_and_follows_symlinks(data_dir: str) -> None:
    a, b = Path(data_dir) / "a", Path(data_dir) / "b"
    a.mkdir()
    b.mkdir()
    link = Path(data_dir) / "link"
    link.symlink_to(a)
    ep = ipc.endpoint(str(a), "consensus")
    assert ep == f"ipc://{a.resolve()}/run/ipc/consensus"
    assert ipc.endpoint(a, "consensus") == ep == ipc.endpoint(str(link), "consensus")
    assert ipc.endpoint(str(b), "consensus") != ep
    assert ipc.endpoint(str(a), "storage") != ep
    assert len(ipc.endpoint(str(a), "x" * 32)) <= zmq.IPC_PATH_MAX_LEN
    run_dir = ipc.run_dir(a)
    assert (run_dir.stat().st_mode & 0o777, run_dir.stat().st_uid) == (0o700, os.getuid())
    deep = Path(data_dir) / ("d" * 80)  # too long for sun_path inside: a checked /tmp dir
    deep.mkdir()
    far = ipc.endpoint(deep, "x" * 32)
    assert far.startswith(f"ipc:///tmp/cc-{os.getuid()}-") and len(far) <= zmq.IPC_PATH_MAX_LEN
    shutil.rmtree(ipc.run_dir(deep))


def test_a_run_dir_that_is_not_private_is_refused(data_dir: str) -> None:
    node = Path(data_dir) / "n1"
    run_dir = ipc.run_dir(node)
    run_dir.chmod(0o755)
    with pytest.raises(errors.IpcError, match="mode 755"):
        ipc.endpoint(node, "consensus")
    run_dir.chmod(0o700)
    os.chown(run_dir, 65534, 65534)
    with pytest.raises(errors.IpcError, match="belongs to uid 65534"):
        ipc.run_dir(node)
    run_dir.rmdir()
    elsewhere = Path(data_dir) / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    run_dir.symlink_to(elsewhere)
    with pytest.raises(errors.IpcError, match="symlink"):
        ipc.run_dir(node)


@pytest.mark.parametrize("name", ["", "a/b", "Consensus", "x" * 33, "a b"])
def test_endpoint_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        ipc.endpoint("/tmp", name)


# --------------------------------------------------------------------------- request / reply


def test_request_reply(data_dir: str) -> None:
    status = wire.StatusOk(
        "n1", "leader", 3, "n1", 10, 10, (wire.MemberStatus("n1", "a", True, 10),)
    )

    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "consensus")
        seen: list[tuple[bytes, wire.Envelope]] = []

        async def one(server: ipc.RpcServer) -> None:
            peer, request = await server.recv()
            seen.append((peer, request))
            await server.reply(peer, request, status)

        async with (
            ipc.RpcServer(ctx, ep) as server,
            background(one(server)),
            ipc.RpcClient(ctx, ep, "front") as client,
        ):
            assert await client.request("status", wire.Status(), 2.0) == status
        ((peer, request),) = seen
        assert peer == b"front"
        assert request.type == "status" and request.reply_to is None
        assert request.deadline_ms is not None and request.deadline_ms > time.time() * 1000

    run(main)


def test_many_concurrent_requests_are_matched_by_id(data_dir: str) -> None:
    """The server collects every request first, then answers in reverse order."""
    n = 200

    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "storage")

        async def reverse(server: ipc.RpcServer) -> None:
            batch = [await server.recv() for _ in range(n)]
            for peer, request in reversed(batch):
                assert isinstance(request.body, wire.Get)
                await server.reply(peer, request, wire.GetOk(_entry(request.body.key)))

        async with (
            ipc.RpcServer(ctx, ep) as server,
            background(reverse(server)),
            ipc.RpcClient(ctx, ep, "front") as client,
        ):
            keys = [f"tenant:t/k{i}" for i in range(n)]
            replies = await asyncio.gather(
                *(client.request("get", wire.Get(k, 0), 5.0) for k in keys)
            )
        assert replies == [wire.GetOk(_entry(k)) for k in keys]

    run(main)


def test_error_reply_raises_the_rebuilt_error(data_dir: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "consensus")
        failures: list[errors.ConcordanceError] = [
            errors.VersionConflict("version mismatch", current={"key": "k", "version": 4}),
            errors.NotLeader("n2"),
        ]
        async with (
            ipc.RpcServer(ctx, ep) as server,
            background(serve(server, lambda r: failures.pop(0))),
            ipc.RpcClient(ctx, ep, "front") as client,
        ):
            with pytest.raises(errors.VersionConflict) as info:
                await client.request("propose", wire.Propose((b"x",)), 2.0)
            assert info.value.extra == {"current": {"key": "k", "version": 4}}
            # Subclasses without a code of their own travel as their parent's code.
            with pytest.raises(errors.Unavailable):
                await client.request("propose", wire.Propose((b"x",)), 2.0)

    run(main)


def test_wrong_reply_type_is_a_protocol_error(data_dir: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "consensus")
        async with (
            ipc.RpcServer(ctx, ep) as server,
            background(serve(server, lambda r: wire.Ok())),
            ipc.RpcClient(ctx, ep, "front") as client,
        ):
            with pytest.raises(errors.RemoteProtocolError):
                await client.request("read_index", wire.ReadIndex(), 2.0)
            with pytest.raises(ValueError):
                await client.request("hello", wire.Hello(1, 1), 2.0)
            with pytest.raises(ValueError):
                await client.send("status", wire.Status())

    run(main)


def test_timeout_when_the_server_never_answers(data_dir: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "consensus")
        received: list[wire.Envelope] = []

        async def swallow(server: ipc.RpcServer) -> None:
            while True:
                received.append((await server.recv())[1])

        async with (
            ipc.RpcServer(ctx, ep) as server,
            background(swallow(server)),
            ipc.RpcClient(ctx, ep, "front") as client,
        ):
            start = time.monotonic()
            with pytest.raises(errors.IpcTimeout):
                await client.request("read_index", wire.ReadIndex(), 0.2)
            assert time.monotonic() - start >= 0.19  # it waited the whole timeout
        assert [e.type for e in received] == ["read_index"]

    run(main)


def test_timeout_when_no_server_is_bound(data_dir: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "consensus")
        async with ipc.RpcClient(ctx, ep, "front") as client:
            with pytest.raises(errors.IpcTimeout):
                await client.request("status", wire.Status(), 0.1)
            with pytest.raises(errors.IpcError):
                await client.send("applied", wire.Applied(1), timeout=0.05)

    run(main)


def test_late_reply_is_dropped_and_the_next_request_gets_its_own(data_dir: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "consensus")
        async with ipc.RpcServer(ctx, ep) as server, ipc.RpcClient(ctx, ep, "front") as client:
            first = asyncio.ensure_future(client.request("read_index", wire.ReadIndex(), 0.2))
            peer, stale = await server.recv()
            with pytest.raises(errors.IpcTimeout):
                await first
            second = asyncio.ensure_future(client.request("read_index", wire.ReadIndex(), 2.0))
            peer, fresh = await server.recv()
            await server.reply(peer, stale, wire.ReadIndexOk(1))  # late: dropped
            await server.reply(peer, fresh, wire.ReadIndexOk(2))
            assert await second == wire.ReadIndexOk(2)

    run(main)


def test_expired_requests_and_garbage_are_dropped_by_the_server(data_dir: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "storage")
        async with ipc.RpcServer(ctx, ep) as server:
            raw = ctx.socket(zmq.DEALER)
            try:
                raw.setsockopt(zmq.ROUTING_ID, b"front")
                raw.connect(ep)
                expired = wire.Envelope("get", 1, wire.Get("k", 0), deadline_ms=1)
                fine = wire.Envelope("get", 2, wire.Get("k", 0), deadline_ms=2**50)
                await raw.send_multipart([b"junk"])
                await raw.send_multipart([b"two", b"frames"])
                await raw.send_multipart([msgpack.packb({"v": 1, "t": "get"})])
                await raw.send_multipart([wire.encode_envelope(expired)])
                await raw.send_multipart([wire.encode_envelope(fine)])
                assert await server.recv() == (b"front", fine)
            finally:
                raw.close(linger=0)

    run(main)


def test_server_restart_then_retry_succeeds(data_dir: str) -> None:
    """Lazy Pirate: the client keeps its socket; a request during the outage times out, a
    retry after the server is back succeeds."""

    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "consensus")
        async with ipc.RpcClient(ctx, ep, "storage") as client:
            server = ipc.RpcServer(ctx, ep)
            async with background(serve(server, lambda r: wire.ReadIndexOk(1))):
                assert await client.request(
                    "read_index", wire.ReadIndex(), 2.0
                ) == wire.ReadIndexOk(1)
            await server.close()

            with pytest.raises(errors.IpcTimeout):
                await client.request("read_index", wire.ReadIndex(), 0.1)

            server = await ipc.RpcServer.open(ctx, ep)
            async with server, background(serve(server, lambda r: wire.ReadIndexOk(2))):
                assert await client.request(
                    "read_index", wire.ReadIndex(), 2.0
                ) == wire.ReadIndexOk(2)

    run(main)


def test_a_request_made_before_the_server_binds_waits_for_it(data_dir: str) -> None:
    """Startup in any order: the request is handed over once the server appears."""

    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "storage")
        async with ipc.RpcClient(ctx, ep, "front") as client:
            pending = asyncio.ensure_future(
                client.request("storage_status", wire.StorageStatus(), 3.0)
            )
            await until(lambda: client._pending, "the request waiting for a connection")
            answer = wire.StorageStatusOk(5, 1, 4)
            async with (
                ipc.RpcServer(ctx, ep) as server,
                background(serve(server, lambda r: answer)),
            ):
                assert await pending == answer

    run(main)


# --------------------------------------------------------------------------- one-way


def test_one_way_both_directions(data_dir: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "consensus")
        inbox: asyncio.Queue[wire.Envelope] = asyncio.Queue()
        apply = wire.Apply(((1, 1, 1, b""), (2, 1, 0, b"set k")))
        async with (
            ipc.RpcServer(ctx, ep) as server,
            ipc.RpcClient(ctx, ep, "storage", on_message=inbox.put_nowait) as client,
        ):
            await client.send("hello", wire.Hello(0, 0))
            peer, hello = await server.recv()
            assert (peer, hello.type, hello.body) == (b"storage", "hello", wire.Hello(0, 0))
            assert hello.deadline_ms is None

            await server.send(peer, "apply", apply)
            await server.send("storage", "take_snapshot", wire.TakeSnapshot())
            got = [await inbox.get(), await inbox.get()]
            assert [(e.type, e.body) for e in got] == [
                ("apply", apply),
                ("take_snapshot", wire.TakeSnapshot()),
            ]

            with pytest.raises(errors.IpcError) as info:
                await server.send(b"nobody", "apply", apply)
            cause = info.value.__cause__
            assert isinstance(cause, zmq.ZMQError) and cause.errno == zmq.EHOSTUNREACH
            with pytest.raises(ValueError):
                await server.send(peer, "status_ok", wire.Ok())

    run(main)


def test_a_restarted_client_takes_its_routing_id_back(data_dir: str) -> None:
    """ROUTER_HANDOVER: a new DEALER with the same ROUTING_ID (a restarted front) gets the
    replies and one-way messages addressed to that id, even before the old socket is gone."""

    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "consensus")
        inbox: asyncio.Queue[wire.Envelope] = asyncio.Queue()
        async with (
            ipc.RpcServer(ctx, ep) as server,
            background(serve(server, lambda r: wire.ReadIndexOk(r.id))),
        ):
            old = ipc.RpcClient(ctx, ep, "front")
            assert await old.request("read_index", wire.ReadIndex(), 2.0)
            async with ipc.RpcClient(ctx, ep, "front", on_message=inbox.put_nowait) as new:
                assert await new.request("read_index", wire.ReadIndex(), 2.0)
                await old.close()  # a dead process does not reconnect and take the id back
                out = wire.Dropped((b"cmd",))
                deadline = time.monotonic() + 3
                while True:
                    try:
                        await server.send("front", "dropped", out)
                        env = await asyncio.wait_for(inbox.get(), 0.2)
                        break
                    except (errors.IpcError, TimeoutError):
                        assert time.monotonic() < deadline, "dropped never reached the new client"
                assert env.body == out

    run(main)


def test_a_failing_message_handler_does_not_stop_the_client(data_dir: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "consensus")
        seen: list[str] = []

        def handler(env: wire.Envelope) -> None:
            seen.append(env.type)
            raise RuntimeError("handler bug")

        async with (
            ipc.RpcServer(ctx, ep) as server,
            ipc.RpcClient(ctx, ep, "front", on_message=handler) as client,
        ):
            await client.send("applied", wire.Applied(1))
            peer, _ = await server.recv()
            await server.send(peer, "dropped", wire.Dropped((b"a",)))
            async with background(serve(server, lambda r: wire.ReadIndexOk(3))):
                assert await client.request(
                    "read_index", wire.ReadIndex(), 2.0
                ) == wire.ReadIndexOk(3)
        assert seen == ["dropped"]

    run(main)


def test_reply_to_a_vanished_client_is_dropped(data_dir: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "storage")
        async with ipc.RpcServer(ctx, ep) as server:
            client = ipc.RpcClient(ctx, ep, "front")
            pending = asyncio.ensure_future(client.request("get", wire.Get("k", 0), 2.0))
            _, request = await server.recv()
            await client.close()
            with pytest.raises(errors.IpcError):
                await pending
            await server.reply(b"gone", request, wire.GetOk(None))  # no error: logged only

    run(main)


def test_closed_client_refuses_work(data_dir: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        client = ipc.RpcClient(ctx, ipc.endpoint(data_dir, "storage"), "front")
        await client.close()
        await client.close()
        with pytest.raises(errors.IpcError):
            await client.request("get", wire.Get("k", 0), 1.0)
        with pytest.raises(errors.IpcError):
            await client.send("hello", wire.Hello(0, 0))

    run(main)


# --------------------------------------------------------------------------- events


async def _wait_subscribed(pub: ipc.Publisher, sub: ipc.Subscriber, deadline: float) -> None:
    """Publish probes until one arrives: SUB subscriptions reach the PUB asynchronously."""
    probe = wire.ChangeBatch((), 0)
    while True:
        await pub.publish("change_batch", probe)
        try:
            env = await asyncio.wait_for(sub.recv(), 0.02)
        except TimeoutError:
            assert time.monotonic() < deadline, "subscription never propagated"
            continue
        assert env.body == probe
        return


def test_publish_subscribe(data_dir: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "events")
        batch = wire.ChangeBatch((payloads.Change("set", "k", b"1", 1, 5, 9),), 5)
        results = wire.Results(
            "n1",
            (
                payloads.Outcome(1, _entry("k")),
                payloads.Outcome(2, payloads.Rejected("not_found", "k does not exist")),
            ),
        )
        async with (
            ipc.Publisher(ctx, ep) as pub,
            ipc.Subscriber(ctx, ep) as both,
            ipc.Subscriber(ctx, ep, (b"c",)) as changes,
        ):
            deadline = time.monotonic() + 3
            await _wait_subscribed(pub, both, deadline)
            await _wait_subscribed(pub, changes, deadline)
            while True:  # drain probes that arrived after the first one
                try:
                    await asyncio.wait_for(changes.recv(), 0.05)
                except TimeoutError:
                    break
            await pub.publish("results", results)
            await pub.publish("change_batch", batch)
            got: list[tuple[str, wire.Body]] = []
            while len(got) < 2:
                env = await both.recv()
                if env.body != wire.ChangeBatch((), 0):
                    got.append((env.type, env.body))
            assert got == [("results", results), ("change_batch", batch)]
            env = await changes.recv()  # results (topic r) filtered out
            assert (env.type, env.body) == ("change_batch", batch)
            with pytest.raises(ValueError):
                await pub.publish("hello", wire.Hello(0, 0))

    run(main)


# --------------------------------------------------------------------------- binding


def test_second_bind_in_process_is_eaddrinuse(data_dir: str) -> None:
    async def main(ctx: zmq.asyncio.Context) -> None:
        ep = ipc.endpoint(data_dir, "consensus")
        async with ipc.RpcServer(ctx, ep):
            for make in (
                lambda: ipc.RpcServer(ctx, ep),
                lambda: ipc.Publisher(ctx, ep),
            ):
                with pytest.raises(errors.IpcError) as info:
                    make()
                assert ipc.is_address_in_use(info.value)
            with pytest.raises(errors.IpcError):
                await ipc.RpcServer.open(ctx, ep, wait=0.05)

    run(main)


HOLDER = """
import asyncio, sys, zmq.asyncio
from concordance import ipc

async def main():
    server = ipc.RpcServer(zmq.asyncio.Context(), sys.argv[1])
    print("bound", flush=True)
    await asyncio.Event().wait()  # until killed

asyncio.run(main())
"""


def test_second_binder_in_another_process_is_eaddrinuse_until_it_dies(data_dir: str) -> None:
    """The bind lock keeps a second binder from stealing the socket file (a plain second
    bind on a filesystem path would), and dies with its holder, even a SIGKILLed one:
    the successor replaces the stale socket file."""
    ep = ipc.endpoint(data_dir, "storage")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, ep], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"bound\n"

        async def while_held(ctx: zmq.asyncio.Context) -> None:
            with pytest.raises(errors.IpcError) as info:
                ipc.RpcServer(ctx, ep)
            assert ipc.is_address_in_use(info.value)

        run(while_held)
    finally:
        holder.kill()
        holder.wait(timeout=TEST_DEADLINE)
        holder.stdout.close()  # type: ignore[union-attr]
        holder.stdin.close()  # type: ignore[union-attr]
    assert os.path.exists(ep.removeprefix("ipc://"))  # left behind by the killed holder

    async def after_death(ctx: zmq.asyncio.Context) -> None:
        status = wire.StatusOk("n1", "leader", 1, "n1", 1, 1, ())
        async with ipc.RpcServer(ctx, ep) as server, ipc.RpcClient(ctx, ep, "front.1") as c:
            task = asyncio.create_task(serve(server, lambda env: status))
            assert await c.request("status", wire.Status(), timeout=5) == status
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(after_death)
    assert not os.path.exists(ep.removeprefix("ipc://"))  # unlinked on close


OTHER_USER = """
import json, os, socket, sys
import zmq
data, ep_consensus, ep_storage = sys.argv[1:4]
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
out = {}
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
try:
    sock.bind(ep_storage)  # a role's name, while that role is down
    out["bind"] = "bound"
except zmq.ZMQError as e:
    out["bind"] = e.strerror
conn = socket.socket(socket.AF_UNIX)
try:
    conn.connect(ep_consensus.removeprefix("ipc://"))  # a running role
    out["connect"] = "connected"
except OSError as e:
    out["connect"] = e.strerror
print(json.dumps(out), flush=True)
"""


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a process as another uid")
def test_another_user_can_neither_bind_a_role_s_name_nor_connect_to_one(data_dir: str) -> None:
    """Issue 20: with abstract names, uid 65534 bound a role's name first and answered the
    front's reads. Every directory above the run dir is opened up here, so that its own
    0700 is the only fence."""
    node = Path(data_dir) / "n1"
    node.mkdir()
    consensus, storage = ipc.endpoint(node, "consensus"), ipc.endpoint(node, "storage")
    for d in (Path(data_dir), node, node / "run"):
        d.chmod(0o755)

    async def main(ctx: zmq.asyncio.Context) -> None:
        async with ipc.RpcServer(ctx, consensus):
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-c", OTHER_USER, str(node), consensus, storage],
                capture_output=True,
                text=True,
                timeout=TEST_DEADLINE,
            )
            assert done.returncode == 0, done.stderr
            result = json.loads(done.stdout)
            assert result["bind"].startswith("Permission denied"), result
            assert result["connect"] == "Permission denied", result

    run(main)
