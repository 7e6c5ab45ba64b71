"""When consensus asks storage for a snapshot: counted from the newest one, taken or installed."""

from __future__ import annotations

import asyncio
from typing import Any

from concordance.consensus.snapshots import SnapshotCoordinator
from concordance.raft.entries import Membership, SnapshotMeta


class _Disk:
    """Just what the policy reads: the newest snapshot file and the one raft.db records."""

    def __init__(self) -> None:
        self.latest: SnapshotMeta | None = None
        self.initial_snapshot: SnapshotMeta | None = None

    def latest_snapshot(self) -> SnapshotMeta | None:
        return self.latest


def test_no_snapshot_is_asked_for_right_after_installing_one_from_the_leader() -> None:
    """A follower that installed the leader's snapshot at 73 with snapshot_every=32 used
    to ask storage for a copy of it on every loop turn (and drop it) until the next
    entry was applied: ~30 full state copies a second on an idle follower."""

    async def main() -> None:
        disk = _Disk()
        asked: list[Any] = []

        async def send(type: str, body: Any) -> None:
            asked.append(type)

        async def reply(*args: Any) -> None:
            pass

        policy = SnapshotCoordinator(disk, send, reply, every=32, trailing=8)  # type: ignore[arg-type]
        disk.latest = SnapshotMeta(73, 1, Membership(("n1", "n2", "n3")))  # installed
        for _ in range(5):
            await policy.maybe_ask(73)
        assert asked == []
        await policy.maybe_ask(73 + 31)
        assert asked == []
        await policy.maybe_ask(73 + 32)
        assert asked == ["take_snapshot"]

    asyncio.run(main())
