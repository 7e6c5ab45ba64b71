"""GetBatcher: the single-key reads of one loop turn share one storage request."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from concordance.errors import Unavailable
from concordance.front.get_batch import MAX_KEYS, GetBatcher

Sent = tuple[tuple[str, ...], int, int, float]


class Storage:
    """Answers each key with its name; records what was asked."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.sent: list[Sent] = []
        self.fail = fail

    async def send(
        self, keys: Sequence[str], now: int, min_index: int, timeout: float
    ) -> Sequence[dict[str, Any] | None]:
        self.sent.append((tuple(keys), now, min_index, timeout))
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        return [None if k == "missing" else {"key": k} for k in keys]


def test_reads_of_one_turn_share_a_request_and_each_gets_its_own_entry() -> None:
    async def main() -> None:
        storage = Storage()
        gets = GetBatcher(storage.send)
        got = await asyncio.gather(
            gets.get("a", 10, 1.0), gets.get("missing", 12, 2.0), gets.get("c", 11, 1.5)
        )
        assert got == [{"key": "a"}, None, {"key": "c"}]
        # one request, at the latest now and the longest timeout of its reads
        assert storage.sent == [(("a", "missing", "c"), 12, 0, 2.0)]
        assert await gets.get("d", 13, 1.0) == {"key": "d"}  # a later turn: a new request
        assert gets.requests == 2

    asyncio.run(main())


def test_reads_with_different_min_index_never_share() -> None:
    async def main() -> None:
        storage = Storage()
        gets = GetBatcher(storage.send)
        await asyncio.gather(
            gets.get("a", 1, 1.0), gets.get("b", 1, 1.0, min_index=7), gets.get("c", 1, 1.0)
        )
        assert sorted(storage.sent) == [(("a", "c"), 1, 0, 1.0), (("b",), 1, 7, 1.0)]

    asyncio.run(main())


def test_a_batch_holds_at_most_max_keys() -> None:
    async def main() -> None:
        storage = Storage()
        gets = GetBatcher(storage.send)
        keys = [f"k{i}" for i in range(MAX_KEYS * 2 + 1)]
        got = await asyncio.gather(*(gets.get(k, 1, 1.0) for k in keys))
        assert [e["key"] for e in got if e] == keys
        assert [len(s[0]) for s in storage.sent] == [MAX_KEYS, MAX_KEYS, 1]

    asyncio.run(main())


def test_a_failed_request_fails_every_read_of_it() -> None:
    async def main() -> None:
        gets = GetBatcher(Storage(fail=Unavailable("storage is down")).send)
        got = await asyncio.gather(
            gets.get("a", 1, 1.0), gets.get("b", 1, 1.0), return_exceptions=True
        )
        assert all(isinstance(e, Unavailable) for e in got)

    asyncio.run(main())


def test_a_reader_that_gives_up_leaves_the_others_their_answer() -> None:
    async def main() -> None:
        storage = Storage()
        gets = GetBatcher(storage.send)
        quitter = asyncio.ensure_future(gets.get("a", 1, 1.0))
        stayer = asyncio.ensure_future(gets.get("b", 1, 1.0))
        await asyncio.sleep(0)
        quitter.cancel()
        assert await stayer == {"key": "b"}
        with pytest.raises(asyncio.CancelledError):
            await quitter

    asyncio.run(main())
