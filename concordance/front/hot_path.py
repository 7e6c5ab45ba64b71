"""The key-value hot routes served without aiohttp's per-request machinery.

Why: at 64 clients the leader's front spent a third of the cluster's CPU per
write, most of it in aiohttp's request and response objects, router and
middleware chain around a handler that does little (docs/PERFORMANCE.md,
"The hot routes without aiohttp"). This protocol reads ``GET``, ``PUT`` and
``DELETE /api/v1/kv/{key}`` and ``POST /api/v1/batch`` itself (``hot_parse``)
and answers them with the same functions the aiohttp handlers call
(``kv.get_text``, ``put_text``, ``delete_text``, ``batch_text``), the same
authorization (``middlewares.authorize``), error bodies (``error_parts``,
``api_error``) and request metrics.

Theory of operation:

* Every HTTP connection the front accepts starts here (``accept.SortingSite``).
  Requests are served one at a time, in order; pipelined ones wait in the
  buffer (reading pauses past ``READ_HIGH`` bytes while one is served).
* The first request the parser does not take (``TO_AIOHTTP``: another route, a
  WebSocket upgrade, anything unusual) moves the connection to aiohttp for
  good: a fresh aiohttp ``RequestHandler`` becomes the transport's protocol
  and is given the buffered bytes, from that request's first byte. Nothing is
  answered twice or out of order: the switch happens only between requests.
* The connection is one of the aiohttp server's (``web.Server.connection_made``
  and ``connection_lost``): the connection gate counts and admits it and arms
  its header deadline exactly as for aiohttp's own, and the runner's shutdown
  closes it when idle (``close``) or after its request (``shutdown``). A
  switch to aiohttp carries its admission over (``ConnectionGate.move``).
* Between requests the keep-alive timeout applies, as in aiohttp (armed at
  accept too, so it also bounds a later request's slow head).
* A client that goes away does not cancel its request (aiohttp's default):
  a write proposed stays proposed; its answer is dropped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Final, cast

from aiohttp import web

from concordance.front import kv
from concordance.front.app import BODY_SLACK
from concordance.front.app_state import ACCESS_KEYRING, CONFIG, GATE, METRICS
from concordance.front.hot_parse import BATCH, KEY, TO_AIOHTTP, Head, parse_head
from concordance.front.middlewares import api_error, authorize, bearer_token, error_parts

__all__ = ["HotConnection", "HotPath"]

log = logging.getLogger(__name__)

READ_HIGH: Final = 256 * 1024  # buffered bytes past which reading pauses while serving


class HotPath:
    """The protocol factory of a front's HTTP connections."""

    def __init__(self, app: web.Application, server: web.Server) -> None:
        self.app = app
        self.server = server
        self.keepalive_timeout = app[CONFIG].limits.keepalive_timeout  # as procs/front.py's runner
        # aiohttp's own limit (make_app): a bigger body is its to refuse (413)
        self.max_body = app[CONFIG].max_value_bytes + BODY_SLACK
        # the metrics labels aiohttp would use
        self.routes = {name: app.router[name].canonical for name in (KEY, BATCH)}
        self.metrics = app[METRICS]  # counts what it served and gave to aiohttp
        self._date = (0, "")

    def __call__(self) -> HotConnection:
        return HotConnection(self)

    def date(self) -> str:
        """The ``Date`` header's value, formatted once a second."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]


class HotConnection(asyncio.Protocol):
    """One HTTP connection while its requests are hot ones; see the module docstring."""

    def __init__(self, path: HotPath) -> None:
        self._path = path
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._task_handler: asyncio.Task[None] | None = None  # read by web.Server
        self._closing = False
        self._read_paused = False
        self._write_paused: asyncio.Future[None] | None = None
        self._keepalive: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = tcp = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._path.server.connection_made(self, tcp)  # type: ignore[arg-type]
        if not tcp.is_closing():  # the gate may have refused it
            self._arm_keepalive()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._closing = True
        self._cancel_keepalive()
        if self._write_paused is not None and not self._write_paused.done():
            self._write_paused.set_result(None)
        self._path.server.connection_lost(self, exc)  # type: ignore[arg-type]
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._buf += data
        if self._task_handler is None:
            self._next()
        elif len(self._buf) > READ_HIGH and not self._read_paused and self._transport:
            self._transport.pause_reading()
            self._read_paused = True

    def eof_received(self) -> bool | None:
        return None  # as aiohttp: the transport closes (a half-closed client gets no answer)

    def pause_writing(self) -> None:
        self._write_paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._write_paused is not None and not self._write_paused.done():
            self._write_paused.set_result(None)
        self._write_paused = None

    # -- what web.Server and the connection gate call
    def close(self) -> None:
        """Take no more requests; close now if idle, else after the current answer."""
        self._closing = True
        if self._task_handler is None and self._transport is not None:
            self._transport.close()

    def force_close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        """Let the request being served finish (``timeout`` at most), then close."""
        self._closing = True
        task = self._task_handler
        if task is not None:
            await asyncio.wait((task,), timeout=timeout)
        self.force_close()

    # -- requests
    def _next(self) -> None:
        """Start serving the first buffered request, or hand the connection over."""
        if self._closing or self._task_handler is not None:
            return
        head = parse_head(self._buf, self._path.max_body)
        if head is None:
            return
        if head is TO_AIOHTTP:
            self._give_to_aiohttp()
            return
        assert isinstance(head, Head)
        self._cancel_keepalive()
        gate = self._path.app.get(GATE)
        if gate is not None:
            gate.headers_done(self)
        body = bytes(self._buf[head.body_start : head.end])
        del self._buf[: head.end]
        loop = asyncio.get_running_loop()
        self._task_handler = loop.create_task(self._serve(head, body))

    async def _serve(self, head: Head, body: bytes) -> None:
        """Answer one request; the next is read only once this answer is written out
        (``_task_handler`` stays set until then, so requests never overlap)."""
        try:
            status, headers, text = await self._outcome(head, body)
            self._answer(status, headers, text, close=head.close or self._closing)
            if self._write_paused is not None:  # the client reads slowly: wait for it
                await self._write_paused
        except BaseException:  # cancelled: no answer, so the connection cannot go on
            self.force_close()
            raise
        finally:
            self._task_handler = None
        self._after_answer()

    async def _outcome(self, head: Head, body: bytes) -> tuple[int, dict[str, str], str]:
        """The answer's status, extra headers and JSON text; the request is counted."""
        app = self._path.app
        started = time.monotonic()
        status, headers = 200, dict[str, str]()
        try:
            cfg, keyring = app[CONFIG], app[ACCESS_KEYRING]
            token = bearer_token(head.authorization)
            access = authorize(cfg, keyring, head.route, head.method, token)
            if head.route == BATCH:
                text = await kv.batch_text(app, access, body)
            elif head.method == "PUT":
                text = await kv.put_text(app, access, head.key, body)
            elif head.method == "GET":
                text = await kv.get_text(app, access, head.key, head.query)
            else:
                text = await kv.delete_text(app, access, head.key, head.query)
        except Exception as e:
            path = self._path.routes[head.route] if head.route == BATCH else _kv_path(head.key)
            status, headers, text = error_parts(api_error(e, head.method, path))
        seconds = time.monotonic() - started
        self._path.metrics.observe(self._path.routes[head.route], head.method, status, seconds)
        self._path.metrics.hot_requests += 1
        return status, headers, text

    def _answer(self, status: int, headers: dict[str, str], text: str, *, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # the client went away: the answer has no one to go to
        body = text.encode()
        extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        if close:
            extra += "Connection: close\r\n"
        head = f"Content-Length: {len(body)}\r\nDate: {self._path.date()}\r\n{extra}\r\n"
        transport.write(b"".join((_status_line(status), head.encode(), body)))
        if close:
            self._closing = True
            transport.close()

    def _after_answer(self) -> None:
        if self._closing or self._transport is None:
            return
        if self._read_paused:
            self._transport.resume_reading()
            self._read_paused = False
        self._arm_keepalive()
        if self._buf:
            self._next()

    def _give_to_aiohttp(self) -> None:
        """aiohttp serves this connection from now on, starting with the buffered bytes."""
        transport = self._transport
        assert transport is not None
        path = self._path
        handler = path.server()
        gate = path.app.get(GATE)
        if gate is not None:
            gate.move(self, handler)
        self._closing = True  # this protocol is done with the connection
        self._cancel_keepalive()
        path.server.connection_lost(self, None)  # type: ignore[arg-type]
        if self._read_paused:
            transport.resume_reading()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        data, self._buf = bytes(self._buf), bytearray()
        handler.data_received(data)
        path.metrics.to_aiohttp += 1

    # -- keep-alive
    def _arm_keepalive(self) -> None:
        self._cancel_keepalive()
        if self._path.keepalive_timeout > 0:
            loop = asyncio.get_running_loop()
            self._keepalive = loop.call_later(self._path.keepalive_timeout, self._idle)

    def _cancel_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def _idle(self) -> None:
        self._keepalive = None
        if self._task_handler is None:
            self.force_close()


@functools.cache
def _status_line(status: int) -> bytes:
    """The status line and the one content type every answer here has."""
    phrase = HTTPStatus(status).phrase
    content_type = "Content-Type: application/json; charset=utf-8"
    return f"HTTP/1.1 {status} {phrase}\r\n{content_type}\r\n".encode()


def _kv_path(key: str) -> str:
    return f"/api/v1/kv/{key}"
