"""Forwarded proposals (paper §8: clients may talk to any server): a proposal a
follower forwards to its leader is either appended there or handed back with
ProposeRefused, so the follower's client learns "certainly not appended" at
once instead of at its deadline (``Ready.dropped``).

Same shape as test_paper.py: init -> step/tick -> assert messages and state.
"""

from __future__ import annotations

from typing import Any

from concordance.raft.entries import ConfChange, ConfChangeOp, EntryKind
from concordance.raft.messages import (
    Heartbeat,
    Propose,
    ProposeConfChange,
    ProposeRefused,
    RequestVote,
    TransferLeader,
)
from concordance.raft.ready import Role
from tests.raft.helpers import Network, Node, cluster, drain, make_node, of_type

STICKY: dict[str, Any] = {"pre_vote": True, "check_quorum": True}


def dropped(node: Node) -> list[bytes]:
    """Everything the node's Readys reported as refused forwards so far."""
    return [data for rd in node.readys for data in rd.dropped]


def in_any_log(net: Network, data: bytes) -> bool:
    for node in net.nodes.values():
        lg = node.core.log
        for i in range(lg.first_index(), lg.last_index() + 1):
            entry = lg.slice(i, i + 1, 1 << 30)[0]
            if entry.kind is EntryKind.NORMAL and entry.data == data:
                return True
    return False


def transfer_pending(net: Network) -> Node:
    """n1 leads; n3 missed an entry, so a transfer to n3 is still pending (thesis §3.10)."""
    n1 = net.elect("n1")
    net.cut("n1", "n3")
    n1.core.propose(b"x")
    net.stabilize()
    n1.core.transfer_leadership("n3")
    net.stabilize()
    assert n1.core.lead_transferee == "n3"
    return n1


# --------------------------------------------------------------------- the normal path


def test_forwarded_proposal_is_appended_and_nothing_comes_back() -> None:
    """The normal path is unchanged: the leader appends the forwarded proposal,
    every server applies it, and no refusal is sent or reported. Reference: §8"""
    net = cluster()
    net.elect("n1")
    assert net["n2"].core.propose(b"via-n2") is None
    delivered = net.stabilize()
    assert of_type(Propose, delivered) == [Propose(1, "n2", "n1", (b"via-n2",))]
    assert of_type(ProposeRefused, delivered) == []
    assert all(dropped(n) == [] for n in net.nodes.values())
    assert [e.data for e in net["n3"].applied] == [b"", b"via-n2"]


# --------------------------------------------------------------------- a leader refusing


def test_forward_during_a_transfer_is_refused_and_dropped_on_the_follower() -> None:
    """While a leadership transfer is pending the leader refuses proposals
    (thesis §3.10); a forwarded one comes back to its follower, which reports
    it dropped, and it never reaches any log."""
    net = cluster(**STICKY)
    transfer_pending(net)
    net["n2"].core.propose(b"late")
    delivered = net.stabilize()
    assert of_type(ProposeRefused, delivered) == [
        ProposeRefused(1, "n1", "n2", (b"late",), "leadership transfer in progress")
    ]
    assert dropped(net["n2"]) == [b"late"]
    net.heal()
    net.tick(n=3)  # n3 catches up, takes over and commits its no-op
    assert net["n3"].core.role is Role.LEADER
    assert not in_any_log(net, b"late")
    assert net["n2"].core.propose(b"retried") is None  # the client retries: it lands
    net.stabilize()
    assert [e.data for e in net["n2"].applied][-1] == b"retried"


def test_forward_beyond_the_uncommitted_limit_is_refused() -> None:
    """Backpressure: a leader with too much uncommitted data refuses a forwarded
    batch as it would a local one, and says so to the follower."""
    net = cluster(max_uncommitted_bytes=150)
    n1 = net.elect("n1")
    net.isolate("n1")  # nothing commits any more
    n1.core.propose(b"a" * 100)
    drain(n1)
    n1.core.step(Propose(1, "n2", "n1", (b"b" * 60, b"c")))
    refusals = of_type(ProposeRefused, drain(n1))
    assert [(r.dst, r.data) for r in refusals] == [("n2", (b"b" * 60, b"c"))]
    assert "uncommitted" in refusals[0].reason
    assert n1.core.log.last_index() == 2  # the no-op and "a...": nothing of the batch
    net["n2"].core.step(refusals[0])
    drain(net["n2"])
    assert dropped(net["n2"]) == [b"b" * 60, b"c"]


# --------------------------------------------------------------------- not the leader


def test_follower_refuses_a_forward_instead_of_forwarding_it_again() -> None:
    """A follower that receives a Propose (its sender thinks it leads) answers
    ProposeRefused to the sender rather than passing it on to its leader: the
    leader's own refusal would come back to the middle server, not to the
    origin, whose client would wait for its deadline."""
    net = cluster()
    net.elect("n1")
    n3 = net["n3"]
    n3.core.step(Propose(1, "n2", "n3", (b"x",)))
    msgs = drain(n3)
    assert of_type(Propose, msgs) == []
    assert of_type(ProposeRefused, msgs) == [
        ProposeRefused(1, "n3", "n2", (b"x",), "n3 is not the leader; leader is n1")
    ]


def test_other_forwarded_requests_are_still_redirected_by_a_follower() -> None:
    """Only proposals changed: a follower still passes membership changes and
    leadership transfers on to the leader it knows."""
    net = cluster()
    net.elect("n1")
    n3 = net["n3"]
    n3.core.step(TransferLeader(1, "n2", "n3", "n2"))
    assert of_type(TransferLeader, drain(n3)) == [TransferLeader(1, "n3", "n1", "n2")]
    change = ConfChange(ConfChangeOp.ADD_LEARNER, "n4")
    n3.core.step(ProposeConfChange(1, "n2", "n3", change))
    assert of_type(ProposeConfChange, drain(n3)) == [ProposeConfChange(1, "n3", "n1", change)]


def test_leader_that_stepped_down_refuses_at_the_same_term() -> None:
    """A leader that lost its quorum steps down without a new term (CheckQuorum,
    thesis §6.2); a follower still forwarding to it gets a refusal."""
    net = cluster(**STICKY)
    n1 = net.elect("n1")
    net.isolate("n1")
    while n1.core.role is Role.LEADER:
        n1.core.tick()
        drain(n1)
    assert (n1.core.role, n1.core.term, n1.core.leader_id) == (Role.FOLLOWER, 1, None)
    net.heal()
    assert net["n2"].core.propose(b"to-the-old-leader") is None
    net.stabilize()
    assert dropped(net["n2"]) == [b"to-the-old-leader"]
    assert not in_any_log(net, b"to-the-old-leader")


def test_deposed_leader_refuses_a_forward_of_its_old_term() -> None:
    """A Propose that reaches its former leader after a new term began is refused
    (it is stale there), and the refusal changes nothing of the follower's Raft
    state: the follower's term and leader stay as they were."""
    net = cluster()
    n1 = net.elect("n1")
    n1.core.step(RequestVote(2, "n3", "n1", 1, 1))  # n1 learns of term 2 and steps down
    drain(n1)
    n2 = net["n2"]
    assert n2.core.propose(b"stale") is None
    forward = of_type(Propose, drain(n2))
    assert forward == [Propose(1, "n2", "n1", (b"stale",))]
    n1.core.step(forward[0])
    refusal = of_type(ProposeRefused, drain(n1))
    assert refusal == [ProposeRefused(2, "n1", "n2", (b"stale",), "stale term 1 < 2")]
    n2.core.step(refusal[0])
    drain(n2)
    assert dropped(n2) == [b"stale"]
    assert (n2.core.term, n2.core.leader_id, n2.core.role) == (1, "n1", Role.FOLLOWER)


def test_candidates_refuse_forwards() -> None:
    """A (pre-)candidate has no leader: it refuses a forward it receives."""
    for pre_vote, role in ((False, Role.CANDIDATE), (True, Role.PRE_CANDIDATE)):
        n = make_node("n1", pre_vote=pre_vote)
        n.core.campaign()
        assert n.core.role is role
        drain(n)
        n.core.step(Propose(n.core.term, "n2", "n1", (b"x",)))
        assert of_type(ProposeRefused, drain(n)) == [
            ProposeRefused(n.core.term, "n1", "n2", (b"x",), "n1 is not the leader")
        ]


# --------------------------------------------------------------------- receiving a refusal


def test_a_refusal_from_any_term_is_reported_once_and_changes_no_state() -> None:
    """ProposeRefused only says "not appended by its sender", true at any term:
    it is reported whatever its term, exactly once, and moves neither the
    term nor the leader nor the role (no vote, no persistence needed)."""
    n = make_node("n2", log=[1, 2], term=3)
    n.core.step(Heartbeat(3, "n1", "n2", 0))
    drain(n)
    assert n.core.leader_id == "n1"
    for term in (1, 3, 9):
        n.core.step(ProposeRefused(term, "n1", "n2", (b"t%d" % term,), "why"))
    assert n.core.has_ready()
    rd = n.core.ready()
    assert rd.dropped == (b"t1", b"t3", b"t9")
    assert rd.hard_state is None and rd.soft_state is None and rd.messages == ()
    assert not rd.must_sync
    n.core.advance(rd)
    assert not n.core.has_ready() and n.core.ready().dropped == ()
    assert (n.core.term, n.core.leader_id, n.core.role) == (3, "n1", Role.FOLLOWER)


def test_a_refusal_reaches_a_node_that_became_leader_meanwhile() -> None:
    """The forwarder may have changed role since: a leader reports the refused
    data too (it was never appended by that forward)."""
    net = cluster()
    n1 = net.elect("n1")
    n1.core.step(ProposeRefused(0, "n3", "n1", (b"earlier",), "n3 is not the leader"))
    drain(n1)
    assert dropped(n1) == [b"earlier"] and n1.core.role is Role.LEADER
