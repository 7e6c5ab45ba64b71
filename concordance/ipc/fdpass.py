"""Handing accepted peer connections from the front to consensus (``SCM_RIGHTS``).

Why a Unix socket of its own: ZeroMQ cannot carry file descriptors. This
channel carries descriptors only, one per datagram with one byte saying
``P`` (plain) or ``T`` (TLS); the roles' messages stay on ZeroMQ
(docs/PROTOCOL.md §6). ``SOCK_SEQPACKET`` keeps each descriptor with its
byte. consensus binds (:class:`FdReceiver`), the front connects
(:class:`FdSender`), lazily and again after any error.

The socket lives in the node's private run directory (``ipc_paths.run_dir``:
0700, owned by the node's user, checked), beside the role sockets, so no other
local user can connect to it and pass consensus a connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from concordance.ipc.paths import run_dir

__all__ = ["PLAIN", "TLS", "FdReceiver", "FdSender", "socket_path"]

log = logging.getLogger(__name__)

PLAIN = b"P"
TLS = b"T"
PER_TURN = 64  # descriptors taken per readiness callback, so a flood cannot starve the loop

Handler = Callable[[socket.socket, bytes], None]


def socket_path(data_dir: str | os.PathLike[str]) -> Path:
    """``{run_dir}/peer-fds.sock`` (the one place that names it).

    Raises:
        UnsafeRunDir: the run directory is not private to us.
    """
    return run_dir(data_dir) / "peer-fds.sock"


class FdSender:
    """The front's end: sends a connection's descriptor to consensus, or says it could not."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self.sent = 0
        self.failed = 0

    def send(self, conn: socket.socket, kind: bytes) -> bool:
        """Hand ``conn`` over (the caller closes its copy either way); False if consensus
        is not there. Never blocks: a full channel counts as not there."""
        for attempt in range(2):  # a stale connection (consensus restarted) gets one redial
            try:
                sock = self._connected()
                socket.send_fds(sock, [kind], [conn.fileno()], socket.MSG_DONTWAIT)
            except OSError as e:
                self.close()
                if attempt or isinstance(e, BlockingIOError | FileNotFoundError):
                    self.failed += 1
                    log.debug("cannot hand a peer connection to consensus: %s", e)
                    return False
                continue
            self.sent += 1
            return True
        return False  # pragma: no cover - the loop returns

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                sock.setblocking(False)
                sock.connect(str(self.path))
            except OSError:
                sock.close()
                raise
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class FdReceiver:
    """consensus's end: binds the socket, accepts fronts, passes each descriptor to ``handler``.

    ``handler(conn, kind)`` owns ``conn`` from then on. Runs on the loop's
    readers (no task per front).
    """

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self.received = 0
        self._fronts: list[socket.socket] = []
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a crashed consensus left it; only one consensus runs per node
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.setblocking(False)
        old = os.umask(0o177)
        try:
            self._listener.bind(str(path))
        finally:
            os.umask(old)
        self._listener.listen(8)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._listener.fileno(), self._accept)

    def _accept(self) -> None:
        try:
            front, _ = self._listener.accept()
        except OSError:
            return
        front.setblocking(False)
        self._fronts.append(front)
        self._loop.add_reader(front.fileno(), self._receive, front)

    def _receive(self, front: socket.socket) -> None:
        for _ in range(PER_TURN):
            try:
                data, fds, _flags, _addr = socket.recv_fds(front, 1, 4)
            except BlockingIOError:
                return
            except OSError as e:
                log.debug("a front's hand-over socket failed: %s", e)
                data, fds = b"", []
            if not data:  # the front went away
                for fd in fds:
                    os.close(fd)
                self._drop(front)
                return
            for extra in fds[1:]:
                os.close(extra)
            if not fds:
                continue
            self.received += 1
            try:
                self.handler(socket.socket(fileno=fds[0]), data[:1])
            except Exception:
                log.exception("cannot take a handed-over peer connection")

    def _drop(self, front: socket.socket) -> None:
        self._loop.remove_reader(front.fileno())
        self._fronts.remove(front)
        front.close()

    def close(self) -> None:
        for front in list(self._fronts):
            self._drop(front)
        self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
