"""The front's retry policy toward its roles (docs/PROTOCOL.md §4): when to re-send, hold, give up.

Retry rules:

* idempotent requests (``get``, ``list``, ``changes``, ``status``,
  ``storage_status``, ``read_index``, ``wait_applied``) are re-sent on
  ``IpcTimeout`` until the caller's deadline; each attempt is capped so that a
  restarted role is found again quickly. A deadline that passes without an
  answer is ``Unavailable`` (a read is always safe to retry).
* ``propose`` and ``conf_change`` are re-sent only after ``unavailable``
  (certainly not appended), with a short backoff, within the hold budget
  (below); an ``IpcTimeout`` is passed up as is, since the outcome is unknown.
* ``backup`` and ``snapshot_now`` are not retried (they are heavy).
* A role that is down is told apart from a slow one before sending: the
  DEALER sockets set ``IMMEDIATE``, so they are writable (``POLLOUT``) only
  while a connection to the role exists.
* Holding (a role restart is invisible to clients): a request to a role that
  is down or restarting is not sent and not failed; it waits for the role to
  connect again, within its own deadline (a proposal within its deadline
  less ``RESULT_MARGIN``, which is left for its result). Only when that
  passes is it ``Unavailable``: for a proposal this is certain (nothing was
  handed over), so the client gets a 503 rather than a 504. A role about to
  stop says ``stopping`` first; from
  then on requests to it are held until its old connection is gone and a
  new one is up, so none is handed to a process that is closing.
* A role that is up but answers ``unavailable`` (no leader known, not a
  member, stopping) is asked again with a backoff for at most
  ``UNAVAILABLE_RETRY`` seconds from its first such answer: long enough for the
  election that follows a planned leader hand-over, short enough that a node
  cut off from any leader answers 503 promptly (API.md: 503 is "safe to
  retry", and the client, not the front, decides to wait longer).

Every wait and deadline here runs on the ``Clock`` it is given (the system
clock in what ships). Used by the role clients of ``ipc_clients.py``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TypeVar

from concordance.clock import Clock
from concordance.errors import IpcError, IpcTimeout, Unavailable
from concordance.ipc import sockets
from concordance.protocol import wire
from concordance.timing import STOPPING_BOUND, UNAVAILABLE_RETRY

log = logging.getLogger("concordance.front.ipc_clients")  # the log name it always had

ATTEMPT_CAP = 1.0  # seconds one attempt of an idempotent request may take
ACK_TIMEOUT = 1.0  # seconds a ``stopping_ack`` may wait for room
CONNECT_GRACE = 1.0  # seconds heavy requests (backup, snapshot) wait for a connection
RESULT_MARGIN = 1.0  # seconds of a proposal's deadline kept for its result, not for holding
HOLD_POLL = 0.01  # seconds between two looks at a held role's connection
RECENTLY = 0.05  # a send handed over this recently proves the role is connected

_B = TypeVar("_B", bound=wire.Body)


class _Stopping:
    """Whether one role announced a planned stop (``stopping``); one per client socket,
    owned by its client (a process may hold several fronts' clients: tests do).

    Why a flag and a watcher: after ``stopping`` the old process still holds its
    connection for a moment, and anything handed to it then may be lost with
    it. So the role counts as down until its old connection is seen gone, or at
    most ``STOPPING_BOUND`` seconds if it never goes. Seen gone means a moment
    with no connection, which lasts at least the DEALER's reconnect interval
    (0.1 s) even when a kept successor binds within milliseconds: keep that
    interval well above ``HOLD_POLL`` (at 10 ms the gap was sometimes missed
    and requests were held for the whole bound).
    """

    def __init__(self, rpc: sockets.Client, clock: Clock) -> None:
        self.rpc = rpc
        self.clock = clock
        self.active = False  # announced, and its old connection not seen gone yet
        self._watcher: asyncio.Task[None] | None = None

    def announce(self) -> None:
        if self.active:
            return
        log.info("the %s role is stopping: holding its requests until it is back", _role(self.rpc))
        self.active = True
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        clock = self.clock
        until = clock.monotonic() + STOPPING_BOUND
        try:
            while self.active and self.rpc.connected() and clock.monotonic() < until:
                await clock.sleep(HOLD_POLL)
        finally:
            self.active = False

    def close(self) -> None:
        self.active = False
        if self._watcher is not None:
            self._watcher.cancel()


def _connected(rpc: sockets.Client, stopping: _Stopping, recently: float = RECENTLY) -> bool:
    return not stopping.active and rpc.connected(recently=recently)


async def _ensure_connected(
    rpc: sockets.Client, stopping: _Stopping, kind: str, limit: float, clock: Clock
) -> bool:
    """Hold up to ``limit`` seconds for a connection to the role; else ``Unavailable``.
    True if it had to wait (the role was down or restarting)."""
    deadline = clock.monotonic() + limit
    held = False
    while not _connected(rpc, stopping):
        if clock.monotonic() >= deadline:
            raise Unavailable(f"the {_role(rpc)} role is not running ({kind} not sent)")
        held = True
        await clock.sleep(HOLD_POLL)
    return held


async def _idempotent(
    rpc: sockets.Client,
    stopping: _Stopping,
    kind: str,
    body: wire.Body,
    timeout: float,
    reply: type[_B],
    clock: Clock,
) -> _B:
    deadline = clock.monotonic() + timeout
    backoff = _Backoff(clock)
    while True:
        left = deadline - clock.monotonic()
        if left <= 0:
            raise Unavailable(f"the {_role(rpc)} role did not answer {kind} in time")
        if await _ensure_connected(rpc, stopping, kind, left, clock):
            backoff = _Backoff(clock)  # a new process: its "unavailable" answers count anew
        left = deadline - clock.monotonic()
        try:
            got = await rpc.request(kind, body, max(min(left, ATTEMPT_CAP), 0.001))
        except IpcTimeout:
            continue
        except Unavailable:  # no leader yet, consensus stopping: safe to ask again
            if not backoff.may_wait(deadline):
                raise
            await backoff.wait()
            continue
        except IpcError as e:
            raise Unavailable(f"cannot reach the {_role(rpc)} role: {e}") from e
        if not isinstance(got, reply):  # pragma: no cover - RpcClient checks the type
            raise Unavailable(f"unexpected reply {type(got).__name__} to {kind}")
        return got


def hold_budget(timeout: float) -> float:
    """How long a proposal with ``timeout`` may be held (not sent, or refused
    ``unavailable``) before it is answered 503: the rest is for its result."""
    return max(timeout - RESULT_MARGIN, timeout / 2)


def _role(rpc: sockets.Client) -> str:
    return rpc.endpoint.rsplit("-", 1)[-1]


async def _retry_unavailable(
    rpc: sockets.Client,
    stopping: _Stopping,
    kind: str,
    body: wire.Body,
    timeout: float,
    clock: Clock,
) -> wire.Body:
    start = clock.monotonic()
    budget = hold_budget(max(timeout, 0))
    backoff = _Backoff(clock)
    while True:
        hold = max(budget - (clock.monotonic() - start), 0)
        if await _ensure_connected(rpc, stopping, kind, hold, clock):
            backoff = _Backoff(clock)  # a new process: its "unavailable" answers count anew
        left = timeout - (clock.monotonic() - start)
        try:
            return await rpc.request(kind, body, max(left, 0.001))
        except Unavailable:
            if not backoff.may_wait(start + budget):
                raise
            await backoff.wait()


class _Backoff:
    """Pauses between asks of a role that answered ``unavailable``: doubling from
    20 ms to 200 ms, for at most ``UNAVAILABLE_RETRY`` seconds from the first
    answer and never past ``deadline``; then the caller passes the answer on.
    A request held for a restarting role starts a new one (the old process's
    answers say nothing about its successor, which needs a moment to learn
    the leader)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._delay = 0.02
        self._first: float | None = None

    def may_wait(self, deadline: float) -> bool:
        now = self._clock.monotonic()
        if self._first is None:
            self._first = now
        return now + self._delay < min(deadline, self._first + UNAVAILABLE_RETRY)

    async def wait(self) -> None:
        await self._clock.sleep(self._delay)
        self._delay = min(self._delay * 2, 0.2)
