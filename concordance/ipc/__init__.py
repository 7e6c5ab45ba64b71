"""ZeroMQ sockets between a node's roles: requests with ids and deadlines, one-way pushes, events.

This implements the socket half of docs/PROTOCOL.md (§1, §2, §4) on top of
``concordance.protocol.wire``, which owns every byte. It exists so that no role ever
touches a raw socket option, frame list or ``zmq.ZMQError``: roles see typed
bodies, ``ConcordanceError`` from the other side, and ``IpcError`` for the
plumbing.

Rules / theory of operation:

- One ``zmq.asyncio.Context`` per process (``context()``), created after the
  process starts; every socket closes with ``linger=0``.
- Nothing waits forever. A request has a timeout that covers handing it to a
  connection *and* the reply (``IpcTimeout``); a client one-way send waits at
  most its timeout; server-side sends never wait (``ROUTER_MANDATORY`` turns
  "unknown peer" and "pipe full" into immediate errors).
- Replies are matched by id; late or unmatched replies are dropped and logged
  at debug. Undecodable input is dropped and logged at warning; a receive
  loop never dies of a bad message.
- ``zmq.ZMQError`` and msgpack failures leave this module only as
  ``IpcError`` subclasses, raised ``from`` the original.
- Time: request deadlines, timeouts, "sent recently" and the subscription
  wait run on the ``clock`` a socket is given (``concordance.clock``,
  :data:`SYSTEM_CLOCK` by default); only the bind retry, which waits for the
  kernel, reads the loop's time itself.
- Endpoints are filesystem sockets in the node's private run directory
  (``run_dir``, ``concordance.ipc.paths``: 0700, ours, checked at start), so
  no other user can bind or connect to them. A binder holds a lock beside
  its socket while bound, so a second binder fails with ``EADDRINUSE``
  instead of stealing the socket; binders also keep ``IPC_FILTER_UID`` (our
  uid) as a second fence.

Concurrency: all methods run on the process's event loop; any number of
``RpcClient.request`` calls may be outstanding at once. ``RpcServer.recv``
and ``Subscriber.recv`` are meant for one consumer task each.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import secrets
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import zmq
import zmq.asyncio

from concordance.clock import SYSTEM_CLOCK, Clock, Timer
from concordance.errors import (
    ConcordanceError,
    IpcError,
    IpcTimeout,
    PeerGone,
    RemoteProtocolError,
)
from concordance.ipc.paths import BindLock, endpoint_path, run_dir
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

log = logging.getLogger(__name__)

RPC_HWM = 1000  # consensus and storage sockets: the libzmq default, set explicitly
EVENTS_HWM = 10_000  # events PUB/SUB: absorb bursts before PUB starts dropping
BIND_WAIT = 1.0  # seconds open() retries EADDRINUSE (a just-closed listener in this process)
SEND_TIMEOUT = 1.0  # default bound on a client one-way send
FAST_BURST = 64  # messages received without yielding to the loop (see _Fast)
SUBSCRIBED_POLL = 0.005  # seconds between two looks for a subscription (wait_subscribed)

# Plain ints: pyzmq's enum constants cost a Python-level enum operation per use, on
# every message of the hot path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)
_DONTWAIT = int(zmq.DONTWAIT)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
# pyzmq's Cython calls, without the pure-Python send_multipart/recv_multipart layer
# (a few microseconds of flag enums and type checks per message; ours are bytes).
_send_part = zmq.backend.Socket.send
_recv_part = zmq.backend.Socket.recv
_get_option = zmq.backend.Socket.get


def _send_frames(sock: zmq.Socket[bytes], frames: list[bytes], flags: int) -> None:
    """``send_multipart(frames, flags)`` for a list of bytes (all or nothing: ZeroMQ checks
    room and routing on the first part)."""
    last = len(frames) - 1
    for i in range(last):
        _send_part(sock, frames[i], _SNDMORE | flags)
    _send_part(sock, frames[last], flags)


def _recv_frames(sock: zmq.Socket[bytes]) -> list[bytes]:
    """``recv_multipart(NOBLOCK)``: every part of the next message, as bytes."""
    frames: list[bytes] = [_recv_part(sock, _NOBLOCK)]
    while _get_option(sock, _RCVMORE):
        frames.append(_recv_part(sock, _NOBLOCK))
    return frames


_NAME = re.compile(r"[a-z0-9_]{1,32}")
_T = TypeVar("_T")
MessageHandler = Callable[[Envelope], None]


def context() -> zmq.asyncio.Context:
    """The process's one asyncio ZeroMQ context."""
    return zmq.asyncio.Context.instance()


def endpoint(data_dir: str | os.PathLike[str], name: str) -> str:
    """``ipc://{run_dir}/{name}``: the endpoint of socket ``name`` of the node at ``data_dir``,
    a filesystem socket in the node's private run directory (created and checked here).

    Raises:
        UnsafeRunDir: the run directory is not private to us (``ipc_paths.run_dir``).
    """
    if not _NAME.fullmatch(name):
        raise ValueError(f"bad socket name {name!r}")
    return f"ipc://{run_dir(data_dir) / name}"


def _ids() -> itertools.count[int]:
    # A random start: a restarted client with the same ROUTING_ID must not
    # mistake a reply meant for its previous incarnation for one of its own.
    return itertools.count(secrets.randbits(62))


def _as_bytes(peer_id: bytes | str) -> bytes:
    return peer_id.encode() if isinstance(peer_id, str) else peer_id


def _socket(ctx: zmq.asyncio.Context, kind: int, hwm: int) -> zmq.asyncio.Socket:
    try:
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
    except zmq.ZMQError as e:
        raise IpcError(f"cannot create socket: {e}") from e
    return sock


class _Pump:
    """One ZeroMQ socket driven by the event loop's reader callback, with no futures per message.

    ``zmq.asyncio`` wraps every send and receive in futures and re-registers
    event polling for each, which costs more CPU than the message itself on
    this path (docs/PERFORMANCE.md). Here the socket's descriptor stays
    registered with the loop for the socket's life; when it fires, every
    message waiting is read with non-blocking calls and handed to
    ``on_frames`` synchronously (at most ``FAST_BURST`` per loop turn, so one
    busy socket cannot starve the loop). ZeroMQ's descriptor is edge-triggered
    and any send or ``EVENTS`` query may consume an edge, so after each of
    those a look at ``EVENTS`` is scheduled for the end of the loop turn
    (once per turn, however many sends). Sends never block the loop: one that
    finds no room waits in order for ``POLLOUT``; later sends queue behind it.
    """

    __slots__ = (
        "_check_due",
        "_closed",
        "_fd",
        "_loop",
        "_now",
        "_on_error",
        "_on_frames",
        "_paused",
        "_waiting_sends",
        "sent_at",
        "sock",
        "sync",
    )

    def __init__(
        self,
        sock: zmq.asyncio.Socket,
        on_frames: Callable[[list[bytes]], None] | None,
        on_error: Callable[[zmq.ZMQError], None] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.sock = sock
        self.sync: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        self._now = clock.monotonic
        self.sent_at = float("-inf")  # clock.monotonic() of the last send handed over at once
        self._loop = asyncio.get_running_loop()
        self._on_frames = on_frames
        self._on_error = on_error
        self._waiting_sends: deque[tuple[list[bytes], asyncio.Future[None]]] = deque()
        self._check_due = False
        self._paused = False
        self._closed = False
        self._fd = int(self.sync.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self._service)
        self._schedule_check()

    def _schedule_check(self) -> None:
        if not self._check_due and not self._closed:
            self._check_due = True
            self._loop.call_soon(self._service)

    def pause(self) -> None:
        """Stop reading (the consumer is full); ZeroMQ's high-water mark pushes back."""
        self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._schedule_check()

    def events(self) -> int:
        """``EVENTS`` now (the query may take an edge: a check is scheduled)."""
        events: int = _get_option(self.sync, _EVENTS)  # type: ignore[assignment]
        self._schedule_check()
        return events

    def _service(self) -> None:
        self._check_due = False
        if self._closed:
            return
        sync = self.sync
        received = 0
        try:
            while True:
                events: int = _get_option(sync, _EVENTS)  # type: ignore[assignment]
                if self._waiting_sends and events & _POLLOUT:
                    self._flush_waiting()
                    continue
                if not events & _POLLIN or self._paused or self._on_frames is None:
                    return
                if received >= FAST_BURST:
                    self._schedule_check()  # let the loop run; go on next turn
                    return
                frames = _recv_frames(sync)
                received += 1
                self._on_frames(frames)
                if self._closed:
                    return
        except zmq.Again:
            return
        except zmq.ZMQError as e:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._fd)
                if self._on_error is not None:
                    self._on_error(e)
                else:
                    log.error("socket failed: %s", e)

    def _flush_waiting(self) -> None:
        while self._waiting_sends:
            frames, future = self._waiting_sends[0]
            if future.done():  # its sender gave up (timeout): never send it late
                self._waiting_sends.popleft()
                continue
            try:
                _send_frames(self.sync, frames, _DONTWAIT)
            except zmq.Again:
                return
            except zmq.ZMQError as e:
                self._waiting_sends.popleft()
                future.set_exception(e)
                continue
            self._waiting_sends.popleft()
            self.sent_at = self._now()
            future.set_result(None)

    async def send(self, frames: list[bytes]) -> None:
        """Send now if there is room; else wait, in order, until there is."""
        if not self._waiting_sends:
            try:
                self.send_nowait(frames)
                return
            except zmq.Again:
                pass
        future: asyncio.Future[None] = self._loop.create_future()
        self._waiting_sends.append((frames, future))
        self._schedule_check()
        await future

    def try_send(self, frames: list[bytes]) -> None:
        """Send now, behind no waiting send, or raise ``zmq.Again``."""
        if self._waiting_sends:
            raise zmq.Again()
        self.send_nowait(frames)

    def send_nowait(self, frames: list[bytes]) -> None:
        """Send now or raise ``zmq.Again``."""
        try:
            _send_frames(self.sync, frames, _DONTWAIT)
        finally:
            # This send, even a failed one (EHOSTUNREACH), may have taken an edge that a
            # receive waits for.
            self._schedule_check()
        self.sent_at = self._now()

    def close(self) -> None:
        """Unregister from the loop and close the socket (``linger=0``)."""
        if self._closed:
            return
        self._closed = True
        if self._fd is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        for _, future in self._waiting_sends:
            if not future.done():
                future.set_exception(zmq.ZMQError(zmq.ENOTSOCK, "socket closed"))
        self._waiting_sends.clear()
        self.sock.close(linger=0)


class _Inbox(Generic[_T]):
    """Messages received but not yet taken, for one consumer task; pauses its pump when full."""

    def __init__(self, limit: int) -> None:
        self._items: deque[_T] = deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.pump: _Pump | None = None

    def put(self, item: _T) -> None:
        self._items.append(item)
        if len(self._items) >= self._limit and self.pump is not None:
            self.pump.pause()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    @property
    def size(self) -> int:
        return len(self._items)

    def take_all(self) -> list[_T]:
        """Every item waiting, oldest first (for a consumer that switches to a handler)."""
        items = list(self._items)
        self._items.clear()
        return items

    def fail(self, error: BaseException) -> None:
        self._error = error
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> _T:
        while not self._items:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if self.pump is not None and len(self._items) < self._limit // 2:
            self.pump.resume()
        return item


def _late(type: str, endpoint: str, timeout: float) -> IpcTimeout:
    return IpcTimeout(f"no reply to {type} from {endpoint} in {timeout:g}s")


def _expire(future: asyncio.Future[Envelope], type: str, endpoint: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(_late(type, endpoint, timeout))


def _bind(sock: zmq.asyncio.Socket, where: str, allow_uid: int | None) -> BindLock | None:
    """Bind, admitting only processes of ``allow_uid`` (default: ours), holding the bind lock
    of a filesystem endpoint (returned: release it once the socket is closed); close the
    socket on failure."""
    path = endpoint_path(where)
    try:
        lock = BindLock(path) if path is not None else None
    except IpcError:
        sock.close(linger=0)
        raise
    try:
        sock.setsockopt(zmq.IPC_FILTER_UID, os.getuid() if allow_uid is None else allow_uid)
        sock.bind(where)
        return lock
    except zmq.ZMQError as e:
        sock.close(linger=0)
        if lock is not None:
            lock.release()
        hint = " (another process holds it: is this role already running?)"
        raise IpcError(
            f"cannot bind {where}: {e.strerror}{hint if e.errno == zmq.EADDRINUSE else ''}"
        ) from e


def _unlock(lock: BindLock | None) -> None:
    if lock is not None:
        lock.release(unlink=True)


def is_address_in_use(exc: BaseException) -> bool:
    """Whether an ``IpcError`` from a bind was ``EADDRINUSE``."""
    cause = exc.__cause__
    return isinstance(cause, zmq.ZMQError) and cause.errno == zmq.EADDRINUSE


async def _open_retrying(make: Callable[[], _T], wait: float) -> _T:
    """Retry ``EADDRINUSE`` for ``wait`` seconds of real time: it waits for the kernel to
    release an address, real I/O (``concordance.clock``'s rules), not a protocol deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            return make()
        except IpcError as e:
            if not is_address_in_use(e) or loop.time() >= deadline:
                raise
        await asyncio.sleep(0.01)


class _Closing:
    """``async with`` for the socket classes below: leaving the block closes the socket."""

    async def close(self) -> None:
        raise NotImplementedError

    @staticmethod
    def _close_pumped(pump: _Pump, inbox: _Inbox[Any], endpoint: str) -> None:
        """Close a pumped socket, then wake its consumer with ``IpcError`` (server, SUB)."""
        pump.close()
        inbox.fail(IpcError(f"{endpoint} is closed"))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class RpcServer(_Closing):
    """The ROUTER a role binds (``consensus`` or ``storage``): requests in, replies and
    one-way messages out to connected DEALERs by their routing id."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        *,
        allow_uid: int | None = None,
        hwm: int = RPC_HWM,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        sock = _socket(ctx, zmq.ROUTER, hwm)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unknown peer / full pipe: an error, not a drop
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted client takes its routing id back
        self._lock = _bind(sock, endpoint, allow_uid)
        self.endpoint = endpoint
        self._ids = _ids()
        self._inbox: _Inbox[tuple[bytes, Envelope]] = _Inbox(hwm)
        self._handler: Callable[[bytes, Envelope], None] | None = None
        self._failed: Callable[[IpcError], None] | None = None
        self._clock = clock
        self._pump = _Pump(sock, self._on_frames, self._on_error, clock)
        self._inbox.pump = self._pump

    @classmethod
    async def open(
        cls, ctx: zmq.asyncio.Context, endpoint: str, *, wait: float = BIND_WAIT, **kwargs: Any
    ) -> Self:
        """Like the constructor, retrying ``EADDRINUSE`` for up to ``wait`` seconds."""
        return await _open_retrying(lambda: cls(ctx, endpoint, **kwargs), wait)

    async def recv(self) -> tuple[bytes, Envelope]:
        """The next valid, unexpired message and the routing id of its sender.

        Garbage is dropped (warning); requests whose deadline already passed
        are dropped (debug): their client has given up.
        """
        return await self._inbox.get()

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            log.warning("%s: dropping a message of %d frames", self.endpoint, len(frames))
            return
        peer, payload = frames
        try:
            env = decode_envelope(payload)
        except RemoteProtocolError as e:
            log.warning("%s: dropping garbage from %r: %s", self.endpoint, peer, e)
            return
        if env.deadline_ms is not None and env.deadline_ms < self._clock.wall_ms():
            log.debug(
                "%s: dropping expired %s id=%d from %r", self.endpoint, env.type, env.id, peer
            )
            return
        if self._handler is not None:
            self._handler(peer, env)
        else:
            self._inbox.put((peer, env))

    def _on_error(self, e: zmq.ZMQError) -> None:
        error = IpcError(f"receive on {self.endpoint} failed: {e}")
        self._inbox.fail(error)
        if self._failed is not None:
            self._failed(error)

    def deliver_to(
        self,
        handler: Callable[[bytes, Envelope], None],
        failed: Callable[[IpcError], None] | None = None,
    ) -> None:
        """Hand each valid message to ``handler`` as it arrives, on the loop, instead of
        queueing it for :meth:`recv`: no task switch per message. ``handler`` must not
        block; it may :meth:`pause` the socket while it is full, and :meth:`resume` it.

        Messages that arrived since the socket was bound are handed over first, in
        order (requests whose deadline passed meanwhile are dropped): a role binds
        before it is ready to serve, and its clients send as soon as it is bound
        (a restarted consensus opens raft.db after binding; the proposals a front
        held for it arrive then, and must not wait in a queue nobody reads)."""
        self._handler = handler
        self._failed = failed
        now = self._clock.wall_ms()
        for peer, env in self._inbox.take_all():
            if env.deadline_ms is not None and env.deadline_ms < now:
                log.debug("%s: dropping expired %s id=%d", self.endpoint, env.type, env.id)
            else:
                handler(peer, env)
        self._pump.resume()

    @property
    def queued(self) -> int:
        """Messages received and not yet taken (by :meth:`recv` or a handler)."""
        return self._inbox.size

    def sent_within(self, seconds: float) -> bool:
        """Whether a message was handed to ZeroMQ in the last ``seconds`` (it may still be
        queued for the I/O thread, which a ``linger=0`` close would discard)."""
        return self._clock.monotonic() - self._pump.sent_at < seconds

    def pause(self) -> None:
        """Stop reading until :meth:`resume`; ZeroMQ's high-water mark pushes back on senders."""
        self._pump.pause()

    def resume(self) -> None:
        self._pump.resume()

    async def reply(
        self, peer_id: bytes | str, request: Envelope, body: Body | ConcordanceError
    ) -> None:
        """Answer ``request`` with a body or an error. A peer that is gone or not keeping up
        loses the reply (logged); its request times out and it retries."""
        if isinstance(body, ConcordanceError):
            body = ErrorReply.from_exception(body)
        env = Envelope(type_name(body), next(self._ids), body, reply_to=request.id)
        try:
            await self._send_now(_as_bytes(peer_id), env)
        except IpcError as e:
            log.debug(
                "%s: reply %s to %s id=%d lost: %s",
                self.endpoint,
                env.type,
                request.type,
                request.id,
                e,
            )

    async def send(self, peer_id: bytes | str, type: str, body: Body) -> None:
        """Push a one-way message to a connected client; never waits.

        Raises:
            IpcError: the peer is not connected (EHOSTUNREACH) or its pipe is full
                (EAGAIN); try again later.
        """
        if type not in ONE_WAY:
            raise ValueError(f"{type!r} is not a one-way message type")
        await self._send_now(_as_bytes(peer_id), Envelope(type, next(self._ids), body))

    async def _send_now(self, peer: bytes, env: Envelope) -> None:
        payload = encode_envelope(env)
        try:
            self._pump.send_nowait([peer, payload])
        except zmq.Again as e:
            raise IpcError(
                f"{peer!r} is not keeping up (high-water mark) on {self.endpoint}"
            ) from e
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                raise PeerGone(f"{peer!r} is not connected to {self.endpoint}") from e
            raise IpcError(f"send on {self.endpoint} failed: {e}") from e

    async def close(self) -> None:
        self._close_pumped(self._pump, self._inbox, self.endpoint)
        _unlock(self._lock)


class RpcClient(_Closing):
    """A role's DEALER to another role's RpcServer: concurrent requests matched by id, one-way
    sends, and a receive task that hands unsolicited messages to ``on_message``.

    Construct it inside the running event loop (it starts its receive task).
    ``on_message`` is called synchronously on the loop and must not block; it
    may schedule work. Exceptions it raises are logged and ignored.
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        identity: str | bytes,
        *,
        on_message: MessageHandler | None = None,
        hwm: int = RPC_HWM,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        sock = _socket(ctx, zmq.DEALER, hwm)
        try:
            sock.setsockopt(zmq.ROUTING_ID, _as_bytes(identity))
            sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only on live connections: no stale deliveries
            sock.connect(endpoint)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            raise IpcError(f"cannot connect to {endpoint}: {e}") from e
        self.endpoint = endpoint
        self._ids = _ids()
        self._pending: dict[int, asyncio.Future[Envelope]] = {}
        self._on_message = on_message
        self._closed = False
        self._clock = clock
        self._pump = _Pump(sock, self._on_frames, self._on_error, clock)
        # Every request arms a timer: the system clock's are the loop's own, called
        # directly (its ``call_later`` looks the running loop up each time).
        self._call_later: Callable[..., Timer] = (
            asyncio.get_running_loop().call_later if clock is SYSTEM_CLOCK else clock.call_later
        )

    def connected(self, recently: float = 0.0) -> bool:
        """Whether the server is connected now: a live pipe has room (``POLLOUT`` under
        ``IMMEDIATE=1``, PROTOCOL.md §4).

        A send handed over at once within the last ``recently`` seconds proved
        it already: that answer costs nothing, where asking the socket costs a
        loop callback, which adds up on every request.
        """
        if recently and self._clock.monotonic() - self._pump.sent_at < recently:
            return True
        try:
            events = self._pump.events()
        except zmq.ZMQError:
            return True  # unknown: the request's own timeout decides
        return bool(events & _POLLOUT)

    async def request(self, type: str, body: Body, timeout: float) -> Body:
        """Send a request and return the reply body.

        Raises:
            ConcordanceError: the server answered with an error (rebuilt from its code).
            IpcTimeout: no reply within ``timeout`` seconds (including when the request
                could not be handed to a connection).
            RemoteProtocolError: the reply has the wrong type.
            IpcError: the client is closed.
        """
        expected = REPLIES.get(type)
        if expected is None:
            raise ValueError(f"{type!r} is not a request type")
        if self._closed:
            raise IpcError(f"client of {self.endpoint} is closed")
        rid = next(self._ids)
        clock = self._clock
        env = Envelope(type, rid, body, deadline_ms=clock.wall_ms() + int(timeout * 1000))
        payload = encode_envelope(env)
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            try:
                self._pump.try_send([payload])
            except zmq.Again:  # no room or no connection yet: wait for both, bounded
                try:
                    async with clock.timeout(timeout):
                        await self._send(payload)
                        reply = await future
                except TimeoutError as e:
                    raise _late(type, self.endpoint, timeout) from e
            except zmq.ZMQError as e:
                raise IpcError(f"send to {self.endpoint} failed: {e}") from e
            else:  # handed over (almost always): a plain timer is all the bound needs
                timer = self._call_later(timeout, _expire, future, type, self.endpoint, timeout)
                try:
                    reply = await future
                finally:
                    timer.cancel()
        finally:
            self._pending.pop(rid, None)
        if isinstance(reply.body, ErrorReply):
            raise reply.body.to_exception()
        if reply.type != expected:
            raise RemoteProtocolError(f"{reply.type} is no answer to {type} (expected {expected})")
        return reply.body

    async def send(self, type: str, body: Body, timeout: float = SEND_TIMEOUT) -> None:
        """Send a one-way message, waiting at most ``timeout`` for a connection or room.

        Raises:
            IpcError: not handed over in time (the other role is down or not keeping up).
        """
        if type not in ONE_WAY:
            raise ValueError(f"{type!r} is not a one-way message type")
        if self._closed:
            raise IpcError(f"client of {self.endpoint} is closed")
        payload = encode_envelope(Envelope(type, next(self._ids), body))
        try:
            self._pump.try_send([payload])  # almost always: no timer needed
            return
        except zmq.Again:
            pass
        except zmq.ZMQError as e:
            raise IpcError(f"send to {self.endpoint} failed: {e}") from e
        try:
            async with self._clock.timeout(timeout):
                await self._send(payload)
        except TimeoutError as e:
            raise IpcError(f"could not hand {type} to {self.endpoint} in {timeout:g}s") from e

    def send_nowait(self, type: str, body: Body) -> None:
        """Send a one-way message now, or raise ``IpcError`` (no room, or another send
        is still waiting: order is kept)."""
        if type not in ONE_WAY:
            raise ValueError(f"{type!r} is not a one-way message type")
        if self._closed:
            raise IpcError(f"client of {self.endpoint} is closed")
        try:
            self._pump.try_send([encode_envelope(Envelope(type, next(self._ids), body))])
        except zmq.ZMQError as e:
            raise IpcError(f"could not hand {type} to {self.endpoint} now: {e}") from e

    async def _send(self, payload: bytes) -> None:
        try:
            await self._pump.send([payload])
        except zmq.ZMQError as e:
            raise IpcError(f"send to {self.endpoint} failed: {e}") from e

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 1:
            log.warning("%s: dropping a message of %d frames", self.endpoint, len(frames))
            return
        try:
            env = decode_envelope(frames[0])
        except RemoteProtocolError as e:
            log.warning("%s: dropping garbage: %s", self.endpoint, e)
            return
        if env.reply_to is not None:
            future = self._pending.get(env.reply_to)
            if future is None or future.done():
                log.debug(
                    "%s: dropping late or unmatched %s re=%d", self.endpoint, env.type, env.reply_to
                )
            else:
                future.set_result(env)
        elif self._on_message is None:
            log.debug("%s: no handler, dropping %s", self.endpoint, env.type)
        else:
            try:
                self._on_message(env)
            except Exception:
                log.exception("%s: message handler failed on %s", self.endpoint, env.type)

    def _on_error(self, e: zmq.ZMQError) -> None:
        log.error("%s: receive failed, client stops: %s", self.endpoint, e)
        self._fail_pending(IpcError(f"receive from {self.endpoint} failed: {e}"))

    def _fail_pending(self, error: IpcError) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        """Stop the receive task, fail outstanding requests with IpcError, close the socket."""
        if self._closed:
            return
        self._closed = True
        self._pump.close()
        self._fail_pending(IpcError(f"client of {self.endpoint} closed"))


class Publisher(_Closing):
    """Storage's events PUB: ``change_batch`` on topic ``c``, ``results`` on ``r``.

    Never waits; a subscriber that is slow or not yet subscribed misses
    messages, which the contract repairs (revisions, timeouts).
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        *,
        allow_uid: int | None = None,
        hwm: int = EVENTS_HWM,
        xpub: bool = False,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        # XPUB sends like PUB and also shows subscriptions (wait_subscribed).
        sock = _socket(ctx, zmq.XPUB if xpub else zmq.PUB, hwm)
        self._lock = _bind(sock, endpoint, allow_uid)
        self.endpoint = endpoint
        self._sock = sock
        # PUB never blocks: no future needed, send on a synchronous shadow.
        self._sync: zmq.Socket[bytes] = zmq.Socket.shadow(sock.underlying)
        self._ids = _ids()
        self._clock = clock

    @classmethod
    async def open(
        cls, ctx: zmq.asyncio.Context, endpoint: str, *, wait: float = BIND_WAIT, **kwargs: Any
    ) -> Self:
        """Like the constructor, retrying ``EADDRINUSE`` for up to ``wait`` seconds."""
        return await _open_retrying(lambda: cls(ctx, endpoint, **kwargs), wait)

    async def publish(self, type: str, body: Body) -> None:
        topic = TOPICS.get(type)
        if topic is None:
            raise ValueError(f"{type!r} is not an event type")
        payload = encode_envelope(Envelope(type, next(self._ids), body))
        try:
            _send_frames(self._sync, [topic, payload], _DONTWAIT)
        except zmq.ZMQError as e:
            raise IpcError(f"publish on {self.endpoint} failed: {e}") from e

    def take_subscriptions(self) -> list[bytes]:
        """Subscription messages received so far (an ``xpub=True`` publisher only):
        ``b"\\x01" + topic`` for a subscribe, ``b"\\x00" + topic`` for an unsubscribe."""
        got = []
        while True:
            try:
                got.append(self._sync.recv(zmq.NOBLOCK))
            except zmq.Again:
                return got
            except zmq.ZMQError as e:
                raise IpcError(f"receive on {self.endpoint} failed: {e}") from e

    async def wait_subscribed(self, topic: bytes, timeout: float) -> bool:
        """Wait up to ``timeout`` for a subscriber of ``topic`` (``xpub=True`` only).

        Why: a new publisher's first messages are lost to subscribers that have not
        reconnected yet (ZeroMQ's slow joiner); a restarted storage waits for its
        front before it publishes write results."""
        clock = self._clock
        until = clock.monotonic() + timeout
        while True:
            if b"\x01" + topic in self.take_subscriptions():
                return True
            if clock.monotonic() >= until:
                return False
            await clock.sleep(SUBSCRIBED_POLL)

    async def close(self) -> None:
        self._sock.close(linger=0)
        _unlock(self._lock)


class Subscriber(_Closing):
    """The front's SUB on storage's events; reconnects by itself."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        endpoint: str,
        topics: Iterable[bytes] = (b"c", b"r"),
        *,
        hwm: int = EVENTS_HWM,
    ) -> None:
        sock = _socket(ctx, zmq.SUB, hwm)
        try:
            for topic in topics:
                sock.setsockopt(zmq.SUBSCRIBE, topic)
            sock.connect(endpoint)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            raise IpcError(f"cannot subscribe to {endpoint}: {e}") from e
        self.endpoint = endpoint
        self._inbox: _Inbox[Envelope] = _Inbox(hwm)
        self._pump = _Pump(sock, self._on_frames, self._on_error)
        self._inbox.pump = self._pump

    async def recv(self) -> Envelope:
        """The next valid event; garbage and mis-topicked messages are dropped (warning)."""
        return await self._inbox.get()

    def _on_frames(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            log.warning("%s: dropping an event of %d frames", self.endpoint, len(frames))
            return
        topic, payload = frames
        try:
            env = decode_envelope(payload)
        except RemoteProtocolError as e:
            log.warning("%s: dropping garbage: %s", self.endpoint, e)
            return
        if TOPICS.get(env.type) != topic:
            log.warning("%s: dropping %s sent on topic %r", self.endpoint, env.type, topic)
            return
        self._inbox.put(env)

    def _on_error(self, e: zmq.ZMQError) -> None:
        self._inbox.fail(IpcError(f"receive on {self.endpoint} failed: {e}"))

    async def close(self) -> None:
        self._close_pumped(self._pump, self._inbox, self.endpoint)
