"""The ``status_ok`` answer: the node's Raft view in API.md terms (§3.3), built from the core.

Kept apart so the mapping from core roles to API roles lives in one place:
a pre-candidate is reported as ``candidate`` (PreVote is an implementation
detail), a non-voter as ``learner``.
"""

from __future__ import annotations

from concordance.latency import LatencyCounts
from concordance.protocol.wire import MemberStatus, StatusOk
from concordance.raft.core import RaftCore
from concordance.raft.ready import Role

__all__ = ["api_role", "build_status"]

_API_ROLES = {
    Role.FOLLOWER: "follower",
    Role.PRE_CANDIDATE: "candidate",
    Role.CANDIDATE: "candidate",
    Role.LEADER: "leader",
    Role.LEARNER: "learner",
}


def api_role(role: Role) -> str:
    return _API_ROLES[role]


def build_status(
    core: RaftCore,
    applied: int,
    leader_changes: int = 0,
    fsyncs: LatencyCounts | None = None,
) -> StatusOk:
    """``applied`` is storage's reported applied index (0 before it said hello);
    ``leader_changes`` and ``fsyncs`` are the driver's counters for ``/metrics``.

    A member's ``match`` is the leader's view of its log; a non-leader knows
    only its own (its last index) and reports 0 for the others.
    """
    counts, total_us = fsyncs.snapshot() if fsyncs is not None else ((), 0)
    membership = core.membership
    leading = core.role is Role.LEADER
    members = []
    for node_id in membership.members:
        if leading:
            progress = core.progress.get(node_id)
            match = progress.match if progress is not None else 0
        else:
            match = core.log.last_index() if node_id == core.id else 0
        members.append(
            MemberStatus(
                node_id=node_id,
                address=membership.address_of(node_id) or "",
                voter=membership.is_voter(node_id),
                match=match,
            )
        )
    return StatusOk(
        node_id=core.id,
        role=api_role(core.role),
        term=core.term,
        leader_id=core.leader_id,
        commit=core.log.commit,
        applied=applied,
        members=tuple(members),
        leader_changes=leader_changes,
        fsync_counts=counts,
        fsync_total_us=total_us,
    )
