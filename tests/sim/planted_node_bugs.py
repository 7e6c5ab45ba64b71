"""Deliberately broken roles: the node simulation must catch each of them.

Each bug is one method of a real role replaced for the length of a ``with``
(a test switches it on; nothing else does), written as the mistake a person
could make there, and named with the property the simulation should see break.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from concordance.consensus.driver import ConsensusDriver
from concordance.front.service import KvService
from concordance.front.watch import Subscription, WatchHub
from concordance.protocol import wire
from concordance.storage.applied_mark import AppliedMark
from concordance.storage.service import StorageService


@contextlib.contextmanager
def _replaced(owner: type, name: str, method: Callable[..., Any]) -> Iterator[None]:
    saved = owner.__dict__[name]
    setattr(owner, name, method)
    try:
        yield
    finally:
        setattr(owner, name, saved)


@contextlib.contextmanager
def _handler(owner: type, body: type, method: Callable[..., Any]) -> Iterator[None]:
    """Replace one entry of a role's dispatch table (``_HANDLERS``, bound at class creation)."""
    table = owner._HANDLERS  # type: ignore[attr-defined]
    saved = table[body]
    table[body] = method
    try:
        yield
    finally:
        table[body] = saved


def consensus_reads_its_own_commit_index() -> contextlib.AbstractContextManager[None]:
    """Consensus: a ReadIndex is answered with this node's commit index at once, with
    no round with the leader (thesis §6.4 skipped in the driver). A follower that
    lags, or a leader cut off by a partition, then serves a consistent read
    older than a write that already returned: a linearizability violation."""

    async def read_index(self: ConsensusDriver, peer: bytes, env: wire.Envelope) -> None:
        await self.server.reply(peer, env, wire.ReadIndexOk(self.core.log.commit))

    return _handler(ConsensusDriver, wire.ReadIndex, read_index)


def storage_resumes_one_past_its_applied_index() -> contextlib.AbstractContextManager[None]:
    """Storage: its ``hello`` reports one entry more than it applied once it has applied
    anything (an off-by-one in the resume point). Consensus then resumes the apply
    stream past an entry storage never saw: that node never converges (or loses a
    write)."""

    async def hello(self: StorageService) -> None:
        sm = self.state
        index = sm.applied_index + 1 if sm.applied_index else 0
        self._acked = max(self._acked, index)
        await self._send("hello", wire.Hello(index, sm.applied_term))

    return _replaced(StorageService, "_hello", hello)


def front_resumes_a_watch_one_revision_late() -> contextlib.AbstractContextManager[None]:
    """Front: a watch resumed with ``since`` starts one revision after it (an off-by-one
    in the resume cursor). A client resubscribing after its front went away
    misses the change right after the last one it saw: a watch gap."""
    original = WatchHub.subscribe

    async def subscribe(
        self: WatchHub, sink: Any, *, prefix: str, key: str | None, since: int | None
    ) -> Any:
        return await original(
            self, sink, prefix=prefix, key=key, since=None if since is None else since + 1
        )

    return _replaced(WatchHub, "subscribe", subscribe)


def front_takes_a_short_replay_page_for_the_end() -> contextlib.AbstractContextManager[None]:
    """Front: a watch's replay stops at the first page with fewer events than the page
    size. Storage ends a page before an atomic batch that would cross that size, so
    a batch on a page's edge ends the replay early: every later event is lost, a
    watch gap. (This was the shipped code until 7 December: the simulation found it
    once its workload had batches and its fronts a small replay page.)"""

    async def catch_up(self: Subscription, target: int | None) -> None:
        while target is None or self.cursor < target:
            page = await self._hub.changes(self.prefix, self.cursor, f"watch {self.id}")
            renderer = self._hub.renderer
            events = [renderer.event(e) for e in page.changes if self.matches(e.key)]
            if events:
                self._emit(events, None)
            self.cursor = max(self.cursor, page.revision)
            if len(page.changes) < self._hub.page:
                return

    return _replaced(Subscription, "_catch_up", catch_up)


def front_proposes_a_batch_op_by_op() -> contextlib.AbstractContextManager[None]:
    """Front: an atomic batch is proposed one operation at a time, each its own command
    (``POST /batch`` as a loop of PUTs). Every write is applied and every watcher
    sees every change in order, but a reader between two of them sees part of the
    batch, each key at its own revision: a torn batch."""

    async def batch(self: KvService, ops: Any) -> dict[str, Any]:
        results = [await self._submit(op) for op in self._batch(ops).ops]
        assert results[-1] is not None
        return self.renderer.result(results[-1])

    return _replaced(KvService, "batch", batch)


def storage_forgets_what_it_had_applied() -> contextlib.AbstractContextManager[None]:
    """Storage: a restarted process reads no applied mark (as before 8 December). What
    the crashed one had applied and published but not committed is gone from state.db
    until consensus resends it, and a local read served meanwhile misses a write its
    node answered (when the front restarted too, or consensus: their floors are gone
    with them). The node simulation's seed 1,760,602 found it."""
    return _replaced(AppliedMark, "read", lambda self: 0)
