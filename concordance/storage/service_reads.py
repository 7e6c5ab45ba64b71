"""The storage role's reads: what the fronts ask of state.db, parked reads, backups.

The front -> storage half of :class:`~concordance.storage.service.StorageService`
(PROTOCOL.md §3.3): one message at a time from the ``storage`` socket, a
one-way note or a request answered by its handler (``_REQUESTS``, one dict
lookup by body type). A read with ``min_index`` ahead of what is applied is
parked until an apply reaches it (``_release_waiters``); a backup copies
state.db on a worker thread and answers when done. A mixin of the service,
which owns the state declared below.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from concordance.clock import Clock
from concordance.errors import (
    ConcordanceError,
    InvalidRequest,
    RemoteProtocolError,
    Unavailable,
)
from concordance.ipc.fronts import Fronts
from concordance.ipc.sockets import Server
from concordance.latency import LatencyCounts
from concordance.protocol import wire
from concordance.storage import background
from concordance.storage.fsm import StateMachine
from concordance.storage.service_waiters import AppliedWaiters

if TYPE_CHECKING:
    from concordance.storage.service import ServiceTimings
from concordance.storage.service_snapshots import copy_database

log = logging.getLogger("concordance.storage.service")  # the log name it always had

_Waiter = tuple[bytes, wire.Envelope]  # who asked, and the request to answer
# A request's handler returns its reply, or None when it answers later.
_Reply = wire.Body | ConcordanceError | None
_Note = Callable[["FrontReads", bytes, wire.Body], None]
_Request = Callable[["FrontReads", bytes, wire.Envelope], _Reply]


class FrontReads:
    """Serving the fronts (state set by the service's ``__init__``)."""

    db_path: Path
    state_dir: Path
    apply_latency: LatencyCounts
    _t: ServiceTimings
    _clock: Clock
    _server: Server | None
    _fronts: Fronts
    _watching: dict[bytes, tuple[bool, float]]
    _waiters: AppliedWaiters[_Waiter]
    _backups: set[asyncio.Task[None]]
    _backup_lock: asyncio.Lock
    # What the applied mark said at start, raised with every apply: local reads wait for it
    # (applied_mark.py), so a storage behind what an earlier process published serves none.
    _mark_index: int

    if TYPE_CHECKING:  # the service's

        @property
        def state(self) -> StateMachine: ...

        async def _lost_uncommitted(self) -> None: ...

    async def _read_loop(self) -> None:
        assert self._server is not None
        while True:
            peer, env = await self._server.recv()
            await self._handle(peer, env)

    async def _handle(self, peer: bytes, env: wire.Envelope) -> None:
        """Serve one message from a front: a one-way note, or a request answered by
        its handler in ``_REQUESTS`` (one dict lookup by body type)."""
        assert self._server is not None
        self._fronts.note(peer)
        note = self._NOTES.get(type(env.body))
        if note is not None:
            note(self, peer, env.body)
            return
        if env.reply_to is not None or env.type in wire.ONE_WAY:
            log.warning("storage: dropping %s from %r: not a request", env.type, peer)
            return
        serve = self._REQUESTS.get(type(env.body))
        reply: _Reply
        try:
            if serve is None:
                reply = InvalidRequest(f"storage does not serve {env.type}")
            else:
                reply = serve(self, peer, env)
        except ConcordanceError as e:
            reply = e
        except sqlite3.Error as e:
            log.exception("storage: %s failed", env.type)
            reply = Unavailable(f"storage read failed: {e}")
            if self.state.reconcile():  # what was applied since the commit is gone
                log.error("storage: SQLite rolled back the uncommitted batches; resending")
                await self._lost_uncommitted()
        if reply is not None:  # None: answered later (a parked read, a backup)
            await self._server.reply(peer, env, reply)

    def _on_front_watching(self, peer: bytes, body: wire.Body) -> None:
        assert isinstance(body, wire.FrontWatching)  # whether it wants change batches
        self._watching[peer] = (body.watching, self._clock.monotonic())

    def _held_until(self, min_index: int = 0) -> int:
        """The applied index a read must wait for (its ``min_index``, and the applied
        mark: never answer from behind what was published), or 0 to serve it now."""
        need = max(min_index, self._mark_index)
        return need if self.state.applied_index < need else 0

    def _wait_for(self, peer: bytes, env: wire.Envelope, index: int) -> _Reply:
        """Park a request until ``index`` is applied (None), or refuse it when too
        many wait already."""
        return None if self._park(peer, env, index) else Unavailable("too many waiting reads")

    def _get(self, peer: bytes, env: wire.Envelope) -> _Reply:
        body, sm = env.body, self.state
        assert isinstance(body, wire.Get)
        if need := self._held_until(body.min_index):
            return self._wait_for(peer, env, need)
        return wire.GetOk(sm.get(body.key, body.now))

    def _get_many(self, peer: bytes, env: wire.Envelope) -> _Reply:
        body, sm = env.body, self.state
        assert isinstance(body, wire.GetMany)
        if need := self._held_until(body.min_index):
            return self._wait_for(peer, env, need)
        return wire.GetManyOk(tuple(sm.get(key, body.now) for key in body.keys))

    def _list(self, peer: bytes, env: wire.Envelope) -> _Reply:
        body, sm = env.body, self.state
        assert isinstance(body, wire.List)
        if need := self._held_until(body.min_index):
            return self._wait_for(peer, env, need)
        return sm.list(body.prefix, body.limit, body.cursor, body.now)

    def _changes(self, peer: bytes, env: wire.Envelope) -> _Reply:
        body = env.body
        assert isinstance(body, wire.Changes)
        if need := self._held_until():  # its changes went out: never answer without them
            return self._wait_for(peer, env, need)
        return self.state.changes(body.prefix, body.since, body.limit)

    def _status(self, peer: bytes, env: wire.Envelope) -> _Reply:
        sm = self.state
        counts, total_us = self.apply_latency.snapshot()
        return wire.StorageStatusOk(
            sm.applied_index, sm.applied_term, sm.revision, counts, total_us
        )

    def _wait_applied(self, peer: bytes, env: wire.Envelope) -> _Reply:
        body, applied = env.body, self.state.applied_index
        assert isinstance(body, wire.WaitApplied)
        if applied < body.index:
            return self._wait_for(peer, env, body.index)
        return wire.WaitAppliedOk(applied)

    def _start_backup(self, peer: bytes, env: wire.Envelope) -> _Reply:
        assert isinstance(env.body, wire.Backup)
        self.state.commit()  # the copy reads what is committed: every write applied so far
        task = asyncio.create_task(self._backup(peer, env, env.body.path))
        self._backups.add(task)
        task.add_done_callback(self._backups.discard)
        return None  # answered by the task

    def _park(self, peer: bytes, env: wire.Envelope, index: int) -> bool:
        """Park a wait_applied (or a read with ``min_index``) until ``index`` is applied;
        False if too many wait already."""
        deadline = env.deadline_ms
        if deadline is None:
            deadline = self._clock.wall_ms() + int(self._t.default_wait * 1000)
        return self._waiters.park(index, deadline, (peer, env))

    async def _release_waiters(self) -> None:
        assert self._server is not None
        applied = self.state.applied_index
        for peer, env in self._waiters.release(applied, self._clock.wall_ms()):
            if isinstance(env.body, wire.WaitApplied):
                await self._server.reply(peer, env, wire.WaitAppliedOk(applied))
            else:  # a read with min_index: serve it now
                await self._handle(peer, env)

    async def _backup(self, peer: bytes, env: wire.Envelope, path: str) -> None:
        assert self._server is not None
        reply: wire.Body | ConcordanceError
        try:
            dest = self._backup_target(path)
            async with self._backup_lock:
                size, index, _ = await background.run(copy_database, self.db_path, dest)
            reply = wire.BackupOk(str(dest), size, index)
            log.info("storage: backup at index %d written to %s (%d bytes)", index, dest, size)
        except ConcordanceError as e:
            reply = e
        except (OSError, sqlite3.Error, RemoteProtocolError) as e:
            log.warning("storage: backup to %s failed: %s", path, e)
            reply = Unavailable(f"backup failed: {e}")
        if self._server is not None:  # not closed meanwhile
            await self._server.reply(peer, env, reply)

    def _backup_target(self, path: str) -> Path:
        dest = Path(path)
        if not dest.is_absolute():
            raise InvalidRequest("backup path must be absolute")
        if Path(os.path.realpath(dest)).is_relative_to(os.path.realpath(self.state_dir)):
            raise InvalidRequest("backup path must be outside the state directory")
        return dest

    # What storage takes from a front, by body type (PROTOCOL.md §3.3), built once
    # with the class: a dispatch is one dict lookup.
    _NOTES: ClassVar[dict[type[wire.Body], _Note]] = {
        wire.FrontHello: lambda self, peer, body: None,  # noted: where ``stopping`` goes
        wire.FrontWatching: _on_front_watching,
    }
    _REQUESTS: ClassVar[dict[type[wire.Body], _Request]] = {
        wire.Get: _get,
        wire.GetMany: _get_many,
        wire.List: _list,
        wire.Changes: _changes,
        wire.StorageStatus: _status,
        wire.WaitApplied: _wait_applied,
        wire.Backup: _start_backup,
    }
