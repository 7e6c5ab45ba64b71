"""The subscription index: what a changed key finds, and that removal leaves nothing behind."""

from __future__ import annotations

from concordance.front.watch_index import PrefixIndex


def _found(index: PrefixIndex[str], key: str) -> list[str]:
    return sorted(index.matching(key))


def test_prefixes_match_by_their_exact_characters_and_keys_exactly() -> None:
    index: PrefixIndex[str] = PrefixIndex()
    index.add(1, "a", "tenant:a/", exact=False)
    index.add(2, "ab", "tenant:ab/", exact=False)
    index.add(3, "a/x", "tenant:a/x", exact=False)  # a prefix without the slash
    index.add(4, "key a/x", "tenant:a/x", exact=True)
    index.add(5, "a again", "tenant:a/", exact=False)
    assert _found(index, "tenant:a/x") == ["a", "a again", "a/x", "key a/x"]
    assert _found(index, "tenant:a/xy") == ["a", "a again", "a/x"]
    assert _found(index, "tenant:ab/x") == ["ab"]
    assert _found(index, "tenant:a") == []
    assert _found(index, "tenant:b/x") == []
    assert len(index) == 5


def test_discard_forgets_items_and_lengths() -> None:
    index: PrefixIndex[str] = PrefixIndex()
    index.add(1, "one", "tenant:a/", exact=False)
    index.add(2, "two", "tenant:a/", exact=False)
    index.add(3, "key", "tenant:a/k", exact=True)
    index.discard(1, "tenant:a/", exact=False)
    index.discard(1, "tenant:a/", exact=False)  # twice: nothing
    index.discard(3, "tenant:a/k", exact=False)  # not a prefix: nothing
    assert _found(index, "tenant:a/k") == ["key", "two"]
    index.discard(2, "tenant:a/", exact=False)
    index.discard(3, "tenant:a/k", exact=True)
    assert len(index) == 0 and list(index) == []
    assert index._lengths == [] and index._counts == {} and not index._prefixes


def test_a_key_is_found_among_many_prefixes_of_many_lengths() -> None:
    index: PrefixIndex[int] = PrefixIndex()
    for i in range(1000):
        index.add(i, i, f"tenant:s{i}/", exact=False)
    index.add(1000, 1000, "tenant:s1", exact=False)
    assert sorted(index.matching("tenant:s17/x")) == [17, 1000]
    assert sorted(index.matching("tenant:s9/x")) == [9]
    assert sorted(index.matching("tenant:s1/x")) == [1, 1000]
    assert sorted(index.matching("tenant:s123/")) == [123, 1000]
    assert sorted(index) == list(range(1001))
    index.add(5, 5, "tenant:s5/", exact=False)  # the same id again: replaced, not counted twice
    assert len(index) == 1001
