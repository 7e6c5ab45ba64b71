"""The front's accept loop: peer connections go to consensus, the rest to aiohttp.

Why accept ourselves: the front is the only acceptor on the node's one port,
but Raft peer links belong to consensus (ARCHITECTURE.md, "Raft peers"). A
connection must be recognised before any HTTP parsing and before a TLS
handshake, because consensus runs that handshake itself. So this site takes
each connection from the listening socket, peeks at its first bytes
(``MSG_PEEK``: nothing is consumed) and decides with
``peerwire.classify``: a peer connection's descriptor is sent to consensus
(``fdpass``) and closed here; any other is given to the aiohttp server with
``loop.connect_accepted_socket`` (and the server's TLS context), exactly as
``create_server`` would have, through ``hot_path`` (which serves the key-value
hot routes itself and gives the rest to aiohttp). A peer connection therefore
never counts as an HTTP client, and a front hand-over never touches a peer link.

Theory of operation: the first peek happens at accept (a client's first
bytes are usually there already); otherwise the connection waits for its
first readable event, and a partial TLS record is peeked again after
``REPEEK`` seconds (a reader would fire at once on the bytes already there).
A connection that says nothing decisive within ``PROBE_TIMEOUT`` goes to
HTTP, whose own timeouts apply as before. The listening socket may be shared
with another front (a hand-over): whoever accepts first takes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_

from aiohttp import web

from concordance.front.hot_path import HotPath
from concordance.ipc import fdpass
from concordance.protocol import peerwire
from concordance.protocol.peerwire import Kind

__all__ = ["SortingSite"]

log = logging.getLogger(__name__)

ACCEPT_BATCH = 64  # connections accepted per readiness callback
PROBE_TIMEOUT = 2.0
REPEEK = 0.002


class SortingSite(web.BaseSite):
    """An aiohttp site on a listening socket this front accepts from itself.

    Args:
        sock: the listening socket (inherited from the front keeper, or bound here).
        handoff: where peer connections go (consensus's ``fdpass`` socket).
    """

    __slots__ = ("_handoff", "_hot", "_listening", "_loop", "_probes", "_sock", "_tasks", "hot")

    def __init__(
        self,
        runner: web.AppRunner,
        sock: socket.socket,
        handoff: fdpass.FdSender,
        *,
        ssl_context: ssl_.SSLContext | None = None,
        hot_routes: bool = False,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._hot = hot_routes
        self.hot: HotPath | None = None  # set by start(): what serves the connections
        self._sock = sock
        self._handoff = handoff
        self._probes: dict[socket.socket, tuple[float, asyncio.TimerHandle | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._listening = False

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"{'https' if self._ssl_context else 'http'}://{host}:{port}"

    @property
    def handed_over(self) -> int:
        """Peer connections sent to consensus so far."""
        return self._handoff.sent

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None and isinstance(self._runner, web.AppRunner)
        if self._hot:
            self.hot = HotPath(self._runner.app, server)
        self._sock.setblocking(False)
        self._loop.add_reader(self._sock.fileno(), self._accept)
        self._listening = True

    async def stop(self) -> None:
        """Accept no more; connections still being looked at are decided now."""
        if self._listening:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()  # this process's copy: the keeper (and a next front) keep theirs
            self._listening = False
        for conn in list(self._probes):
            self._probe(conn, final=True)
        self._handoff.close()
        await super().stop()

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and friends: the next readiness tries again
                log.warning("accept failed: %s", e)
                return
            conn.setblocking(False)
            self._probes[conn] = (self._loop.time() + PROBE_TIMEOUT, None)
            self._probe(conn)

    def _probe(self, conn: socket.socket, *, final: bool = False) -> None:
        deadline, timer = self._probes[conn]
        if timer is not None:
            timer.cancel()
        try:
            head = conn.recv(peerwire.TLS_PROBE_MAX, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            head = None
        except OSError:
            self._forget(conn)
            conn.close()
            return
        if head == b"":  # closed before saying anything
            self._forget(conn)
            conn.close()
            return
        kind = peerwire.classify(head or b"", tls=self._ssl_context is not None)
        if kind is Kind.MORE and not final and self._loop.time() < deadline:
            if head is None:  # nothing yet: wait for the first bytes, or the deadline
                late = self._loop.call_at(deadline, self._late, conn)
                self._probes[conn] = (deadline, late)
                self._loop.add_reader(conn.fileno(), self._readable, conn)
            else:  # part of a record: look again shortly (a reader would spin)
                self._probes[conn] = (deadline, self._loop.call_later(REPEEK, self._probe, conn))
            return
        self._forget(conn)
        if kind is Kind.PEER:
            kind_byte = fdpass.TLS if self._ssl_context is not None else fdpass.PLAIN
            if not self._handoff.send(conn, kind_byte):
                log.debug("consensus cannot take a peer connection now: closed (it redials)")
            conn.close()
            return
        task = self._loop.create_task(self._serve_http(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _readable(self, conn: socket.socket) -> None:
        self._loop.remove_reader(conn.fileno())
        if conn in self._probes:
            self._probe(conn)

    def _late(self, conn: socket.socket) -> None:
        self._loop.remove_reader(conn.fileno())
        if conn in self._probes:
            self._probe(conn, final=True)

    def _forget(self, conn: socket.socket) -> None:
        _, timer = self._probes.pop(conn, (0.0, None))
        if timer is not None:
            timer.cancel()
        self._loop.remove_reader(conn.fileno())

    async def _serve_http(self, conn: socket.socket) -> None:
        server = self._runner.server
        assert server is not None
        factory = self.hot or server
        try:
            await self._loop.connect_accepted_socket(factory, conn, ssl=self._ssl_context)
        except (OSError, ssl_.SSLError) as e:  # a failed TLS handshake, a reset
            log.debug("connection failed before HTTP: %s", e)
            conn.close()
