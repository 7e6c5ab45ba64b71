"""What the RPC and pub/sub sockets share: the context, endpoints, the socket pump, binding.

Part of the ZeroMQ IPC layer whose rules are in ``concordance.ipc``'s
docstring. ``rpc`` (ROUTER/DEALER) and ``pubsub`` (PUB/SUB) build on the
helpers here; the underscored ones are this package's own, not the roles'.
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
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import zmq
import zmq.asyncio

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.errors import (
    IpcError,
    IpcTimeout,
)
from concordance.ipc.paths import BindLock, endpoint_path, run_dir
from concordance.protocol.wire import (
    Envelope,
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
