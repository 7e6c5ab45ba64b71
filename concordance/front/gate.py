"""The front's connection gate: a cap on open connections and a deadline for first headers.

Why: without them, idle and half-sent connections (no key needed) held the
front's descriptors until ``/healthz`` and authenticated callers failed
(issue 20). aiohttp has neither, so the gate wraps the server's own
bookkeeping hooks (``connection_made``, ``connection_lost``, and the request
factory, which runs once a request's headers are complete):

* Every accepted connection counts, whatever it turns into (HTTP, ``/stream``,
  a peer's ``/raft``). Up to ``max_client_connections`` anyone is let in;
  past it only *trusted* hosts (loopback: operators' probes on the node's
  machine; the addresses of the node's peers) get in, up to
  ``reserved_connections`` more. Anyone else gets ``503 unavailable`` with
  ``Retry-After`` and the connection is closed.
* A connection whose first request's headers are not complete
  ``header_timeout`` seconds after it was accepted is closed. Between
  requests aiohttp's keep-alive timeout applies (``keepalive_timeout``, which
  it also arms at accept, so it bounds slow headers of later requests too);
  a WebSocket session is a request in progress, so an idle watcher is never
  closed by either (its pings keep it honest).

Cost: O(1) per connection and per request; nothing per byte.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

from aiohttp import web

from concordance.config import FrontLimits

__all__ = ["ConnectionGate", "is_loopback"]

log = logging.getLogger(__name__)

_BODY: Final = json.dumps(
    {"error": {"code": "unavailable", "message": "too many connections to this node"}}
).encode()
REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


def is_loopback(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)


class ConnectionGate:
    """Counts, admits and times out a front's connections; see the module docstring."""

    def __init__(
        self, limits: FrontLimits, trusted_hosts: Iterable[str] = (), *, loopback: bool = True
    ) -> None:
        self.limits = limits
        self.trusted_hosts = frozenset(trusted_hosts)
        self.loopback = loopback  # whether loopback is trusted (always, but in tests)
        self.open = 0  # admitted connections not yet lost
        self.refused = 0  # turned away at the cap
        self.header_timeouts = 0  # closed for headers not complete in time
        self._admitted: dict[Any, asyncio.TimerHandle | None] = {}  # handler -> header timer

    def trust(self, hosts: Iterable[str]) -> None:
        """Add hosts (IP addresses as ``peername`` shows them) that may use the reserve."""
        self.trusted_hosts |= frozenset(hosts)

    def trusted(self, host: str) -> bool:
        if host.startswith("::ffff:"):  # an IPv4 peer on a dual-stack socket
            host = host.removeprefix("::ffff:")
        return host in self.trusted_hosts or (self.loopback and is_loopback(host))

    def admits(self, host: str) -> bool:
        """Whether a new connection from ``host`` may be served now."""
        if self.open < self.limits.max_client_connections:
            return True
        reserve = self.limits.max_client_connections + self.limits.reserved_connections
        return self.open < reserve and self.trusted(host)

    def install(self, server: web.Server) -> None:
        """Wrap ``server``'s hooks; call before it accepts its first connection."""
        made, lost, factory = server.connection_made, server.connection_lost, server.request_factory

        def connection_made(handler: web.RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            if handler in self._admitted:  # admitted already, under its first handler (move)
                return
            peer = transport.get_extra_info("peername")
            host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            if not self.admits(host):
                self.refused += 1
                transport.write(REFUSAL)
                handler.force_close()  # closes the transport once the refusal is written
                return
            self.open += 1
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self.limits.header_timeout, self._late, handler)
            self._admitted[handler] = timer

        def connection_lost(handler: web.RequestHandler, exc: BaseException | None = None) -> None:
            if handler in self._admitted:
                timer = self._admitted.pop(handler)
                if timer is not None:
                    timer.cancel()
                self.open -= 1
            lost(handler, exc)

        def request_factory(*args: Any, **kwargs: Any) -> web.BaseRequest:
            self.headers_done(args[2])  # (message, payload, protocol, writer, task)
            return factory(*args, **kwargs)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        server.request_factory = request_factory

    def headers_done(self, handler: Any) -> None:
        """A request's headers are complete on ``handler``'s connection: no header deadline."""
        timer = self._admitted.get(handler)
        if timer is not None:
            timer.cancel()
            self._admitted[handler] = None

    def move(self, old: Any, new: Any) -> None:
        """``new`` takes over ``old``'s connection (``hot_path`` giving a connection to aiohttp):
        ``old``'s loss and ``new``'s arrival then neither count nor admit it again."""
        if old not in self._admitted:
            return  # never admitted (refused and closing): nothing to carry over
        timer = self._admitted.pop(old)
        if timer is not None:
            timer.cancel()
        self._admitted[new] = None  # its headers are in: no deadline to carry

    def _late(self, handler: web.RequestHandler) -> None:
        if self._admitted.get(handler) is None:
            return
        self._admitted[handler] = None
        self.header_timeouts += 1
        handler.force_close()

    def families(self, gauge: Callable[[str, str, float | None, str], None]) -> None:
        """Report the counts through ``gauge(name, help, value, kind)`` (``/metrics``)."""
        gauge(
            "concordance_client_connections",
            "Connections open on this front (clients, peers, probes).",
            self.open,
            "gauge",
        )
        gauge(
            "concordance_client_connection_limit",
            "Connections this front serves before only peers and loopback get in.",
            self.limits.max_client_connections,
            "gauge",
        )
        gauge(
            "concordance_connections_refused_total",
            "Connections turned away with 503 at the connection cap.",
            self.refused,
            "counter",
        )
        gauge(
            "concordance_header_timeouts_total",
            "Connections closed because their first request's headers came too late.",
            self.header_timeouts,
            "counter",
        )
