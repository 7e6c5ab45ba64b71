"""Which watches a changed key concerns, without looking at the others.

Why: a write must cost the subscriptions it matches, not every subscription
of the node (a gateway watching 100,000 tenants would otherwise pay 100,000
steps for each write to any of them).

How: items are kept in two hash maps, one by exact key and one by prefix,
plus the set of distinct prefix lengths in use. A changed key ``k`` is
matched by looking ``k`` up among the exact keys, then ``k[:n]`` among the
prefixes for each length ``n`` in use that is at most ``len(k)``. The cost
is one lookup per distinct prefix length (a dozen for ``tenant:s{i}/``
prefixes), whatever the number of items. A prefix matches by its exact
characters, so ``tenant:ab/x`` (whose first nine characters are
``tenant:ab``) never reaches a watch on ``tenant:a/``.

A bucket is the item itself while it is alone under its text (most
prefixes have one watch: no container per watch), and a dict keyed by an id
the caller chooses once there are more, so removal stays O(1) and a
thousand watches on one prefix are found together.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

__all__ = ["PrefixIndex"]

T = TypeVar("T")


class _Many(dict[int, Any]):
    """A bucket of two or more items (told apart from a lone item by its type)."""

    __slots__ = ()


class PrefixIndex(Generic[T]):
    """Items registered under an exact key or under a prefix, found per changed key."""

    __slots__ = ("_counts", "_exact", "_lengths", "_prefixes", "_size")

    def __init__(self) -> None:
        # text -> (ident, item) alone, or a _Many of ident -> item
        self._exact: dict[str, tuple[int, T] | _Many] = {}
        self._prefixes: dict[str, tuple[int, T] | _Many] = {}
        self._counts: dict[int, int] = {}  # prefix length -> distinct prefixes of that length
        self._lengths: list[int] = []  # the lengths of _counts, ascending
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, ident: int, item: T, text: str, *, exact: bool) -> None:
        """Register ``item`` (under ``ident``, unique per item) for ``text``."""
        table = self._exact if exact else self._prefixes
        bucket = table.get(text)
        if bucket is None:
            table[text] = (ident, item)
            if not exact:
                self._count(len(text), +1)
        elif isinstance(bucket, _Many):
            if ident not in bucket:
                self._size += 1
            bucket[ident] = item
            return
        elif bucket[0] == ident:
            table[text] = (ident, item)
            return
        else:
            many = table[text] = _Many()
            many[bucket[0]] = bucket[1]
            many[ident] = item
        self._size += 1

    def discard(self, ident: int, text: str, *, exact: bool) -> bool:
        """Forget ``ident`` under ``text``; False if it was not there."""
        table = self._exact if exact else self._prefixes
        bucket = table.get(text)
        if bucket is None:
            return False
        if isinstance(bucket, _Many):
            if bucket.pop(ident, None) is None:
                return False
            if len(bucket) == 1:
                table[text] = next(iter(bucket.items()))
        elif bucket[0] != ident:
            return False
        else:
            del table[text]
            if not exact:
                self._count(len(text), -1)
        self._size -= 1
        return True

    def matching(self, key: str) -> Iterator[T]:
        """Every item whose exact key is ``key`` or whose prefix ``key`` starts with."""
        bucket = self._exact.get(key)
        if bucket is not None:
            yield from _items(bucket)
        prefixes = self._prefixes
        size = len(key)
        for length in self._lengths:
            if length > size:
                break
            bucket = prefixes.get(key[:length])
            if bucket is not None:
                yield from _items(bucket)

    def __iter__(self) -> Iterator[T]:
        for table in (self._exact, self._prefixes):
            for bucket in list(table.values()):
                yield from _items(bucket)

    def _count(self, length: int, delta: int) -> None:
        count = self._counts.get(length, 0) + delta
        if count > 0:
            if length not in self._counts:
                bisect.insort(self._lengths, length)
            self._counts[length] = count
        else:
            del self._counts[length]
            self._lengths.remove(length)


def _items(bucket: tuple[int, T] | _Many) -> list[T]:
    """A bucket's items, copied (the caller may remove items while it goes through them)."""
    if isinstance(bucket, _Many):
        return list(bucket.values())
    return [bucket[1]]
