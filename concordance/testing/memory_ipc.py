"""In-memory IPC ends: the ``concordance.ipc.sockets`` Protocols over asyncio queues. Test support.

Why: every role (the consensus driver, the storage service, the front's
role clients) and the doubles that play the roles around it can then be
tested without ZeroMQ, sockets or real sleeps, next to a
:class:`~concordance.testing.clock.ManualClock`: one instance per test,
shared by all the roles of the test, as a node's roles share its run
directory. The ends pass the *same
encoded envelopes* as ``concordance.ipc`` (``wire.encode_envelope`` on send,
``decode_envelope`` on receipt), so a body that does not survive the wire
does not survive here either.

What it models of PROTOCOL.md, and what not:

* a server binds an endpoint once (a second bind is ``IpcError``, as
  ``EADDRINUSE``); clients connect by endpoint and identity, a later client
  with the same identity takes the replies (``ROUTER_HANDOVER``);
* delivery is in order, one loop turn later (``call_soon``), never lost,
  duplicated or reordered; requests whose deadline (``dl``, on the clock's
  wall time) passed are dropped by the server, unmatched replies by the client;
* with ``latency`` (the node simulation's), each message takes that long, in
  the loop's time, and still arrives in order on its own connection (one
  client's messages to its server, a server's to one client, a publisher's
  to one subscriber); messages of different connections overtake each other,
  as they do between a node's ZeroMQ sockets;
* a server's ``send`` to an identity that is not connected raises
  ``PeerGone`` at once (``EHOSTUNREACH``); a client's request or send waits
  for a server to bind, bounded by its timeout on the clock;
* high-water marks and frame-level garbage are not modelled.

Never used by what ships: nothing under ``concordance/`` outside
``testing`` imports it (a unit test checks).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.errors import (
    ConcordanceError,
    IpcError,
    IpcTimeout,
    PeerGone,
    RemoteProtocolError,
)
from concordance.ipc import SEND_TIMEOUT, MessageHandler
from concordance.ipc.sockets import Sockets
from concordance.protocol.wire import (
    ONE_WAY,
    REPLIES,
    TOPICS,
    Body,
    Envelope,
    ErrorReply,
    decode_envelope,
    encode_envelope,
    type_name,
)

__all__ = ["MemoryClient", "MemoryIpc", "MemoryPublisher", "MemoryServer", "MemorySubscriber"]

log = logging.getLogger(__name__)

_CLOSED = object()
# Seconds between two messages of one connection due at once: the timer heap is not FIFO.
_AFTER = 1e-9


class _Queue:
    """Decoded messages for one consumer; ``close`` makes ``get`` raise ``IpcError``."""

    def __init__(self, endpoint: str) -> None:
        self._items: asyncio.Queue[object] = asyncio.Queue()
        self._endpoint = endpoint
        self._closed = False

    @property
    def size(self) -> int:
        return self._items.qsize() - self._closed

    def put(self, item: object) -> None:
        self._items.put_nowait(item)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._items.put_nowait(_CLOSED)

    def take(self) -> object:
        """The next item now (the caller checked ``size``)."""
        return self._items.get_nowait()

    async def get(self) -> object:
        item = await self._items.get()
        if item is _CLOSED:
            self._items.put_nowait(_CLOSED)  # every later get fails too
            raise IpcError(f"{self._endpoint} is closed")
        return item


class MemoryIpc:
    """One process's (or one test's) in-memory endpoints; a ``concordance.ipc.sockets.Sockets``.

    Every role of a test shares one instance, as the roles of a node share
    the abstract socket namespace.
    """

    def __init__(
        self, clock: Clock = SYSTEM_CLOCK, latency: Callable[[], float] | None = None
    ) -> None:
        self.clock = clock
        self._latency = latency
        self._due: dict[object, float] = {}  # connection -> when its last message arrives
        self.servers: dict[str, MemoryServer] = {}
        self.clients: dict[str, dict[bytes, MemoryClient]] = {}
        self.publishers: dict[str, MemoryPublisher] = {}
        self.subscribers: dict[str, list[MemorySubscriber]] = {}
        self._bound: dict[str, asyncio.Event] = {}
        self._ids = itertools.count(1)

    async def server(self, endpoint: str) -> MemoryServer:
        if endpoint in self.servers:
            raise IpcError(f"cannot bind {endpoint}: address in use")
        server = self.servers[endpoint] = MemoryServer(self, endpoint)
        self.bound(endpoint).set()
        return server

    async def publisher(self, endpoint: str) -> MemoryPublisher:
        if endpoint in self.publishers:
            raise IpcError(f"cannot bind {endpoint}: address in use")
        pub = self.publishers[endpoint] = MemoryPublisher(self, endpoint)
        return pub

    def client(
        self, endpoint: str, identity: str | bytes, *, on_message: MessageHandler | None = None
    ) -> MemoryClient:
        client = MemoryClient(self, endpoint, _as_bytes(identity), on_message)
        self.clients.setdefault(endpoint, {})[client.identity] = client  # handover
        return client

    def subscriber(self, endpoint: str, topics: Iterable[bytes] = (b"c", b"r")) -> MemorySubscriber:
        sub = MemorySubscriber(self, endpoint, frozenset(topics))
        self.subscribers.setdefault(endpoint, []).append(sub)
        return sub

    def bound(self, endpoint: str) -> asyncio.Event:
        """Set while a server is bound on ``endpoint``."""
        return self._bound.setdefault(endpoint, asyncio.Event())

    def next_id(self) -> int:
        return next(self._ids)

    def later(self, callback: Callable[..., None], *args: object, pipe: object = None) -> None:
        """Deliver on the next loop turn, as a socket would; with ``latency``, that much
        later, after every earlier message of the same connection (``pipe``)."""
        loop = asyncio.get_running_loop()
        if self._latency is None or pipe is None:
            loop.call_soon(callback, *args)
            return
        now = loop.time()
        due = max(now + self._latency(), self._due.get(pipe, now) + _AFTER)
        self._due[pipe] = due
        loop.call_at(due, callback, *args)


def _as_bytes(peer: bytes | str) -> bytes:
    return peer.encode() if isinstance(peer, str) else peer


class MemoryServer:
    """``ipc.RpcServer`` in memory."""

    def __init__(self, net: MemoryIpc, endpoint: str) -> None:
        self.endpoint = endpoint
        self._net = net
        self._inbox = _Queue(endpoint)
        self._handler: Callable[[bytes, Envelope], None] | None = None
        self._paused: deque[tuple[bytes, Envelope]] | None = None
        self._sent_at = float("-inf")
        self._closed = False

    def _arrive(self, peer: bytes, payload: bytes) -> None:
        if not self._closed:
            self._take(peer, decode_envelope(payload))

    def _take(self, peer: bytes, env: Envelope) -> None:
        """Hold it while paused; else drop it if expired (as read off a socket), or take it."""
        if self._paused is not None:
            self._paused.append((peer, env))
        elif env.deadline_ms is not None and env.deadline_ms < self._net.clock.wall_ms():
            log.debug("%s: dropping expired %s from %r", self.endpoint, env.type, peer)
        elif self._handler is not None:
            self._handler(peer, env)
        else:
            self._inbox.put((peer, env))

    async def recv(self) -> tuple[bytes, Envelope]:
        item = await self._inbox.get()
        assert isinstance(item, tuple)
        return item

    def deliver_to(
        self,
        handler: Callable[[bytes, Envelope], None],
        failed: Callable[[IpcError], None] | None = None,
    ) -> None:
        self._handler = handler
        while self._inbox.size > 0:  # what arrived before, first and in order
            item = self._inbox.take()
            assert isinstance(item, tuple)
            self._take(*item)

    def pause(self) -> None:
        if self._paused is None:
            self._paused = deque()

    def resume(self) -> None:
        held, self._paused = self._paused, None
        for peer, env in held or ():
            self._net.later(self._take, peer, env)

    @property
    def queued(self) -> int:
        """Messages taken and not yet received (for tests)."""
        return self._inbox.size

    def sent_within(self, seconds: float) -> bool:
        return self._net.clock.monotonic() - self._sent_at < seconds

    async def reply(
        self, peer_id: bytes | str, request: Envelope, body: Body | ConcordanceError
    ) -> None:
        if isinstance(body, ConcordanceError):
            body = ErrorReply.from_exception(body)
        env = Envelope(type_name(body), self._net.next_id(), body, reply_to=request.id)
        try:
            self._send(_as_bytes(peer_id), env)
        except IpcError as e:
            log.debug("%s: reply to %s lost: %s", self.endpoint, request.type, e)

    async def send(self, peer_id: bytes | str, type: str, body: Body) -> None:
        if type not in ONE_WAY:
            raise ValueError(f"{type!r} is not a one-way message type")
        self._send(_as_bytes(peer_id), Envelope(type, self._net.next_id(), body))

    def _send(self, peer: bytes, env: Envelope) -> None:
        client = self._net.clients.get(self.endpoint, {}).get(peer)
        if self._closed or client is None or client.closed:
            raise PeerGone(f"{peer!r} is not connected to {self.endpoint}")
        self._sent_at = self._net.clock.monotonic()
        self._net.later(client._arrive, encode_envelope(env), pipe=(client, "down"))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._net.servers.get(self.endpoint) is self:
            del self._net.servers[self.endpoint]
            self._net.bound(self.endpoint).clear()
        self._inbox.close()


class MemoryClient:
    """``ipc.RpcClient`` in memory."""

    def __init__(
        self, net: MemoryIpc, endpoint: str, identity: bytes, on_message: MessageHandler | None
    ) -> None:
        self.endpoint = endpoint
        self.identity = identity
        self.closed = False
        self._net = net
        self._on_message = on_message
        self._pending: dict[int, asyncio.Future[Envelope]] = {}

    def _server(self) -> MemoryServer | None:
        return self._net.servers.get(self.endpoint)

    def connected(self, recently: float = 0.0) -> bool:
        return self._server() is not None

    async def request(self, type: str, body: Body, timeout: float) -> Body:
        expected = REPLIES.get(type)
        if expected is None:
            raise ValueError(f"{type!r} is not a request type")
        if self.closed:
            raise IpcError(f"client of {self.endpoint} is closed")
        clock = self._net.clock
        rid = self._net.next_id()
        env = Envelope(type, rid, body, deadline_ms=clock.wall_ms() + int(timeout * 1000))
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            async with clock.timeout(timeout):
                await self._hand_over(encode_envelope(env))
                reply = await future
        except TimeoutError as e:
            raise IpcTimeout(f"no reply to {type} from {self.endpoint} in {timeout:g}s") from e
        finally:
            self._pending.pop(rid, None)
        if isinstance(reply.body, ErrorReply):
            raise reply.body.to_exception()
        if reply.type != expected:
            raise RemoteProtocolError(f"{reply.type} is no answer to {type} (expected {expected})")
        return reply.body

    async def send(self, type: str, body: Body, timeout: float = SEND_TIMEOUT) -> None:
        if type not in ONE_WAY:
            raise ValueError(f"{type!r} is not a one-way message type")
        if self.closed:
            raise IpcError(f"client of {self.endpoint} is closed")
        payload = encode_envelope(Envelope(type, self._net.next_id(), body))
        try:
            async with self._net.clock.timeout(timeout):
                await self._hand_over(payload)
        except TimeoutError as e:
            raise IpcError(f"could not hand {type} to {self.endpoint} in {timeout:g}s") from e

    def send_nowait(self, type: str, body: Body) -> None:
        if type not in ONE_WAY:
            raise ValueError(f"{type!r} is not a one-way message type")
        server = self._server()
        if self.closed or server is None:
            raise IpcError(f"could not hand {type} to {self.endpoint} now")
        payload = encode_envelope(Envelope(type, self._net.next_id(), body))
        self._net.later(server._arrive, self.identity, payload, pipe=(self, "up"))

    async def _hand_over(self, payload: bytes) -> None:
        """Wait for a server on the endpoint (as a connecting DEALER does), then deliver."""
        while (server := self._server()) is None:
            await self._net.bound(self.endpoint).wait()
        self._net.later(server._arrive, self.identity, payload, pipe=(self, "up"))

    def _arrive(self, payload: bytes) -> None:
        if self.closed:
            return
        env = decode_envelope(payload)
        if env.reply_to is not None:
            future = self._pending.get(env.reply_to)
            if future is not None and not future.done():
                future.set_result(env)
            else:
                log.debug("%s: dropping late or unmatched %s", self.endpoint, env.type)
        elif self._on_message is not None:
            try:
                self._on_message(env)
            except Exception:
                log.exception("%s: message handler failed on %s", self.endpoint, env.type)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        mine = self._net.clients.get(self.endpoint, {})
        if mine.get(self.identity) is self:
            del mine[self.identity]
        for future in self._pending.values():
            if not future.done():
                future.set_exception(IpcError(f"client of {self.endpoint} closed"))


class MemoryPublisher:
    """``ipc.Publisher`` in memory: every live subscriber of a topic gets every event."""

    def __init__(self, net: MemoryIpc, endpoint: str) -> None:
        self.endpoint = endpoint
        self._net = net
        self._closed = False

    async def publish(self, type: str, body: Body) -> None:
        topic = TOPICS.get(type)
        if topic is None:
            raise ValueError(f"{type!r} is not an event type")
        if self._closed:
            raise IpcError(f"publish on {self.endpoint} failed: closed")
        payload = encode_envelope(Envelope(type, self._net.next_id(), body))
        for sub in self._net.subscribers.get(self.endpoint, []):
            if topic in sub.topics:
                self._net.later(sub._arrive, topic, payload, pipe=sub)

    async def wait_subscribed(self, topic: bytes, timeout: float) -> bool:
        """Whether a subscriber of ``topic`` is there (in memory, one is or is not:
        subscribing takes no time, so there is nothing to wait for)."""
        return any(topic in sub.topics for sub in self._net.subscribers.get(self.endpoint, []))

    def take_subscriptions(self) -> list[bytes]:
        return []  # only an XPUB over ZeroMQ reports them

    async def close(self) -> None:
        self._closed = True
        if self._net.publishers.get(self.endpoint) is self:
            del self._net.publishers[self.endpoint]


class MemorySubscriber:
    """``ipc.Subscriber`` in memory."""

    def __init__(self, net: MemoryIpc, endpoint: str, topics: frozenset[bytes]) -> None:
        self.endpoint = endpoint
        self.topics = topics
        self._net = net
        self._inbox = _Queue(endpoint)

    def _arrive(self, topic: bytes, payload: bytes) -> None:
        env = decode_envelope(payload)
        if TOPICS.get(env.type) == topic:
            self._inbox.put(env)

    async def recv(self) -> Envelope:
        item = await self._inbox.get()
        assert isinstance(item, Envelope)
        return item

    async def close(self) -> None:
        subs = self._net.subscribers.get(self.endpoint, [])
        if self in subs:
            subs.remove(self)
        self._inbox.close()


def _conforms(net: MemoryIpc) -> Sockets:
    """Never called: mypy checks here that the memory ends keep the Protocols' shape."""
    return net
