"""The two Ready rules that take fsyncs off a write's path (raft/__init__.py, step 1).

* A leader's appends and heartbeats may leave before its own persist
  (thesis §10.2.1): its own log counts towards a commit only after ``advance``.
* A hard state that changed in ``commit`` alone needs no fsync.
"""

from __future__ import annotations

from concordance.raft.messages import AppendEntries, AppendEntriesResponse, RequestVote
from concordance.raft.ready import Ready
from tests.raft.helpers import Network, cluster, drain, of_type


def _leader_with_a_pending_entry() -> tuple[Network, Ready]:
    net = cluster()
    leader = net.elect("n1")
    leader.core.propose(b"x")
    rd = leader.core.ready()
    return net, rd


def test_a_leader_may_send_its_appends_before_persisting_them() -> None:
    _net, rd = _leader_with_a_pending_entry()
    assert rd.entries and rd.must_sync and rd.early
    first = rd.messages_first
    assert {m.dst for m in of_type(AppendEntries, first)} == {"n2", "n3"}
    assert rd.messages_after == ()


def test_a_leader_does_not_count_its_unpersisted_entry_towards_a_commit() -> None:
    net, rd = _leader_with_a_pending_entry()
    leader = net["n1"]
    index = rd.entries[-1].index
    # One follower stores and acknowledges it before the leader has persisted it.
    net.deliver(of_type(AppendEntries, rd.messages_first, dst="n2"))
    acks = of_type(AppendEntriesResponse, drain(net["n2"]))
    assert acks and acks[-1].success
    net.deliver(acks)
    # With the leader's own copy not yet durable, one acknowledgement of three is no quorum.
    assert leader.core.log.commit < index
    leader.store.persist(rd.hard_state, rd.entries, rd.snapshot)
    leader.core.advance(rd)
    assert leader.core.log.commit == index  # now n1 and n2 hold it durably


def test_nothing_goes_early_when_term_or_vote_change() -> None:
    net = cluster()
    candidate = net["n1"]
    candidate.core.campaign()
    rd = candidate.core.ready()
    assert rd.hard_state is not None and not rd.early and rd.messages_first == ()
    assert of_type(RequestVote, rd.messages_after)  # the votes wait for the durable term


def test_a_commit_only_hard_state_needs_no_fsync() -> None:
    net = cluster()
    leader = net.elect("n1")
    leader.core.propose(b"x")
    drain(leader)
    net.stabilize()  # the followers acknowledge; the leader commits
    follower = net["n2"]
    commit_readys = [r for r in follower.readys if r.hard_state is not None and not r.entries]
    assert commit_readys, "the follower learned the commit in a Ready of its own"
    last = commit_readys[-1]
    assert last.commit_only and not last.must_sync
    assert last.hard_state is not None and last.hard_state.commit == leader.core.log.commit
