"""An asyncio loop whose time is simulated: it never sleeps, it jumps to the next timer.

Why: the node simulation (``node_sim``) runs every role of a whole cluster in
one process. On a real loop its timers (ticks, hellos, retries, deadlines)
would cost real seconds; with a :class:`ManualClock` each advance settles the
loop a fixed number of turns, which is both slow and a guess. Here the loop's
own ``time()`` is the simulated clock: when nothing is ready to run, it moves
that time straight to the earliest timer, so a run costs only the CPU of the
work it does, and everything scheduled happens in one order for one seed.

What it changes of asyncio, and why each is safe for one process of roles:

* ``time()`` is simulated (starts at ``start``); ``asyncio.sleep``,
  ``asyncio.timeout`` and ``call_later`` all follow it;
* the selector never waits and never polls: if nothing is ready and a timer
  is due later, time jumps to it. Descriptors can be opened (consensus binds
  its Unix socket for peer hand-overs) but never become ready;
* ``run_in_executor`` (and so ``asyncio.to_thread``) runs the function at
  once on the loop thread: a thread's finishing time would be the one
  nondeterministic input left (the roles' SQLite work is short in a
  simulation, and its connections allow any thread).

:class:`LoopClock` is the ``concordance.clock.Clock`` of this loop; one per
role incarnation, so a simulated crash can cancel that role's timers.
"""

from __future__ import annotations

import asyncio
import contextvars
import selectors
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Executor
from typing import Any, TypeVar

from concordance.clock import Clock

__all__ = ["EPOCH_MS", "LoopClock", "SimLoop", "Stalled"]

EPOCH_MS = 1_764_230_400_000  # the simulated wall time at loop time 0

_T = TypeVar("_T")


class Stalled(RuntimeError):
    """Nothing is ready and no timer is scheduled: the simulation can never move again."""


class _JumpSelector(selectors.DefaultSelector):
    """Never waits and never polls: tells its loop to jump when it would have slept.

    Nothing in a simulation makes a descriptor ready (the roles talk through
    ``MemoryIpc`` and the simulated network; consensus's Unix socket for the
    front's hand-over of peer connections is opened and never dialed), so a
    poll could only cost a system call per loop turn and let the outside in.
    """

    loop: SimLoop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Stalled("no task is ready and no timer is scheduled")
        if timeout > 0:
            self.loop.jump(timeout)
        return []


class SimLoop(asyncio.SelectorEventLoop):
    """The event loop of a simulation (see the module docstring)."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _JumpSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = start
        self.set_task_factory(_track)

    def time(self) -> float:
        return self._now

    def jump(self, seconds: float) -> None:
        """Move simulated time forward (the selector calls this instead of waiting)."""
        self._now += max(seconds, 0.0)

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., _T], *args: Any
    ) -> asyncio.Future[_T]:
        future: asyncio.Future[_T] = self.create_future()
        try:
            future.set_result(func(*args))
        except BaseException as e:
            future.set_exception(e)
        return future


class RoleRun:
    """One incarnation of a role: the tasks and timers it started, for a simulated crash."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.tasks: list[asyncio.Task[Any]] = []
        self.timers: list[asyncio.TimerHandle] = []
        # what the kernel would release at a process's death (closed after a kill)
        self.resources: list[Callable[[], Coroutine[Any, Any, None]]] = []
        self.context = contextvars.copy_context()
        self.context.run(ROLE.set, self)

    def spawn(self, coro: Coroutine[Any, Any, _T], name: str | None = None) -> asyncio.Task[_T]:
        """Start ``coro`` as a task of this role (cancelled by :meth:`kill`)."""
        return asyncio.get_running_loop().create_task(coro, name=name, context=self.context)

    def kill(self) -> None:
        """Cancel everything this role started, as a process's death would end it."""
        for timer in self.timers:
            timer.cancel()
        for task in self.tasks:
            task.cancel()
        self.timers.clear()


ROLE: contextvars.ContextVar[RoleRun | None] = contextvars.ContextVar("sim_role", default=None)


def _track(
    loop: asyncio.AbstractEventLoop,
    coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
    context: contextvars.Context | None = None,
) -> asyncio.Task[Any]:
    """The task factory: a task started within a role's context belongs to that role."""
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, context=context)
    run = ROLE.get() if context is None else context.get(ROLE)  # the task copies this one
    if run is not None:
        if len(run.tasks) > 64:
            run.tasks = [t for t in run.tasks if not t.done()]
        run.tasks.append(task)
    return task


class LoopClock:
    """``concordance.clock.Clock`` on the running :class:`SimLoop` (its time, its timers).

    ``run``: the role incarnation whose timers these are (cancelled by its kill).
    """

    def __init__(self, run: RoleRun | None = None) -> None:
        self._run = run

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall_ms(self) -> int:
        return EPOCH_MS + int(asyncio.get_running_loop().time() * 1000)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def call_later(
        self, delay: float, callback: Callable[..., object], *args: Any
    ) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()
        handle = loop.call_later(delay, callback, *args)
        if self._run is not None:
            timers = self._run.timers
            if len(timers) > 256:  # forget the fired and the cancelled
                now = loop.time()
                timers[:] = [t for t in timers if not t.cancelled() and t.when() >= now]
            timers.append(handle)
        return handle

    def timeout(self, seconds: float) -> asyncio.Timeout:
        return asyncio.timeout(seconds)


def _conforms(clock: LoopClock) -> Clock:
    """Never called: mypy checks here that LoopClock keeps the Clock protocol's shape."""
    return clock
