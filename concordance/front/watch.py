"""Watch fan-out: storage's change batches to subscriptions and long-polls, in order, no gaps.

Why it is built this way: the events PUB may drop messages (slow joiner, high
water mark, a restarted storage), while API.md §4 promises every subscriber
each change exactly once, in revision order. Revisions are global and
contiguous (every committed change takes the next one), so a missing one is
visible, and storage's change log is the durable copy to repair from.

Theory of operation:

* One task (the event pump in ``app``) calls :meth:`WatchHub.publish` for
  every batch, synchronously: publishing never waits, so one slow watcher
  cannot hold up the others or the write results behind it.
* Each subscription has a ``cursor``: every change under its prefix with a
  revision <= cursor has been delivered (or replayed). Its own task takes
  batches from its inbox in order:

  - a batch at or below the cursor is a duplicate: dropped;
  - a batch whose first revision is beyond cursor + 1 follows a gap (dropped
    messages, a restart, an overflowed inbox): the missing range is fetched
    from storage's ``changes`` under the subscription's prefix, page by page,
    up to at least the batch's revision, before anything newer is delivered;
  - otherwise the batch's matching events above the cursor are delivered.

* ``sinceRevision`` replays from storage first, while live batches collect
  in the inbox; those at or below the replayed revision are then dropped. So
  live delivery continues from the replay without gap or duplicate.
* A subscription is registered (its inbox buffering) BEFORE its start
  revision is read from storage, so nothing published in between is lost.
* An inbox that overflows is emptied and keeps only the newest batch; the
  gap rule repairs the rest from storage. The connection's bounded send
  queue is the slow-consumer limit: a notification that does not fit cancels
  the subscription (``slow_consumer``). Compaction met during a replay or a
  repair cancels it with ``compacted``. Storage being down only delays.
* Long-polls register a waiter before they read; any batch with a matching
  change above their ``since``, or any gap, wakes them and they read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

from concordance import wire
from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.errors import Compacted, ConcordanceError
from concordance.front.clients import StorageClient
from concordance.front.codec import Renderer, dumps

__all__ = ["ChangeWaiter", "LiveBatch", "Sink", "Subscription", "WatchHub"]

log = logging.getLogger(__name__)

PAGE = 1000  # events per storage ``changes`` page during replay and repair
INBOX_LIMIT = 1024  # batches buffered per subscription before the inbox is reset
RETRY_MAX = 2.0  # seconds between attempts while storage does not answer


class Sink(Protocol):
    """Where a subscription's notifications go (a WebSocket connection)."""

    def notify(
        self, subscription_id: int, events: list[dict[str, Any]], events_json: str | None
    ) -> bool:
        """Queue a ``watch/change`` of ``events``; ``events_json`` is their JSON array
        when already encoded (shared by the watchers of a batch). False when the
        connection's queue is full."""
        ...

    def cancelled(self, subscription_id: int, reason: str) -> None:
        """Queue a ``watch/cancelled`` (always accepted)."""
        ...


class _SlowConsumer(Exception):
    pass


class LiveBatch:
    """One published change batch; events are rendered, and each selection of them
    encoded as JSON, at most once for all subscribers (a thousand watchers of one
    prefix cost one encoding, not a thousand)."""

    __slots__ = ("_encoded", "_rendered", "events", "first", "revision")

    def __init__(self, batch: wire.ChangeBatch) -> None:
        self.events = batch.events
        self.revision = max([batch.revision, *(_rev(e) for e in batch.events)])
        self.first = _rev(batch.events[0]) if batch.events else batch.revision
        self._rendered: dict[int, dict[str, Any]] = {}
        self._encoded: dict[tuple[int, ...], str] = {}

    def encoded(self, renderer: Renderer, indexes: tuple[int, ...]) -> str:
        """The JSON array of the rendered events at ``indexes``."""
        out = self._encoded.get(indexes)
        if out is None:
            out = self._encoded[indexes] = dumps([self.rendered(renderer, i) for i in indexes])
        return out

    def rendered(self, renderer: Renderer, index: int) -> dict[str, Any]:
        out = self._rendered.get(index)
        if out is None:
            out = self._rendered[index] = renderer.event(self.events[index])
        return out


def _rev(event: dict[str, Any]) -> int:
    rev = event.get("revision")
    return rev if isinstance(rev, int) else 0


class Subscription:
    """One watch on a prefix or a single key, feeding one sink."""

    def __init__(
        self,
        hub: WatchHub,
        sub_id: int,
        sink: Sink,
        prefix: str,
        key: str | None,
        since: int | None,
    ) -> None:
        self.id = sub_id
        self.sink = sink
        self.prefix = prefix  # what storage is asked for (the key itself for a key watch)
        self.key = key
        self.since = since
        self.cursor = since if since is not None else 0
        self._hub = hub
        self._inbox: deque[LiveBatch] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def matches(self, key: Any) -> bool:
        if self.key is not None:
            return bool(key == self.key)
        return isinstance(key, str) and key.startswith(self.prefix)

    def feed(self, batch: LiveBatch) -> None:
        if len(self._inbox) >= self._hub.inbox_limit:
            self._inbox.clear()  # the gap this leaves is repaired from storage
        self._inbox.append(batch)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"watch {self.id}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def wait_stopped(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        reason = "shutdown"
        try:
            if self.since is not None:
                await self._catch_up(target=None)
            while True:
                while not self._inbox:
                    self._wake.clear()
                    await self._wake.wait()
                await self._handle(self._inbox.popleft())
        except Compacted:
            reason = "compacted"
        except _SlowConsumer:
            reason = "slow_consumer"
        except Exception:
            log.exception("watch %d failed", self.id)
        self._hub.remove(self)
        self.sink.cancelled(self.id, reason)

    async def _handle(self, batch: LiveBatch) -> None:
        if batch.revision <= self.cursor:
            return
        if batch.first > self.cursor + 1:
            await self._catch_up(target=batch.revision)
            if batch.revision <= self.cursor:
                return
        indexes = tuple(
            i
            for i, event in enumerate(batch.events)
            if _rev(event) > self.cursor and self.matches(event.get("key"))
        )
        if indexes:
            renderer = self._hub.renderer
            events = [batch.rendered(renderer, i) for i in indexes]
            self._emit(events, batch.encoded(renderer, indexes))
        self.cursor = batch.revision

    async def _catch_up(self, target: int | None) -> None:
        """Deliver stored changes after the cursor: all of them (replay), or up to ``target``."""
        while target is None or self.cursor < target:
            page = await self._changes()
            renderer = self._hub.renderer
            events = [renderer.event(e) for e in page.changes if self.matches(e.get("key"))]
            if events:
                self._emit(events, None)
            self.cursor = max(self.cursor, page.revision)
            if len(page.changes) < self._hub.page:
                return  # the answer was complete up to storage's revision

    async def _changes(self) -> wire.ChangesOk:
        delay = 0.05
        while True:
            try:
                return await self._hub.storage.changes(
                    self.prefix, self.cursor, self._hub.page, self._hub.storage_timeout
                )
            except Compacted:
                raise
            except ConcordanceError as e:
                log.info("watch %d: storage not answering (%s); retrying", self.id, e)
            await self._hub.clock.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _emit(self, events: list[dict[str, Any]], events_json: str | None) -> None:
        if not self.sink.notify(self.id, events, events_json):
            raise _SlowConsumer


class ChangeWaiter:
    """A long-poll's registration: set when a change under ``prefix`` after ``since`` may exist."""

    def __init__(self, prefix: str, since: int, clock: Clock = SYSTEM_CLOCK) -> None:
        self.prefix = prefix
        self.since = since
        self.clock = clock
        self.event = asyncio.Event()
        self.closed = False

    async def wait(self, timeout: float) -> bool:
        """Wait for a wake-up (True) or the timeout (False); re-arms itself.

        After :meth:`WatchHub.wake_all` (shutdown) it returns False at once.
        """
        if self.closed:
            return False
        try:
            async with self.clock.timeout(timeout):
                await self.event.wait()
        except TimeoutError:
            return False
        self.event.clear()
        return not self.closed


class WatchHub:
    """Every live subscription and long-poll of this front."""

    def __init__(
        self,
        storage: StorageClient,
        renderer: Renderer,
        *,
        page: int = PAGE,
        inbox_limit: int = INBOX_LIMIT,
        storage_timeout: float = 2.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.storage = storage
        self.clock = clock  # long-poll timeouts and storage retry backoff run on it
        self.renderer = renderer
        self.page = page
        self.inbox_limit = inbox_limit
        self.storage_timeout = storage_timeout
        self.last: int | None = None  # highest revision published (for gap detection)
        self._subs: dict[int, Subscription] = {}
        self._ids = itertools.count(1)
        self._waiters: set[ChangeWaiter] = set()
        self._watching = False  # storage was asked for change batches (storage.watch)
        self._unfed: list[LiveBatch] = []  # published, handed to the subscriptions next turn

    @property
    def watchers(self) -> int:
        return len(self._subs)

    def publish(self, batch: wire.ChangeBatch) -> None:
        """Fan a batch out; never waits (called by the event pump)."""
        live = LiveBatch(batch)
        gap = self.last is None or live.first > self.last + 1
        if self.last is None or live.revision > self.last:
            self.last = live.revision
        # Fed on the next loop turn: the writer whose result follows this batch
        # is answered first, instead of after a task step per subscription
        # (15-20 ms at 1,000 watchers). Order is kept: batches queue in order.
        if not self._unfed:
            asyncio.get_running_loop().call_soon(self._feed)
        self._unfed.append(live)
        for waiter in self._waiters:
            if gap or any(
                _rev(e) > waiter.since and str(e.get("key", "")).startswith(waiter.prefix)
                for e in live.events
            ):
                waiter.event.set()

    def _feed(self) -> None:
        unfed, self._unfed = self._unfed, []
        for live in unfed:
            for sub in self._subs.values():
                sub.feed(live)

    async def subscribe(
        self, sink: Sink, *, prefix: str, key: str | None, since: int | None
    ) -> tuple[Subscription, int]:
        """Register a subscription and read storage's current revision.

        The caller answers the client, then calls ``sub.start()``.

        Raises:
            ConcordanceError: storage did not answer (nothing is registered).
        """
        sub = Subscription(self, next(self._ids), sink, prefix, key, since)
        self._subs[sub.id] = sub
        try:
            await self._watch()
            status = await self.storage.status(self.storage_timeout)
        except BaseException:
            self.remove(sub)
            raise
        if since is None:
            sub.cursor = status.revision
        return sub, status.revision

    def remove(self, sub: Subscription) -> None:
        """Forget ``sub`` (its task stops on its own or via ``stop``)."""
        self._subs.pop(sub.id, None)
        self._unwatch_if_idle()

    async def _watch(self) -> None:
        """Storage publishes change batches only to a front that asked (a node nobody
        watches pays nothing for them). Asked before the caller's first read of
        storage, on the same ordered socket: every batch after that read comes."""
        if not self._watching:
            self._watching = True
            await self.storage.watch()

    def _unwatch_if_idle(self) -> None:
        if self._watching and not self._subs and not self._waiters:
            self._watching = False
            self.storage.unwatch()

    def unsubscribe(self, sub: Subscription) -> None:
        self.remove(sub)
        sub.stop()

    @contextlib.asynccontextmanager
    async def waiter(self, prefix: str, since: int) -> AsyncIterator[ChangeWaiter]:
        """Register a long-poll for the duration of the ``async with`` block (change
        batches are asked for before it is entered)."""
        w = ChangeWaiter(prefix, since, self.clock)
        self._waiters.add(w)
        try:
            await self._watch()
            yield w
        finally:
            self._waiters.discard(w)
            self._unwatch_if_idle()

    def wake_all(self) -> None:
        """End every long-poll now (shutdown): each answers with what it has."""
        for waiter in self._waiters:
            waiter.closed = True
            waiter.event.set()

    async def close(self) -> None:
        """Stop every subscription task (shutdown; the sinks say goodbye themselves)."""
        subs = list(self._subs.values())
        self._subs.clear()
        for sub in subs:
            sub.stop()
        for sub in subs:
            await sub.wait_stopped()
