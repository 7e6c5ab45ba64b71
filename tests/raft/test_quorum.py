"""Majority arithmetic: quorum sizes, commit/read indexes and vote tallies."""

from __future__ import annotations

import itertools

import pytest

from concordance.raft.quorum import VoteResult, quorum_index, quorum_size, vote_result


@pytest.mark.parametrize(
    ("voters", "size"), [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)]
)
def test_quorum_size_is_a_strict_majority(voters: int, size: int) -> None:
    assert quorum_size(voters) == size


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], 0),
        ([7], 7),
        ([7, 3], 3),  # two voters: both must have it
        ([1, 2, 3], 2),
        ([3, 3, 0], 3),
        ([5, 5, 1, 1], 1),  # four voters need three
        ([5, 5, 5, 1], 5),
        ([9, 7, 5, 3, 1], 5),
        ([0, 0, 0, 9, 9], 0),
        ([4, 4, 4, 4, 4], 4),
    ],
)
def test_quorum_index(values: list[int], expected: int) -> None:
    assert quorum_index(values) == expected


def test_quorum_index_ignores_order() -> None:
    for perm in itertools.permutations([9, 7, 5, 3, 1]):
        assert quorum_index(perm) == 5
    assert quorum_index(iter([2, 8, 4])) == 4  # any iterable


def test_quorum_index_is_reached_by_a_majority_and_is_the_largest_such() -> None:
    for values in itertools.product(range(4), repeat=4):
        q = quorum_index(values)
        need = quorum_size(len(values))
        assert sum(v >= q for v in values) >= need
        assert sum(v >= q + 1 for v in values) < need


V3 = ("n1", "n2", "n3")
V4 = ("n1", "n2", "n3", "n4")


@pytest.mark.parametrize(
    ("voters", "votes", "expected"),
    [
        (("n1",), {}, VoteResult.PENDING),
        (("n1",), {"n1": True}, VoteResult.WON),
        (("n1",), {"n1": False}, VoteResult.LOST),
        (V3, {}, VoteResult.PENDING),
        (V3, {"n1": True}, VoteResult.PENDING),
        (V3, {"n1": True, "n2": True}, VoteResult.WON),
        (V3, {"n1": True, "n2": False}, VoteResult.PENDING),
        (V3, {"n1": True, "n2": False, "n3": True}, VoteResult.WON),
        (V3, {"n2": False, "n3": False}, VoteResult.LOST),
        (V3, {"n1": True, "n4": True, "n5": True}, VoteResult.PENDING),  # non-voters ignored
        (V3, {"n2": False, "n4": False, "n5": False}, VoteResult.PENDING),
        (V4, {"n1": True, "n2": True}, VoteResult.PENDING),  # two of four is no majority
        (V4, {"n1": True, "n2": True, "n3": True}, VoteResult.WON),
        (V4, {"n1": True, "n3": False, "n4": False}, VoteResult.LOST),
        (V4, {"n1": True, "n2": True, "n3": False}, VoteResult.PENDING),
        ((), {}, VoteResult.LOST),
    ],
)
def test_vote_result(voters: tuple[str, ...], votes: dict[str, bool], expected: VoteResult) -> None:
    assert vote_result(voters, votes) is expected
