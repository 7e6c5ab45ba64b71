"""Watch fan-out: storage's change batches to subscriptions and long-polls, in order, no gaps.

Why it is built this way: the events PUB may drop messages (slow joiner, high
water mark, a restarted storage), while API.md §4 promises every subscriber
each change exactly once, in revision order. Revisions are global and
contiguous (every committed change takes the next one), so a missing one is
visible, and storage's change log is the durable copy to repair from. And a
write must cost the watches it matches, not every watch of the node: a batch
is routed through a :class:`~concordance.front.watch_index.PrefixIndex`, and
an idle subscription is a small object in that index, with no task.

Theory of operation:

* One task (the event pump in ``app``) calls :meth:`WatchHub.publish` for
  every batch, synchronously: publishing never waits. Batches queue in order
  and one hub task, the feeder, routes them: for each changed key it looks up
  the matching subscriptions only. It yields to the loop every
  ``FEED_CHUNK`` deliveries, so the writer whose result follows a batch is
  not answered after a thousand watchers' notifications.
* The hub keeps ``fed``: every change up to ``fed`` has been routed. A batch
  at or below it is a duplicate; a batch that starts beyond ``fed + 1``
  follows a gap (dropped messages, a restart, an overflowed queue): the hub
  fetches the missing range from storage's ``changes`` for all keys, page by
  page, and routes it before anything newer. One repair serves every
  subscription. ``fed`` starts at the revision the first subscription read
  from storage, and is forgotten when the last one goes.
* A subscription is *live* (delivered to synchronously by the feeder, no
  task) or *busy*: not started yet, replaying ``sinceRevision``, or catching
  up after its own inbox overflowed. A busy one buffers its matching batches
  in an inbox, and a task of its own works through them and ends, leaving it
  live. Each has a ``cursor``: every matching change up to it was delivered;
  events at or below it are dropped, so replay hands over to live delivery
  without gap or duplicate.
* A subscription is registered (buffering) BEFORE its start revision is read
  from storage, so nothing published in between is lost. Storage is asked
  only for the hub's baseline and while batches wait to be routed; otherwise
  the start revision is ``fed`` (everything after it will be routed to the
  new subscription).
* An inbox that overflows is emptied and keeps only the newest batch; the
  subscription then fetches what it missed from storage under its own
  prefix. The connection's bounded send queue is the slow-consumer limit: a
  notification that does not fit cancels the subscription
  (``slow_consumer``). Compaction met during a replay or a repair cancels
  with ``compacted``: a live subscription when the hub's repair met it, a
  busy one when its own catch-up does. Storage being down only delays.
* Long-polls register a waiter (in an index of their own) before they read;
  any batch with a matching change above their ``since``, or any gap, wakes
  them and they read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.errors import Compacted, ConcordanceError, Unavailable
from concordance.front.clients import StorageClient
from concordance.front.codec import Renderer, dumps
from concordance.front.stream_ping import Pinger
from concordance.front.watch_index import PrefixIndex
from concordance.protocol import wire
from concordance.protocol.payloads import Change

__all__ = ["ChangeWaiter", "LiveBatch", "Sink", "Subscription", "WatchHub"]

log = logging.getLogger(__name__)

PAGE = 1000  # events per storage ``changes`` page during replay and repair
INBOX_LIMIT = 1024  # batches buffered per busy subscription (and by the hub) before a reset
FEED_CHUNK = 64  # deliveries between the feeder's yields to the loop
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

    def __init__(self, events: tuple[Change, ...], revision: int) -> None:
        self.events = events
        self.revision = max([revision, *(e.revision for e in events)])
        self.first = events[0].revision if events else revision
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


Routed = tuple[LiveBatch, tuple[int, ...]]  # a batch and the indexes of its events that match


class Subscription:
    """One watch on a prefix or a single key, feeding one sink.

    Slotted, its inbox made only when needed and no task while live: an idle
    subscription costs a few hundred bytes (PERFORMANCE.md, Scale).
    """

    __slots__ = (
        "_hub",
        "_inbox",
        "_lost",
        "_replay",
        "_task",
        "cursor",
        "ended",
        "id",
        "key",
        "prefix",
        "sink",
        "started",
    )

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
        self.cursor = since if since is not None else 0
        self.started = False  # start() was called (its subscribe reply is queued)
        self.ended = False  # removed from the hub; nothing more is delivered
        self._hub = hub
        self._replay = since is not None
        self._lost = False  # batches were dropped from the inbox: repair before the next
        self._inbox: deque[Routed] | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """Batches go to the inbox (not started, or its task is catching up)."""
        return not self.started or self._task is not None

    def matches(self, key: str) -> bool:
        if self.key is not None:
            return key == self.key
        return key.startswith(self.prefix)

    def feed(self, batch: LiveBatch, indexes: tuple[int, ...]) -> None:
        """Deliver now if live, else buffer. Raises _SlowConsumer (live only)."""
        if self.busy:
            self.buffer(batch, indexes)
        else:
            self._deliver(batch, indexes)

    def buffer(self, batch: LiveBatch, indexes: tuple[int, ...]) -> None:
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        elif len(inbox) >= self._hub.inbox_limit:
            inbox.clear()  # the gap this leaves is repaired from storage
            self._lost = True
        inbox.append((batch, indexes))
        if self.started and self._task is None:
            self._spawn()

    def lose(self, through: int) -> None:
        """Changes up to ``through`` will never be routed here: empty the inbox (all of
        it is older) and fetch from storage up to ``through`` before anything else."""
        self._inbox = deque([(LiveBatch((), through), ())])
        self._lost = True
        if self.started and self._task is None and not self.ended:
            self._spawn()

    def start(self) -> None:
        """Begin delivery: a task only if there is a replay or a backlog to work through."""
        self.started = True
        if not self.ended and (self._replay or self._inbox):
            self._spawn()

    def _spawn(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"watch {self.id}")

    def stop(self) -> None:
        self.ended = True
        if self._task is not None:
            self._task.cancel()

    async def wait_stopped(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        reason = "shutdown"
        try:
            if self._replay:
                self._replay = False
                await self._catch_up(target=None)
            while self._inbox:
                batch, indexes = self._inbox.popleft()
                if self._lost:
                    self._lost = False
                    await self._catch_up(target=batch.revision)
                self._deliver(batch, indexes)
            self._inbox = None
            self._task = None  # live from here: the feeder delivers directly
            return
        except Compacted:
            reason = "compacted"
        except _SlowConsumer:
            reason = "slow_consumer"
        except Exception:
            log.exception("watch %d failed", self.id)
        self._task = None
        self._hub.end(self, reason)

    def _deliver(self, batch: LiveBatch, indexes: tuple[int, ...]) -> None:
        if batch.revision <= self.cursor:
            return
        if batch.first <= self.cursor:
            indexes = tuple(i for i in indexes if batch.events[i].revision > self.cursor)
        if indexes:
            renderer = self._hub.renderer
            events = [batch.rendered(renderer, i) for i in indexes]
            self._emit(events, batch.encoded(renderer, indexes))
        self.cursor = batch.revision

    async def _catch_up(self, target: int | None) -> None:
        """Deliver stored changes after the cursor: all of them (replay), or up to ``target``."""
        while target is None or self.cursor < target:
            page = await self._hub.changes(self.prefix, self.cursor, f"watch {self.id}")
            renderer = self._hub.renderer
            events = [renderer.event(e) for e in page.changes if self.matches(e.key)]
            if events:
                self._emit(events, None)
            self.cursor = max(self.cursor, page.revision)
            if not page.changes or page.revision > page.changes[-1].revision:
                return  # complete: storage answered up to its revision, past the last event
            # A page ends at its last event's revision when storage cut it: at ``page``
            # events, or sooner, before a revision (an atomic batch) that would have
            # crossed that size. Its length cannot tell which; only an answer that
            # reaches past its last event (or an empty one) is the end.

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
    """Every live subscription and long-poll of this front, and the feeder that routes to them."""

    def __init__(
        self,
        storage: StorageClient,
        renderer: Renderer,
        *,
        page: int = PAGE,
        inbox_limit: int = INBOX_LIMIT,
        feed_chunk: int = FEED_CHUNK,
        storage_timeout: float = 2.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.storage = storage
        self.clock = clock  # long-poll timeouts and storage retry backoff run on it
        self.renderer = renderer
        self.page = page
        self.inbox_limit = inbox_limit
        self.feed_chunk = feed_chunk
        self.storage_timeout = storage_timeout
        self.last: int | None = None  # highest revision published (long-polls' gap detection)
        self.fed: int | None = None  # every change up to it was routed (None: no subscriber)
        self._subs: dict[int, Subscription] = {}
        self._index: PrefixIndex[Subscription] = PrefixIndex()
        self._ids = itertools.count(1)
        self._waiters: PrefixIndex[ChangeWaiter] = PrefixIndex()
        self._waiter_ids = itertools.count(1)
        self._watching = False  # storage was asked for change batches (storage.watch)
        self._unfed: deque[LiveBatch] = deque()  # published, not yet routed
        self._feeder: asyncio.Task[None] | None = None
        self.pinger = Pinger()  # keeps the /stream connections that hold subscriptions alive
        self._baseline: asyncio.Future[int] | None = None  # the first read of storage, out
        self._closed = False

    @property
    def watchers(self) -> int:
        return len(self._subs)

    @property
    def waiters(self) -> int:
        return len(self._waiters)

    # -- publishing ------------------------------------------------------------
    def publish(self, batch: wire.ChangeBatch) -> None:
        """Queue a batch for the feeder and wake the long-polls it concerns; never waits."""
        live = LiveBatch(batch.events, batch.revision)
        gap = self.last is None or live.first > self.last + 1
        if self.last is None or live.revision > self.last:
            self.last = live.revision
        self._wake_waiters(live, gap)
        if not self._subs:
            return  # nobody to route to (``fed`` was forgotten with the last one)
        if len(self._unfed) >= self.inbox_limit:
            self._unfed.clear()  # the gap this leaves is repaired from storage
        self._unfed.append(live)
        if self._feeder is None and not self._closed:
            self._feeder = asyncio.get_running_loop().create_task(self._feed(), name="watch-feed")

    def _wake_waiters(self, live: LiveBatch, gap: bool) -> None:
        if not self._waiters:
            return
        if gap:
            for waiter in self._waiters:
                waiter.event.set()
            return
        for event in live.events:
            for waiter in self._waiters.matching(event.key):
                if event.revision > waiter.since:
                    waiter.event.set()

    async def _feed(self) -> None:
        """Route queued batches in order (repairing gaps first); ends when the queue is empty."""
        try:
            while self._unfed and self._subs:
                fed = self.fed
                if fed is None:
                    return  # no baseline yet: the first subscription's read restarts us
                live = self._unfed[0]
                if live.first > fed + 1:
                    await self._repair(fed, live.first - 1)
                    continue
                self._unfed.popleft()
                await self._route(live)
            if not self._subs:
                self._unfed.clear()
        except Exception:  # what is still queued goes with the next batch published
            log.exception("watch feed failed")
        finally:
            self._feeder = None

    async def _route(self, live: LiveBatch) -> None:
        """Hand ``live``'s events above ``fed`` to the subscriptions they match."""
        fed = self.fed
        if fed is None or live.revision <= fed:
            return
        self.fed = live.revision
        matched: dict[Subscription, list[int]] = {}
        for i, event in enumerate(live.events):
            if event.revision > fed:
                for sub in self._index.matching(event.key):
                    matched.setdefault(sub, []).append(i)
        done = 0
        for sub, indexes in matched.items():
            if sub.ended:
                continue  # cancelled while the feeder yielded
            try:
                sub.feed(live, tuple(indexes))
            except _SlowConsumer:
                self.end(sub, "slow_consumer")
            except Exception:  # one failing watch must not cost the others this batch
                log.exception("watch %d failed", sub.id)
                self.end(sub, "shutdown")
            done += 1
            if done % self.feed_chunk == 0:
                await asyncio.sleep(0)  # let writers' answers and the connections' writers run

    async def _repair(self, fed: int, target: int) -> None:
        """Route the changes after ``fed`` up to at least ``target`` from storage's log."""
        try:
            page = await self.changes("", fed, "watch feed")
        except Compacted:
            if self.fed == fed:
                self._compacted(target)
            return
        if self.fed != fed:
            return  # forgotten (no subscriber left) or re-based meanwhile
        if page.revision <= fed:  # storage is behind the batch it sent (a restore): wait
            await self.clock.sleep(0.05)
            return
        await self._route(LiveBatch(tuple(page.changes), page.revision))

    def _compacted(self, target: int) -> None:
        """Changes up to ``target`` are gone: live subscriptions cannot be repaired; busy
        ones check from their own cursor (a replay may already be past the hole)."""
        for sub in list(self._subs.values()):
            if sub.busy:
                sub.lose(target)
            else:
                self.end(sub, "compacted")
        if self.fed is not None:
            self.fed = max(self.fed, target)

    async def changes(self, prefix: str, since: int, who: str) -> wire.ChangesOk:
        """Storage's ``changes`` after ``since``, retried while storage does not answer.

        Raises:
            Compacted: ``since`` is older than the history storage keeps.
        """
        delay = 0.05
        while True:
            try:
                return await self.storage.changes(prefix, since, self.page, self.storage_timeout)
            except Compacted:
                raise
            except ConcordanceError as e:
                log.info("%s: storage not answering (%s); retrying", who, e)
            await self.clock.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    # -- subscriptions -----------------------------------------------------------
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
        self._index.add(sub.id, sub, key if key is not None else prefix, exact=key is not None)
        try:
            revision = await self._start_revision()
        except BaseException:
            self.remove(sub)
            raise
        if since is None:
            sub.cursor = revision
        return sub, revision

    async def _start_revision(self) -> int:
        """The revision a subscription just registered starts after.

        Any value ``fed`` takes after the registration is safe: what is routed
        after it reaches the new subscription. So storage is read only for the
        baseline (no ``fed`` yet; subscriptions that come while that read is
        out share it, nothing being routed before it) and while batches wait to
        be routed (a fresh revision then: a writer answered here sees a start
        at or after its write). 10,000 clients resubscribing at once after a
        restart make one read, not 10,000 (which timed out in storage).
        """
        if self.fed is not None and not self._unfed and self._feeder is None:
            return self.fed
        if self.fed is None and self._baseline is not None:
            return await asyncio.shield(self._baseline)
        baseline = None
        if self.fed is None:
            baseline = self._baseline = asyncio.get_running_loop().create_future()
        try:
            await self._watch()
            revision = (await self.storage.status(self.storage_timeout)).revision
        except BaseException as e:
            if baseline is not None:
                self._baseline = None
                baseline.set_exception(e if isinstance(e, Exception) else Unavailable("shutdown"))
                baseline.exception()  # retrieved: the waiters re-raise it, if any
            raise
        if baseline is not None:
            self._baseline = None
            baseline.set_result(revision)
        if self.fed is None and self._subs:
            # The baseline: every batch after it comes (or its absence shows as a gap);
            # the ones at or below it are old news.
            self.fed = revision
            if self._unfed and self._feeder is None and not self._closed:
                self._feeder = asyncio.get_running_loop().create_task(self._feed())
        return revision

    def remove(self, sub: Subscription) -> None:
        """Forget ``sub`` (its task, if any, stops on its own or via ``stop``)."""
        sub.ended = True
        if self._subs.pop(sub.id, None) is None:
            return
        if sub.key is not None:
            self._index.discard(sub.id, sub.key, exact=True)
        else:
            self._index.discard(sub.id, sub.prefix, exact=False)
        if not self._subs:
            self.fed = None
            self._unfed.clear()
        self._unwatch_if_idle()

    def end(self, sub: Subscription, reason: str) -> None:
        """Remove ``sub`` and tell its sink why (``slow_consumer``, ``compacted``, ...)."""
        if sub.ended:
            return
        self.remove(sub)
        sub.sink.cancelled(sub.id, reason)

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

    # -- long-polls ----------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def waiter(self, prefix: str, since: int) -> AsyncIterator[ChangeWaiter]:
        """Register a long-poll for the duration of the ``async with`` block (change
        batches are asked for before it is entered)."""
        w = ChangeWaiter(prefix, since, self.clock)
        ident = next(self._waiter_ids)
        self._waiters.add(ident, w, prefix, exact=False)
        try:
            await self._watch()
            yield w
        finally:
            self._waiters.discard(ident, prefix, exact=False)
            self._unwatch_if_idle()

    def wake_all(self) -> None:
        """End every long-poll now (shutdown): each answers with what it has."""
        for waiter in self._waiters:
            waiter.closed = True
            waiter.event.set()

    async def close(self) -> None:
        """Stop the feeder and every subscription task (shutdown; the sinks say goodbye
        themselves)."""
        self._closed = True
        self.pinger.stop()
        subs = list(self._subs.values())
        self._subs.clear()
        self._index = PrefixIndex()
        self._unfed.clear()
        if self._feeder is not None:
            self._feeder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feeder
        for sub in subs:
            sub.stop()
        for sub in subs:
            await sub.wait_stopped()
