"""The watch fan-out alone: order, replay, gap repair, duplicates, slow consumers, isolation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from concordance.errors import Unavailable
from concordance.front.codec import Renderer
from concordance.front.watch import Subscription, WatchHub
from concordance.protocol import wire
from concordance.protocol.commands import Batch, Command, Delete, Set
from concordance.security.crypto import Cipher
from concordance.testing.poll import until
from tests.unit.front.fakes import ENC_KEY, FakeNode


class ListSink:
    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.notes: list[tuple[int, list[dict[str, Any]]]] = []
        self.cancels: list[tuple[int, str]] = []

    def notify(
        self, subscription_id: int, events: list[dict[str, Any]], events_json: str | None
    ) -> bool:
        if len(self.notes) >= self.capacity:
            return False
        if events_json is not None:  # the shared encoding says the same as the events
            assert json.loads(events_json) == json.loads(json.dumps(events))
        self.notes.append((subscription_id, events))
        return True

    def cancelled(self, subscription_id: int, reason: str) -> None:
        self.cancels.append((subscription_id, reason))

    def events(self, sub: Subscription | None = None) -> list[dict[str, Any]]:
        return [e for sid, evs in self.notes if sub is None or sid == sub.id for e in evs]

    def revisions(self, sub: Subscription | None = None) -> list[int]:
        return [e["revision"] for e in self.events(sub)]


class World:
    def __init__(self, tmp_path: Path, retention: int = 100_000, **hub_kw: Any) -> None:
        self.node = FakeNode(tmp_path, retention=retention)
        self.hub = WatchHub(self.node.storage, Renderer(Cipher((ENC_KEY,))), **hub_kw)
        self.request_id = 0

    def write(self, key: str, value: bytes = b"1", delete: bool = False) -> None:
        self.request_id += 1
        op = Delete(key) if delete else Set(key, value)
        self.node.apply(Command("n1", self.request_id, 0, op).encode())

    def batches(self) -> list[wire.ChangeBatch]:
        out = []
        while not self.node.events.queue.empty():
            event = self.node.events.queue.get_nowait()
            if isinstance(event, wire.ChangeBatch):
                out.append(event)
        return out

    def pump(self) -> None:
        for batch in self.batches():
            self.hub.publish(batch)

    async def subscribe(
        self,
        sink: ListSink,
        prefix: str = "tenant:a/",
        key: str | None = None,
        since: int | None = None,
    ) -> Subscription:
        sub, _ = await self.hub.subscribe(sink, prefix=key or prefix, key=key, since=since)
        sub.start()
        return sub


async def settle(rounds: int = 30) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def run(tmp_path: Path, scenario: Callable[[World], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        world = World(tmp_path, **kw)
        try:
            await scenario(world)
        finally:
            await world.hub.close()
            world.node.close()

    asyncio.run(main())


def test_live_events_in_order_and_isolated_by_tenant_and_key(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        sink = ListSink()
        mine = await w.subscribe(sink)
        only = await w.subscribe(sink, key="tenant:a/only")
        w.write("tenant:b/secret")
        w.write("tenant:a/other", b'"x"')
        w.write("tenant:a/only", b"2")
        w.write("tenant:a/only2", b"3")  # a key watch is exact, not a prefix
        w.write("tenant:a/other", delete=True)
        w.pump()
        await settle()
        assert [e["key"] for e in sink.events(mine)] == [
            "tenant:a/other", "tenant:a/only", "tenant:a/only2", "tenant:a/other",
        ]  # fmt: skip
        assert sink.revisions(mine) == [2, 3, 4, 5]
        assert [e["key"] for e in sink.events(only)] == ["tenant:a/only"]
        assert sink.events(mine)[0]["value"] == "x" and "value" not in sink.events(mine)[-1]
        assert all(not e["key"].startswith("tenant:b/") for e in sink.events())

    run(tmp_path, scenario)


def test_a_gap_is_repaired_from_storage_never_skipped(tmp_path: Path) -> None:
    """One read of storage's log (every key after ``fed``) repairs the gap for every
    subscription, however many there are."""

    async def scenario(w: World) -> None:
        sink = ListSink()
        sub = await w.subscribe(sink)
        other = await w.subscribe(sink, prefix="tenant:b/")
        w.write("tenant:a/1")
        w.node.knobs.drop_batches = 2
        w.write("tenant:a/2")
        w.write("tenant:b/3")
        w.write("tenant:a/4")
        w.pump()
        await settle()
        assert sink.revisions(sub) == [1, 2, 4] and sink.revisions(other) == [3]
        assert w.node.storage.changes_calls == [("", 1, w.hub.page)]

    run(tmp_path, scenario)


def test_batches_lost_before_the_first_arrives_are_repaired(tmp_path: Path) -> None:
    """The slow joiner: the first batches after a subscription's read never come. The
    read is the hub's baseline, so the first batch that does come shows the gap."""

    async def scenario(w: World) -> None:
        w.write("tenant:a/0")
        w.batches()
        sink = ListSink()
        sub = await w.subscribe(sink)
        w.node.knobs.drop_batches = 2
        for i in range(1, 4):
            w.write(f"tenant:a/{i}")
        w.pump()
        await settle()
        assert sink.revisions(sub) == [2, 3, 4]

    run(tmp_path, scenario)


def test_a_gap_past_the_history_cancels_live_subscriptions_as_compacted(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        sink = ListSink()
        sub = await w.subscribe(sink)
        w.node.knobs.drop_batches = 39
        for i in range(40):
            w.write(f"tenant:a/{i % 2}")
        w.pump()
        await settle()
        assert sink.cancels == [(sub.id, "compacted")] and sink.notes == []
        assert w.hub.watchers == 0

    run(tmp_path, scenario, retention=16)


def test_duplicates_and_stale_batches_are_dropped(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        sink = ListSink()
        sub = await w.subscribe(sink)
        w.write("tenant:a/1")
        w.write("tenant:a/2")
        batches = w.batches()
        for batch in [*batches, *batches, batches[0]]:
            w.hub.publish(batch)
        await settle()
        assert sink.revisions(sub) == [1, 2]

    run(tmp_path, scenario)


def test_replay_since_then_live_without_gap_or_duplicate(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        for i in range(7):
            w.write(f"tenant:a/k{i % 3}", str(i).encode())
        early = w.batches()
        sink = ListSink()
        sub, revision = await w.hub.subscribe(sink, prefix="tenant:a/", key=None, since=2)
        assert revision == 7
        for batch in early[4:]:  # live batches that the replay also covers, buffered
            w.hub.publish(batch)
        w.write("tenant:a/live")
        w.write("tenant:a/live2")
        w.pump()
        sub.start()
        await settle()
        assert sink.revisions(sub) == [3, 4, 5, 6, 7, 8, 9]
        assert len(w.node.storage.changes_calls) >= 3  # paged by 2
        assert [e["value"] for e in sink.events(sub)][:5] == [2, 3, 4, 5, 6]

    run(tmp_path, scenario, page=2)


def test_live_subscription_starts_at_the_current_revision(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        w.write("tenant:a/old")
        sink = ListSink()
        sub, revision = await w.hub.subscribe(sink, prefix="tenant:a/", key=None, since=None)
        assert revision == 1
        w.pump()  # the old write's batch arrives late: not delivered
        w.write("tenant:a/new")
        w.pump()
        sub.start()
        await settle()
        assert sink.revisions(sub) == [2]
        assert w.node.storage.changes_calls == []

    run(tmp_path, scenario)


def test_a_caught_up_hub_starts_a_subscription_at_fed_without_asking_storage(
    tmp_path: Path,
) -> None:
    """Reads of storage per subscribe: one for the first (the baseline), none while the hub
    has routed everything published; one again while batches wait to be routed."""

    async def scenario(w: World) -> None:
        storage = w.node.storage
        reads = 0
        status = storage.status

        async def counted(timeout: float) -> wire.StorageStatusOk:
            nonlocal reads
            reads += 1
            return await status(timeout)

        storage.status = counted  # type: ignore[method-assign]
        sink = ListSink()
        first = await w.subscribe(sink)
        w.write("tenant:a/1")
        w.pump()
        await settle()
        second, revision = await w.hub.subscribe(sink, prefix="tenant:a/", key=None, since=None)
        second.start()
        assert (reads, revision) == (1, 1)
        w.write("tenant:a/2")
        w.pump()  # queued, not routed yet: the hub is not caught up
        third, revision = await w.hub.subscribe(sink, prefix="tenant:a/", key=None, since=None)
        third.start()
        assert (reads, revision) == (2, 2)
        await settle()
        assert sink.revisions(first) == [1, 2] and sink.revisions(second) == [2]
        assert sink.revisions(third) == []

    run(tmp_path, scenario)


def test_subscriptions_arriving_together_share_the_baseline_read(tmp_path: Path) -> None:
    """A burst of subscribes on a hub with no baseline (10,000 clients back after a
    restart) makes one storage read, and every one of them gets what follows it."""

    async def scenario(w: World) -> None:
        storage = w.node.storage
        reads = 0
        status = storage.status

        async def counted(timeout: float) -> wire.StorageStatusOk:
            nonlocal reads
            reads += 1
            return await status(timeout)

        storage.status = counted  # type: ignore[method-assign]
        w.write("tenant:a/old")
        w.batches()
        sink = ListSink()
        got = await asyncio.gather(
            *(w.hub.subscribe(sink, prefix="tenant:a/", key=None, since=None) for _ in range(50))
        )
        for sub, _ in got:
            sub.start()
        assert reads == 1 and {revision for _, revision in got} == {1}
        w.write("tenant:a/new")
        w.pump()
        await settle()
        assert all(sink.revisions(sub) == [2] for sub, _ in got)

    run(tmp_path, scenario)


def test_unsubscribe_stops_delivery(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        sink = ListSink()
        sub = await w.subscribe(sink)
        other = await w.subscribe(sink)
        w.write("tenant:a/1")
        w.pump()
        await settle()
        w.hub.unsubscribe(sub)
        assert w.hub.watchers == 1
        w.write("tenant:a/2")
        w.pump()
        await settle()
        assert sink.revisions(sub) == [1] and sink.revisions(other) == [1, 2]
        assert sink.cancels == []

    run(tmp_path, scenario)


def test_a_gap_past_the_history_spares_a_busy_subscription_ahead_of_it(
    tmp_path: Path,
) -> None:
    """A subscription not started yet, replaying from beyond the hole, repairs from its
    own cursor instead of being cancelled with the live ones."""

    async def scenario(w: World) -> None:
        for i in range(30):
            w.write(f"tenant:a/{i % 2}")
        w.batches()
        sink = ListSink()
        live = await w.subscribe(sink)  # the hub's baseline: 30
        busy, _ = await w.hub.subscribe(sink, prefix="tenant:a/", key=None, since=45)
        w.node.knobs.drop_batches = 20
        for i in range(21):  # revisions 31..51; only 51's batch comes
            w.write(f"tenant:a/{i % 2}")
        w.pump()
        await settle()
        busy.start()
        await settle()
        assert sink.cancels == [(live.id, "compacted")]
        assert sink.revisions(busy) == list(range(46, 52))

    run(tmp_path, scenario, retention=16)


def test_the_fan_out_yields_to_other_tasks_between_chunks(tmp_path: Path) -> None:
    """publish() only queues, and the feeder lets other tasks run every ``feed_chunk``
    deliveries: the writer whose result follows a batch is not answered after a
    thousand watchers' notifications."""

    async def scenario(w: World) -> None:
        sink = ListSink()
        subs = [await w.subscribe(sink) for _ in range(6)]
        await settle()
        w.write("tenant:a/1")
        w.pump()
        assert sink.notes == [] and w.hub.last == 1
        seen: list[int] = []

        async def bystander() -> None:
            seen.append(len(sink.notes))

        await asyncio.create_task(bystander())
        await settle()
        assert 0 < seen[0] < 6
        assert all(sink.revisions(sub) == [1] for sub in subs)

    run(tmp_path, scenario, feed_chunk=2)


def test_a_batch_touches_only_the_subscriptions_it_matches(tmp_path: Path) -> None:
    """The index: a prefix is matched by its exact characters (``tenant:a/`` does not see
    ``tenant:ab/``), a key watch only by its key; the others are not visited at all
    (their cursor stays where their own last change left it)."""

    async def scenario(w: World) -> None:
        sink = ListSink()
        a = await w.subscribe(sink, prefix="tenant:a/")
        ab = await w.subscribe(sink, prefix="tenant:ab/")
        deep = await w.subscribe(sink, prefix="tenant:a/x/")
        key = await w.subscribe(sink, key="tenant:a/x")
        bystanders = [await w.subscribe(sink, prefix=f"tenant:s{i}/") for i in range(50)]
        w.write("tenant:ab/1")  # 1
        w.write("tenant:a/x")  # 2
        w.write("tenant:a/x/y")  # 3
        w.write("tenant:a/xy")  # 4
        w.pump()
        await settle()
        assert sink.revisions(a) == [2, 3, 4]
        assert sink.revisions(ab) == [1]
        assert sink.revisions(deep) == [3]
        assert sink.revisions(key) == [2]
        assert [s.cursor for s in (a, ab, deep, key)] == [4, 1, 3, 2]
        assert {s.cursor for s in bystanders} == {0}
        assert sink.revisions(bystanders[0]) == []

    run(tmp_path, scenario)


def test_an_idle_subscription_has_no_task(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        sink = ListSink()
        before = len(asyncio.all_tasks())
        subs = [await w.subscribe(sink, prefix=f"tenant:s{i}/") for i in range(100)]
        replayed = await w.subscribe(sink, since=0)
        w.write("tenant:s1/k")
        w.pump()
        await settle()
        assert sink.revisions(subs[1]) == [1]
        assert len(asyncio.all_tasks()) == before  # the replay's task ended with its replay
        assert w.hub.watchers == 101 and replayed.cursor == 1

    run(tmp_path, scenario)


def test_a_replay_page_cut_short_by_a_batch_on_its_edge_is_not_taken_for_the_end(
    tmp_path: Path,
) -> None:
    """A storage page holds whole revisions: one that would end inside a batch stops
    before it, with fewer events than the page size. The replay must read on, not
    take that short page for the end of the history (every event after it was lost)."""

    async def scenario(w: World) -> None:
        w.write("tenant:a/k0")  # revision 1
        w.request_id += 1  # revision 2: two events, across the edge of a page of 2
        batch = Batch((Set("tenant:a/b1", b"1"), Set("tenant:a/b2", b"2")))
        w.node.apply(Command("n1", w.request_id, 0, batch).encode())
        w.write("tenant:a/k3")  # revision 3
        w.batches()  # published before the subscription: the replay must cover them
        sink = ListSink()
        sub, revision = await w.hub.subscribe(sink, prefix="tenant:a/", key=None, since=0)
        assert revision == 3
        sub.start()
        await until(lambda: len(sink.revisions(sub)) >= 4, what="the whole replay")
        assert sink.revisions(sub) == [1, 2, 2, 3]

    run(tmp_path, scenario, page=2)


def test_live_delivery_resumes_after_a_replay_buffered_past_its_inbox(tmp_path: Path) -> None:
    """A replay slower than the live batches: its inbox overflows, is repaired from
    storage, and the subscription then goes on live, with no gap or duplicate."""

    async def scenario(w: World) -> None:
        for i in range(5):
            w.write(f"tenant:a/{i}")
        w.batches()
        sink = ListSink()
        sub, _ = await w.hub.subscribe(sink, prefix="tenant:a/", key=None, since=1)
        for i in range(5, 11):
            w.write(f"tenant:a/{i}")
        w.pump()
        await settle()  # routed into the inbox of 2 before the replay starts
        sub.start()
        await settle()
        w.write("tenant:a/live")
        w.pump()
        await settle()
        assert sink.revisions(sub) == list(range(2, 13))

    run(tmp_path, scenario, inbox_limit=2)


def test_a_failing_watch_is_cancelled_and_the_others_still_get_the_batch(
    tmp_path: Path,
) -> None:
    class BrokenSink(ListSink):
        def notify(
            self, subscription_id: int, events: list[dict[str, Any]], events_json: str | None
        ) -> bool:
            raise RuntimeError("a bug in one connection")

    async def scenario(w: World) -> None:
        sink, broken = ListSink(), BrokenSink()
        before = await w.subscribe(sink)
        bad = await w.subscribe(broken)
        after = await w.subscribe(sink)
        w.write("tenant:a/1")
        w.pump()
        await settle()
        assert sink.revisions(before) == [1] and sink.revisions(after) == [1]
        assert broken.cancels == [(bad.id, "shutdown")] and w.hub.watchers == 2

    run(tmp_path, scenario)


def test_slow_consumer_is_cancelled(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        sink = ListSink(capacity=2)
        sub = await w.subscribe(sink)
        for i in range(4):
            w.write(f"tenant:a/{i}")
        w.pump()
        await settle()
        assert sink.revisions(sub) == [1, 2]
        assert sink.cancels == [(sub.id, "slow_consumer")]
        assert w.hub.watchers == 0

    run(tmp_path, scenario)


def test_replay_into_compacted_history_is_cancelled(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        for i in range(40):
            w.write(f"tenant:a/{i % 2}")
        w.batches()
        sink = ListSink()
        sub = await w.subscribe(sink, since=0)
        await settle()
        assert sink.cancels == [(sub.id, "compacted")] and sink.notes == []
        assert w.hub.watchers == 0

    run(tmp_path, scenario, retention=16)


def test_an_overflowing_inbox_is_repaired_from_storage(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        sink = ListSink()
        sub, _ = await w.hub.subscribe(sink, prefix="tenant:a/", key=None, since=None)
        for i in range(6):
            w.write(f"tenant:a/{i}")
        w.pump()  # 6 batches into an inbox of 2, before the task runs
        sub.start()
        await settle()
        assert sink.revisions(sub) == [1, 2, 3, 4, 5, 6]

    run(tmp_path, scenario, inbox_limit=2)


def test_storage_down_during_repair_delays_but_loses_nothing(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        sink = ListSink()
        sub = await w.subscribe(sink)
        w.node.knobs.drop_batches = 1
        w.write("tenant:a/1")
        w.write("tenant:a/2")
        w.node.knobs.storage_down = True
        w.pump()
        await settle()
        assert sink.notes == []
        w.node.knobs.storage_down = False
        await until(lambda: sink.notes, "the repair once storage is back")
        assert sink.revisions(sub) == [1, 2]

    run(tmp_path, scenario)


def test_values_are_decrypted_in_events(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        cipher = Cipher((ENC_KEY,))
        sink = ListSink()
        sub = await w.subscribe(sink)
        key = "tenant:a/credentials/x"
        w.write(key, cipher.seal(key, b'{"t":"s"}'))
        w.node.knobs.drop_batches = 1
        w.write(key, cipher.seal(key, b'{"t":"s2"}'))
        w.write("tenant:a/y")
        w.pump()
        await settle()
        assert [e.get("value") for e in sink.events(sub)] == [{"t": "s"}, {"t": "s2"}, 1]

    run(tmp_path, scenario)


def test_long_poll_waiter_wakes_only_for_its_prefix(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        w.write("tenant:a/1")
        w.pump()
        async with w.hub.waiter("tenant:a/", 1) as waiter:
            w.write("tenant:b/1")
            w.pump()
            assert not waiter.event.is_set()
            w.write("tenant:a/2")
            w.pump()
            assert await waiter.wait(1)
            w.write("tenant:ab/1")  # another tenant whose name starts the same
            w.pump()
            assert not waiter.event.is_set()
            w.hub.wake_all()
            assert not await waiter.wait(1)
        assert not w.hub._waiters

    run(tmp_path, scenario)


def test_storage_is_asked_for_changes_while_anyone_watches(tmp_path: Path) -> None:
    """watch() before the first subscription's or long-poll's read of storage, once;
    unwatch() when the last of them is gone."""

    async def scenario(w: World) -> None:
        storage = w.node.storage
        sink = ListSink()
        first = await w.subscribe(sink)
        assert storage.watching == [True]
        second = await w.subscribe(sink)
        async with w.hub.waiter("tenant:a/", 0):
            assert storage.watching == [True]  # already asked
        w.hub.unsubscribe(first)
        assert storage.watching == [True]  # one subscription left
        w.hub.unsubscribe(second)
        assert storage.watching == [True, False]
        async with w.hub.waiter("tenant:a/", 0):
            assert storage.watching == [True, False, True]
        assert storage.watching == [True, False, True, False]

    run(tmp_path, scenario)


def test_a_subscription_storage_refuses_does_not_keep_changes_coming(tmp_path: Path) -> None:
    async def scenario(w: World) -> None:
        w.node.knobs.storage_down = True
        with pytest.raises(Unavailable):
            await w.subscribe(ListSink())
        assert w.hub.watchers == 0 and w.node.storage.watching == [True, False]

    run(tmp_path, scenario)
