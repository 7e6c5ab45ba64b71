"""Commit notices: held back a moment, replaced by the next append to the same peer."""

from __future__ import annotations

import asyncio

from concordance.consensus.notices import NOTICE_DELAY, CommitNotices, is_commit_notice
from concordance.raft.entries import Entry, EntryKind
from concordance.raft.messages import AppendEntries, Heartbeat, Message
from concordance.testing.clock import ManualClock


def notice(dst: str, commit: int) -> AppendEntries:
    return AppendEntries(2, "n1", dst, 7, 2, (), commit, reply=False)


def append(dst: str, index: int, commit: int) -> AppendEntries:
    return AppendEntries(
        2, "n1", dst, index - 1, 2, (Entry(2, index, EntryKind.NORMAL, b"x"),), commit
    )


def test_only_an_empty_append_that_asks_no_answer_is_a_notice() -> None:
    assert is_commit_notice(notice("n2", 7))
    assert not is_commit_notice(AppendEntries(2, "n1", "n2", 7, 2, (), 7))  # a probe
    assert not is_commit_notice(append("n2", 8, 7))
    assert not is_commit_notice(Heartbeat(2, "n1", "n2", 7, 0))


def test_a_notice_goes_after_the_delay_and_only_the_latest_per_peer() -> None:
    async def main() -> None:
        clock = ManualClock()
        sent: list[Message] = []
        notices = CommitNotices(clock, sent.extend)
        hb = Heartbeat(2, "n1", "n2", 6, 0)
        assert notices.filter((notice("n2", 6), hb, notice("n3", 6))) == [hb]
        assert notices.filter((notice("n2", 7),)) == []
        await clock.advance(NOTICE_DELAY / 2)
        assert sent == []
        await clock.advance(NOTICE_DELAY / 2)
        assert sent == [notice("n2", 7), notice("n3", 6)]
        assert notices.held == 0

    asyncio.run(main())


def test_an_append_to_the_peer_carries_the_commit_instead() -> None:
    async def main() -> None:
        clock = ManualClock()
        sent: list[Message] = []
        notices = CommitNotices(clock, sent.extend)
        notices.filter((notice("n2", 7), notice("n3", 7)))
        later = append("n2", 8, 7)
        assert notices.filter((later,)) == [later]
        await clock.advance(NOTICE_DELAY)
        assert sent == [notice("n3", 7)]  # n2's rode the append

    asyncio.run(main())


def test_flush_sends_at_once_and_cancels_the_timer() -> None:
    async def main() -> None:
        clock = ManualClock()
        sent: list[Message] = []
        notices = CommitNotices(clock, sent.extend)
        notices.filter((notice("n2", 7),))
        notices.flush()
        assert sent == [notice("n2", 7)] and notices.held == 0
        assert clock.pending == 0
        await clock.advance(NOTICE_DELAY)
        assert sent == [notice("n2", 7)]

    asyncio.run(main())
