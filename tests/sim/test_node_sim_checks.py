"""The node simulation's read-your-writes check on its own: what it flags and what it lets
through (in steps of the run's one order of client events)."""

from __future__ import annotations

from concordance.testing.node_sim_checks import LocalRead, NodeAck, stale_local_reads

K = "tenant:sim/k"


def test_a_read_older_than_a_write_its_node_answered_is_stale() -> None:
    acks = [NodeAck("n1", K, 3, at=10)]
    reads = [
        LocalRead("n1", K, call=15, done=16, version=2),  # stale
        LocalRead("n1", K, call=15, done=16, version=3),
        LocalRead("n1", K, call=5, done=16, version=2),  # began before the answer
        LocalRead("n2", K, call=15, done=16, version=2),  # another node may lag
        LocalRead("n1", "tenant:sim/other", call=15, done=16, version=1),
    ]
    stale, checked = stale_local_reads(reads, acks, {})
    assert checked == 2
    assert len(stale) == 1 and "version=2" in stale[0] and "answered version 3" in stale[0]


def test_a_404_is_stale_unless_a_delete_was_sent_before_it_ended() -> None:
    acks = [NodeAck("n1", K, 1, at=10)]
    read = LocalRead("n1", K, call=20, done=25, version=None)
    assert len(stale_local_reads([read], acks, {})[0]) == 1
    assert stale_local_reads([read], acks, {K: 24}) == ([], 1)
    assert len(stale_local_reads([read], acks, {K: 26})[0]) == 1
