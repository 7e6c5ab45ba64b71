"""The Raft core, claim by claim, against the paper (Ongaro & Ousterhout 2014)
and the thesis extensions it implements (Ongaro 2014, "Consensus: Bridging
Theory and Practice").

Every test follows init -> step/tick -> assert messages and state, and names
the section it checks. Unless a test is about PreVote or CheckQuorum it runs
the plain algorithm of the paper (both off), so terms move as the paper says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from concordance.errors import NotLeader, ProposalDropped
from concordance.raft.entries import (
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    HardState,
    Membership,
    SnapshotMeta,
)
from concordance.raft.messages import (
    AppendEntries,
    AppendEntriesResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    InstallSnapshotResponse,
    Message,
    Propose,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
    TransferLeader,
)
from concordance.raft.progress import ProgressState
from concordance.raft.ready import ReadState, Role
from tests.raft.helpers import (
    IDS5,
    Network,
    Node,
    cluster,
    drain,
    log_terms,
    make_node,
    of_type,
    restart,
)

STICKY: dict[str, Any] = {"pre_vote": True, "check_quorum": True}


def win(node: Node, grants: tuple[str, ...] = ("n2",)) -> list[Message]:
    """Campaign and receive (pre-)votes from ``grants``; returns the leader's
    first messages (its no-op AppendEntries)."""
    node.core.campaign()
    for _ in range(2):
        for rv in of_type(RequestVote, drain(node)):
            if rv.dst in grants:
                node.core.step(RequestVoteResponse(rv.term, rv.dst, node.id, True, rv.pre_vote))
        if node.core.role is Role.LEADER:
            return drain(node)
    raise AssertionError(f"{node.id} did not win: {node.core.role}")


def ack(node: Node, src: str, match: int) -> list[Message]:
    """A successful AppendEntries response from ``src`` to the leader ``node``."""
    node.core.step(AppendEntriesResponse(node.core.term, src, node.id, True, match))
    return drain(node)


def append(
    term: int, prev: tuple[int, int], terms: list[int], commit: int = 0, src: str = "n2"
) -> AppendEntries:
    """AppendEntries to n1 from ``src`` carrying entries of ``terms`` after ``prev``."""
    entries = tuple(Entry(t, prev[0] + k, EntryKind.NORMAL, b"") for k, t in enumerate(terms, 1))
    return AppendEntries(term, src, "n1", prev[0], prev[1], entries, commit)


def responses(msgs: list[Message]) -> list[AppendEntriesResponse]:
    return of_type(AppendEntriesResponse, msgs)


# --------------------------------------------------------------------- §5.1 / §5.2


def test_servers_start_as_followers() -> None:
    """A server starts as a follower with its persisted term, vote and commit,
    knows no leader and has nothing to say. Reference: §5.2"""
    n = make_node("n1", log=[1, 1, 2], term=3, vote="n2", commit=2)
    assert n.core.role is Role.FOLLOWER
    assert (n.core.term, n.core.vote, n.core.leader_id) == (3, "n2", None)
    assert (n.core.log.commit, n.core.log.last_index()) == (2, 3)
    assert drain(n) == []


def _in_role(role: Role) -> Node:
    n = make_node("n1", log=[1], term=2, **(STICKY if role is Role.PRE_CANDIDATE else {}))
    if role is Role.LEADER:
        win(n)
    elif role is not Role.FOLLOWER:
        n.core.campaign()
        drain(n)
    assert n.core.role is role
    return n


@pytest.mark.parametrize("role", [Role.FOLLOWER, Role.PRE_CANDIDATE, Role.CANDIDATE, Role.LEADER])
@pytest.mark.parametrize(
    ("make_msg", "leader"),
    [
        (lambda t: Heartbeat(t, "n3", "n1", 0), "n3"),
        (lambda t: AppendEntries(t, "n3", "n1", 1, 1, (), 0), "n3"),
        (lambda t: AppendEntriesResponse(t, "n3", "n1", False), None),
        (lambda t: RequestVoteResponse(t, "n3", "n1", False), None),
        (lambda t: RequestVote(t, "n3", "n1", 0, 0), None),  # log behind: no vote either
    ],
    ids=["heartbeat", "append", "append-response", "vote-response", "vote-request"],
)
def test_higher_term_makes_any_role_a_follower(
    role: Role, make_msg: Callable[[int], Message], leader: str | None
) -> None:
    """Whatever its role, a server that sees a larger term adopts it, forgets its
    vote and becomes a follower (of the sender if it is the leader). Reference: §5.1"""
    n = _in_role(role)
    higher = n.core.term + 3  # above a pre-candidate's prospective term too
    n.core.step(make_msg(higher))
    drain(n)
    assert n.core.role is Role.FOLLOWER
    assert (n.core.term, n.core.vote, n.core.leader_id) == (higher, None, leader)
    assert n.store.initial_state()[0].term == higher


def test_stale_append_entries_is_rejected() -> None:
    """An AppendEntries from an older term changes nothing and is not acknowledged.
    Reference: §5.1"""
    n = make_node("n1", log=[1, 2], term=3, commit=1)
    n.core.step(append(2, (2, 2), [2, 2], commit=4))
    assert drain(n) == []
    assert (log_terms(n), n.core.log.commit, n.core.leader_id) == ([1, 2], 1, None)


def test_stale_append_entries_answered_with_current_term_under_check_quorum() -> None:
    """With CheckQuorum/PreVote a stale leader is told the current term (a
    rejection) so it can step down and rejoin. Reference: thesis §6.2, §9.6"""
    n = make_node("n1", log=[1, 2], term=3, **STICKY)
    n.core.step(Heartbeat(2, "n2", "n1", 0))
    assert drain(n) == [AppendEntriesResponse(3, "n1", "n2", False)]
    assert log_terms(n) == [1, 2]


def test_stale_request_vote_is_rejected() -> None:
    """A RequestVote from an older term is not granted. Reference: §5.1"""
    n = make_node("n1", log=[1], term=3)
    n.core.step(RequestVote(2, "n2", "n1", 5, 2))
    assert of_type(RequestVoteResponse, drain(n), "n2") == []  # nothing granted
    assert (n.core.term, n.core.vote) == (3, None)


def test_leader_ignores_stale_responses() -> None:
    """Responses from an older term do not move the leader's view of a follower.
    Reference: §5.1"""
    n = make_node("n1", log=[1, 1], term=3)
    win(n)
    n.core.step(AppendEntriesResponse(3, "n2", "n1", True, 3))
    drain(n)
    assert n.core.progress["n2"].match == 0
    assert n.core.log.commit == 0


def test_election_timeout_starts_election() -> None:
    """A follower that hears nothing for its election timeout becomes a
    candidate: term+1, votes for itself (durably, in the same Ready as the
    requests) and sends RequestVote to every other voter in sorted order.
    Reference: §5.2"""
    n = make_node("n3", voters=IDS5, log=[1, 1], term=1)
    for _ in range(n.core.randomized_timeout - 1):
        n.core.tick()
    assert n.core.role is Role.FOLLOWER
    n.core.tick()
    assert (n.core.role, n.core.term, n.core.vote) == (Role.CANDIDATE, 2, "n3")
    rd = n.core.ready()
    assert rd.hard_state == HardState(2, "n3", 0)
    assert list(rd.messages) == [RequestVote(2, "n3", d, 2, 1) for d in ("n1", "n2", "n4", "n5")]


def test_candidate_times_out_into_a_new_election() -> None:
    """A candidate that neither wins nor loses starts a new election with a new
    term when its (fresh, randomized) timeout elapses. Reference: §5.2"""
    n = make_node("n1", log=[1], term=1)
    n.core.campaign()
    drain(n)
    assert n.core.term == 2
    for _ in range(n.core.randomized_timeout):
        n.core.tick()
    assert (n.core.role, n.core.term, n.core.vote) == (Role.CANDIDATE, 3, "n1")
    assert [m.term for m in of_type(RequestVote, drain(n))] == [3, 3]


def test_pre_candidate_keeps_its_term() -> None:
    """With PreVote an election timeout first makes a pre-candidate: the term and
    vote are unchanged and nothing is persisted; the requests carry term+1.
    Reference: thesis §9.6"""
    n = make_node("n2", log=[1, 1], term=1, **STICKY)
    for _ in range(n.core.randomized_timeout):
        n.core.tick()
    assert (n.core.role, n.core.term, n.core.vote) == (Role.PRE_CANDIDATE, 1, None)
    rd = n.core.ready()
    assert rd.hard_state is None
    assert list(rd.messages) == [RequestVote(2, "n2", d, 2, 1, pre_vote=True) for d in ("n1", "n3")]


def test_vote_first_come_first_served_one_per_term() -> None:
    """Each server grants at most one vote per term, to the first candidate that
    asks; a repeated request from that same candidate is granted again.
    Reference: §5.2"""
    n = make_node("n1", log=[1], term=1)
    n.core.step(RequestVote(2, "n2", "n1", 1, 1))
    n.core.step(RequestVote(2, "n3", "n1", 9, 1))  # better log, but too late
    n.core.step(RequestVote(2, "n2", "n1", 1, 1))  # retransmission
    granted = [(m.dst, m.granted) for m in of_type(RequestVoteResponse, drain(n))]
    assert granted == [("n2", True), ("n3", False), ("n2", True)]
    assert n.store.initial_state()[0] == HardState(2, "n2", 0)


def test_persisted_vote_survives_restart() -> None:
    """votedFor is persistent: after a restart the server still refuses another
    candidate of the same term and re-grants the one it voted for. Reference: Fig. 2, §5.2"""
    n = make_node("n1", log=[1], term=1)
    n.core.step(RequestVote(2, "n2", "n1", 1, 1))
    drain(n)
    n = restart(n)
    n.core.step(RequestVote(2, "n3", "n1", 1, 1))
    n.core.step(RequestVote(2, "n2", "n1", 1, 1))
    granted = [(m.dst, m.granted) for m in of_type(RequestVoteResponse, drain(n))]
    assert granted == [("n3", False), ("n2", True)]


@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [
        (3, 2, True),  # same last term, same length
        (4, 2, True),  # same last term, longer
        (2, 2, False),  # same last term, shorter
        (9, 1, False),  # longer but older last term
        (1, 3, True),  # shorter but newer last term
    ],
)
def test_vote_requires_up_to_date_log(last_index: int, last_term: int, granted: bool) -> None:
    """A vote is denied to a candidate whose log is less up to date: compare the
    last terms, and only if they are equal the lengths. Reference: §5.4.1"""
    n = make_node("n1", log=[1, 1, 2], term=2)
    n.core.step(RequestVote(3, "n2", "n1", last_index, last_term))
    assert [m.granted for m in of_type(RequestVoteResponse, drain(n))] == [granted]
    assert n.core.vote == ("n2" if granted else None)


def test_candidate_wins_with_a_majority() -> None:
    """A candidate becomes leader once a majority (itself included) voted for it,
    not before. Reference: §5.2"""
    n = make_node("n1", voters=IDS5, log=[1])
    n.core.campaign()
    drain(n)
    n.core.step(RequestVoteResponse(2, "n2", "n1", True))
    n.core.step(RequestVoteResponse(2, "n3", "n1", False))
    assert n.core.role is Role.CANDIDATE
    n.core.step(RequestVoteResponse(2, "n4", "n1", True))
    assert (n.core.role, n.core.leader_id, n.core.term) == (Role.LEADER, "n1", 2)


def test_candidate_loses_on_a_majority_of_rejections() -> None:
    """Once a majority rejected it the candidate cannot win and returns to
    follower, keeping its term. Reference: §5.2"""
    n = make_node("n1", voters=IDS5, log=[1])
    n.core.campaign()
    drain(n)
    for src in ("n2", "n3"):
        n.core.step(RequestVoteResponse(2, src, "n1", False))
    assert n.core.role is Role.CANDIDATE
    n.core.step(RequestVoteResponse(2, "n4", "n1", False))
    assert (n.core.role, n.core.term) == (Role.FOLLOWER, 2)


def test_candidate_follows_a_leader_of_its_term() -> None:
    """A candidate receiving AppendEntries from a leader of its own term
    recognizes it, becomes follower and processes the request. Reference: §5.2"""
    n = make_node("n1", log=[1])
    n.core.campaign()
    drain(n)
    n.core.step(append(2, (1, 1), [2]))
    assert (n.core.role, n.core.leader_id, n.core.term) == (Role.FOLLOWER, "n2", 2)
    assert responses(drain(n)) == [AppendEntriesResponse(2, "n1", "n2", True, 2)]


def test_randomized_election_timeouts_cover_the_range() -> None:
    """Election timeouts are drawn uniformly from [et, 2et): over many seeds
    every value occurs, and the follower campaigns exactly then. Reference: §5.2"""
    seen = set()
    for seed in range(300):
        n = make_node("n1", seed=seed)
        ticks = 0
        while n.core.role is Role.FOLLOWER:
            n.core.tick()
            ticks += 1
        seen.add(ticks)
    assert seen == set(range(10, 20))


def test_randomized_timeouts_rarely_collide() -> None:
    """Randomization spreads timeouts so that usually a single server times out
    first (5 servers: a tie for first happens in ~23% of rounds). Reference: §5.2"""
    ties = 0
    for r in range(300):
        nodes = [make_node(i, voters=IDS5, seed=r * 5 + k) for k, i in enumerate(IDS5)]
        fired: list[str] = []
        while not fired:
            for nd in nodes:
                nd.core.tick()
            fired = [nd.id for nd in nodes if nd.core.role is Role.CANDIDATE]
        ties += len(fired) > 1
    assert ties / 300 < 0.3


# --------------------------------------------------------------------- §5.3 / §5.4


def test_leader_sends_heartbeats_every_heartbeat_interval() -> None:
    """An idle leader sends an empty heartbeat to every follower each
    heartbeat interval. Reference: §5.2"""
    net = cluster(heartbeat_ticks=3, election_ticks=30)
    n1 = net.elect("n1")
    for round_ in range(3):
        for _ in range(2):
            n1.core.tick()
            assert of_type(Heartbeat, drain(n1)) == []
        n1.core.tick()
        beats = of_type(Heartbeat, drain(n1))
        assert [(m.dst, m.term, m.commit) for m in beats] == [("n2", 1, 1), ("n3", 1, 1)], round_


def test_new_leader_appends_a_noop() -> None:
    """A new leader appends a no-op entry of its term and replicates it at once.
    Reference: §5.4.2, §8"""
    n = make_node("n1", log=[1, 1], term=1)
    msgs = win(n)
    noop = Entry(2, 3, EntryKind.NOOP, b"")
    assert n.core.log.slice(3, 4) == [noop]
    assert of_type(AppendEntries, msgs) == [
        AppendEntries(2, "n1", d, 2, 1, (noop,), 0) for d in ("n2", "n3")
    ]


def test_leader_appends_and_replicates_a_proposal() -> None:
    """A command becomes a new entry of the leader's term, sent with the index
    and term of the entry before it and the leader's commit. Reference: §5.3"""
    net = cluster()
    n1 = net.elect("n1")
    assert n1.core.propose(b"x") == 2
    msgs = of_type(AppendEntries, drain(n1))
    entry = Entry(1, 2, EntryKind.NORMAL, b"x")
    assert msgs == [AppendEntries(1, "n1", d, 1, 1, (entry,), 1) for d in ("n2", "n3")]


@pytest.mark.parametrize(
    ("prev", "ok", "last"),
    [((3, 2), True, 4), ((0, 0), True, 3), ((3, 1), False, 3), ((5, 2), False, 3)],
    ids=["match", "empty-prefix", "term-mismatch", "too-short"],
)
def test_append_entries_consistency_check(prev: tuple[int, int], ok: bool, last: int) -> None:
    """A follower accepts entries only if its log holds an entry at prevLogIndex
    with prevLogTerm; otherwise it rejects and leaves its log alone.
    Reference: §5.3"""
    n = make_node("n1", log=[1, 1, 2], term=2)
    n.core.step(append(2, prev, [2] if prev[0] else [1]))
    (resp,) = responses(drain(n))
    assert resp.success is ok
    assert n.core.log.last_index() == last
    if not ok:
        assert log_terms(n) == [1, 1, 2]


def test_follower_deletes_conflicting_suffix_and_appends() -> None:
    """An entry conflicting with a new one (same index, other term) is deleted
    with everything after it, then the new entries are appended, durably.
    Reference: §5.3"""
    n = make_node("n1", log=[1, 1, 2, 2, 2], term=2, commit=2)
    n.core.step(append(3, (2, 1), [3]))
    assert responses(drain(n)) == [AppendEntriesResponse(3, "n1", "n2", True, 3)]
    assert log_terms(n) == [1, 1, 3]
    assert [n.store.term(i) for i in range(1, n.store.last_index() + 1)] == [1, 1, 3]


def test_follower_keeps_entries_a_late_append_already_holds() -> None:
    """A delayed AppendEntries whose entries the follower already holds does not
    truncate the entries after them. Reference: Fig. 2, §5.3"""
    n = make_node("n1", log=[1, 1, 1, 1], term=1)
    n.core.step(append(1, (1, 1), [1]))
    assert responses(drain(n)) == [AppendEntriesResponse(1, "n1", "n2", True, 2)]
    assert log_terms(n) == [1, 1, 1, 1]


def test_follower_never_truncates_committed_entries() -> None:
    """An AppendEntries reaching below the commit index (delayed from an old
    leader) cannot rewrite committed entries: the follower keeps its log and
    answers with its commit index. Reference: Fig. 3, §5.4"""
    n = make_node("n1", log=[1, 1, 2, 3], term=3, commit=3)
    n.core.step(append(3, (1, 1), [1, 2]))  # a delayed copy of an old message
    n.core.step(append(3, (2, 1), [3, 3]))  # would rewrite committed index 3
    assert [(r.success, r.match_index) for r in responses(drain(n))] == [(True, 3)] * 2
    assert (log_terms(n), n.core.log.commit) == ([1, 1, 2, 3], 3)


def test_fast_backtracking_follower_far_behind() -> None:
    """A follower missing 100 entries is found with one rejection: it tells the
    leader its log length instead of the leader walking back one index per
    round trip (the optimization at the end of the section). Reference: §5.3"""
    net = cluster(logs={"n1": [1] * 100, "n3": [1] * 100})
    net.elect("n1")
    to_n2 = of_type(AppendEntries, net.delivered, "n2")
    rejected = [r for r in responses(net.delivered) if r.src == "n2" and not r.success]
    assert len(rejected) == 1
    assert len(to_n2) <= 3  # probe, catch-up, commit update
    assert log_terms(net["n2"]) == [1] * 100 + [2]


@pytest.mark.parametrize(
    ("leader_log", "follower_log", "max_rejections"),
    [
        ([1] * 10 + [3] * 40, [1] * 10 + [2] * 50, 1),
        ([1] * 5 + [2] * 5 + [4] * 40, [1] * 5 + [2] * 10 + [3] * 30, 3),
    ],
    ids=["one-stale-term", "shared-then-stale-term"],
)
def test_fast_backtracking_divergent_follower(
    leader_log: list[int], follower_log: list[int], max_rejections: int
) -> None:
    """A follower holding a long uncommitted suffix from an old term is repaired
    in about one round trip per conflicting term, not per entry. Reference: §5.3"""
    net = cluster(logs={"n1": leader_log, "n2": follower_log, "n3": leader_log})
    net.elect("n1")
    rejected = [r for r in responses(net.delivered) if r.src == "n2" and not r.success]
    assert 1 <= len(rejected) <= max_rejections
    assert log_terms(net["n2"]) == log_terms(net["n1"])


def test_leader_commits_on_majority_and_followers_learn_it() -> None:
    """An entry is committed once the leader has replicated it on a majority;
    followers learn the commit index from later AppendEntries and apply it.
    Reference: §5.3"""
    net = cluster()
    n1 = net.elect("n1")
    net.cut("n1", "n3")
    n1.core.propose(b"x")
    net.stabilize()
    assert n1.core.log.commit == 2 and net["n2"].core.log.commit == 2
    assert [e.data for e in n1.applied] == [b"", b"x"]
    assert [e.data for e in net["n2"].applied] == [b"", b"x"]
    assert net["n3"].core.log.last_index() == 1
    net.heal()
    net.tick(["n1"], n=2)  # the lost message is resent after two stalled heartbeats
    assert net["n3"].core.log.commit == 2 and [e.data for e in net["n3"].applied] == [b"", b"x"]


def test_commit_notice_to_a_caught_up_follower_is_not_answered() -> None:
    """After a commit, a follower that has acknowledged the leader's whole log
    gets an empty AppendEntries marked ``reply=False``: it learns the commit and
    stays silent, since a success would tell the leader nothing. Appends with
    entries, and appends to a follower the leader is unsure of, still ask.
    Extension: saves a message per follower per commit (docs/PERFORMANCE.md)"""
    net = cluster()
    n1 = net.elect("n1")
    net.delivered.clear()
    n1.core.propose(b"x")
    net.stabilize()
    appends = of_type(AppendEntries, net.delivered)
    with_entries = [m for m in appends if m.entries]
    notices = [m for m in appends if not m.entries]
    assert with_entries and all(m.reply for m in with_entries)
    assert sorted(m.dst for m in notices) == ["n2", "n3"]
    assert all(not m.reply and m.commit == 2 and m.prev_index == 2 for m in notices)
    answers = responses(net.delivered)
    assert len(answers) == 2  # one per append with entries, none per notice
    assert all(r.match_index == 2 for r in answers)
    assert [net[n].core.log.commit for n in ("n2", "n3")] == [2, 2]


def test_commit_notice_that_does_not_match_is_refused() -> None:
    """A follower whose log does not hold the notice's prevLogIndex still
    answers, with a refusal, so the leader can repair it. Reference: §5.3"""
    n = make_node("n1", log=[1, 1], term=1)
    n.core.step(AppendEntries(1, "n2", "n1", 4, 1, (), 4, reply=False))
    [refusal] = responses(drain(n))
    assert not refusal.success and refusal.dst == "n2"
    n.core.step(AppendEntries(1, "n2", "n1", 2, 1, (), 2, reply=False))
    assert responses(drain(n)) == [] and n.core.log.commit == 2


def test_figure_8_previous_term_entries_not_committed_by_counting() -> None:
    """Figure 8: S1 (term 4) gets its term-2 entry at index 2 onto a majority,
    yet must not commit it — S5 (last entry of term 3) could still win and
    overwrite it. Once S1's own term-4 entry reaches a majority, both commit
    and S5 can no longer win. Reference: Fig. 8, §5.4.2"""
    logs = {"n1": [1, 2], "n2": [1, 2], "n3": [1], "n4": [1], "n5": [1, 3]}
    net = cluster(voters=IDS5, logs=logs, term=3, commit=1, max_msg_bytes=1)  # 1 entry/msg
    net.isolate("n5")

    def would_deliver_index_3(m: Message) -> bool:
        return (
            isinstance(m, AppendEntries)
            and any(e.index == 3 for e in m.entries)
            and net[m.dst].core.log.matches(m.prev_index, m.prev_term)
        )

    net.drop_if = would_deliver_index_3
    n1 = net.elect("n1")
    assert n1.core.term == 4
    holders = [i for i, nd in net.nodes.items() if nd.core.log.matches(2, 2)]
    assert holders == ["n1", "n2", "n3", "n4"]
    assert n1.core.log.commit == 1
    assert all(nd.applied == [] for nd in net.nodes.values())
    # (d): S5 would get S3's vote, so index 2 could still be overwritten.
    assert net["n3"].core.log.is_up_to_date(2, 3)
    # (e): the term-4 no-op reaches a majority; it and index 2 commit together.
    net.drop_if = lambda m: False
    net.tick(["n1"], n=3)
    assert n1.core.log.commit == 3
    assert [(e.index, e.term) for e in n1.applied] == [(2, 2), (3, 4)]
    assert not net["n3"].core.log.is_up_to_date(2, 3)


def test_commit_index_never_decreases() -> None:
    """A follower's commit index only moves forward, whatever commit a
    (delayed) AppendEntries or heartbeat carries. Reference: Fig. 2, §5.3"""
    n = make_node("n1", log=[1, 1, 1], term=1, commit=3)
    n.core.step(append(1, (3, 1), [1], commit=1))
    n.core.step(Heartbeat(1, "n2", "n1", 0))
    drain(n)
    assert n.core.log.commit == 3
    assert n.store.initial_state()[0].commit == 3


def test_proposal_on_follower_is_forwarded_to_leader() -> None:
    """Clients may talk to any server: a follower forwards a proposal to the
    leader it knows, which appends it. Reference: §8"""
    net = cluster()
    net.elect("n1")
    assert net["n2"].core.propose(b"via-n2") is None
    assert of_type(Propose, drain(net["n2"])) == [Propose(1, "n2", "n1", (b"via-n2",))]
    net.deliver([Propose(1, "n2", "n1", (b"via-n2",))])
    net.stabilize()
    assert [e.data for e in net["n3"].applied] == [b"", b"via-n2"]


def test_proposal_without_known_leader_raises_not_leader() -> None:
    """With no leader known a proposal fails fast instead of disappearing.
    Reference: §8"""
    n = make_node("n1")
    with pytest.raises(NotLeader):
        n.core.propose(b"x")
    n.core.campaign()
    with pytest.raises(NotLeader):
        n.core.propose(b"x")


def test_pipelined_appends_bounded_by_inflight_window() -> None:
    """A leader replicating to a caught-up follower sends new entries without
    waiting for acknowledgements, up to max_inflight_msgs messages; each
    acknowledgement opens room for one more. Reference: thesis §10.2.2"""
    net = cluster(max_inflight_msgs=3)
    n1 = net.elect("n1")
    assert n1.core.progress["n2"].state is ProgressState.REPLICATE
    sent: list[AppendEntries] = []
    for k in range(5):
        n1.core.propose(b"%d" % k)
        sent += of_type(AppendEntries, drain(n1), "n2")
    assert [(m.prev_index, [e.index for e in m.entries]) for m in sent] == [
        (1, [2]),
        (2, [3]),
        (3, [4]),
    ]
    assert list(n1.core.progress["n2"].inflight) == [2, 3, 4]
    more = of_type(AppendEntries, ack(n1, "n2", 2), "n2")
    assert [(m.prev_index, [e.index for e in m.entries]) for m in more] == [(4, [5, 6])]


def test_append_entries_bounded_by_max_msg_bytes() -> None:
    """Entries are batched into AppendEntries no larger than max_msg_bytes
    (always at least one entry), and a backlog still drains completely.
    Reference: thesis §10.2.2"""
    net = cluster(max_msg_bytes=100)
    n1 = net.elect("n1")
    n1.core.propose_batch([b"0123456789"] * 10)  # 34 bytes each
    n1.core.propose(b"x" * 500)  # alone larger than the limit
    net.stabilize()
    carrying = [m for m in of_type(AppendEntries, net.delivered) if m.entries]
    for m in carrying:
        assert len(m.entries) == 1 or sum(e.size() for e in m.entries) <= 100
    assert max(len(m.entries) for m in carrying) == 2
    assert log_terms(net["n3"]) == [1] * 12 and net["n3"].core.log.commit == 12


# --------------------------------------------------------------------- PreVote, thesis §9.6


def test_prevote_partitioned_node_does_not_disrupt_on_rejoin() -> None:
    """A node cut off from the cluster keeps failing pre-votes, so its term never
    grows; when it rejoins it simply follows the leader, whose term and
    leadership are untouched. Reference: thesis §9.6"""
    net = cluster(**STICKY)
    n1 = net.elect("n1")
    net.isolate("n3")
    net.tick(n=60)
    assert net["n3"].core.term == 1 and net["n3"].core.role is Role.PRE_CANDIDATE
    net.heal()
    net.tick(n=30)
    assert (n1.core.role, n1.core.term) == (Role.LEADER, 1)
    assert (net["n3"].core.role, net["n3"].core.leader_id, net["n3"].core.term) == (
        Role.FOLLOWER,
        "n1",
        1,
    )


def test_without_prevote_a_rejoining_node_deposes_the_leader() -> None:
    """The problem PreVote solves: without it the partitioned node's term runs
    ahead, and on rejoining its elections depose a healthy leader.
    Reference: thesis §9.6"""
    net = cluster()
    n1 = net.elect("n1")
    net.isolate("n3")
    net.tick(n=60)
    assert net["n3"].core.term > 3
    net.heal()
    net.tick(n=30)
    assert n1.core.term > 1  # the healthy leader of term 1 was deposed


def test_prevote_does_not_change_the_receivers_term() -> None:
    """Granting a pre-vote changes neither the term nor the vote of the granting
    server, and persists nothing; the reply carries the prospective term.
    Reference: thesis §9.6"""
    n = make_node("n1", log=[1, 1], term=1, **STICKY)
    n.core.step(RequestVote(2, "n3", "n1", 2, 1, pre_vote=True))
    rd = n.core.ready()
    assert list(rd.messages) == [RequestVoteResponse(2, "n1", "n3", True, pre_vote=True)]
    assert rd.hard_state is None
    assert (n.core.term, n.core.vote, n.core.role) == (1, None, Role.FOLLOWER)


def test_prevote_requires_an_up_to_date_log() -> None:
    """A pre-vote is only granted to a candidate whose log would win a real vote.
    Reference: thesis §9.6, paper §5.4.1"""
    n = make_node("n1", log=[1, 2], term=2, **STICKY)
    n.core.step(RequestVote(3, "n3", "n1", 5, 1, pre_vote=True))
    assert drain(n) == [RequestVoteResponse(2, "n1", "n3", False, pre_vote=True)]
    assert n.core.term == 2


def test_pre_candidate_bumps_its_term_only_after_a_pre_vote_majority() -> None:
    """A pre-candidate turns candidate (term+1, real RequestVotes) on a majority
    of pre-votes, and goes back to follower at its old term on a majority of
    refusals. Reference: thesis §9.6"""
    n = make_node("n1", voters=IDS5, log=[1], term=1, **STICKY)
    n.core.campaign()
    drain(n)
    n.core.step(RequestVoteResponse(2, "n2", "n1", True, pre_vote=True))
    assert (n.core.role, n.core.term) == (Role.PRE_CANDIDATE, 1)
    n.core.step(RequestVoteResponse(2, "n3", "n1", True, pre_vote=True))
    assert (n.core.role, n.core.term, n.core.vote) == (Role.CANDIDATE, 2, "n1")
    assert all(not m.pre_vote for m in of_type(RequestVote, drain(n)))

    m = make_node("n1", voters=IDS5, log=[1], term=1, **STICKY)
    m.core.campaign()
    drain(m)
    for src in ("n2", "n3", "n4"):
        m.core.step(RequestVoteResponse(1, src, "n1", False, pre_vote=True))
    assert (m.core.role, m.core.term, m.core.vote) == (Role.FOLLOWER, 1, None)


# --------------------------------------------------------- CheckQuorum and leader stickiness


def test_check_quorum_leader_without_quorum_steps_down() -> None:
    """A leader that has not heard from a majority for an election timeout steps
    down, so clients are not stuck with a leader that cannot commit.
    Reference: thesis §6.2"""
    net = cluster(**STICKY)
    n1 = net.elect("n1")
    net.isolate("n1")
    ticks = 0
    while n1.core.role is Role.LEADER:
        n1.core.tick()
        drain(n1)
        ticks += 1
    assert ticks <= 2 * n1.cfg.election_ticks
    assert (n1.core.role, n1.core.term, n1.core.leader_id) == (Role.FOLLOWER, 1, None)


def test_check_quorum_leader_with_quorum_stays() -> None:
    """A leader hearing from a majority (here one of two followers) keeps its
    leadership indefinitely. Reference: thesis §6.2"""
    net = cluster(**STICKY)
    n1 = net.elect("n1")
    net.isolate("n3")
    net.tick(n=50)
    assert (n1.core.role, n1.core.term) == (Role.LEADER, 1)


def test_sticky_follower_ignores_request_vote_from_disruptive_server() -> None:
    """A server that heard from a current leader within the minimum election
    timeout ignores RequestVote: no term change, no vote, no answer — unless
    the request is a leadership transfer. Reference: thesis §4.2.3"""
    net = cluster(**STICKY)
    net.elect("n1")
    n2 = net["n2"]
    n2.core.step(RequestVote(5, "n3", "n2", 9, 1))
    assert drain(n2) == []
    assert (n2.core.term, n2.core.vote, n2.core.leader_id) == (1, "n1", "n1")
    n2.core.step(RequestVote(5, "n3", "n2", 9, 1, transfer=True))
    assert drain(n2) == [RequestVoteResponse(5, "n2", "n3", True)]
    assert (n2.core.term, n2.core.vote) == (5, "n3")


def test_sticky_follower_votes_once_the_leader_went_quiet() -> None:
    """Stickiness lasts one election timeout after the last word from the
    leader; after that the follower votes normally. Reference: thesis §4.2.3"""
    net = cluster(**STICKY)
    net.elect("n1")
    n2 = net["n2"]
    for _ in range(n2.cfg.election_ticks):
        n2.core.tick()  # n1 says nothing in the meantime
    drain(n2)
    n2.core.step(RequestVote(2, "n3", "n2", 1, 1))
    assert of_type(RequestVoteResponse, drain(n2)) == [RequestVoteResponse(2, "n2", "n3", True)]


# --------------------------------------------------------------------- ReadIndex, thesis §6.4


def test_read_index_waits_for_noop_then_one_heartbeat_round() -> None:
    """A new leader answers a read only after its no-op committed (step 1), and
    then only after a heartbeat round acknowledged by a majority (step 3); the
    read index is the commit index (step 2). Reference: thesis §6.4"""
    n = make_node("n1")
    win(n)
    n.core.read_index(b"r")
    assert [m for m in drain(n) if isinstance(m, Heartbeat)] == []
    ack(n, "n2", 1)  # the no-op commits
    assert n.core.log.commit == 1
    beats = of_type(Heartbeat, n.readys[-1].messages)
    assert [(m.dst, m.read_seq > 0) for m in beats] == [("n2", True), ("n3", True)]
    assert n.read_states == []
    n.core.step(HeartbeatResponse(1, "n2", "n1", beats[0].read_seq))
    drain(n)
    assert n.read_states == [ReadState(b"r", 1)]


def test_read_index_needs_a_majority_of_acks() -> None:
    """In five servers, one follower's acknowledgement is not enough; a second
    one confirms the read. Reference: thesis §6.4"""
    n = make_node("n1", voters=IDS5)
    win(n, ("n2", "n3"))
    ack(n, "n2", 1)
    ack(n, "n3", 1)
    n.core.read_index(b"r")
    seq = of_type(Heartbeat, drain(n))[0].read_seq
    n.core.step(HeartbeatResponse(1, "n4", "n1", seq))
    drain(n)
    assert n.read_states == []
    n.core.step(HeartbeatResponse(1, "n5", "n1", seq))
    drain(n)
    assert n.read_states == [ReadState(b"r", 1)]


def test_many_reads_share_one_heartbeat_round() -> None:
    """Reads arriving together are confirmed by a single heartbeat round.
    Reference: thesis §6.4"""
    n = make_node("n1")
    win(n)
    ack(n, "n2", 1)
    for ctx in (b"a", b"b", b"c"):
        n.core.read_index(ctx)
    beats = of_type(Heartbeat, drain(n))
    assert [m.dst for m in beats] == ["n2", "n3"]
    n.core.step(HeartbeatResponse(1, "n3", "n1", beats[1].read_seq))
    drain(n)
    assert n.read_states == [ReadState(b"a", 1), ReadState(b"b", 1), ReadState(b"c", 1)]


def test_deposed_leader_fails_pending_reads() -> None:
    """A leader that steps down before confirming a read fails it (index 0)
    rather than serving it later, possibly stale; so do reads still waiting for
    the no-op. Reference: thesis §6.4"""
    n = make_node("n1")
    win(n)
    n.core.read_index(b"early")  # before the no-op commits
    ack(n, "n2", 1)
    n.core.read_index(b"late")  # waits for its heartbeat round
    drain(n)
    n.core.step(Heartbeat(2, "n2", "n1", 0))
    drain(n)
    assert sorted(n.read_states, key=lambda r: r.ctx) == [
        ReadState(b"early", 0),
        ReadState(b"late", 0),
    ]


def test_follower_read_index_via_leader() -> None:
    """A follower asks the leader for a read index and receives the leader's
    commit index once the leader confirmed its leadership. Reference: thesis §6.4"""
    net = cluster()
    n1 = net.elect("n1")
    n1.core.propose(b"x")
    net.stabilize()
    net["n3"].core.read_index(b"f")
    delivered = net.stabilize()
    assert ReadIndexRequest(1, "n3", "n1", b"f") in delivered
    assert ReadIndexResponse(1, "n1", "n3", b"f", 2) in delivered
    assert net["n3"].read_states == [ReadState(b"f", 2)]
    with pytest.raises(NotLeader):
        make_node("n2").core.read_index(b"x")


def test_single_node_read_is_immediate() -> None:
    """A single-server cluster confirms a read without any messages.
    Reference: thesis §6.4"""
    n = make_node("n1", voters=("n1",))
    n.core.campaign()
    drain(n)
    assert n.core.role is Role.LEADER and n.core.log.commit == 1
    n.core.read_index(b"r")
    assert drain(n) == []
    assert n.read_states == [ReadState(b"r", 1)]


# ------------------------------------------------------------------ learners, thesis §4.2.1


def test_learner_receives_the_log_but_is_not_counted() -> None:
    """A learner gets every entry but its acknowledgement never counts toward a
    commit or a read. Reference: thesis §4.2.1"""
    net = cluster(learners=("n4",))
    n1 = net.elect("n1")
    assert log_terms(net["n4"]) == [1] and net["n4"].core.role is Role.LEARNER
    net.cut("n1", "n2")
    net.cut("n1", "n3")
    n1.core.propose(b"x")
    net.stabilize()
    assert net["n4"].core.log.last_index() == 2 and n1.core.progress["n4"].match == 2
    assert n1.core.log.commit == 1
    n1.core.read_index(b"r")
    net.stabilize()
    assert n1.read_states == []


def test_learner_never_campaigns() -> None:
    """A learner never starts an election, whether its timer expires, it is
    asked to campaign or sent TimeoutNow. Reference: thesis §4.2.1"""
    n = make_node("n4", learners=("n4",), log=[1])
    for _ in range(100):
        n.core.tick()
    n.core.campaign()
    n.core.step(TimeoutNow(1, "n1", "n4"))
    assert of_type(RequestVote, drain(n)) == []
    assert (n.core.role, n.core.term) == (Role.LEARNER, 1)


def test_learner_votes_do_not_elect() -> None:
    """Only voters' votes count toward a candidate's majority. Reference: thesis §4.2.1"""
    n = make_node("n1", learners=("n4", "n5"))
    n.core.campaign()
    assert [m.dst for m in of_type(RequestVote, drain(n))] == ["n2", "n3"]
    n.core.step(RequestVoteResponse(1, "n4", "n1", True))
    n.core.step(RequestVoteResponse(1, "n5", "n1", True))
    assert n.core.role is Role.CANDIDATE


# ------------------------------------------------------------ membership changes, thesis §4.1


def _four() -> Network:
    net = cluster()
    net.nodes["n4"] = make_node("n4", voters=(), seed=9)
    return net


def test_add_learner_promote_then_remove() -> None:
    """One server at a time: add n4 as a learner, which catches up, promote it
    to voter, then remove n3; every member's configuration follows the log.
    Reference: thesis §4.1, §4.2.1"""
    net = _four()
    n1 = net.elect("n1")
    n1.core.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "n4", "tcp://n4"))
    net.stabilize()
    n4 = net["n4"]
    assert log_terms(n4) == log_terms(n1) and n4.core.log.commit == 2
    assert n4.core.soft_state.role is Role.LEARNER
    assert n4.core.membership == Membership(("n1", "n2", "n3"), ("n4",), (("n4", "tcp://n4"),))
    n1.core.propose_conf_change(ConfChange(ConfChangeOp.ADD_VOTER, "n4"))
    net.stabilize()
    assert n4.core.role is Role.FOLLOWER
    assert all(nd.core.membership.voters == ("n1", "n2", "n3", "n4") for nd in net.nodes.values())
    n1.core.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "n3"))
    net.stabilize()
    assert n1.core.membership.voters == ("n1", "n2", "n4")
    assert sorted(n1.core.progress) == ["n1", "n2", "n4"]
    assert n1.core.log.commit == 4 and n4.core.log.commit == 4


def test_conf_change_refused_before_leader_commits_an_entry_of_its_term() -> None:
    """A new leader may not append a configuration entry until an entry of its
    own term (the no-op) is committed, even if older entries are committed.
    Reference: the 2015 raft-dev correction of thesis §4.1"""
    n = make_node("n1", log=[1, 1], term=1, commit=2)
    win(n)
    with pytest.raises(ProposalDropped):
        n.core.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "n4"))
    ack(n, "n2", 3)
    assert n.core.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "n4")) == 4


def test_conf_change_refused_while_another_is_uncommitted() -> None:
    """Only one membership change may be uncommitted at a time.
    Reference: thesis §4.1"""
    net = cluster()
    n1 = net.elect("n1")
    net.cut("n1", "n2")
    net.cut("n1", "n3")
    n1.core.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "n4"))
    net.stabilize()
    with pytest.raises(ProposalDropped):
        n1.core.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "n5"))
    net.heal()
    net.tick(["n1"], n=2)
    assert n1.core.log.commit == 2
    assert n1.core.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "n5")) == 3


def test_configuration_takes_effect_when_appended() -> None:
    """A server uses a new configuration as soon as it is in its log: the leader
    then needs a majority of the new voters (3 of 4), and a follower switches
    before learning that the entry committed. Reference: thesis §4.1"""
    net = cluster()
    n1 = net.elect("n1")
    net.cut("n1", "n3")
    index = n1.core.propose_conf_change(ConfChange(ConfChangeOp.ADD_VOTER, "n4"))
    assert index is not None
    assert n1.core.membership.voters == ("n1", "n2", "n3", "n4")
    net.stabilize()
    assert net["n2"].core.membership.voters == ("n1", "n2", "n3", "n4")
    assert net["n2"].core.log.commit < index
    assert n1.core.log.commit < index  # n1 + n2 is no majority of four
    net.heal()
    net.tick(["n1"], n=2)
    assert n1.core.log.commit == index


def test_removed_leader_steps_down_and_the_rest_elect_a_new_one() -> None:
    """A leader removing itself manages the cluster until the change commits
    (without counting itself), then steps down; it never campaigns again and
    the remaining servers elect a leader that commits without it.
    Reference: thesis §4.2.2"""
    net = cluster(**STICKY)
    n1 = net.elect("n1")
    index = n1.core.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "n1"))
    net.stabilize()
    assert n1.core.log.commit == index
    assert (n1.core.role, n1.core.term) == (Role.LEARNER, 1)
    assert net["n2"].core.log.commit == index  # told before stepping down
    since = len(net.delivered)
    net.tick(n=3 * n1.cfg.election_ticks)
    leaders = [nd for nd in net.nodes.values() if nd.core.role is Role.LEADER]
    assert [nd.id for nd in leaders] in (["n2"], ["n3"])
    assert not [m for m in net.delivered[since:] if m.src == "n1"]
    new = leaders[0]
    new.core.propose(b"after")
    net.stabilize()
    other = "n3" if new.id == "n2" else "n2"
    assert [e.data for e in net[other].applied][-1] == b"after"


def test_removed_server_stops_campaigning() -> None:
    """A server whose log holds a configuration without it never campaigns
    again. Reference: thesis §4.2.3"""
    n = make_node("n3", log=[1], term=1)
    gone = Membership(("n1", "n2"))
    n.core.step(
        AppendEntries(1, "n1", "n3", 1, 1, (Entry(1, 2, EntryKind.CONFIG, gone.encode()),), 2)
    )
    drain(n)
    assert n.core.role is Role.LEARNER
    for _ in range(100):
        n.core.tick()
    n.core.campaign()
    assert of_type(RequestVote, drain(n)) == []


def test_removed_follower_receives_the_entry_that_removes_it() -> None:
    """The leader keeps replicating to a server being removed until the removal
    commits, so that server learns it is out (and reports it) instead of
    believing it is still a voter; then the leader forgets it.
    Reference: thesis §4.2.2"""
    net = cluster()
    n1 = net.elect("n1")
    index = n1.core.propose_conf_change(ConfChange(ConfChangeOp.REMOVE, "n3"))
    assert sorted(n1.core.progress) == ["n1", "n2", "n3"]  # until it commits
    net.stabilize()
    assert n1.core.log.commit == index
    assert sorted(n1.core.progress) == ["n1", "n2"]
    n3 = net["n3"]
    assert n3.core.log.last_index() >= index
    assert not n3.core.membership.contains("n3") and n3.core.role is Role.LEARNER


# ------------------------------------------------------------ leadership transfer, thesis §3.10


def test_transfer_sends_timeout_now_once_target_caught_up() -> None:
    """The leader first brings the target up to date, then sends TimeoutNow; the
    target campaigns at once and wins even though the other follower is in a
    leader lease. Reference: thesis §3.10"""
    net = cluster(**STICKY)
    n1 = net.elect("n1")
    net.cut("n1", "n3")
    n1.core.propose(b"x")
    net.stabilize()
    net.heal()
    since = len(net.delivered)
    n1.core.transfer_leadership("n3")
    net.tick(["n1"], n=3)  # heartbeats notice n3 missed an append and resend it
    delivered = net.delivered[since:]
    kinds = [type(m).__name__ for m in delivered]
    caught_up = next(
        k
        for k, m in enumerate(delivered)
        if isinstance(m, AppendEntriesResponse) and m.src == "n3" and m.match_index == 2
    )
    assert kinds.index("TimeoutNow") > caught_up
    assert kinds.count("TimeoutNow") == 1
    assert [m.transfer for m in of_type(RequestVote, delivered)] == [True, True]
    assert (net["n3"].core.role, net["n3"].core.term) == (Role.LEADER, 2)
    assert (n1.core.role, n1.core.leader_id) == (Role.FOLLOWER, "n3")


def test_proposals_refused_during_transfer_and_transfer_aborts() -> None:
    """While a transfer is pending the leader refuses proposals; if the target
    does not take over within an election timeout the transfer is abandoned
    and proposals are accepted again. Reference: thesis §3.10"""
    net = cluster(**STICKY)
    n1 = net.elect("n1")
    net.cut("n1", "n3")
    n1.core.propose(b"x")
    net.stabilize()
    n1.core.transfer_leadership("n3")
    net.stabilize()
    assert n1.core.lead_transferee == "n3"
    with pytest.raises(ProposalDropped):
        n1.core.propose(b"y")
    with pytest.raises(ProposalDropped):
        n1.core.propose_conf_change(ConfChange(ConfChangeOp.ADD_LEARNER, "n4"))
    net.tick(["n1", "n2"], n=n1.cfg.election_ticks)
    assert n1.core.lead_transferee is None and n1.core.role is Role.LEADER
    assert n1.core.propose(b"y") == 3
    assert not [m for m in net.delivered if isinstance(m, TimeoutNow)]


def test_timeout_now_target_campaigns_immediately() -> None:
    """TimeoutNow makes the target start a real election at once: no pre-vote,
    no waiting, and the request carries the transfer flag. Reference: thesis §3.10"""
    net = cluster(**STICKY)
    net.elect("n1")
    n2 = net["n2"]
    n2.core.step(TimeoutNow(1, "n1", "n2"))
    assert (n2.core.role, n2.core.term) == (Role.CANDIDATE, 2)
    assert [(m.dst, m.pre_vote, m.transfer) for m in of_type(RequestVote, drain(n2))] == [
        ("n1", False, True),
        ("n3", False, True),
    ]


# --------------------------------------------------- compaction and InstallSnapshot, thesis ch. 5


def _compact(node: Node, data: bytes) -> SnapshotMeta:
    """The driver snapshots the state machine at the applied index and compacts."""
    index = node.core.log.applied
    meta = node.core.snapshot_taken(index)
    node.snaps.put(meta, data)
    node.store.record_snapshot(meta)
    node.store.compact(index)
    node.core.compacted(index)
    return meta


def test_snapshot_sent_in_ordered_chunks_then_replication_resumes() -> None:
    """A follower whose next entry was compacted away receives the snapshot in
    chunks, in order, each acknowledged; after the last one its log is the
    snapshot, its commit index the snapshot's, and ordinary replication
    continues. Reference: paper §7, thesis §5.1-§5.3"""
    net = cluster(snapshot_chunk_bytes=10)
    n1 = net.elect("n1")
    net.isolate("n3")
    n1.core.propose_batch([b"a", b"b", b"c", b"d"])
    net.stabilize()
    assert n1.core.log.applied == 5
    data = bytes(range(35))
    meta = _compact(n1, data)
    net.heal()
    net.tick(["n1"], n=2)
    n3 = net["n3"]
    chunks = of_type(InstallSnapshot, net.delivered, "n3")
    assert [(c.offset, len(c.data), c.done) for c in chunks] == [
        (0, 10, False),
        (10, 10, False),
        (20, 10, False),
        (30, 5, True),
    ]
    acks = [m.next_offset for m in of_type(InstallSnapshotResponse, net.delivered)]
    assert acks == [10, 20, 30, 35]
    assert n3.snaps.get(meta) == data
    assert n3.store.initial_state()[1] == meta
    assert (n3.core.log.first_index(), n3.core.log.last_index(), n3.core.log.commit) == (6, 5, 5)
    assert n3.core.membership == meta.membership
    n1.core.propose(b"e")
    net.stabilize()
    assert n3.core.log.commit == 6 and [e.data for e in n3.applied][-1] == b"e"


def test_out_of_order_snapshot_chunk_answered_with_expected_offset() -> None:
    """Chunks must arrive in order: one at the wrong offset is not written and the
    follower answers with the offset it expects. Reference: thesis §5.3"""
    n = make_node("n3", log=[1], term=1)
    meta = SnapshotMeta(9, 1, Membership(("n1", "n2", "n3")))

    def chunk(offset: int, done: bool = False) -> InstallSnapshot:
        return InstallSnapshot(1, "n1", "n3", meta, offset, b"x" * 10, done)

    for offset in (10, 0, 20, 10, 10):
        n.core.step(chunk(offset))
    answers = [m.next_offset for m in of_type(InstallSnapshotResponse, drain(n))]
    assert answers == [0, 10, 10, 20, 20]
    assert [c.offset for rd in n.readys for c in rd.snapshot_chunks] == [0, 10]
    n.core.step(chunk(20, done=True))
    drain(n)
    assert n.incoming == b"x" * 30 and n.store.initial_state()[1] == meta


def test_follower_holding_the_snapshots_last_entry_keeps_its_log() -> None:
    """If the follower already has the entry at the snapshot's last index and
    term, the entries after it stay; only the commit index moves. Reference: §7"""
    n = make_node("n2", log=[1, 1, 1, 1, 1], term=1, commit=2)
    meta = SnapshotMeta(3, 1, Membership(("n1", "n2", "n3")))
    n.core.step(InstallSnapshot(1, "n1", "n2", meta, 0, b"state", True))
    msgs = drain(n)
    assert msgs == [InstallSnapshotResponse(1, "n2", "n1", 3, 5, done=True)]
    assert (log_terms(n), n.core.log.commit, n.store.last_index()) == ([1] * 5, 3, 5)
    assert n.store.first_index() == 1


def test_a_received_snapshot_the_log_already_holds_is_still_the_one_to_send() -> None:
    """The follower keeps its log, but the snapshot's file is complete in its store:
    the core must count it as the latest it can send. Otherwise, once this node
    leads, a follower behind its log's base waits for good: the driver asks
    storage for no copy while a file reaching that base exists, and the core
    never offers the file it does not know (node simulation, seed 1353867)."""
    n = make_node("n2", log=[1, 1, 1, 1, 1], term=1, commit=2)
    meta = SnapshotMeta(3, 1, Membership(("n1", "n2", "n3")))
    n.core.step(InstallSnapshot(1, "n1", "n2", meta, 0, b"state", True))
    drain(n)
    assert n.core.snapshot == meta


def test_follower_with_a_conflicting_entry_discards_its_log_for_the_snapshot() -> None:
    """If the follower's entry at the snapshot's last index has another term, the
    whole log is replaced by the snapshot. Reference: §7"""
    n = make_node("n2", log=[1, 1, 2, 2, 2], term=2)
    meta = SnapshotMeta(4, 3, Membership(("n1", "n2", "n3")))
    n.core.step(InstallSnapshot(3, "n1", "n2", meta, 0, b"state", True))
    rd = n.core.ready()
    assert rd.snapshot == meta and rd.committed == ()
    drain(n)
    assert (n.store.first_index(), n.store.last_index(), n.core.log.commit) == (5, 4, 4)


def test_committed_entries_handed_out_once_durable_and_exactly_once() -> None:
    """Committed entries reach the state machine only after they are durable,
    in order, each exactly once, even when split across Readys.
    Reference: §5.3, thesis §10.2.1"""
    n = make_node("n1", max_committed_bytes_per_ready=60)
    n.core.step(append(1, (0, 0), [1] * 6, commit=6))
    first = n.core.ready()
    assert len(first.entries) == 6 and first.committed == ()
    n.store.persist(first.hard_state, first.entries, first.snapshot)
    n.core.advance(first)
    handed = []
    while n.core.has_ready():
        rd = n.core.ready()
        assert len(rd.committed) <= 2  # 24 bytes each, 60 per Ready
        handed += [e.index for e in rd.committed]
        n.core.advance(rd)
    assert handed == [1, 2, 3, 4, 5, 6]
    n.core.step(Heartbeat(1, "n2", "n1", 6))
    n.core.step(append(1, (6, 1), [], commit=6))
    assert all(rd.committed == () for rd in [n.core.ready()])


def test_leader_applies_its_own_entries_only_once_durable() -> None:
    """A leader may count followers for commitment before its own write finished,
    but hands an entry to its state machine only once durable locally.
    Reference: thesis §10.2.1"""
    n = make_node("n1")
    win(n)
    n.core.step(AppendEntriesResponse(1, "n2", "n1", True, 1))
    n.core.propose(b"x")
    n.core.step(AppendEntriesResponse(1, "n2", "n1", True, 2))
    n.core.step(AppendEntriesResponse(1, "n3", "n1", True, 2))
    assert n.core.log.commit == 2
    rd = n.core.ready()
    assert [e.index for e in rd.entries] == [2]
    assert [e.index for e in rd.committed] == [1]  # the no-op was durable already
    n.store.persist(rd.hard_state, rd.entries, rd.snapshot)
    n.core.advance(rd)
    assert [e.data for e in n.core.ready().committed] == [b"x"]


def test_messages_stepped_between_ready_and_advance_land_in_the_next_ready() -> None:
    """While the driver writes one Ready, a new leader rewrites the entries being
    written: the acknowledgement of the old write does not mark the new
    entries durable, the next Ready carries the rewrite, and only the final,
    durable log is ever applied. Reference: §5.3, thesis §10.2.1"""
    n = make_node("n1", log=[1], term=1)
    n.core.step(AppendEntries(2, "n2", "n1", 1, 1, (Entry(2, 2), Entry(2, 3)), 1))
    rd1 = n.core.ready()
    assert [(e.index, e.term) for e in rd1.entries] == [(2, 2), (3, 2)]
    n.core.step(AppendEntries(3, "n3", "n1", 1, 1, (Entry(3, 2, data=b"new"),), 2))
    n.store.persist(rd1.hard_state, rd1.entries, rd1.snapshot)  # the old write lands
    n.core.advance(rd1)
    assert n.core.log.durable_last_index() == 1
    rd2 = n.core.ready()
    assert [(e.index, e.term) for e in rd2.entries] == [(2, 3)]
    assert rd2.hard_state == HardState(3, None, 2) and rd2.committed == ()
    assert responses(list(rd2.messages)) == [AppendEntriesResponse(3, "n1", "n3", True, 2)]
    n.store.persist(rd2.hard_state, rd2.entries, rd2.snapshot)
    n.core.advance(rd2)
    drain(n)
    assert [(e.index, e.term) for e in [*rd1.committed, *n.applied]] == [(1, 1), (2, 3)]
    assert [n.store.term(i) for i in (1, 2)] == [1, 3] and n.store.last_index() == 2


# ------------------------------------------------------------------------- regressions


def test_leader_deposed_in_the_same_batch_sends_no_append_entries() -> None:
    """A leader that proposed and then stepped down to a higher term before its
    Ready was collected must not send AppendEntries: at the new term it would
    pose as a second leader and could overwrite the real leader's entries.
    Reference: Fig. 3 (Election Safety), §5.2"""
    net = cluster()
    n1 = net.elect("n1")
    n1.core.propose(b"x")
    n1.core.step(RequestVote(5, "n3", "n1", 10, 5))
    msgs = drain(n1)
    assert of_type(AppendEntries, msgs) == []
    assert msgs == [RequestVoteResponse(5, "n1", "n3", True)]


def test_forwarded_transfer_to_a_non_voter_is_refused_quietly() -> None:
    """A leadership transfer forwarded by a peer towards a server that cannot
    lead (a learner, an unknown id) is refused without raising out of step()
    and without starting a transfer. Reference: thesis §3.10"""
    net = cluster(learners=("n4",))
    n1 = net.elect("n1")
    for target in ("n4", "n9"):
        n1.core.step(TransferLeader(1, "n2", "n1", target))
    assert n1.core.lead_transferee is None
    assert n1.core.propose(b"still leading") == 2


def test_follower_whose_probe_was_lost_is_probed_again_on_heartbeats() -> None:
    """A follower in probe whose ``next`` is past the leader's log (its first probe
    was lost: a member just added with an empty log) and which answers a
    heartbeat gets a probe then (an empty AppendEntries), not nothing. Found by the
    node simulation (seed 11: an added member stayed at commit 0 for 120 s of
    heartbeats with an idle cluster). Reference: §5.3"""
    net = cluster()
    n1 = net.elect("n1")
    net.stabilize()
    pr = n1.core._repl.progress["n3"]
    pr.become_probe()
    pr.match, pr.next = 0, n1.core.log.last_index() + 1  # as after a lost first probe
    drain(n1)
    n1.core.step(HeartbeatResponse(n1.core.term, "n3", "n1", 0))
    probes = of_type(AppendEntries, drain(n1), dst="n3")
    assert len(probes) == 1 and probes[0].reply


def test_what_the_state_machine_applied_is_committed_when_this_log_holds_it() -> None:
    """A restarted node whose commit index (written lazily) is behind what its state
    machine applied learns the commit from the state machine's report, when its log
    holds that very entry (same index and term: Log Matching makes the prefix the
    committed one); never from an entry its log does not hold. Found by the node
    simulation (seed 100458): a restarted leader at commit 8 whose storage had
    applied 11 refused storage's snapshot file at 11, and the followers it needed
    for a quorum were behind its compacted log, so nothing ever committed again."""
    n = make_node("n1", log=[1, 1, 2, 2, 2], commit=2)
    n.core.applied_elsewhere(4, 1)  # not this log's entry at 4 (term 2 here)
    assert n.core.log.commit == 2
    n.core.applied_elsewhere(9, 2)  # beyond this log
    assert n.core.log.commit == 2
    n.core.applied_elsewhere(4, 2)
    assert n.core.log.commit == 4
    n.core.applied_elsewhere(3, 2)  # never backwards
    assert n.core.log.commit == 4
    drain(n)
    assert [e.index for e in n.applied] == [3, 4]
