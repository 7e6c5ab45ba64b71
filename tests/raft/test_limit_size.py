"""limit_size: the one byte-budget cut of entry batches."""

from __future__ import annotations

import pytest

from concordance.raft.entries import Entry
from concordance.raft.stores import limit_size

E = [Entry(1, i, data=b"x" * 76) for i in range(1, 5)]  # 100 bytes each by Entry.size()


@pytest.mark.parametrize(
    ("max_bytes", "spent", "taken"),
    [
        (None, 0, 4),
        (None, 500, 4),
        (400, 0, 4),
        (399, 0, 3),
        (200, 0, 2),
        (99, 0, 1),  # a batch is never empty: an oversized first entry goes alone
        (0, 0, 1),
        (250, 100, 1),
        (250, 200, 0),  # something already went out: nothing is forced
        (50, 10, 0),
    ],
)
def test_limit_size(max_bytes: int | None, spent: int, taken: int) -> None:
    assert limit_size(E, max_bytes, spent) == E[:taken]


def test_empty_stays_empty() -> None:
    assert limit_size([], 0) == []
