"""The role keeper: what supervisord runs as the node's ``storage`` and ``consensus`` programs.

Why a keeper: a planned restart of storage or consensus holds the front's
requests from the old process's ``stopping`` until the new one serves, and
most of that time was the new process's start-up (an interpreter and the
imports: 0.3 s on an idle machine, over a second on a busy one). Two copies
of these roles cannot run at once (one binds the socket, one owns the
database), so the keeper does the next best thing, as the front keeper
(``procs/front_keeper.py``) does for the front: a restart (SIGUSR2) starts the
successor first and lets it import everything, and only then stops the old
process (SIGTERM: its graceful stop) and, the moment it is gone, tells the
successor to go on (bind, open its database, serve).

The successor protocol (``procs/_launch.py``): the keeper passes two pipes.
The child writes one byte on ``CONCORDANCE_ROLE_READY_FD`` once its imports
are done, then blocks reading ``CONCORDANCE_ROLE_GO_FD``: one byte means run,
end of file (the keeper gave up on it, or died) means exit 0 without touching
anything. A child run by the keeper dies with it by SIGKILL (a ``kill -9`` of
the keeper is a crash of the role, as before).

Signals: SIGTERM/SIGINT stop (passed to the child; exit once it is gone);
SIGUSR2 restarts as above. Exit status: 0 after a requested stop, the child's
status when it ends on its own (supervisord then restarts the keeper, and the
role with it), 2 for an unusable configuration.

``{data}/run/{role}.pid`` holds the serving child's pid, written when it is
told to go: ``concordance ctl``, the restart API and ``/cluster/status`` use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from concordance import environment
from concordance.node import supervise
from concordance.timing import KEEPER_STOP_TIMEOUT, ROLE_READY_TIMEOUT
from procs._launch import GO_FD_ENV, ROLE_READY_FD_ENV, load_and_log

log = logging.getLogger("procs.role_keeper")

KEPT = ("storage", "consensus")


class Child:
    """One role process and the keeper's ends of its two pipes."""

    def __init__(self, proc: asyncio.subprocess.Process, ready: int, go: int) -> None:
        self.proc = proc
        self.ready = ready  # read: one byte once imported
        self.go = go  # write: one byte to run; closed: exit

    def close_pipes(self) -> None:
        for fd in (self.ready, self.go):
            with contextlib.suppress(OSError):
                os.close(fd)


class RoleKeeper:
    """Runs one serving role process, and its successor for the length of a restart."""

    def __init__(self, data_dir: str, role: str) -> None:
        self.data_dir = data_dir
        self.role = role
        self.serving: Child | None = None
        self.children: set[Child] = set()
        self.stopping = False
        self.restarting = False
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._watchers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Start the first process; the keeper fails if it never gets through its imports."""
        child = await self._spawn()
        if not await self._imported(child):
            await self._end(child)
            raise RuntimeError(f"the {self.role} process did not start")
        self._go(child)

    async def restart(self) -> None:
        """Import a successor, stop the serving process, let the successor go on."""
        if self.restarting or self.stopping:
            log.info("restart already under way or stopping: ignored")
            return
        self.restarting = True
        try:
            log.info("restart: starting the next %s process", self.role)
            child = await self._spawn()
            if not await self._imported(child):
                log.error("restart abandoned: the next process did not start; the old one goes on")
                await self._end(child)
                return
            old = self.serving
            if old is not None:
                log.info("restart: %d imported; stopping %d", child.proc.pid, old.proc.pid)
                await self._end(old)
            if self.stopping:  # asked to stop meanwhile: the successor never runs
                await self._end(child)
                return
            self._go(child)
        finally:
            self.restarting = False

    def stop(self) -> None:
        """Stop every child; ``done`` resolves (0) once they are gone."""
        if self.stopping:
            return
        self.stopping = True
        log.info("stopping %d %s process(es)", len(self.children), self.role)
        for child in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        if not self.children and not self.done.done():
            self.done.set_result(0)

    def _go(self, child: Child) -> None:
        """Let ``child`` run, and record it as the serving one."""
        os.write(child.go, b"1")
        self.serving = child
        supervise.record_serving(self.data_dir, self.role, child.proc.pid)
        log.info("%s process %d serves", self.role, child.proc.pid)

    async def _spawn(self) -> Child:
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        env = environment.child_env({ROLE_READY_FD_ENV: str(ready_w), GO_FD_ENV: str(go_r)})
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"procs.{self.role}",
                "--data",
                self.data_dir,
                env=env,
                pass_fds=(ready_w, go_r),
            )
        except BaseException:
            for fd in (ready_r, go_w):
                os.close(fd)
            raise
        finally:
            for fd in (ready_w, go_r):  # the child holds them now: EOF means it died
                os.close(fd)
        child = Child(proc, ready_r, go_w)
        self.children.add(child)
        task = asyncio.ensure_future(self._watch(child))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return child

    async def _imported(self, child: Child) -> bool:
        """Whether ``child`` says its imports are done before it dies or ``ROLE_READY_TIMEOUT``."""
        loop = asyncio.get_running_loop()
        said: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            if not said.done():
                try:
                    said.set_result(os.read(child.ready, 1))
                except OSError:
                    said.set_result(b"")

        loop.add_reader(child.ready, readable)
        try:
            return bool(await asyncio.wait_for(said, ROLE_READY_TIMEOUT))
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(child.ready)

    async def _end(self, child: Child) -> None:
        """Stop ``child``: SIGTERM (its graceful stop), SIGKILL after ``KEEPER_STOP_TIMEOUT``."""
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(child.proc.wait(), KEEPER_STOP_TIMEOUT)
        except TimeoutError:
            log.error("%s process %d did not stop: killing it", self.role, child.proc.pid)
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.proc.wait()

    async def _watch(self, child: Child) -> None:
        code = await child.proc.wait()
        self.children.discard(child)
        child.close_pipes()
        if self.stopping:
            if not self.children and not self.done.done():
                self.done.set_result(0)
        elif child is self.serving and not self.restarting:
            log.error(
                "%s process %d exited (%d): the keeper exits too", self.role, child.proc.pid, code
            )
            if not self.done.done():
                self.done.set_result(code if code > 0 else 1)  # a signal is a failure too
            self.stop()
        else:
            log.info("%s process %d exited (%d)", self.role, child.proc.pid, code)


async def run(data_dir: str, role: str) -> int:
    keeper = RoleKeeper(data_dir, role)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, keeper.stop)
    restarting: set[asyncio.Task[None]] = set()

    def restart() -> None:
        task = loop.create_task(keeper.restart())
        restarting.add(task)
        task.add_done_callback(restarting.discard)

    loop.add_signal_handler(signal.SIGUSR2, restart)
    try:
        await keeper.start()
    except RuntimeError as e:
        log.error("%s", e)
        return 1
    status = await keeper.done
    for task in restarting:
        task.cancel()
    return status


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in KEPT:
        print(
            f"usage: python -m procs.role_keeper {{{'|'.join(KEPT)}}} --data DIR", file=sys.stderr
        )
        return 2
    role = args.pop(0)
    cfg = load_and_log(f"procs.role_keeper {role}", role, args)  # logs as the role
    if isinstance(cfg, int):
        return cfg
    supervise.die_with_parent()
    return asyncio.run(run(cfg.data_dir, role))


if __name__ == "__main__":
    sys.exit(main())
