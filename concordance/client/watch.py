"""A watch over ``/stream`` that survives reconnects and node failures without a gap.

How it stays gap-free and duplicate-free:

* Without ``since`` it starts at the ``revision`` the first subscribe answers,
  so a reconnect before the first change still resumes from that point.
* It remembers the last revision it delivered and the keys delivered at that
  revision (one batch shares one revision, and may in principle arrive split),
  resubscribes from the revision before it, and drops what it already gave.
* A dead connection (a node that vanished without closing it) is found by
  WebSocket ping/pong every ``heartbeat_s``: aiohttp closes the socket when a
  pong is late by half of it.
* ``compacted`` is raised as :class:`concordance.errors.Compacted` (the caller
  must re-read and watch from a newer revision); a wrong key, a refused key or
  a missing permission is raised at once. Only lost connections and
  ``unavailable`` are retried (forever, with jittered backoff, logged).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
from collections import deque
from typing import Any

import aiohttp

from concordance import errors
from concordance.client.endpoints import Endpoint
from concordance.client.transport import Transport
from concordance.client.types import Change

__all__ = ["Watch"]

log = logging.getLogger("concordance.client")
_ids = itertools.count(1)
_HANDSHAKE_ERRORS: dict[int, type[errors.ConcordanceError]] = {
    400: errors.InvalidRequest,
    401: errors.Unauthorized,
    403: errors.Forbidden,
}


class _Lost(Exception):
    """The connection or subscription ended in a way that a resubscribe fixes."""


class Watch:
    """Async iterator of :class:`Change`; ``async with client.watch(...) as w``."""

    def __init__(
        self,
        transport: Transport,
        prefix: str | None,
        key: str | None,
        since: int | None,
        heartbeat_s: float,
    ) -> None:
        if (prefix is None) == (key is None):
            raise errors.InvalidRequest("watch needs exactly one of a prefix or a key")
        self._transport = transport
        self._target = {"prefix": prefix} if prefix is not None else {"key": key}
        self.revision: int | None = since  # everything up to here was delivered
        self._at_revision: set[str] = set()  # keys delivered at self.revision
        self._heartbeat_s = heartbeat_s
        self._pending: deque[Change] = deque()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closed = False
        self.reconnects = 0  # how often the watch resubscribed after losing its connection
        self.endpoint: str | None = None  # the node it is subscribed on, while it is
        self._current: Endpoint | None = None

    async def __aenter__(self) -> Watch:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> Watch:
        return self

    async def start(self) -> Watch:
        """Subscribe now (``async with`` does this): without ``since``, the watch then
        delivers every change after this point, even before the first ``anext``."""
        await self._pump(until_subscribed=True)
        return self

    async def aclose(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._ws.close()

    async def __anext__(self) -> Change:
        await self._pump(until_subscribed=False)
        change = self._pending.popleft()
        if change.revision != self.revision:
            self._at_revision = set()
        self.revision = change.revision
        self._at_revision.add(change.key)
        return change

    async def _pump(self, until_subscribed: bool) -> None:
        """(Re)subscribe and read until a change is pending (or, ``until_subscribed``, until
        the subscription stands); lost connections are retried with jittered backoff."""
        delay = 0.1
        while until_subscribed or not self._pending:
            if self._closed:
                raise StopAsyncIteration
            subscribed = self._ws is not None and not self._ws.closed
            if until_subscribed and subscribed:
                return
            try:
                if self._ws is not None and self._ws.closed:
                    raise _Lost("the connection closed")
                if self._ws is None:
                    await self._subscribe()
                    delay = 0.1
                    if until_subscribed:
                        return
                await self._receive()
            except errors.ConcordanceError:  # not retried: the connection goes with it
                await self.aclose()
                raise
            except _Lost as lost:
                if self._closed:
                    raise StopAsyncIteration from None
                if self._current is not None:  # resubscribe elsewhere first
                    self._transport.endpoints.failed(self._current)
                await self._drop()
                self.reconnects += 1
                log.warning(
                    "watch %s: %s; resuming after revision %s", self._describe(), lost,
                    self.revision,
                )  # fmt: skip
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, 5.0)

    def _describe(self) -> str:
        name, value = next(iter(self._target.items()))
        return f"{name} {value!r}"

    async def _drop(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        self._ws = self._current = None
        self.endpoint = None

    async def _subscribe(self) -> None:
        transport = self._transport
        endpoint = transport.endpoints.order(read=True)[0]
        try:
            # A node that accepts the connection but never answers (a stalled proxy) must
            # not hold the watch for a whole request timeout: a connect plus a heartbeat
            # (at least 5 s, so that a loaded node is not mistaken for a stalled one).
            async with asyncio.timeout(transport.connect_timeout_s + max(self._heartbeat_s, 5.0)):
                ws = await transport.session().ws_connect(
                    f"{endpoint.url}/stream",
                    heartbeat=self._heartbeat_s,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                )
        except aiohttp.WSServerHandshakeError as e:
            transport.endpoints.failed(endpoint)
            cls = _HANDSHAKE_ERRORS.get(e.status)
            if cls is not None:
                raise cls(f"watch refused by {endpoint.url}: HTTP {e.status}") from None
            raise _Lost(f"{endpoint.url} refused the WebSocket (HTTP {e.status})") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            transport.endpoints.failed(endpoint)
            raise _Lost(f"cannot reach {endpoint.url} ({type(e).__name__})") from None
        self._ws, self._current = ws, endpoint
        params: dict[str, Any] = dict(self._target)
        if self.revision is not None:
            # From the revision before the last one delivered: a batch (one revision) split
            # across notifications is then completed; what was delivered is dropped below.
            params["sinceRevision"] = (
                max(self.revision - 1, 0) if self._at_revision else (self.revision)
            )
        request_id = next(_ids)
        try:
            await ws.send_json(
                {"jsonrpc": "2.0", "id": request_id, "method": "watch/subscribe", "params": params}
            )
        except (aiohttp.ClientError, OSError) as e:
            raise _Lost(f"connection to {endpoint.url} lost ({type(e).__name__})") from None
        while True:  # the reply comes first: the server starts delivering only after it
            message = await self._next_message()
            if message.get("id") != request_id:
                continue
            if "error" in message:
                error = _rpc_error(message["error"])
                if isinstance(error, errors.Unavailable):
                    transport.endpoints.failed(endpoint)
                    raise _Lost(f"{endpoint.url}: {error.message}")
                if isinstance(error, errors.Compacted):
                    await self.aclose()
                raise error
            result = message["result"]
            if self.revision is None:
                self.revision = int(result["revision"])
            transport.endpoints.answered(endpoint)
            self.endpoint = endpoint.url
            return

    async def _receive(self) -> None:
        """Wait for the next notification; changes go to ``_pending``."""
        message = await self._next_message()
        method = message.get("method")
        if method == "watch/change":
            for raw in message["params"]["events"]:
                change = Change.from_json(raw)
                if self.revision is not None and (
                    change.revision < self.revision
                    or (
                        change.revision == self.revision
                        and (not self._at_revision or change.key in self._at_revision)
                    )
                ):
                    continue  # delivered before the reconnect, or before the start
                self._pending.append(change)
        elif method == "watch/cancelled":
            reason = message["params"].get("reason")
            if reason == "compacted":
                await self.aclose()
                raise errors.Compacted(
                    f"watch {self._describe()}: history after revision {self.revision} "
                    "was compacted; re-read and watch again",
                    revision=self.revision,
                )
            raise _Lost(f"the server cancelled the watch ({reason})")

    async def _next_message(self) -> dict[str, Any]:
        assert self._ws is not None
        try:
            msg = await self._ws.receive()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise _Lost(f"connection lost ({type(e).__name__})") from None
        if msg.type is aiohttp.WSMsgType.TEXT:
            try:
                data: dict[str, Any] = json.loads(msg.data)
            except ValueError:
                raise _Lost("the server sent a frame that is not JSON") from None
            return data
        if msg.type is aiohttp.WSMsgType.ERROR:
            raise _Lost(f"connection lost ({self._ws.exception() or 'no pong'})")
        raise _Lost("connection closed")


def _rpc_error(error: dict[str, Any]) -> errors.ConcordanceError:
    data = error.get("data") or {}
    message = data.get("message") or error.get("message", "")
    return errors.ConcordanceError.from_dict(
        {**data, "code": data.get("code", "invalid_request"), "message": message}
    )
