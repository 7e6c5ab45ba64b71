"""Requests with ids and deadlines, replies, one-way pushes: the ROUTER a role binds and the
DEALER that connects to it (docs/PROTOCOL.md; the rules in ``concordance.ipc``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Self

import zmq
import zmq.asyncio

from concordance.clock import SYSTEM_CLOCK, Clock, Timer
from concordance.errors import (
    ConcordanceError,
    IpcError,
    PeerGone,
    RemoteProtocolError,
)
from concordance.ipc.zmq_base import (
    _POLLOUT,
    BIND_WAIT,
    RPC_HWM,
    SEND_TIMEOUT,
    MessageHandler,
    _as_bytes,
    _bind,
    _Closing,
    _expire,
    _ids,
    _Inbox,
    _late,
    _open_retrying,
    _Pump,
    _socket,
    _unlock,
)
from concordance.protocol.wire import (
    ONE_WAY,
    REPLIES,
    Body,
    Envelope,
    ErrorReply,
    decode_envelope,
    encode_envelope,
    type_name,
)

log = logging.getLogger(__name__)


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
