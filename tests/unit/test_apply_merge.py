"""Apply messages queued behind one go into its transaction; anything else stops the merge
and keeps its place."""

from __future__ import annotations

import asyncio
from collections import deque

from concordance.protocol import wire
from concordance.storage.apply_merge import take_queued


def _apply(*indexes: int, size: int = 10) -> wire.Apply:
    return wire.Apply(tuple((i, 1, 0, b"x" * size) for i in indexes))


def _env(body: wire.Body) -> wire.Envelope:
    return wire.Envelope(type="apply", id=0, body=body)


def _queue(*bodies: wire.Body) -> asyncio.Queue[wire.Envelope]:
    q: asyncio.Queue[wire.Envelope] = asyncio.Queue()
    for b in bodies:
        q.put_nowait(_env(b))
    return q


def test_queued_applies_join_the_first_in_order() -> None:
    held: deque[wire.Envelope] = deque()
    q = _queue(_apply(3, 4), _apply(5))
    merged = take_queued(_apply(1, 2), q, held)
    assert [e[0] for e in merged.entries] == [1, 2, 3, 4, 5]
    assert q.empty() and not held


def test_another_message_stops_the_merge_and_is_handled_next() -> None:
    held: deque[wire.Envelope] = deque()
    checkpoint = wire.Checkpoint()
    q = _queue(_apply(2), checkpoint, _apply(3))
    merged = take_queued(_apply(1), q, held)
    assert [e[0] for e in merged.entries] == [1, 2]
    assert [env.body for env in held] == [checkpoint]
    assert q.qsize() == 1  # apply 3 waits behind the checkpoint
    assert take_queued(_apply(9), q, held).entries == _apply(9).entries  # held: no merge


def test_the_merge_stops_at_max_bytes_and_alone_returns_the_message_itself() -> None:
    held: deque[wire.Envelope] = deque()
    q = _queue(_apply(2, size=100), _apply(3, size=100), _apply(4, size=100))
    merged = take_queued(_apply(1, size=100), q, held, max_bytes=250)
    assert [e[0] for e in merged.entries] == [1, 2, 3]  # 300 >= 250: no more
    assert q.qsize() == 1
    first = _apply(7)
    assert take_queued(first, _queue(), held) is first
