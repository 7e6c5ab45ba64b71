"""When consensus asks storage for a checkpoint or a snapshot: never a copy to compact."""

from __future__ import annotations

import asyncio
from typing import Any

from concordance.consensus.snapshots import SnapshotCoordinator
from concordance.raft.entries import Membership, SnapshotMeta

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
