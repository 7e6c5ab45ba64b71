"""The front keeper: what supervisord runs as the node's ``front`` program.

Why a keeper: a planned restart of the front must not refuse or drop a single
client connection. The keeper binds the node's port once and runs the front
server (``procs.front``) as its child, which inherits the listening socket. A
hand-over (SIGUSR2) starts a second front on the same socket, waits until it
serves, then sends the old one SIGTERM: it stops accepting, tells its
WebSocket clients ``watch/cancelled`` (``shutdown``, they resume elsewhere),
finishes the requests in flight and exits. Both fronts accept from the one
kernel queue, so a connection that arrives meanwhile is taken by one of them.
(Two sockets bound side by side with ``SO_REUSEPORT`` each have their own
queue, and the connections queued on the one that closes are reset; the
socket still sets ``SO_REUSEPORT`` so that a new keeper can bind while a
wedged old front lingers.)

Signals: SIGTERM/SIGINT stop (passed to the fronts; exit once they are gone);
SIGHUP is passed to the serving front (it reloads keys and TLS); SIGUSR2
hands over. Exit status: 0 after a requested stop, the serving front's status
when it ends on its own (supervisord then restarts the keeper, the front with
it), 2 for an unusable configuration.

``{data}/run/front.pid`` holds the serving front's pid, written once it
serves and the front before it stopped accepting: ``concordance ctl`` and the
restart API wait for it to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from concordance import config, environment
from concordance.node import supervise
from concordance.timing import FRONT_READY_TIMEOUT, KEEPER_STOP_TIMEOUT
from procs._launch import load_and_log

log = logging.getLogger("procs.front_keeper")

BACKLOG = 1024
LISTEN_FD_ENV = "CONCORDANCE_LISTEN_FD"  # the inherited listening socket (procs.front)
READY_FD_ENV = "CONCORDANCE_READY_FD"  # the pipe a front says it serves on, closes when it stops


def bind(listen: str) -> socket.socket:
    """The node's listening socket, inheritable by the fronts."""
    host, port = config.parse_address(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


class Keeper:
    """Runs one serving front, and a second one for the length of a hand-over."""

    def __init__(self, data_dir: str, sock: socket.socket) -> None:
        self.data_dir = data_dir
        self.sock = sock
        self.serving: asyncio.subprocess.Process | None = None
        self.children: set[asyncio.subprocess.Process] = set()
        self.stopping = False
        self.handing_over = False
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._watchers: set[asyncio.Task[None]] = set()
        self._pipes: dict[asyncio.subprocess.Process, int] = {}  # a serving front's pipe

    async def start(self) -> None:
        """Start the first front; the keeper fails if it never serves."""
        child, ready = await self._spawn()
        if not await self._ready(child, ready):
            await self._end(child)
            raise RuntimeError("the front did not start serving")
        self.serving = child
        self._record(child)

    async def hand_over(self) -> None:
        """Start a new front beside the serving one, then stop the old one."""
        if self.handing_over or self.stopping:
            log.info("hand-over already under way or stopping: ignored")
            return
        self.handing_over = True
        try:
            log.info("hand-over: starting a new front")
            child, ready = await self._spawn()
            if not await self._ready(child, ready):
                log.error("hand-over abandoned: the new front did not serve; the old one goes on")
                await self._end(child)
                return
            old, self.serving = self.serving, child
            if old is not None and old.returncode is None:
                log.info("hand-over: front %d serves; stopping front %d", child.pid, old.pid)
                old.send_signal(signal.SIGTERM)
                await self._not_accepting(old)
            self._record(child)
        finally:
            self.handing_over = False

    def stop(self) -> None:
        """Stop every front; ``done`` resolves (0) once they are gone."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping %d front(s)", len(self.children))
        for child in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
        if not self.children and not self.done.done():
            self.done.set_result(0)

    def reload(self) -> None:
        if self.serving is not None and self.serving.returncode is None:
            self.serving.send_signal(signal.SIGHUP)

    def _record(self, child: asyncio.subprocess.Process) -> None:
        """Write ``run/front.pid``: what ``ctl`` and the restart API wait for."""
        tmp = supervise.front_pid_path(self.data_dir).with_suffix(".tmp")
        tmp.write_text(f"{child.pid}\n")
        tmp.replace(supervise.front_pid_path(self.data_dir))

    async def _spawn(self) -> tuple[asyncio.subprocess.Process, int]:
        """A new front on the socket, and the read end of the pipe it says "ready" on."""
        read_end, write_end = os.pipe()
        env = environment.child_env(
            {LISTEN_FD_ENV: str(self.sock.fileno()), READY_FD_ENV: str(write_end)}
        )
        try:
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "procs.front",
                "--data",
                self.data_dir,
                env=env,
                pass_fds=(self.sock.fileno(), write_end),
            )
        finally:
            os.close(write_end)  # the child holds it now: EOF here means it died
        self.children.add(child)
        task = asyncio.ensure_future(self._watch(child))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return child, read_end

    async def _ready(self, child: asyncio.subprocess.Process, read_end: int) -> bool:
        """Whether ``child`` says it serves (one byte on ``read_end``'s pipe) before it
        dies (EOF) or ``FRONT_READY_TIMEOUT`` passes. A front that serves keeps the pipe
        open until it stops accepting (``_not_accepting``); otherwise it is closed."""
        said = await self._read(read_end, FRONT_READY_TIMEOUT)
        if said:
            self._pipes[child] = read_end
        else:
            os.close(read_end)
        return bool(said)

    async def _not_accepting(self, child: asyncio.subprocess.Process) -> None:
        """Wait until ``child`` closed its pipe (it stopped accepting, or died), at
        most ``KEEPER_STOP_TIMEOUT``: a restart is reported done only after it."""
        read_end = self._pipes.pop(child, None)
        if read_end is None:
            return
        try:
            if await self._read(read_end, KEEPER_STOP_TIMEOUT) != b"":
                log.warning("front %d did not say it stopped accepting", child.pid)
        finally:
            os.close(read_end)

    @staticmethod
    async def _read(fd: int, timeout: float) -> bytes | None:
        """One byte from ``fd`` (``b""`` at end of file), or None after ``timeout``."""
        loop = asyncio.get_running_loop()
        said: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            if not said.done():
                try:
                    said.set_result(os.read(fd, 1))
                except OSError:
                    said.set_result(b"")

        loop.add_reader(fd, readable)
        try:
            return await asyncio.wait_for(said, timeout)
        except TimeoutError:
            return None
        finally:
            loop.remove_reader(fd)

    async def _end(self, child: asyncio.subprocess.Process) -> None:
        """Stop a front that never served: SIGTERM, then SIGKILL after ``KEEPER_STOP_TIMEOUT``."""
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.wait(), KEEPER_STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()

    async def _watch(self, child: asyncio.subprocess.Process) -> None:
        code = await child.wait()
        self.children.discard(child)
        if child is not self.serving and (fd := self._pipes.pop(child, None)) is not None:
            os.close(fd)
        if self.stopping:
            if not self.children and not self.done.done():
                self.done.set_result(0)
        elif child is self.serving:
            log.error("the serving front %d exited (%d): the keeper exits too", child.pid, code)
            if not self.done.done():
                self.done.set_result(code if code > 0 else 1)  # a signal is a failure too
            self.stop()
        else:
            log.info("front %d exited (%d)", child.pid, code)


async def run(data_dir: str, listen: str) -> int:
    sock = bind(listen)
    keeper = Keeper(data_dir, sock)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, keeper.stop)
    loop.add_signal_handler(signal.SIGHUP, keeper.reload)
    handing: set[asyncio.Task[None]] = set()

    def hand_over() -> None:
        task = loop.create_task(keeper.hand_over())
        handing.add(task)
        task.add_done_callback(handing.discard)

    loop.add_signal_handler(signal.SIGUSR2, hand_over)
    try:
        await keeper.start()
    except RuntimeError as e:
        log.error("%s", e)
        return 1
    assert keeper.serving is not None
    log.info("front keeper on %s: front %d serves", listen, keeper.serving.pid)
    status = await keeper.done
    for task in handing:
        task.cancel()
    sock.close()
    return status


def main(argv: list[str] | None = None) -> int:
    cfg = load_and_log("procs.front_keeper", "front", argv)  # logs as the front role
    if isinstance(cfg, int):
        return cfg
    supervise.die_with_parent()
    try:
        return asyncio.run(run(cfg.data_dir, cfg.listen))
    except OSError as e:
        log.error("cannot serve on %s: %s", cfg.listen, e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
