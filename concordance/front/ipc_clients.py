"""The real role clients: the front's Protocols over ``concordance.ipc`` (docs/PROTOCOL.md §4).

Why a separate module: the retry rules of PROTOCOL.md §4 live in one place,
and the rest of the front only knows the Protocols in ``clients``.

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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

import zmq.asyncio

from concordance import fronts, ipc, sockets, supervise, wire
from concordance.errors import IpcError, IpcTimeout, Unavailable
from concordance.front.clients import Clients, DroppedHandler, RaftOutHandler
from concordance.front.get_batch import GetBatcher

__all__ = ["IpcConsensus", "IpcEvents", "IpcStorage", "connect", "greet"]

log = logging.getLogger(__name__)

ATTEMPT_CAP = 1.0  # seconds one attempt of an idempotent request may take
RAFT_IN_TIMEOUT = 0.2  # a peer frame not handed over by then is dropped (Raft retransmits)
RAFT_IN_BATCH_BYTES = 4 << 20  # peer frames pending for consensus before senders wait
RAFT_IN_HOLD = 5.0  # seconds peer frames are kept for a restarting consensus (a request deadline)
ACK_TIMEOUT = 1.0  # seconds the frames of the turn ``stopping`` came in, then its ack, may wait
UNAVAILABLE_RETRY = 1.5  # seconds a role answering "unavailable" is asked again
CONNECT_GRACE = 1.0  # seconds heavy requests (backup, snapshot) wait for a connection
RESULT_MARGIN = 1.0  # seconds of a proposal's deadline kept for its result, not for holding
STOPPING_BOUND = 3.0  # seconds a role that said ``stopping`` may keep its old connection
HOLD_POLL = 0.01  # seconds between two looks at a held role's connection
RECENTLY = 0.05  # a send handed over this recently proves the role is connected
HELLO_POLL = 0.05  # seconds between two looks at the roles' connections (front_hello)
HELLO_EVERY = 4  # polls between two front_hello to a connected role (0.2 s)

_B = TypeVar("_B", bound=wire.Body)


class _Stopping:
    """Roles that announced a planned stop (``stopping``), by client socket.

    Why a flag and a watcher: after ``stopping`` the old process still holds its
    connection for a moment, and anything handed to it then may be lost with
    it. So the role counts as down until its old connection is seen gone, or at
    most ``STOPPING_BOUND`` seconds if it never goes. Seen gone means a moment
    with no connection, which lasts at least the DEALER's reconnect interval
    (0.1 s) even when a kept successor binds within milliseconds: keep that
    interval well above ``HOLD_POLL`` (at 10 ms the gap was sometimes missed
    and requests were held for the whole bound).
    """

    def __init__(self) -> None:
        self.rpcs: set[sockets.Client] = set()
        self._watchers: set[asyncio.Task[None]] = set()

    def announce(self, rpc: sockets.Client) -> None:
        if rpc in self.rpcs:
            return
        log.info("the %s role is stopping: holding its requests until it is back", _role(rpc))
        self.rpcs.add(rpc)
        task = asyncio.get_running_loop().create_task(self._watch(rpc))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)

    async def _watch(self, rpc: sockets.Client) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + STOPPING_BOUND
        try:
            while rpc in self.rpcs and rpc.connected() and loop.time() < until:
                await asyncio.sleep(HOLD_POLL)
        finally:
            self.rpcs.discard(rpc)


_STOPPING = _Stopping()


def _connected(rpc: sockets.Client, recently: float = RECENTLY) -> bool:
    return rpc not in _STOPPING.rpcs and rpc.connected(recently=recently)


async def _ensure_connected(rpc: sockets.Client, kind: str, limit: float) -> bool:
    """Hold up to ``limit`` seconds for a connection to the role; else ``Unavailable``.
    True if it had to wait (the role was down or restarting)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    held = False
    while not _connected(rpc):
        if loop.time() >= deadline:
            raise Unavailable(f"the {_role(rpc)} role is not running ({kind} not sent)")
        held = True
        await asyncio.sleep(HOLD_POLL)
    return held


async def _idempotent(
    rpc: sockets.Client, kind: str, body: wire.Body, timeout: float, reply: type[_B]
) -> _B:
    deadline = time.monotonic() + timeout
    backoff = _Backoff()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise Unavailable(f"the {_role(rpc)} role did not answer {kind} in time")
        if await _ensure_connected(rpc, kind, left):
            backoff = _Backoff()  # a new process: its "unavailable" answers count anew
        left = deadline - time.monotonic()
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


ClientOpener = Callable[[str, bytes, ipc.MessageHandler], sockets.Client]


def _zmq_opener(ctx: zmq.asyncio.Context | None) -> ClientOpener:
    """Open a role's ZeroMQ DEALER on ``ctx`` (the process's context by default)."""
    context = ctx or ipc.context()

    def opener(endpoint: str, identity: bytes, on_message: ipc.MessageHandler) -> sockets.Client:
        return ipc.RpcClient(context, endpoint, identity, on_message=on_message)

    return opener


def _role(rpc: sockets.Client) -> str:
    return rpc.endpoint.rsplit("-", 1)[-1]


async def _retry_unavailable(
    rpc: sockets.Client, kind: str, body: wire.Body, timeout: float
) -> wire.Body:
    start = time.monotonic()
    budget = hold_budget(max(timeout, 0))
    backoff = _Backoff()
    while True:
        if await _ensure_connected(rpc, kind, max(budget - (time.monotonic() - start), 0)):
            backoff = _Backoff()  # a new process: its "unavailable" answers count anew
        left = timeout - (time.monotonic() - start)
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

    def __init__(self) -> None:
        self._delay = 0.02
        self._first: float | None = None

    def may_wait(self, deadline: float) -> bool:
        now = time.monotonic()
        if self._first is None:
            self._first = now
        return now + self._delay < min(deadline, self._first + UNAVAILABLE_RETRY)

    async def wait(self) -> None:
        await asyncio.sleep(self._delay)
        self._delay = min(self._delay * 2, 0.2)


class IpcConsensus:
    """:class:`~concordance.front.clients.ConsensusClient` over the ``consensus`` socket.

    ``open_client`` opens the socket (tests pass in-memory ends,
    ``concordance.testing.memory_ipc``); by default a ZeroMQ DEALER on ``ctx``.

    **Peer frames across a consensus restart** (the relay's half of "nothing
    forwarded is lost"; a forwarded proposal is sent once, so a frame lost
    here is a write that ends in ``504``, never applied):

    * frames of one loop turn wait in ``_frames`` for one ``raft_in``;
    * on ``stopping`` the frames not yet sent go to the old process right
      away, and ``stopping_ack`` after them, both in order behind any send
      still waiting for room: consensus steps everything up to the ack before
      it closes, and nothing is sent to it after the ack;
    * from then on, and while consensus is down, frames are held
      (``RAFT_IN_HOLD``) and handed to the successor; a hand-over that fails
      because the successor is not connected after all holds them again.
    """

    def __init__(
        self,
        ctx: zmq.asyncio.Context | None,
        data_dir: str,
        identity: bytes = fronts.routing_id(0),
        *,
        open_client: ClientOpener | None = None,
    ) -> None:
        self._handler: RaftOutHandler | None = None
        self._dropped: DroppedHandler | None = None
        self._frames: list[bytes] = []  # peer frames waiting for the next raft_in
        self._frames_bytes = 0
        self._flushing: asyncio.Task[None] | None = None
        self._flush_due = False
        self._held: deque[tuple[float, bytes]] = deque()  # (loop time, frame) while it is down
        self._held_bytes = 0
        self._releasing: asyncio.Task[None] | None = None
        self._acking: set[asyncio.Task[None]] = set()
        # set once raft_out has a handler: only then may consensus learn of this
        # front (``front_hello``) and send its peer frames here, not to the old one
        self.relaying = asyncio.Event()
        self._ack = wire.StoppingAck(fronts.incarnation_of(identity) or 0)
        opener = open_client or _zmq_opener(ctx)
        self._rpc = opener(ipc.endpoint(data_dir, "consensus"), identity, self._on_message)

    @property
    def rpc(self) -> sockets.Client:
        return self._rpc

    def _on_message(self, env: wire.Envelope) -> None:
        outs = wire.raft_outs(env.body)
        if outs:
            if self._handler is not None:
                for out in outs:
                    self._handler(out)
        elif isinstance(env.body, wire.Dropped) and self._dropped is not None:
            self._dropped(env.body)
        elif isinstance(env.body, wire.Stopping):
            self._on_stopping()
        else:
            log.debug("consensus sent an unexpected %s", env.type)

    def _on_stopping(self) -> None:
        """Hold everything new for the successor; send what was gathered for this
        process, then ``stopping_ack`` (the last message to it: it steps all sent
        before and only then closes)."""
        _STOPPING.announce(self._rpc)
        frames = tuple(self._frames)
        self._frames, self._frames_bytes = [], 0
        try:  # almost always at once; else in order behind what waits for room
            if frames:
                self._rpc.send_nowait("raft_in", wire.RaftIn(frames))
                frames = ()
            self._rpc.send_nowait("stopping_ack", self._ack)
        except IpcError:
            task = asyncio.get_running_loop().create_task(self._acknowledge(frames))
            self._acking.add(task)
            task.add_done_callback(self._acking.discard)

    async def _acknowledge(self, frames: tuple[bytes, ...]) -> None:
        try:
            if frames:
                await self._rpc.send("raft_in", wire.RaftIn(frames), ACK_TIMEOUT)
                frames = ()
            await self._rpc.send("stopping_ack", self._ack, ACK_TIMEOUT)
        except IpcError as e:  # consensus ends its drain at its own bound
            log.warning("could not acknowledge consensus's stopping: %s", e)
            if frames:
                self._hold_frames(frames)

    def on_raft_out(self, handler: RaftOutHandler) -> None:
        self._handler = handler
        self.relaying.set()

    def on_dropped(self, handler: DroppedHandler) -> None:
        self._dropped = handler

    async def propose(self, commands: Sequence[bytes], timeout: float) -> int:
        got = await _retry_unavailable(self._rpc, "propose", wire.Propose(tuple(commands)), timeout)
        assert isinstance(got, wire.Proposed)
        return got.index

    async def read_index(self, timeout: float) -> int:
        got = await _idempotent(
            self._rpc, "read_index", wire.ReadIndex(), timeout, wire.ReadIndexOk
        )
        return got.index

    async def status(self, timeout: float) -> wire.StatusOk:
        return await _idempotent(self._rpc, "status", wire.Status(), timeout, wire.StatusOk)

    async def conf_change(self, op: str, node_id: str, address: str, timeout: float) -> None:
        await _retry_unavailable(
            self._rpc, "conf_change", wire.ConfChange(op, node_id, address), timeout
        )

    async def transfer(self, to: str, timeout: float) -> None:
        await _ensure_connected(self._rpc, "transfer", min(timeout, CONNECT_GRACE))
        try:
            await self._rpc.request("transfer", wire.Transfer(to), timeout)
        except IpcTimeout as e:
            raise Unavailable("consensus did not answer the leadership transfer") from e

    async def snapshot_now(self, timeout: float) -> wire.SnapshotNowOk:
        await _ensure_connected(self._rpc, "snapshot_now", CONNECT_GRACE)
        try:
            got = await self._rpc.request("snapshot_now", wire.SnapshotNow(), timeout)
        except IpcTimeout as e:
            raise Unavailable("consensus did not answer the snapshot request") from e
        assert isinstance(got, wire.SnapshotNowOk)
        return got

    async def raft_in(self, frames: Sequence[bytes]) -> None:
        """Hand peer frames to consensus. Frames that arrive in one turn of the event
        loop (from all peers) go in one ``raft_in``; a caller waits only while more
        than ``RAFT_IN_BATCH_BYTES`` are pending, which pushes back on a flooding peer."""
        if not _connected(self._rpc):  # stopping or down: keep them for its successor
            self._hold_frames(frames)
            return
        self._frames.extend(frames)
        self._frames_bytes += sum(len(f) for f in frames)
        if self._flushing is None and not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush_now)
        if self._frames_bytes > RAFT_IN_BATCH_BYTES:
            if self._flushing is None:
                self._flush_now()
            if self._flushing is not None:
                await asyncio.shield(self._flushing)

    def _hold_frames(self, frames: Sequence[bytes], since: float | None = None) -> None:
        """Keep peer frames while consensus restarts (never waits: a peer is not held).

        Why: among them may be proposals another node forwarded here, and
        refusals of this node's own forwarded proposals. The next consensus
        refuses what it does not lead (or reports the refusal), which reaches
        the proposer, which proposes again where the leader now is; a frame
        dropped here instead would leave that write's outcome unknown (a 504).
        Frames older than ``RAFT_IN_HOLD`` (from ``since``, when they were first
        held) are dropped when handed over (Raft has moved on and retransmits
        what still matters), and at most ``RAFT_IN_BATCH_BYTES`` are kept, the
        oldest dropped first.
        """
        loop = asyncio.get_running_loop()
        now = loop.time() if since is None else since
        for frame in frames:
            self._held.append((now, frame))
            self._held_bytes += len(frame)
        while len(self._held) > 1 and self._held_bytes > RAFT_IN_BATCH_BYTES:
            self._held_bytes -= len(self._held.popleft()[1])
        if self._releasing is None:
            self._releasing = loop.create_task(self._release_held())

    async def _release_held(self) -> None:
        """Hand the held frames over once consensus is back (or drop them after
        ``RAFT_IN_HOLD``: a successor that takes longer gets fresh ones).

        "Back" is asked of the socket itself, not inferred from a recent send
        (``RECENTLY``): that send may have gone to the process that just left."""
        loop = asyncio.get_running_loop()
        try:
            while self._held:
                if _connected(self._rpc, recently=0.0):
                    fresh = [(t, f) for t, f in self._held if loop.time() - t < RAFT_IN_HOLD]
                    self._held.clear()
                    self._held_bytes = 0
                    if fresh:
                        await self._hand_over_held(fresh)
                    continue
                while self._held and loop.time() - self._held[0][0] >= RAFT_IN_HOLD:
                    self._held_bytes -= len(self._held.popleft()[1])
                await asyncio.sleep(HOLD_POLL)
        finally:
            self._releasing = None

    async def _hand_over_held(self, held: list[tuple[float, bytes]]) -> None:
        """Send held frames in one ``raft_in``; if the successor is not there after
        all, hold them again with their first time (``RAFT_IN_HOLD`` still counts)."""
        frames = tuple(f for _, f in held)
        try:
            await self._rpc.send("raft_in", wire.RaftIn(frames), RAFT_IN_TIMEOUT)
        except IpcError as e:
            log.debug("held peer frames not handed over (%s): holding them again", e)
            for since, frame in held:
                self._hold_frames((frame,), since)

    def _flush_now(self) -> None:
        """At the end of the loop turn: hand the frames over at once if there is room
        (no task, no timer); else a task waits for room (``_flush_raft_in``)."""
        self._flush_due = False
        if not self._frames or self._flushing is not None:
            return
        try:
            self._rpc.send_nowait("raft_in", wire.RaftIn(tuple(self._frames)))
        except IpcError:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_raft_in())
        else:
            self._frames, self._frames_bytes = [], 0

    async def _flush_raft_in(self) -> None:
        try:
            while self._frames:  # frames that came in while sending go in the next message
                frames, self._frames, self._frames_bytes = tuple(self._frames), [], 0
                try:
                    await self._rpc.send("raft_in", wire.RaftIn(frames), RAFT_IN_TIMEOUT)
                except IpcError as e:
                    if not _connected(self._rpc, recently=0.0):  # it went away: its successor
                        self._hold_frames(frames)
                    else:  # up but not keeping up: Raft retransmits
                        log.debug("dropping %d peer frame(s): %s", len(frames), e)
        finally:
            self._flushing = None

    async def close(self) -> None:
        for task in (self._flushing, self._releasing, *self._acking):
            if task is not None:
                task.cancel()
        _STOPPING.rpcs.discard(self._rpc)
        await self._rpc.close()


class IpcStorage:
    """:class:`~concordance.front.clients.StorageClient` over the ``storage`` socket."""

    def __init__(
        self, ctx: zmq.asyncio.Context, data_dir: str, identity: bytes = fronts.routing_id(0)
    ) -> None:
        self._rpc = ipc.RpcClient(
            ctx, ipc.endpoint(data_dir, "storage"), identity, on_message=self._on_message
        )
        self._gets = GetBatcher(self._send_gets)
        self.watching = False  # what the periodic front_watching tells storage

    async def watch(self) -> None:
        self.watching = True
        # On the request socket, ahead of the caller's next request: storage handles
        # them in order. Lost (storage down): a new storage publishes until told not to.
        with contextlib.suppress(IpcError):
            await self._rpc.send("front_watching", wire.FrontWatching(True))

    def unwatch(self) -> None:
        self.watching = False
        with contextlib.suppress(IpcError):
            self._rpc.send_nowait("front_watching", wire.FrontWatching(False))

    @property
    def rpc(self) -> sockets.Client:
        return self._rpc

    def _on_message(self, env: wire.Envelope) -> None:
        if isinstance(env.body, wire.Stopping):
            _STOPPING.announce(self._rpc)
        else:
            log.debug("storage sent an unexpected %s", env.type)

    async def get(
        self, key: str, now: int, timeout: float, min_index: int = 0
    ) -> dict[str, Any] | None:
        return await self._gets.get(key, now, timeout, min_index)

    async def _send_gets(
        self, keys: Sequence[str], now: int, min_index: int, timeout: float
    ) -> Sequence[dict[str, Any] | None]:
        if len(keys) == 1:
            body: wire.Body = wire.Get(keys[0], now, min_index)
            return ((await _idempotent(self._rpc, "get", body, timeout, wire.GetOk)).entry,)
        body = wire.GetMany(tuple(keys), now, min_index)
        got = await _idempotent(self._rpc, "get_many", body, timeout, wire.GetManyOk)
        if len(got.entries) != len(keys):
            raise Unavailable(f"storage answered {len(got.entries)} entries for {len(keys)} keys")
        return got.entries

    async def list(
        self,
        prefix: str,
        limit: int,
        cursor: str | None,
        now: int,
        timeout: float,
        min_index: int = 0,
    ) -> wire.ListOk:
        body = wire.List(prefix, limit, cursor, now, min_index)
        return await _idempotent(self._rpc, "list", body, timeout, wire.ListOk)

    async def changes(self, prefix: str, since: int, limit: int, timeout: float) -> wire.ChangesOk:
        body = wire.Changes(prefix, since, limit)
        return await _idempotent(self._rpc, "changes", body, timeout, wire.ChangesOk)

    async def wait_applied(self, index: int, timeout: float) -> int:
        body = wire.WaitApplied(index)
        got = await _idempotent(self._rpc, "wait_applied", body, timeout, wire.WaitAppliedOk)
        return got.applied

    async def backup(self, path: str, timeout: float) -> wire.BackupOk:
        await _ensure_connected(self._rpc, "backup", CONNECT_GRACE)
        try:
            got = await self._rpc.request("backup", wire.Backup(path), timeout)
        except IpcTimeout as e:
            raise Unavailable("storage did not finish the backup in time") from e
        assert isinstance(got, wire.BackupOk)
        return got

    async def status(self, timeout: float) -> wire.StorageStatusOk:
        body = wire.StorageStatus()
        return await _idempotent(self._rpc, "storage_status", body, timeout, wire.StorageStatusOk)

    async def close(self) -> None:
        _STOPPING.rpcs.discard(self._rpc)
        await self._rpc.close()


class IpcEvents:
    """:class:`~concordance.front.clients.EventSource` over storage's events PUB."""

    def __init__(self, ctx: zmq.asyncio.Context, data_dir: str) -> None:
        self._sub = ipc.Subscriber(ctx, ipc.endpoint(data_dir, "events"))

    async def recv(self) -> wire.ChangeBatch | wire.Results:
        while True:
            env = await self._sub.recv()
            if isinstance(env.body, wire.ChangeBatch | wire.Results):
                return env.body
            log.debug("ignoring event %s", env.type)  # pragma: no cover - Subscriber filters

    async def close(self) -> None:
        await self._sub.close()


@contextlib.asynccontextmanager
async def connect(data_dir: str, incarnation: int | None = None) -> AsyncIterator[Clients]:
    """Open the front's sockets to its node's roles (for ``make_app``'s cleanup context).

    ``incarnation`` (default: this data dir's count of front starts) names this
    front to the roles, so two fronts can be connected at once (a hand-over).
    """
    if incarnation is None:
        incarnation = supervise.starts(data_dir, "front")
    identity = fronts.routing_id(incarnation)
    ctx = ipc.context()
    consensus = IpcConsensus(ctx, data_dir, identity)
    storage = IpcStorage(ctx, data_dir, identity)
    events = IpcEvents(ctx, data_dir)
    greeting = asyncio.create_task(_greet_when_relaying(consensus, storage, incarnation))
    try:
        yield Clients(consensus, storage, events)
    finally:
        greeting.cancel()
        await events.close()
        await storage.close()
        await consensus.close()


async def _greet_when_relaying(
    consensus: IpcConsensus, storage: IpcStorage, incarnation: int
) -> None:
    await consensus.relaying.wait()
    hello = wire.FrontHello(incarnation)
    await greet(
        {
            consensus.rpc: lambda: [("front_hello", hello)],
            storage.rpc: lambda: [
                ("front_hello", hello),
                ("front_watching", wire.FrontWatching(storage.watching)),
            ],
        }
    )


Greeting = Callable[[], Sequence[tuple[str, wire.Body]]]


async def greet(greetings: Mapping[sockets.Client, Greeting]) -> None:
    """Say ``front_hello`` to each role when it connects and every 0.2 s after: a
    role that just started learns this front before it has to push anything
    (PROTOCOL.md §1); storage also hears whether it has watchers
    (``front_watching``). One-way and best effort: the next one repairs a loss."""
    connected = dict.fromkeys(greetings, False)
    for poll in itertools.count():
        for rpc, greeting in greetings.items():
            now = rpc.connected()
            if now and (not connected[rpc] or poll % HELLO_EVERY == 0):
                with contextlib.suppress(IpcError):
                    for type_, body in greeting():
                        rpc.send_nowait(type_, body)
            connected[rpc] = now
        await asyncio.sleep(HELLO_POLL)
