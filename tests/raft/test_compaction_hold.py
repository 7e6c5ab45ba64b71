"""What a leader says its followers still need from the log, so compaction does not
force a second snapshot on a member that is catching up."""

from __future__ import annotations

from concordance.raft.replication import still_needed
from tests.raft.helpers import Node, cluster


def needed(leader: Node) -> int | None:
    return still_needed(leader.core.progress, leader.id, leader.core.log.last_index())


def test_a_leader_names_what_an_active_follower_lacks_and_forgets_a_silent_one() -> None:
    net = cluster()
    leader = net.elect("n1")
    for n in range(3):
        leader.core.propose(b"a%d" % n)
    net.stabilize()
    assert needed(leader) is None  # everyone holds the whole log
    caught_up = leader.core.progress["n3"].match
    net.isolate("n3")
    for n in range(5):
        leader.core.propose(b"b%d" % n)
    net.stabilize()
    assert leader.core.progress["n3"].match == caught_up
    assert needed(leader) == caught_up  # n3 was heard from lately
    # An election timeout without a word from n3 (CheckQuorum): it holds nothing back.
    for _ in range(leader.cfg.election_ticks + 1):
        net.tick(["n1", "n2"])
        net.stabilize()
    assert needed(leader) is None
