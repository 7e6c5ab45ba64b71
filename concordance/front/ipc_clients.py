"""The real role clients: the front's Protocols over ``concordance.ipc`` (docs/PROTOCOL.md §4).

Why a separate module: the rest of the front only knows the Protocols in
``clients``. The retry rules of PROTOCOL.md §4 they follow (idempotent
re-sends, holding while a role restarts, the ``unavailable`` backoff) are in
``retry.py``.

Every wait and deadline here runs on the ``Clock`` the clients are given
(the system clock in what ships), and every socket is opened through the
``Sockets`` they are given (ZeroMQ in what ships): tests run these rules on
``concordance.testing`` (``MemoryIpc``, ``ManualClock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from concordance import ipc
from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.errors import IpcError, IpcTimeout, Unavailable
from concordance.front.clients import Clients, DroppedHandler
from concordance.front.get_batch import GetBatcher
from concordance.front.retry import (
    ACK_TIMEOUT,
    CONNECT_GRACE,
    _ensure_connected,
    _idempotent,
    _retry_unavailable,
    _Stopping,
)
from concordance.ipc import fronts, sockets
from concordance.ipc.sockets import Sockets, ZmqSockets
from concordance.protocol import wire
from concordance.protocol.payloads import Entry
from concordance.timing import FRONT_HELLO_EVERY, FRONT_HELLO_POLL

__all__ = ["IpcConsensus", "IpcEvents", "IpcStorage", "connect", "greet"]

log = logging.getLogger(__name__)


class IpcConsensus:
    """:class:`~concordance.front.clients.ConsensusClient` over the ``consensus`` socket.

    ``sockets`` opens the socket (ZeroMQ in what ships; tests pass in-memory
    ends, ``concordance.testing.memory_ipc``); ``clock`` times its holds,
    retries and backoffs.

    On ``stopping`` it answers ``stopping_ack`` (in order behind any send still
    waiting for room): consensus steps everything sent before the ack, and
    nothing is sent to that process after it. Peer frames do not pass here:
    consensus owns the peer links (PROTOCOL.md §6).
    """

    def __init__(
        self,
        sockets: Sockets,
        data_dir: str,
        identity: bytes = fronts.routing_id(0),
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._dropped: DroppedHandler | None = None
        self._acking: set[asyncio.Task[None]] = set()
        self._ack = wire.StoppingAck(fronts.incarnation_of(identity) or 0)
        self._clock = clock
        endpoint = ipc.endpoint(data_dir, "consensus")
        self._rpc = sockets.client(endpoint, identity, on_message=self._on_message)
        self._stopping = _Stopping(self._rpc, clock)

    @property
    def rpc(self) -> sockets.Client:
        return self._rpc

    def _on_message(self, env: wire.Envelope) -> None:
        if isinstance(env.body, wire.Dropped) and self._dropped is not None:
            self._dropped(env.body)
        elif isinstance(env.body, wire.Stopping):
            self._on_stopping()
        else:
            log.debug("consensus sent an unexpected %s", env.type)

    def _on_stopping(self) -> None:
        """Hold everything new for the successor; answer ``stopping_ack`` (the last
        message to this process: it steps all sent before and only then closes)."""
        self._stopping.announce()
        try:  # almost always at once; else in order behind what waits for room
            self._rpc.send_nowait("stopping_ack", self._ack)
        except IpcError:
            task = asyncio.get_running_loop().create_task(self._acknowledge())
            self._acking.add(task)
            task.add_done_callback(self._acking.discard)

    async def _acknowledge(self) -> None:
        try:
            await self._rpc.send("stopping_ack", self._ack, ACK_TIMEOUT)
        except IpcError as e:  # consensus ends its drain at its own bound
            log.warning("could not acknowledge consensus's stopping: %s", e)

    def on_dropped(self, handler: DroppedHandler) -> None:
        self._dropped = handler

    async def propose(self, commands: Sequence[bytes], timeout: float) -> int:
        body = wire.Propose(tuple(commands))
        got = await _retry_unavailable(
            self._rpc, self._stopping, "propose", body, timeout, self._clock
        )
        assert isinstance(got, wire.Proposed)
        return got.index

    async def read_index(self, timeout: float) -> int:
        got = await _idempotent(
            self._rpc,
            self._stopping,
            "read_index",
            wire.ReadIndex(),
            timeout,
            wire.ReadIndexOk,
            self._clock,
        )
        return got.index

    async def status(self, timeout: float) -> wire.StatusOk:
        return await _idempotent(
            self._rpc, self._stopping, "status", wire.Status(), timeout, wire.StatusOk, self._clock
        )

    async def peer_links(self, timeout: float) -> wire.PeerLinksOk:
        return await _idempotent(
            self._rpc,
            self._stopping,
            "peer_links",
            wire.PeerLinks(),
            timeout,
            wire.PeerLinksOk,
            self._clock,
        )

    async def conf_change(self, op: str, node_id: str, address: str, timeout: float) -> None:
        body = wire.ConfChange(op, node_id, address)
        await _retry_unavailable(
            self._rpc, self._stopping, "conf_change", body, timeout, self._clock
        )

    async def transfer(self, to: str, timeout: float) -> None:
        await _ensure_connected(
            self._rpc, self._stopping, "transfer", min(timeout, CONNECT_GRACE), self._clock
        )
        try:
            await self._rpc.request("transfer", wire.Transfer(to), timeout)
        except IpcTimeout as e:
            raise Unavailable("consensus did not answer the leadership transfer") from e

    async def snapshot_now(self, timeout: float) -> wire.SnapshotNowOk:
        await _ensure_connected(
            self._rpc, self._stopping, "snapshot_now", CONNECT_GRACE, self._clock
        )
        try:
            got = await self._rpc.request("snapshot_now", wire.SnapshotNow(), timeout)
        except IpcTimeout as e:
            raise Unavailable("consensus did not answer the snapshot request") from e
        assert isinstance(got, wire.SnapshotNowOk)
        return got

    async def close(self) -> None:
        for task in self._acking:
            task.cancel()
        self._stopping.close()
        await self._rpc.close()


class IpcStorage:
    """:class:`~concordance.front.clients.StorageClient` over the ``storage`` socket
    (``sockets`` and ``clock`` as for :class:`IpcConsensus`)."""

    def __init__(
        self,
        sockets: Sockets,
        data_dir: str,
        identity: bytes = fronts.routing_id(0),
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._clock = clock
        endpoint = ipc.endpoint(data_dir, "storage")
        self._rpc = sockets.client(endpoint, identity, on_message=self._on_message)
        self._stopping = _Stopping(self._rpc, clock)
        self._gets = GetBatcher(self._send_gets)
        self.watching = False  # what the periodic front_watching tells storage

    async def watch(self) -> None:
        self.watching = True
        # On the request socket, ahead of the caller's next request: storage handles
        # them in order. Lost (storage down): a new storage publishes until told not to.
        with contextlib.suppress(IpcError):
            await self._rpc.send("front_watching", wire.FrontWatching(True))

    def unwatch(self) -> None:
        self.watching = False
        with contextlib.suppress(IpcError):
            self._rpc.send_nowait("front_watching", wire.FrontWatching(False))

    @property
    def rpc(self) -> sockets.Client:
        return self._rpc

    def _on_message(self, env: wire.Envelope) -> None:
        if isinstance(env.body, wire.Stopping):
            self._stopping.announce()
        else:
            log.debug("storage sent an unexpected %s", env.type)

    async def get(self, key: str, now: int, timeout: float, min_index: int = 0) -> Entry | None:
        return await self._gets.get(key, now, timeout, min_index)

    async def _send_gets(
        self, keys: Sequence[str], now: int, min_index: int, timeout: float
    ) -> Sequence[Entry | None]:
        if len(keys) == 1:
            body: wire.Body = wire.Get(keys[0], now, min_index)
            got1 = await _idempotent(
                self._rpc, self._stopping, "get", body, timeout, wire.GetOk, self._clock
            )
            return (got1.entry,)
        body = wire.GetMany(tuple(keys), now, min_index)
        got = await _idempotent(
            self._rpc, self._stopping, "get_many", body, timeout, wire.GetManyOk, self._clock
        )
        if len(got.entries) != len(keys):
            raise Unavailable(f"storage answered {len(got.entries)} entries for {len(keys)} keys")
        return got.entries

    async def list(
        self,
        prefix: str,
        limit: int,
        cursor: str | None,
        now: int,
        timeout: float,
        min_index: int = 0,
    ) -> wire.ListOk:
        body = wire.List(prefix, limit, cursor, now, min_index)
        return await _idempotent(
            self._rpc, self._stopping, "list", body, timeout, wire.ListOk, self._clock
        )

    async def changes(self, prefix: str, since: int, limit: int, timeout: float) -> wire.ChangesOk:
        body = wire.Changes(prefix, since, limit)
        return await _idempotent(
            self._rpc, self._stopping, "changes", body, timeout, wire.ChangesOk, self._clock
        )

    async def wait_applied(self, index: int, timeout: float) -> int:
        body = wire.WaitApplied(index)
        got = await _idempotent(
            self._rpc,
            self._stopping,
            "wait_applied",
            body,
            timeout,
            wire.WaitAppliedOk,
            self._clock,
        )
        return got.applied

    async def backup(self, path: str, timeout: float) -> wire.BackupOk:
        await _ensure_connected(self._rpc, self._stopping, "backup", CONNECT_GRACE, self._clock)
        try:
            got = await self._rpc.request("backup", wire.Backup(path), timeout)
        except IpcTimeout as e:
            raise Unavailable("storage did not finish the backup in time") from e
        assert isinstance(got, wire.BackupOk)
        return got

    async def status(self, timeout: float) -> wire.StorageStatusOk:
        body = wire.StorageStatus()
        return await _idempotent(
            self._rpc,
            self._stopping,
            "storage_status",
            body,
            timeout,
            wire.StorageStatusOk,
            self._clock,
        )

    async def close(self) -> None:
        self._stopping.close()
        await self._rpc.close()


class IpcEvents:
    """:class:`~concordance.front.clients.EventSource` over storage's events PUB."""

    def __init__(self, sockets: Sockets, data_dir: str) -> None:
        self._sub = sockets.subscriber(ipc.endpoint(data_dir, "events"))

    async def recv(self) -> wire.ChangeBatch | wire.Results:
        while True:
            env = await self._sub.recv()
            if isinstance(env.body, wire.ChangeBatch | wire.Results):
                return env.body
            log.debug("ignoring event %s", env.type)  # pragma: no cover - Subscriber filters

    async def close(self) -> None:
        await self._sub.close()


@contextlib.asynccontextmanager
async def connect(
    data_dir: str,
    incarnation: int = 0,
    *,
    sockets: Sockets | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> AsyncIterator[Clients]:
    """Open the front's sockets to its node's roles (for ``make_app``'s cleanup context).

    ``incarnation`` (in production ``Supervisor.incarnation()``, the data dir's
    count of front starts) names this front to the roles, so two fronts can be
    connected at once (a hand-over).
    ``sockets`` opens them (ZeroMQ on the process's context by default) and
    ``clock`` times their retries and greetings.
    """
    identity = fronts.routing_id(incarnation)
    ends = sockets or ZmqSockets()
    consensus = IpcConsensus(ends, data_dir, identity, clock=clock)
    storage = IpcStorage(ends, data_dir, identity, clock=clock)
    events = IpcEvents(ends, data_dir)
    greeting = asyncio.create_task(_greet(consensus, storage, incarnation, clock))
    try:
        yield Clients(consensus, storage, events)
    finally:
        greeting.cancel()
        await events.close()
        await storage.close()
        await consensus.close()


async def _greet(
    consensus: IpcConsensus, storage: IpcStorage, incarnation: int, clock: Clock
) -> None:
    hello = wire.FrontHello(incarnation)
    await greet(
        {
            consensus.rpc: lambda: [("front_hello", hello)],
            storage.rpc: lambda: [
                ("front_hello", hello),
                ("front_watching", wire.FrontWatching(storage.watching)),
            ],
        },
        clock,
    )


Greeting = Callable[[], Sequence[tuple[str, wire.Body]]]


async def greet(greetings: Mapping[sockets.Client, Greeting], clock: Clock = SYSTEM_CLOCK) -> None:
    """Say ``front_hello`` to each role when it connects and every 0.2 s after: a
    role that just started learns this front before it has to push anything
    (PROTOCOL.md §1); storage also hears whether it has watchers
    (``front_watching``). One-way and best effort: the next one repairs a loss."""
    connected = dict.fromkeys(greetings, False)
    for poll in itertools.count():
        for rpc, greeting in greetings.items():
            now = rpc.connected()
            if now and (not connected[rpc] or poll % FRONT_HELLO_EVERY == 0):
                with contextlib.suppress(IpcError):
                    for type_, body in greeting():
                        rpc.send_nowait(type_, body)
            connected[rpc] = now
        await clock.sleep(FRONT_HELLO_POLL)
