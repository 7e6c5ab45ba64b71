"""The IPC ends role logic uses, as narrow Protocols, and the factory that opens real ones.

Why: a role should not care whether its messages cross ZeroMQ sockets
(``concordance.ipc``, what ships) or in-memory queues
(``concordance.testing.memory_ipc``, test support only). Each Protocol is the
subset of the ``ipc`` class that the roles call; :class:`ZmqSockets` opens the
real ones and is the default wherever a role accepts ``sockets=``.

Who opens what through it (every role, nothing else opens a role socket):

* consensus (``ConsensusDriver.open(cfg, sockets, clock)``): its ``consensus`` server;
* storage (``StorageService(..., clock=, sockets=)``): its ``storage`` server and
  ``events`` publisher, and its client of ``consensus``;
* the front (``ipc_clients.connect(data_dir, sockets=, clock=)``, and the
  ``IpcConsensus``, ``IpcStorage``, ``IpcEvents`` it builds): its clients of
  ``consensus`` and ``storage``, and its ``events`` subscriber.

A role takes a :class:`~concordance.clock.Clock` beside its ``Sockets``; the
ends' own deadlines run on the clock ``ZmqSockets`` is given (``ipc``).
What is not an IPC end stays outside: the peer links (``consensus/peers.py``,
injectable as ``net=``) and the front's hand-over of peer connections to
consensus (``fdpass``, file descriptors over a Unix socket).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import zmq.asyncio

from concordance import ipc
from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.errors import ConcordanceError, IpcError
from concordance.protocol.wire import Body, Envelope

__all__ = ["Client", "Publisher", "Server", "Sockets", "Subscriber", "ZmqSockets"]


class Server(Protocol):
    """A role's bound request socket (``ipc.RpcServer``)."""

    endpoint: str

    async def recv(self) -> tuple[bytes, Envelope]: ...

    def deliver_to(
        self,
        handler: Callable[[bytes, Envelope], None],
        failed: Callable[[IpcError], None] | None = None,
    ) -> None: ...

    async def reply(
        self, peer_id: bytes | str, request: Envelope, body: Body | ConcordanceError
    ) -> None: ...

    async def send(self, peer_id: bytes | str, type: str, body: Body) -> None: ...

    def sent_within(self, seconds: float) -> bool: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    async def close(self) -> None: ...


class Client(Protocol):
    """A role's connection to another role's server (``ipc.RpcClient``)."""

    endpoint: str

    def connected(self, recently: float = 0.0) -> bool: ...

    async def request(self, type: str, body: Body, timeout: float) -> Body: ...

    async def send(self, type: str, body: Body, timeout: float = ipc.SEND_TIMEOUT) -> None: ...

    def send_nowait(self, type: str, body: Body) -> None: ...

    async def close(self) -> None: ...


class Publisher(Protocol):
    """Storage's events publisher (``ipc.Publisher``)."""

    endpoint: str

    async def publish(self, type: str, body: Body) -> None: ...

    async def wait_subscribed(self, topic: bytes, timeout: float) -> bool: ...

    def take_subscriptions(self) -> list[bytes]: ...

    async def close(self) -> None: ...


class Subscriber(Protocol):
    """The front's events subscriber (``ipc.Subscriber``)."""

    endpoint: str

    async def recv(self) -> Envelope: ...

    async def close(self) -> None: ...


class Sockets(Protocol):
    """Opens the ends above for one process."""

    async def server(self, endpoint: str) -> Server: ...

    async def publisher(self, endpoint: str) -> Publisher: ...

    def client(
        self, endpoint: str, identity: str | bytes, *, on_message: ipc.MessageHandler | None = None
    ) -> Client: ...

    def subscriber(self, endpoint: str) -> Subscriber: ...


class ZmqSockets:
    """The real ends, on one ZeroMQ context (the process's own by default).

    ``clock`` times the ends' deadlines and timeouts (``ipc``); the system
    clock in what ships. Real sockets move in real time, so a test that
    passes a manual clock here must also move it.
    """

    def __init__(self, ctx: zmq.asyncio.Context | None = None, clock: Clock = SYSTEM_CLOCK) -> None:
        self.ctx = ctx or ipc.context()
        self.clock = clock

    async def server(self, endpoint: str) -> ipc.RpcServer:
        return await ipc.RpcServer.open(self.ctx, endpoint, clock=self.clock)

    async def publisher(self, endpoint: str) -> ipc.Publisher:
        return await ipc.Publisher.open(self.ctx, endpoint, xpub=True, clock=self.clock)

    def client(
        self, endpoint: str, identity: str | bytes, *, on_message: ipc.MessageHandler | None = None
    ) -> ipc.RpcClient:
        return ipc.RpcClient(self.ctx, endpoint, identity, on_message=on_message, clock=self.clock)

    def subscriber(self, endpoint: str) -> ipc.Subscriber:
        return ipc.Subscriber(self.ctx, endpoint)
