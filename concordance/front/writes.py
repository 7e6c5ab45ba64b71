"""Proposing a write and waiting for its applied result: the front's half of the write path.

Theory of operation (ARCHITECTURE.md "Write", PROTOCOL.md §3.4, §4):

* Each write becomes one :class:`~concordance.protocol.commands.Command` carrying this
  node's id and a request id unique in this process (a counter from a random
  62-bit start, so a restarted front never reuses a live id).
* A waiter for the request id is registered BEFORE proposing: on a single
  node the result can be published before ``propose`` even returns.
* Storage publishes the outcome on the ``results`` topic once the entry is
  applied on THIS node, so answering then gives read-your-writes here.
* ``Unavailable`` from consensus means certainly not appended: 503. An
  ``IpcError`` from propose means the outcome is unknown: keep waiting for the
  result. No result by the deadline: ``504 timeout`` (outcome unknown).
* A write forwarded to the leader and refused there (leadership transfer,
  backpressure, or the receiver was not the leader) comes back from consensus
  as ``dropped``: certainly not appended, so it is proposed again (the same
  command, after ``REPROPOSE_DELAY``: a planned leader hand-over is done in a
  few milliseconds) while it has been refused for less than
  ``REPROPOSE_WINDOW`` seconds in a row (a pause as long between two
  refusals, the proposal held for a restarting role, starts a new run); then
  its waiter fails with ``Unavailable`` (503), so a leader that keeps refusing
  (an operator's transfer to a lagging member) is still answered promptly. A
  re-proposal answered ``unavailable`` fails it too; one whose answer is lost
  leaves it waiting for its result (never sent twice while its outcome is
  unknown).
* Results for other origins, unknown or late ids are ignored.
* Writes submitted in the same turn of the event loop share one ``propose``
  (up to ``BATCH_COMMANDS`` commands or ``BATCH_BYTES``): under load one IPC
  round trip carries many writes, and consensus appends them together. Each
  write still has its own request id, waiter and outcome; the batch only
  shares the answer to ``propose`` (appended, refused, or unknown).
* While a batch is in flight (its ``propose`` not answered, or any of its
  writes still without an outcome), the next batch stays open (and keeps
  taking writes) until it settles or ``HOLD_MAX`` passes: one Raft round
  (an fsync on every node, the peer frames, an apply on every node) per
  round trip of a write instead of one per ``proposed`` answer. At 64
  clients that made 10 writes a round instead of 5-8 (docs/PERFORMANCE.md,
  7 December, evening). A lone write (one client) is held only as before,
  when its predecessor's answer comes after that predecessor's result.
  Re-proposals do not hold a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Callable

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.errors import ConcordanceError, IpcError, Timeout, Unavailable
from concordance.front.clients import ConsensusClient
from concordance.protocol import wire
from concordance.protocol.commands import Command, Op, peek_request
from concordance.protocol.payloads import Rejected, WriteResult

__all__ = ["Proposer"]

log = logging.getLogger(__name__)


BATCH_COMMANDS = 256  # commands in one propose at most
BATCH_BYTES = 2 << 20  # bytes of commands in one propose at most (one value may be 1 MiB)
REPROPOSE_DELAY = 0.05  # seconds before a refused (dropped) write is proposed again
REPROPOSE_WINDOW = 0.5  # seconds from a write's first refusal until it is answered 503
HOLD_MAX = 0.02  # seconds a batch waits at most for the previous one to settle


class _Batch:
    """Commands waiting to be proposed together, and the answer they share.

    ``writers`` are the request ids of the commands, each with whether this is its
    first proposal: the batch's task hands a failed answer to each write's own
    waiter (:meth:`Proposer._answer_writers`), so a write awaits one future only.
    ``settled`` resolves once the propose is answered (any outcome) and every
    first proposal in the batch has its outcome: what the next batch is held for.
    """

    __slots__ = ("answer", "bytes", "commands", "open", "settled", "writers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.commands: list[bytes] = []
        self.writers: list[tuple[int, bool]] = []
        self.bytes = 0
        self.answer: asyncio.Future[None] = loop.create_future()
        self.open = 0  # first proposals in the batch still waiting for their outcome
        self.settled: asyncio.Future[None] = loop.create_future()

    def write_done(self) -> None:
        """One of the batch's first proposals has its outcome (or its writer gave up)."""
        self.open -= 1
        self.settle_if_done()

    def settle_if_done(self) -> None:
        if self.open <= 0 and self.answer.done() and not self.settled.done():
            self.settled.set_result(None)


class Proposer:
    """Proposes commands and resolves them from the ``results`` events.

    Args:
        node_id: this node's id, the ``origin`` of every command.
        consensus: where to propose.
        timeout_ms: how long a write may wait for its result.
        clock: epoch milliseconds (the command timestamp).
        timers: the monotonic clock a write's deadline runs on.
    """

    def __init__(
        self,
        node_id: str,
        consensus: ConsensusClient,
        timeout_ms: int,
        clock: Callable[[], int],
        *,
        timers: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._node_id = node_id
        self._consensus = consensus
        self._timeout = timeout_ms / 1000
        self._clock = clock
        self._timers = timers
        self._ids = itertools.count(secrets.randbits(62))
        self._waiters: dict[int, asyncio.Future[WriteResult | Rejected | None]] = {}
        # request id -> (first, last) refusal of its current run of refusals
        self._refused_at: dict[int, tuple[float, float]] = {}
        self._batch: _Batch | None = None
        self._in_flight: asyncio.Future[None] | None = None  # the last batch's `settled`
        self.failed: dict[str, int] = {"unavailable": 0, "timeout": 0}  # for /metrics
        self._proposing: set[asyncio.Task[None]] = set()
        self.batches = 0  # propose requests sent (each carries one or more writes)
        # Storage's applied index at the latest results: every write answered here is at
        # or below it, so a local read that waits for it sees them (KvService), even
        # from a storage restarted behind what it had applied (PROTOCOL.md, ``results``).
        self.read_floor = 0

    @property
    def pending(self) -> int:
        return len(self._waiters)

    def command(self, op: Op) -> Command:
        """A command for ``op`` with a fresh request id and the current time."""
        return Command(self._node_id, next(self._ids), self._clock(), op)

    async def submit(self, op: Op) -> WriteResult | None:
        """Propose ``op`` and return its result (values still as stored JSON text).

        Raises:
            ConcordanceError: the applied command's error (``VersionConflict``,
                ``NotFound``, ...), ``Unavailable`` (not appended) or ``Timeout``.
        """
        try:
            return await self._submit(op)
        except Timeout:
            self.failed["timeout"] += 1
            raise
        except Unavailable:
            self.failed["unavailable"] += 1
            raise

    async def _submit(self, op: Op) -> WriteResult | None:
        cmd = self.command(op)
        request_id = cmd.request_id
        future: asyncio.Future[WriteResult | Rejected | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters[request_id] = future
        deadline = self._timers.call_later(self._timeout, _expire, future)
        try:
            batch = self._join_batch(cmd.encode(), request_id, first=True)
            try:
                outcome = await future  # the result, or the batch's refusal, or the deadline
            finally:
                batch.write_done()
        finally:
            deadline.cancel()
            self._waiters.pop(request_id, None)
            self._refused_at.pop(request_id, None)
        if isinstance(outcome, Rejected):
            raise outcome.to_exception()
        return outcome

    def _join_batch(self, data: bytes, request_id: int, *, first: bool) -> _Batch:
        """Add ``data`` to the batch of this loop turn (its outcome reaches the write's waiter).

        A batch's task is created with the batch: its first step runs on the next
        loop turn, after every write of this one has joined, and closes the batch
        (no separate flush callback, one loop turn less before the propose leaves)."""
        batch = self._batch
        if batch is not None and (
            len(batch.commands) >= BATCH_COMMANDS or batch.bytes + len(data) > BATCH_BYTES
        ):
            self._batch = batch = None  # full: its task sends it; later writes start anew
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._batch = _Batch(loop)
            task = loop.create_task(self._propose(batch))
            self._proposing.add(task)
            task.add_done_callback(self._proposing.discard)
        batch.commands.append(data)
        batch.writers.append((request_id, first))
        batch.open += first
        batch.bytes += len(data)
        return batch

    async def _propose(self, batch: _Batch) -> None:
        try:
            previous = self._in_flight
            if previous is not None and not previous.done():
                await self._hold(previous)  # writes keep joining this batch meanwhile
            if self._batch is batch:
                self._batch = None  # closed: writes of later loop turns make the next batch
            self._in_flight = batch.settled
            self.batches += 1
            await self._consensus.propose(batch.commands, self._timeout)
        except asyncio.CancelledError:
            batch.answer.cancel()
            self._answer_writers(batch, None)
            raise
        except Exception as e:  # every write of the batch hears it
            batch.answer.set_exception(e)
            batch.answer.exception()  # marked retrieved: no one awaits it (see _answer_writers)
            self._answer_writers(batch, e)
        else:
            batch.answer.set_result(None)
        finally:
            batch.settle_if_done()

    def _answer_writers(self, batch: _Batch, error: Exception | None) -> None:
        """Hand a failed ``propose`` to the waiting writes of ``batch``.

        A first proposal fails with the error, except ``IpcError`` (outcome
        unknown: it waits for its result); ``None`` (the batch's task was
        cancelled) cancels it. A re-proposal fails only on ``Unavailable``
        (certainly not appended, its refusals' budget spent); else it waits for
        its result, never proposed twice while its outcome is unknown.
        """
        for request_id, first in batch.writers:
            future = self._waiters.get(request_id)
            if future is None or future.done():
                continue  # answered already (the result came first), or given up
            if error is None:
                if first:
                    future.cancel()
            elif isinstance(error, Unavailable) or (first and not isinstance(error, IpcError)):
                future.set_exception(error)
            else:
                log.debug("request %d: propose outcome unknown (%s); waiting", request_id, error)

    async def _hold(self, previous: asyncio.Future[None]) -> None:
        """Wait for the previous batch to settle, ``HOLD_MAX`` at most."""
        with contextlib.suppress(TimeoutError):
            async with self._timers.timeout(HOLD_MAX):
                await asyncio.wait((previous,))

    def deliver(self, results: wire.Results) -> None:
        """Resolve the waiters named in a ``results`` event (called by the event pump)."""
        if results.origin != self._node_id:
            return
        if results.applied > self.read_floor:
            self.read_floor = results.applied
        for item in results.items:
            future = self._waiters.get(item.request_id)
            if future is not None and not future.done():
                future.set_result(item.result)

    def fail_dropped(self, dropped: wire.Dropped) -> None:
        """Propose again the waiting writes among ``dropped``'s commands.

        Consensus reports forwarded proposals that the receiver refused: they
        were certainly not appended, so sending the same command once more
        cannot apply it twice. A leader refuses during a hand-over (a planned
        restart of its consensus), which is over in a moment; refused for
        longer than ``REPROPOSE_WINDOW``, the write gets a 503 (safe to retry).
        Commands of other origins and ids with no waiter here (answered
        already, given up, storage's expiries) are ignored.
        """
        loop = asyncio.get_running_loop()
        for data in dropped.commands:
            request = peek_request(data)
            if request is None or request[0] != self._node_id:
                continue
            request_id = request[1]
            future = self._waiters.get(request_id)
            if future is None or future.done():
                continue
            now = self._timers.monotonic()
            first, last = self._refused_at.get(request_id, (now, now))
            if now - last >= REPROPOSE_WINDOW:
                first = now  # a pause between refusals: it was held somewhere (a restart)
            self._refused_at[request_id] = (first, now)
            if now - first >= REPROPOSE_WINDOW:
                future.set_exception(
                    Unavailable("the leader did not accept the write (not applied); retry")
                )
                continue
            task = loop.create_task(self._repropose(request_id, data))
            self._proposing.add(task)
            task.add_done_callback(self._proposing.discard)

    async def _repropose(self, request_id: int, data: bytes) -> None:
        await self._timers.sleep(REPROPOSE_DELAY)
        future = self._waiters.get(request_id)
        if future is None or future.done():
            return  # answered or given up meanwhile
        self._join_batch(data, request_id, first=False)

    def fail_all(self, error: ConcordanceError) -> None:
        """Fail every pending write with ``error``."""
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(error)

    def abandon_all(self) -> None:
        """The front stops with writes still waiting for their result: each ends as
        ``Timeout`` (504, "may or may not have been applied"), never ``Unavailable``
        (503 promises it was not): a waiting write may well have been proposed, and
        be applied after this front is gone. Found by the node simulation (a delete
        answered 503 on a front's stop was applied)."""
        self.fail_all(
            Timeout("the front stopped before the result came: it may or may not have been applied")
        )


def _expire(future: asyncio.Future[WriteResult | Rejected | None]) -> None:
    """A write's deadline: no result yet, so its outcome is unknown (504)."""
    if not future.done():
        future.set_exception(
            Timeout("no result before the deadline: the write may or may not have been applied")
        )
