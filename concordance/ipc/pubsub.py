"""Storage's events: the PUB (or XPUB) storage binds and the SUB the front connects
(docs/PROTOCOL.md; the rules in ``concordance.ipc``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Self

import zmq
import zmq.asyncio

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.errors import (
    IpcError,
    RemoteProtocolError,
)
from concordance.ipc.zmq_base import (
    _DONTWAIT,
    BIND_WAIT,
    EVENTS_HWM,
    SUBSCRIBED_POLL,
    _bind,
    _Closing,
    _ids,
    _Inbox,
    _open_retrying,
    _Pump,
    _send_frames,
    _socket,
    _unlock,
)
from concordance.protocol.wire import (
    TOPICS,
    Body,
    Envelope,
    decode_envelope,
    encode_envelope,
)

log = logging.getLogger(__name__)


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
