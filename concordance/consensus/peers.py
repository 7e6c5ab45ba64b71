"""consensus's peer links: outgoing queues and dials, incoming handed-over connections.

Why it is shaped like this (etcd's rafthttp is the model): Raft tolerates
lost, late and duplicated messages, but not a node that stalls because one
peer is down. So each peer gets its own outgoing link (one task, one
connection) with a bounded queue; :meth:`PeerNet.send` never waits, and a
dead or slow peer costs only its own queue. The wire is
``concordance.protocol.peerwire`` (docs/PROTOCOL.md §6).

**Bounded by frames and by bytes.** A queue holds at most ``queue_limit``
frames and ``queue_bytes`` bytes; beyond either the OLDEST frames go first
(newer Raft messages supersede older ones; the leader retransmits what is
still missing). The newest frame is always kept, so a large snapshot chunk
still goes out.

**Stale frames are dropped, not replayed.** A frame that waited longer
than ``stale_after`` (an election timeout) for a connection is dropped when
the link is next used or connects: the cluster has moved on by then.

**The fast path writes at once.** On a connected link with nothing queued
and room in the socket's buffer, a send is written to the transport in the
caller's turn (no task switch on a write's path); otherwise frames queue and
the link's task writes them once the buffer drains.

**Everything has a bound.** Connect, TLS, hello and welcome together take at
most ``HANDSHAKE_TIMEOUT``; both ends send a keepalive after ``PEER_KEEPALIVE``
seconds without sending and close a connection silent for ``PEER_DEAD_AFTER``
(a dead host, a black hole); a link redials with exponential backoff capped
at ``BACKOFF_MAX``.

**Incoming connections** come from the front (``concordance.ipc.fdpass``), not
yet past TLS or the hello: they get the same bounds, and no Raft frame is
read before the hello passed (right version, this node, the cluster key).
Frames are handed to ``deliver`` undecoded. What this node has for a peer
it knows no address of (a ``--join`` node before the membership reaches it)
goes back on that peer's incoming connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl as ssl_
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.config import NodeConfig, parse_address
from concordance.errors import RemoteProtocolError
from concordance.ipc import fdpass
from concordance.protocol import peerwire
from concordance.security.tls import TlsContexts
from concordance.timing import PEER_DEAD_AFTER, PEER_KEEPALIVE

__all__ = ["Deliver", "PeerCounters", "PeerNet", "PeerTransport", "peer_net"]

log = logging.getLogger("concordance.consensus.peers")

QUEUE_LIMIT = 1024  # frames per peer
QUEUE_BYTES = 8 << 20  # bytes per peer (the newest frame is kept even if larger)
HIGH_WATER = 1 << 20  # transport buffer above which sends queue instead of writing
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
STABLE = 1.0  # seconds a connection must last for the backoff to start over
HANDSHAKE_TIMEOUT = 2.0  # connect + TLS + hello + welcome
READ_SIZE = 1 << 16
RELOAD_CHECK = 1.0  # seconds between two looks at the TLS files' modification times

Deliver = Callable[[bytes], None]


class PeerTransport(Protocol):
    """What the driver needs of its peer links (:class:`PeerNet`; tests pass an
    in-memory one that joins several drivers in one process)."""

    unroutable: int
    refused: int

    def send(self, peer: str, address: str, frames: list[bytes]) -> None: ...

    def accept(self, conn: socket.socket, kind: bytes) -> None: ...

    def counters(self) -> list[PeerCounters]: ...

    def reload(self) -> bool: ...

    def dial(self, addresses: Mapping[str, str]) -> None: ...

    def drain(self) -> None: ...

    def drained(self) -> bool: ...

    async def close(self, flush: float = 0.0) -> None: ...


@dataclass(frozen=True, slots=True)
class PeerCounters:
    """One peer's outgoing link, as ``status`` reports it."""

    peer: str
    connected: bool
    queued_bytes: int
    dropped_full: int
    dropped_stale: int


class _Conn:
    """One established connection (either direction): reads frames, writes frames, keeps alive."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        frames: peerwire.FrameReader,
        clock: Clock,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = frames
        self.clock = clock
        self.sent_at = self.received_at = clock.monotonic()

    def write(self, frames: Iterable[bytes]) -> None:
        self.writer.write(b"".join(peerwire.encode_frame(f) for f in frames))
        self.sent_at = self.clock.monotonic()

    def write_raw(self, data: bytes) -> None:
        self.writer.write(data)
        self.sent_at = self.clock.monotonic()

    def buffered(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    async def read_frames(self, deliver: Deliver) -> bool:
        """Hand every Raft frame to ``deliver`` until the connection ends (False) or
        the other end asks for a drain (True: nothing follows it)."""
        frames = self.frames
        frames.limit = peerwire.MAX_FRAME
        while True:
            data = await self.reader.read(READ_SIZE)
            if not data:
                return False
            self.received_at = self.clock.monotonic()
            for frame in frames.feed(data):
                if not frame:
                    continue
                if peerwire.is_drain(frame):
                    return True
                deliver(frame)

    async def keep_alive(self) -> None:
        """Send keepalives; close the connection once the other end went silent."""
        while True:
            await self.clock.sleep(PEER_KEEPALIVE / 2)
            now = self.clock.monotonic()
            if now - self.received_at > PEER_DEAD_AFTER:
                raise TimeoutError(f"nothing received for {PEER_DEAD_AFTER:.0f}s")
            if now - self.sent_at >= PEER_KEEPALIVE:
                self.write((b"",))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()


async def _first_frames(
    conn_reader: asyncio.StreamReader, frames: peerwire.FrameReader
) -> list[bytes]:
    """The frames of the first read that completes one (the handshake frame first)."""
    while True:
        data = await conn_reader.read(READ_SIZE)
        if not data:
            raise ConnectionError("closed during the handshake")
        got = frames.feed(data)
        if got:
            return got


class _Link:
    """The outgoing connection to one peer, and its queue."""

    def __init__(self, net: PeerNet, peer: str, address: str) -> None:
        self.peer = peer
        self.address = address
        self.queue: deque[bytes] = deque()
        self._stamps: deque[float] = deque()
        self.queued_bytes = 0
        self.dropped_full = 0
        self.dropped_stale = 0
        self.conn: _Conn | None = None
        self.drained = False  # the last session ended on the peer's drain
        self._net = net
        self._wake = asyncio.Event()
        self._poked = asyncio.Event()
        self._dial = False  # connect even with nothing queued (:meth:`dial`)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"peer {peer}")

    def counters(self) -> PeerCounters:
        connected = self.conn is not None
        return PeerCounters(
            self.peer, connected, self.queued_bytes, self.dropped_full, self.dropped_stale
        )

    def enqueue(self, frames: list[bytes]) -> None:
        conn = self.conn
        if conn is not None and not self.queue and conn.buffered() < HIGH_WATER:
            conn.write(frames)  # the fast path: in this turn, no task switch
            return
        now = self._net.clock.monotonic()
        if conn is None:
            self._expire(now)
        for frame in frames:
            self.queue.append(frame)
            self._stamps.append(now)
            self.queued_bytes += len(frame)
        net = self._net
        while len(self.queue) > 1 and (
            len(self.queue) > net.queue_limit or self.queued_bytes > net.queue_bytes
        ):
            self._pop()
            self.dropped_full += 1
        self._wake.set()

    def dial(self) -> None:
        """Connect now, frames or not (a consensus that just started)."""
        self._dial = True
        self._wake.set()

    def poke(self) -> None:
        """The peer just dialled us, so its consensus is up: cut a backoff short."""
        self._poked.set()

    def _pop(self) -> bytes:
        frame = self.queue.popleft()
        self._stamps.popleft()
        self.queued_bytes -= len(frame)
        return frame

    def _expire(self, now: float) -> None:
        limit = now - self._net.stale_after
        n = 0
        while self._stamps and self._stamps[0] <= limit:
            self._pop()
            n += 1
        if n:
            self.dropped_stale += n
            log.debug("peer %s: dropped %d stale frame(s)", self.peer, n)

    async def _run(self) -> None:
        clock = self._net.clock
        backoff = BACKOFF_MIN
        while True:
            self._expire(clock.monotonic())
            while not self.queue and not self._dial:
                self._wake.clear()
                await self._wake.wait()
            self._dial = False
            started = clock.monotonic()
            try:
                await self._session()
                why = "closed"
            except (OSError, TimeoutError, RemoteProtocolError, ssl_.SSLError) as e:
                why = str(e) or type(e).__name__
            except Exception:  # a link must outlive any bug in one session
                log.exception("peer %s at %s: session failed", self.peer, self.address)
                why = "failed"
            if self.drained:  # the peer's consensus is stopping: dial its successor now
                self.drained = False
                backoff = BACKOFF_MIN
            elif clock.monotonic() - started > STABLE:
                backoff = BACKOFF_MIN
            log.debug("peer %s at %s: %s; retrying in %.2fs", self.peer, self.address, why, backoff)
            self._poked.clear()
            with contextlib.suppress(TimeoutError):
                async with clock.timeout(backoff):
                    await self._poked.wait()  # the peer dialled us: it is back, dial now
            backoff = BACKOFF_MIN if self._poked.is_set() else min(backoff * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        net = self._net
        net._follow_files()
        host, port = parse_address(self.address)
        async with net.clock.timeout(HANDSHAKE_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=net.tls.client if net.tls is not None else None,
                server_hostname=host if net.tls is not None else None,
                limit=READ_SIZE,
            )
            try:
                hello = peerwire.Hello(net.node_id, self.peer, net.key or "")
                writer.write(peerwire.encode_hello(hello))
                frames = peerwire.FrameReader(peerwire.HELLO_MAX)
                first = await _first_frames(reader, frames)
                peerwire.read_welcome(first[0], self.peer)
            except BaseException:
                writer.close()
                raise
        conn = _Conn(reader, writer, frames, net.clock)
        for frame in first[1:]:
            if frame:
                net.deliver(frame)
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(self._read(conn), name=f"peer {self.peer} reader"),
            loop.create_task(self._write(conn), name=f"peer {self.peer} writer"),
            loop.create_task(conn.keep_alive(), name=f"peer {self.peer} keepalive"),
        ]
        self._expire(net.clock.monotonic())  # what waited through a long handshake is stale too
        self.conn = conn
        log.debug("peer %s at %s: connected", self.peer, self.address)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            self.conn = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await conn.close()

    async def _read(self, conn: _Conn) -> None:
        if await conn.read_frames(self._net.deliver):
            # The peer's consensus is stopping: all we wrote so far reaches it (our
            # close comes after, in order); what is still queued waits for the next.
            self.drained = True
            log.debug("peer %s at %s: drained", self.peer, self.address)

    async def _write(self, conn: _Conn) -> None:
        while True:
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            batch: list[bytes] = []
            size = 0
            while self.queue and (not batch or size < HIGH_WATER):
                frame = self._pop()
                batch.append(frame)
                size += len(frame)
            conn.write(batch)
            await conn.writer.drain()

    async def flush(self, deadline: float) -> None:
        clock = self._net.clock
        while clock.monotonic() < deadline and self.conn is not None and self.queue:
            await clock.sleep(0.01)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class PeerNet:
    """Every peer link of this node's consensus.

    Args:
        node_id: this node (said in every hello).
        key: the cluster key presented and demanded (None: an insecure node without one).
        deliver: takes each Raft frame received, undecoded (on the loop; must not block).
        stale_after: seconds a frame may wait for a connection (an election timeout).
        overrides: peer id -> the address to dial instead of the membership's
            (``--peer-overrides``: NAT, tunnels, fault-injecting proxies).
        tls: a TLS node's peer contexts (``TlsContexts(cfg, alpn=peerwire.ALPN)``),
            read at every dial and accept (a reload may replace them); None on a
            plain node.
    """

    def __init__(
        self,
        node_id: str,
        key: str | None,
        deliver: Deliver,
        *,
        stale_after: float,
        overrides: Mapping[str, str] | None = None,
        tls: TlsContexts | None = None,
        queue_limit: int = QUEUE_LIMIT,
        queue_bytes: int = QUEUE_BYTES,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.node_id = node_id
        self.key = key
        self.deliver = deliver
        self.stale_after = stale_after
        self.overrides = dict(overrides or {})
        self.queue_limit = queue_limit
        self.queue_bytes = queue_bytes
        self.clock = clock
        self.tls = tls  # reloaded on SIGHUP or a file change
        self._tls_stamp: tuple[float, ...] = _stamp(tls) if tls is not None else ()
        self._tls_checked = -RELOAD_CHECK
        self.links: dict[str, _Link] = {}
        self.incoming: dict[str, _Conn] = {}  # the newest incoming connection of each peer
        self._open: set[_Conn] = set()  # every incoming connection past its hello
        self.unroutable = 0
        self.refused = 0  # incoming connections refused (handshake, key, wrong kind)
        self.draining = False  # a planned stop: incoming links asked to close, no new ones
        self._serving: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ outgoing
    def send(self, peer: str, address: str, frames: list[bytes]) -> None:
        """Queue ``frames`` for ``peer`` (never waits)."""
        address = self.overrides.get(peer) or address
        if not address:
            back = self.incoming.get(peer)
            if back is not None and back.buffered() < HIGH_WATER:
                back.write(frames)
            else:
                self.unroutable += len(frames)
            return
        link = self.links.get(peer)
        if link is not None and link.address != address:
            log.info("peer %s moved from %s to %s", peer, link.address, address)
            self._spawn(link.close())
            link = None
        if link is None:
            link = self.links[peer] = _Link(self, peer, address)
        link.enqueue(frames)

    def dial(self, addresses: Mapping[str, str]) -> None:
        """Open links to these peers now, with nothing to send yet (at start): a
        peer that sees us dial ends its own backoff towards us (a restarted
        consensus would otherwise wait for the peers' redials, up to
        ``BACKOFF_MAX``, before it hears from its leader)."""
        for peer, address in sorted(addresses.items()):
            address = self.overrides.get(peer) or address
            if peer == self.node_id or not address or peer in self.links:
                continue
            link = self.links[peer] = _Link(self, peer, address)
            link.dial()

    def counters(self) -> list[PeerCounters]:
        return [link.counters() for _, link in sorted(self.links.items())]

    # ------------------------------------------------------------------ incoming
    def accept(self, conn: socket.socket, kind: bytes) -> None:
        """Take a connection the front handed over (``fdpass``); this net owns it now."""
        want = fdpass.TLS if self.tls is not None else fdpass.PLAIN
        if self.draining:  # stopping: the dialler comes back to the successor
            conn.close()
            return
        if kind != want:
            self.refused += 1
            log.warning("refusing a %s peer connection on a %s node", kind, want)
            conn.close()
            return
        self._spawn(self._serve(conn))

    async def _serve(self, sock: socket.socket) -> None:
        self._follow_files()
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        reader = asyncio.StreamReader(limit=READ_SIZE)
        protocol = asyncio.StreamReaderProtocol(reader)
        transport: asyncio.BaseTransport | None = None
        try:
            async with self.clock.timeout(HANDSHAKE_TIMEOUT):
                transport, _ = await loop.connect_accepted_socket(
                    lambda: protocol, sock, ssl=self.tls.server if self.tls is not None else None
                )
                writer = asyncio.StreamWriter(transport, protocol, reader, loop)
                frames = peerwire.FrameReader(peerwire.HELLO_MAX)
                frames.expect_preface()
                try:
                    first = await _first_frames(reader, frames)
                    hello = peerwire.check_hello(first[0], self.node_id, self.key)
                except RemoteProtocolError as e:
                    self.refused += 1
                    log.warning("refusing a peer connection: %s", e)
                    with contextlib.suppress(Exception):
                        writer.write(peerwire.encode_refused(str(e)))
                    writer.close()
                    return
                writer.write(peerwire.encode_welcome(self.node_id))
        except (OSError, TimeoutError, ssl_.SSLError) as e:
            self.refused += 1
            log.info("an incoming peer connection failed its handshake: %s", e or type(e).__name__)
            if transport is not None:
                transport.close()
            else:
                sock.close()
            return
        peer = hello.src
        link = self.links.get(peer)
        if link is not None:
            link.poke()  # its consensus is (back) up: our link to it need not wait
        conn = _Conn(reader, writer, frames, self.clock)
        for frame in first[1:]:  # a dialler sends none before our welcome; tolerate it
            if frame:
                self.deliver(frame)
        self.incoming[peer] = conn
        self._open.add(conn)
        tasks = [
            loop.create_task(conn.read_frames(self.deliver), name=f"from {peer}"),
            loop.create_task(conn.keep_alive(), name=f"from {peer} keepalive"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        except (OSError, TimeoutError, RemoteProtocolError, ssl_.SSLError) as e:
            log.debug("incoming link from %s ended: %s", peer, e)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.incoming.get(peer) is conn:
                del self.incoming[peer]
            self._open.discard(conn)
            await conn.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    def drain(self) -> None:
        """A planned stop: ask every incoming link's dialler to stop sending and close
        its side (it dials again, reaching the successor), and take no new ones.
        Frames keep being delivered until each dialler's close: a forwarded
        proposal among them is refused, not lost with this process."""
        self.draining = True
        for conn in self._open:
            with contextlib.suppress(Exception):
                conn.write_raw(peerwire.encode_drain())

    def drained(self) -> bool:
        """Whether every incoming link closed after :meth:`drain`."""
        return not self._open

    # ------------------------------------------------------------------ lifecycle
    def reload(self) -> bool:
        """SIGHUP: read the certificate and key again (new connections use them)."""
        if self.tls is None:
            return True
        self._tls_stamp = _stamp(self.tls)
        return self.tls.reload()

    def _follow_files(self) -> None:
        """Reload when the certificate or key file changed (looked at most every
        ``RELOAD_CHECK`` seconds, before a dial or an accept): the API's SIGHUP goes
        to the front only (API.md §1), and the peer links must follow it."""
        if self.tls is None:
            return
        now = self.clock.monotonic()
        if now - self._tls_checked < RELOAD_CHECK:
            return
        self._tls_checked = now
        stamp = _stamp(self.tls)
        if stamp != self._tls_stamp:
            self._tls_stamp = stamp
            self.tls.reload()

    async def close(self, flush: float = 0.0) -> None:
        """Close every link and incoming connection, first giving connected links up to
        ``flush`` seconds to send what they queued."""
        deadline = self.clock.monotonic() + flush
        await asyncio.gather(*(link.flush(deadline) for link in self.links.values()))
        links = list(self.links.values())
        self.links.clear()
        await asyncio.gather(*(link.close() for link in links))
        for task in list(self._serving):
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)


def peer_net(cfg: NodeConfig, deliver: Deliver, clock: Clock = SYSTEM_CLOCK) -> PeerNet:
    """The peer links of ``cfg``'s node (TLS contexts loaded from its files on a TLS node).

    Raises:
        ConfigError: a certificate, key or CA file cannot be loaded.
    """
    tls = TlsContexts(cfg, alpn=peerwire.ALPN) if cfg.tls else None
    net = PeerNet(
        cfg.node_id,
        cfg.secrets.peer_key,
        deliver,
        stale_after=cfg.tick_ms * cfg.election_ticks / 1000,  # one election timeout
        overrides=cfg.peer_overrides,
        tls=tls,
        clock=clock,
    )
    return net


def _stamp(tls: TlsContexts) -> tuple[float, ...]:
    """The certificate's and key's modification times (0 for a missing file)."""
    stamps = []
    for path in (tls.cert, tls.key):
        try:
            stamps.append(os.stat(path).st_mtime)
        except OSError:
            stamps.append(0.0)
    return tuple(stamps)
