"""Peer frames across a planned consensus restart: the front's relay loses none (issue 21).

A forwarded proposal reaches the leader's consensus only as a peer frame that
the leader's front hands over in ``raft_in``, once: a frame lost there is a
write that its origin answers ``504`` and that is never applied. The fake
consensus below behaves as the real one's drain does (``driver.py``): it
takes everything up to the front's ``stopping_ack`` and nothing after (it
closes then); every frame must reach it before the ack, or reach its
successor.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable

import pytest

from concordance import fronts, ipc, wire
from concordance.front import ipc_clients
from concordance.front.ipc_clients import IpcConsensus
from concordance.testing.memory_ipc import MemoryIpc

FRONT = fronts.routing_id(0)


class Incarnation:
    """One consensus process: what it took before the front's ack, and after (lost)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.lost: list[bytes] = []
        self.acked = asyncio.Event()

    def take(self, peer: bytes, env: wire.Envelope) -> None:
        if isinstance(env.body, wire.StoppingAck):
            self.acked.set()
        elif isinstance(env.body, wire.RaftIn):
            (self.lost if self.acked.is_set() else self.frames).extend(env.body.frames)


async def poll(cond: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def test_frames_of_the_turn_stopping_arrives_in_go_before_the_ack() -> None:
    """Frames gathered for one ``raft_in`` when ``stopping`` arrives in the same loop
    turn: today's front sent the ack first and the frames after it, to a process that
    closes on the ack. In memory and in order, so the interleaving is exact."""

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="cc-", dir="/tmp") as d:
            net = MemoryIpc()
            endpoint = ipc.endpoint(d, "consensus")
            old, old_seen = await net.server(endpoint), Incarnation()
            old.deliver_to(old_seen.take)
            front = IpcConsensus(
                None, d, FRONT, open_client=lambda e, i, on: net.client(e, i, on_message=on)
            )
            try:
                await old.send(FRONT, "stopping", wire.Stopping("consensus"))
                await front.raft_in([b"forwarded-propose"])  # the same loop turn
                async with asyncio.timeout(5):
                    await old_seen.acked.wait()
                await old.close()  # as the real one does once acked and settled
                await front.raft_in([b"later"])  # held: consensus is stopping, then down
                await poll(lambda: front.rpc not in ipc_clients._STOPPING.rpcs, "old one gone")
                new, new_seen = await net.server(endpoint), Incarnation()
                new.deliver_to(new_seen.take)
                await poll(lambda: b"later" in new_seen.frames, "the successor got held frames")
                assert old_seen.lost == []
                assert old_seen.frames + new_seen.frames == [b"forwarded-propose", b"later"]
                await new.close()
            finally:
                await front.close()

    asyncio.run(main())


def test_held_frames_reach_the_successor_even_if_a_recent_send_says_connected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The front counts a role as connected when a send went through within
    ``RECENTLY`` (a shortcut for the request path). Right after the old consensus is
    gone that send went to the old process: held frames handed over on its word were
    sent into no connection and dropped after ``RAFT_IN_TIMEOUT``, before the
    successor (slower to start than that) was there. ``RECENTLY`` is stretched here
    so that the shortcut always answers yes."""
    monkeypatch.setattr(ipc_clients, "RECENTLY", 60.0)
    monkeypatch.setattr(ipc_clients, "RAFT_IN_TIMEOUT", 0.05)

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="cc-", dir="/tmp") as d:
            ctx = ipc.context()
            endpoint = ipc.endpoint(d, "consensus")
            old = await ipc.RpcServer.open(ctx, endpoint)
            old_seen = Incarnation()
            old.deliver_to(old_seen.take)
            front = IpcConsensus(ctx, d, FRONT)
            try:
                await front.raft_in([b"before"])  # also makes the front's last send recent
                await poll(lambda: old_seen.frames == [b"before"], "the first frame")
                await old.send(FRONT, "stopping", wire.Stopping("consensus"))
                async with asyncio.timeout(5):
                    await old_seen.acked.wait()
                await front.raft_in([b"forwarded-propose"])  # held: consensus is stopping
                await old.close()
                await poll(lambda: front.rpc not in ipc_clients._STOPPING.rpcs, "old one gone")
                # The successor's start-up outlasts a few hand-over attempts.
                await asyncio.sleep(4 * ipc_clients.RAFT_IN_TIMEOUT)
                new = await ipc.RpcServer.open(ctx, endpoint)
                new_seen = Incarnation()
                new.deliver_to(new_seen.take)
                try:
                    await poll(lambda: new_seen.frames, "the held frame at the successor")
                    assert new_seen.frames == [b"forwarded-propose"]
                    assert old_seen.lost == []
                finally:
                    await new.close()
            finally:
                await front.close()
                ctx.destroy(linger=0)

    asyncio.run(main())
