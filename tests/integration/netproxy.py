"""Fault-injecting TCP proxies between real nodes (etcd robustness's per-member peer proxy).

Each directed peer link a->b gets a :class:`Link`: a listener on 127.0.0.1
that forwards to b's real port. Node a is started with
``--peer-overrides b=127.0.0.1:{link.port}``, so a's front dials b's ``/raft``
through the link. The ``/raft`` server never sends Raft frames back on that
WebSocket (``front/peers.py`` only reads), so blocking link a->b cuts exactly
the messages a sends to b; b's messages to a travel on link b->a.

Faults, settable at any time from the test thread:

* :meth:`Link.block` refuses new connections and aborts open ones (an RST:
  the peer's process, or its host, is unreachable);
* :meth:`Link.blackhole` stalls the link: open connections stay open but
  nothing moves either way, new connections are accepted but not forwarded
  (packets dropped: no answer, no RST). On ``unblock`` everything held is
  delivered, as TCP retransmission would; a peer that timed out meanwhile
  (WebSocket heartbeat) has closed its side already;
* :meth:`Link.delay` adds a fixed latency to every chunk, in order;
* :meth:`Link.unblock` lifts ``block``/``blackhole`` (not ``delay``).

All links run on one asyncio loop in a daemon thread of the test process
(:class:`ProxyLoop`); controls are synchronous: when ``block()`` returns, no
byte passes any more. :class:`Net` builds the full mesh for N nodes and
offers ``partition``, ``isolate``, ``one_way`` and ``heal``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Link", "LinkStats", "Net", "ProxyLoop"]

T = TypeVar("T")
CHUNK = 64 * 1024


class Mode(enum.Enum):
    OPEN = "open"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


@dataclass
class LinkStats:
    """Counters of one link (read with :attr:`Link.stats`, a copy)."""

    accepted: int = 0  # connections forwarded to the target
    refused: int = 0  # connections aborted at accept (blocked, or target down)
    aborted: int = 0  # open connections cut by block()
    bytes_forward: int = 0  # a -> b (client -> target)
    bytes_back: int = 0  # b -> a
    bytes_dropped: int = 0  # queued when the link was blocked (its connection is cut)
    stalled: int = 0  # connections that waited for a blackhole to lift
    open: int = 0  # connections currently open


class ProxyLoop:
    """An asyncio loop in a daemon thread, shared by every link of a test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="netproxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10.0) -> T:
        """Run ``fn()`` on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.call(cancel_all)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


class _Conn:
    """One proxied connection: the client's transport and the upstream one."""

    def __init__(self, link: Link, client: asyncio.StreamWriter) -> None:
        self.link = link
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.handler = asyncio.current_task()  # may be waiting for a blackhole to lift

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()  # RST, not FIN: the peer sees the link die
        for t in [*self.tasks, self.handler]:
            if t is not None and t is not asyncio.current_task():
                t.cancel()


class Link:
    """The proxy for one directed link ``src -> dst``, listening on :attr:`port`."""

    def __init__(self, loop: ProxyLoop, target_port: int, name: str = "", host: str = "127.0.0.1"):
        self.name = name or f"->{target_port}"
        self.target = (host, target_port)
        self._loop = loop
        self._mode = Mode.OPEN
        self._flowing = loop.call(self._make_event)  # set iff the mode is OPEN
        self._delay = 0.0
        self._stats = LinkStats()
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server = loop.call(
            lambda: asyncio.start_server(self._handle, host, 0)
        )
        self.port: int = self._server.sockets[0].getsockname()[1]

    @staticmethod
    async def _make_event() -> asyncio.Event:
        event = asyncio.Event()
        event.set()
        return event

    def __repr__(self) -> str:
        return f"Link({self.name} :{self.port} -> {self.target[1]}, {self._mode.value})"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode.value

    @property
    def stats(self) -> LinkStats:
        async def copy() -> LinkStats:
            return LinkStats(**vars(self._stats))

        return self._loop.call(copy)

    # -- controls (called from the test thread) --------------------------------
    def block(self) -> None:
        """Refuse new connections and abort the open ones."""
        self._set(Mode.REFUSE)

    def blackhole(self) -> None:
        """Hold every byte, both ways, and every new connection, without closing anything."""
        self._set(Mode.BLACKHOLE)

    def unblock(self) -> None:
        self._set(Mode.OPEN)

    def delay(self, ms: float) -> None:
        """Deliver every chunk ``ms`` milliseconds after it was read (0: no delay)."""

        async def set_delay() -> None:
            self._delay = max(0.0, ms / 1000)

        self._loop.call(set_delay)

    def close(self) -> None:
        async def close() -> None:
            self._server.close()
            for conn in list(self._conns):
                conn.abort()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

        self._loop.call(close)

    def _set(self, mode: Mode) -> None:
        async def set_mode() -> None:
            self._mode = mode
            if mode is Mode.OPEN:
                self._flowing.set()
            else:
                self._flowing.clear()
            if mode is Mode.REFUSE:
                for conn in list(self._conns):
                    conn.abort()
                    self._stats.aborted += 1

        self._loop.call(set_mode)

    # -- the loop's side --------------------------------------------------------
    def _refusing(self) -> bool:
        return self._mode is Mode.REFUSE

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode is Mode.REFUSE:
            self._stats.refused += 1
            writer.transport.abort()
            return
        conn = _Conn(self, writer)
        self._conns.add(conn)
        self._stats.open += 1
        try:
            if self._mode is Mode.BLACKHOLE:
                self._stats.stalled += 1
                await self._flowing.wait()  # the SYN is "lost" until the hole lifts
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                self._stats.refused += 1
                writer.transport.abort()
                return
            if self._refusing():  # blocked while connecting
                up_writer.transport.abort()
                writer.transport.abort()
                return
            conn.upstream = up_writer
            self._stats.accepted += 1
            conn.tasks = [
                asyncio.create_task(self._pump(reader, up_writer, "forward")),
                asyncio.create_task(self._pump(up_reader, writer, "back")),
            ]
            await asyncio.wait(conn.tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            conn.abort()
            self._conns.discard(conn)
            self._stats.open -= 1

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str
    ) -> None:
        """Copy one direction, applying the link's mode and delay chunk by chunk."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer))
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._flowing.wait()  # blackholed: stop reading, TCP pushes back
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    return
                if not data:
                    return  # EOF: the whole connection ends (no half-close for /raft)
                if way == "forward":
                    self._stats.bytes_forward += len(data)
                else:
                    self._stats.bytes_back += len(data)
                queue.put_nowait((loop.time() + self._delay, data))
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    async def _send(
        self, queue: asyncio.Queue[tuple[float, bytes]], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._flowing.wait()
            if self._mode is Mode.REFUSE:
                self._stats.bytes_dropped += len(data)
                continue
            writer.write(data)
            try:
                await writer.drain()
            except (ConnectionError, OSError):
                return


class Net:
    """The full mesh of links between ``ports`` (node id -> real port).

    ``net.overrides(a)`` is the ``--peer-overrides`` value that routes every
    link from ``a`` through its proxy.
    """

    def __init__(self, ports: dict[str, int]) -> None:
        self.ids = list(ports)
        self._loop = ProxyLoop()
        self.links: dict[tuple[str, str], Link] = {}
        for a in self.ids:
            for b in self.ids:
                if a != b:
                    self.links[a, b] = Link(self._loop, ports[b], name=f"{a}->{b}")

    def link(self, a: str, b: str) -> Link:
        return self.links[a, b]

    def overrides(self, node_id: str) -> str:
        return ",".join(
            f"{b}={link.address}" for (a, b), link in self.links.items() if a == node_id
        )

    # -- faults ---------------------------------------------------------------
    def partition(self, groups: Sequence[Iterable[str]], blackhole: bool = False) -> None:
        """Cut every link between nodes of different groups (both ways); heal the others.

        A node named in no group is on its own.
        """
        group_of: dict[str, int] = {}
        for n, group in enumerate(groups):
            for node_id in group:
                group_of[node_id] = n
        for (a, b), link in self.links.items():
            if group_of.get(a, f"alone {a}") == group_of.get(b, f"alone {b}"):
                link.unblock()
            elif blackhole:
                link.blackhole()
            else:
                link.block()

    def isolate(self, node_id: str, blackhole: bool = False) -> None:
        self.partition([[node_id], [n for n in self.ids if n != node_id]], blackhole=blackhole)

    def one_way(self, a: str, b: str) -> None:
        """Cut only what ``a`` sends to ``b``."""
        self.links[a, b].block()

    def cut(self, a: str, b: str) -> None:
        """Cut both directions between ``a`` and ``b``."""
        self.links[a, b].block()
        self.links[b, a].block()

    def delay(self, ms: float, links: Iterable[tuple[str, str]] | None = None) -> None:
        for key in links if links is not None else self.links:
            self.links[key].delay(ms)

    def heal(self) -> None:
        for link in self.links.values():
            link.unblock()
            link.delay(0)

    def stats(self) -> dict[str, Any]:
        return {f"{a}->{b}": link.stats for (a, b), link in self.links.items()}

    def close(self) -> None:
        for link in self.links.values():
            with contextlib.suppress(Exception):
                link.close()
        self._loop.close()

    def __enter__(self) -> Net:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
