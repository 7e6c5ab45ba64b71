"""When consensus asks storage for a checkpoint or a snapshot: never a copy to compact."""

from __future__ import annotations

import asyncio
from typing import Any

from concordance.consensus.snapshots import SnapshotCoordinator
from concordance.protocol.wire import Durable
from concordance.raft.entries import Membership, SnapshotMeta
from concordance.raft.progress import Progress
from concordance.raft.ready import Role

MEMBERS = Membership(("n1", "n2", "n3"))


class _Disk:
    """Just what the policy reads: the log's base and the newest snapshot file."""

    def __init__(self) -> None:
        self.latest: SnapshotMeta | None = None
        self.base = 0

    def latest_snapshot(self) -> SnapshotMeta | None:
        return self.latest

    def first_index(self) -> int:
        return self.base + 1


def _policy(disk: _Disk, asked: list[str]) -> SnapshotCoordinator:
    async def send(type: str, body: Any) -> None:
        asked.append(type)

    async def reply(*args: Any) -> None:
        pass

    return SnapshotCoordinator(disk, send, reply, every=32, trailing=8)  # type: ignore[arg-type]


def test_compaction_asks_for_a_checkpoint_every_n_entries_and_never_a_copy() -> None:
    """Counted from the log's base, which a snapshot installed from the leader moves:
    a follower that installed one at 73 asks nothing until 32 entries after it."""

    async def main() -> None:
        disk, asked = _Disk(), []
        policy = _policy(disk, asked)
        disk.base = 73  # installed from the leader
        disk.latest = SnapshotMeta(73, 1, MEMBERS)
        for _ in range(5):
            await policy.maybe_ask(73)
        await policy.maybe_ask(73 + 31)
        assert asked == []
        await policy.maybe_ask(73 + 32)
        assert asked == ["checkpoint"]
        await policy.maybe_ask(73 + 100)  # one request at a time
        assert asked == ["checkpoint"]

    asyncio.run(main())


def test_a_snapshot_is_asked_for_only_when_none_reaches_the_wanted_index() -> None:
    async def main() -> None:
        disk, asked = _Disk(), []
        policy = _policy(disk, asked)
        disk.latest = SnapshotMeta(73, 1, MEMBERS)
        await policy.want(60)  # the file at 73 serves
        assert asked == []
        await policy.want(80)
        await policy.want(80)  # asked already: that answer serves both
        assert asked == ["take_snapshot"]

    asyncio.run(main())


class _Log:
    applied = 500

    def last_index(self) -> int:
        return 500


class _Core:
    """What ``on_durable`` reads of a leader's core: what it handed out, and each
    follower's progress (one, recently active, at ``needed``)."""

    role = Role.LEADER
    id = "n1"

    def __init__(self, needed: int | None) -> None:
        self.log = _Log()
        self.progress = {"n1": Progress(match=500)}
        if needed is not None:
            self.progress["n2"] = Progress(match=needed, recent_active=True)
        self.compacted_to: list[int] = []

    def base_meta(self, index: int) -> SnapshotMeta:
        return SnapshotMeta(index, 1, MEMBERS)

    def compacted(self, index: int) -> None:
        self.compacted_to.append(index)


class _CompactingDisk(_Disk):
    async def compact_behind(self, meta: SnapshotMeta) -> int:
        self.base = max(self.base, meta.index)
        return self.base


def test_compaction_holds_what_a_catching_up_follower_needs_within_a_bound() -> None:
    """durable 500, trailing 8, every 32: the base is 492, or what an active follower
    still needs, but never held more than 4 x 32 entries below 492."""

    async def main() -> None:
        for needed, base in ((None, 492), (400, 400), (100, 492 - 4 * 32)):
            disk, asked = _CompactingDisk(), []
            policy = _policy(disk, asked)
            core = _Core(needed)
            await policy.on_durable(core, Durable(500))  # type: ignore[arg-type]
            assert (disk.base, core.compacted_to) == (base, [base])

    asyncio.run(main())


def test_requests_a_stopped_storage_left_unanswered_are_asked_again_of_its_successor() -> None:
    """A ``checkpoint`` and a ``take_snapshot`` sent while storage was stopping (a
    planned restart) may be lost with that process: the first ``hello`` after its
    ``stopping`` asks for both again (the snapshot at once, the checkpoint at the
    next look), instead of waiting ``ASK_TIMEOUT``. A periodic ``hello`` without a
    stop in between asks nothing again."""

    async def main() -> None:
        disk, asked = _Disk(), []
        policy = _policy(disk, asked)
        await policy.maybe_ask(40)
        await policy.want(10)
        assert asked == ["checkpoint", "take_snapshot"]
        policy.on_storage_hello()  # a periodic hello of the same process
        await policy.resend()
        await policy.maybe_ask(40)
        assert asked == ["checkpoint", "take_snapshot"]
        policy.on_storage_stopping()
        policy.on_storage_hello()  # its successor
        await policy.resend()
        await policy.maybe_ask(40)
        assert asked == ["checkpoint", "take_snapshot", "take_snapshot", "checkpoint"]

    asyncio.run(main())
