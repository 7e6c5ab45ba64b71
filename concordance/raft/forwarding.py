"""Requests meant for the leader that reach another node: forwarded once, or refused.

Rules:

* A follower sends ``Propose`` to the leader it knows. Whoever receives one and
  does not append it (a leader refusing it, any node that is not leader, or
  one that sees it at a stale term) answers ``ProposeRefused`` with the same
  data, and the forwarder hands the data out in ``Ready.dropped``.
* A follower never forwards a forwarded proposal again: a refusal from the
  next hop would reach it, not the origin, which would wait for its deadline.
  Refused at once, it fails fast and is retried when the origin knows the leader.
* ``ProposeRefused`` is accepted at any term and changes no term or role: it
  only says "not appended by its sender", which stays true.
* Membership changes and leadership transfers are forwarded one more hop to
  the leader the follower knows (never back to their sender); a ReadIndex
  request is refused instead, since an answer on behalf of the origin would
  come back to the wrong node.
"""

from __future__ import annotations

from concordance.raft.messages import (
    Message,
    ProposeConfChange,
    ReadIndexRequest,
    ReadIndexResponse,
    TransferLeader,
)


def not_leader(node_id: str, leader_id: str | None) -> str:
    """The reason a non-leader gives when it refuses a forwarded proposal."""
    leader = f"; leader is {leader_id}" if leader_id else ""
    return f"{node_id} is not the leader{leader}"


def redirect_or_refuse(
    msg: ProposeConfChange | ReadIndexRequest | TransferLeader,
    term: int,
    node_id: str,
    leader_id: str | None,
) -> Message | None:
    """What a node that is not the leader sends for a leader-only request other
    than ``Propose``: the request forwarded to ``leader_id``, a failing answer
    to the asker, or nothing (the asker times out)."""
    forward_to = leader_id if leader_id is not None and leader_id != msg.src else None
    if isinstance(msg, ReadIndexRequest):
        # Re-asking on behalf of the origin would mis-route the answer: refuse.
        return ReadIndexResponse(term, node_id, msg.src, msg.ctx, 0)
    if forward_to is None:
        return None
    if isinstance(msg, ProposeConfChange):
        return ProposeConfChange(term, node_id, forward_to, msg.change)
    return TransferLeader(term, node_id, forward_to, msg.target)
