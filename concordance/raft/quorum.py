"""Majority arithmetic: pure functions shared by commit, elections and ReadIndex.

Rules: a quorum is a strict majority of the voters; the committed index of a
set of match indexes is the largest index that a quorum has reached (the
quorum-th largest value).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def quorum_size(voters: int) -> int:
    """Smallest majority of ``voters`` (1 for a single node)."""
    return voters // 2 + 1


def quorum_index(values: Iterable[int]) -> int:
    """The largest value that at least a majority of ``values`` reach or exceed.

    Used for the commit index (values = match indexes of voters) and for
    ReadIndex rounds (values = the latest round each voter acknowledged).
    An empty electorate yields 0.
    """
    ordered = sorted(values, reverse=True)
    if not ordered:
        return 0
    return ordered[quorum_size(len(ordered)) - 1]


def vote_result(voters: Iterable[str], votes: Mapping[str, bool]) -> VoteResult:
    """Tally an election among ``voters``; votes from non-voters are ignored."""
    voter_list = list(voters)
    need = quorum_size(len(voter_list))
    granted = sum(1 for v in voter_list if votes.get(v) is True)
    rejected = sum(1 for v in voter_list if votes.get(v) is False)
    if granted >= need:
        return VoteResult.WON
    if len(voter_list) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING
