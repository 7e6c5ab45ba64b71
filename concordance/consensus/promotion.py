"""Learner promotion: the leader turns a caught-up learner into a voter, one change at a time.

Rules / theory of operation
---------------------------

A node added with ``--join`` (or ``POST /cluster/members`` without
``"voter": true``) enters as a learner: it receives the log (or a snapshot)
but neither votes nor counts for commit, so a new, empty node cannot stall the
cluster while it catches up (thesis §4.2.1). Only the leader knows how far a
learner is (its ``match`` index), so only the leader promotes:

* every ``every_ticks`` ticks the driver shows the :class:`Promoter` a
  :class:`PromotionView` of the core;
* a learner is *caught up* at a check when ``last_index - match <= max_lag``;
  it is promoted (``add_voter``) after ``checks`` consecutive caught-up
  checks, so a learner that only touches the tail for a moment is not
  promoted into a quorum it cannot keep up with;
* one membership change at a time: nothing is proposed while a change is
  uncommitted or the leader has not committed an entry of its term yet (the
  core would refuse it anyway); with several learners ready, the one with the
  smallest id goes first and the others wait for the next check;
* streaks are forgotten whenever this node is not the leader: a new leader
  starts counting from its own observations.

A refused proposal (``Unavailable``) costs nothing: the learner is still a
learner at the next check and is proposed again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from concordance.raft.core import RaftCore
from concordance.raft.entries import ConfChange, ConfChangeOp
from concordance.raft.ready import Role

__all__ = ["CHECKS", "EVERY_TICKS", "MAX_LAG", "Promoter", "PromotionView", "view_of"]

MAX_LAG = 256  # entries a learner may trail the leader's last index and count as caught up
CHECKS = 2  # consecutive caught-up checks before it is promoted
EVERY_TICKS = 5  # ticks between checks (0.5 s at the default 100 ms tick)


@dataclass(frozen=True, slots=True)
class PromotionView:
    """What the promoter needs to know about the core, as plain values."""

    leader: bool
    can_change: bool  # an entry of this term is committed and no membership change is pending
    last_index: int
    learners: tuple[str, ...]
    matches: Mapping[str, int]  # the leader's view of each learner's log
    addresses: Mapping[str, str]


def view_of(core: RaftCore) -> PromotionView:
    """The promoter's view of ``core`` (called on the task that owns the core)."""
    membership = core.membership
    leader = core.role is Role.LEADER
    can_change = (
        leader
        and core.log.term_or_zero(core.log.commit) == core.term
        and core.membership_at(core.log.commit) == membership
    )
    matches = {}
    for learner in membership.learners:
        progress = core.progress.get(learner) if leader else None
        matches[learner] = progress.match if progress is not None else 0
    return PromotionView(
        leader=leader,
        can_change=can_change,
        last_index=core.log.last_index(),
        learners=membership.learners,
        matches=matches,
        addresses=dict(membership.addresses),
    )


class Promoter:
    """Counts each learner's consecutive caught-up checks; says whom to promote."""

    def __init__(
        self, max_lag: int = MAX_LAG, checks: int = CHECKS, every_ticks: int = EVERY_TICKS
    ) -> None:
        if checks < 1 or every_ticks < 1 or max_lag < 0:
            raise ValueError("checks and every_ticks must be positive, max_lag not negative")
        self.max_lag = max_lag
        self.checks = checks
        self.every_ticks = every_ticks
        self.streaks: dict[str, int] = {}
        self.promoted = 0  # add_voter proposals made (counted by the driver once accepted)
        self._elapsed = 0

    def tick(self, ticks: int) -> bool:
        """Count ``ticks``; True when a check is due."""
        self._elapsed += ticks
        if self._elapsed < self.every_ticks:
            return False
        self._elapsed = 0
        return True

    def check(self, view: PromotionView) -> ConfChange | None:
        """Update the streaks from ``view``; the change to propose now, if any."""
        if not view.leader:
            self.streaks.clear()
            return None
        streaks: dict[str, int] = {}
        for learner in view.learners:
            caught_up = view.last_index - view.matches.get(learner, 0) <= self.max_lag
            streaks[learner] = self.streaks.get(learner, 0) + 1 if caught_up else 0
        self.streaks = streaks  # learners no longer in the membership are forgotten
        if not view.can_change:
            return None
        for learner in sorted(streaks):
            if streaks[learner] >= self.checks:
                return ConfChange(ConfChangeOp.ADD_VOTER, learner, view.addresses.get(learner, ""))
        return None
