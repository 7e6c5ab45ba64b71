"""Learner promotion: the pure rules of ``Promoter``, then the leader's driver doing it for real."""

from __future__ import annotations

import pytest

from concordance import errors
from concordance.consensus.promotion import Promoter, PromotionView
from concordance.protocol import wire
from concordance.raft.entries import ConfChange, ConfChangeOp
from concordance.testing.memory_ipc import MemoryIpc
from concordance.testing.poll import until
from tests.unit.consensus_harness import cluster, run


def view(
    matches: dict[str, int],
    last: int = 100,
    leader: bool = True,
    can_change: bool = True,
) -> PromotionView:
    return PromotionView(
        leader=leader,
        can_change=can_change,
        last_index=last,
        learners=tuple(sorted(matches)),
        matches=matches,
        addresses={n: f"10.0.0.{i}:4100" for i, n in enumerate(sorted(matches), 1)},
    )


def test_a_learner_is_promoted_after_consecutive_caught_up_checks() -> None:
    p = Promoter(max_lag=10, checks=2)
    assert p.check(view({"n4": 95})) is None  # caught up once: not yet
    assert p.check(view({"n4": 100})) == ConfChange(ConfChangeOp.ADD_VOTER, "n4", "10.0.0.1:4100")


def test_falling_behind_resets_the_streak() -> None:
    p = Promoter(max_lag=10, checks=2)
    assert p.check(view({"n4": 100})) is None
    assert p.check(view({"n4": 50})) is None  # 50 behind: the streak starts over
    assert p.streaks == {"n4": 0}
    assert p.check(view({"n4": 91})) is None
    assert p.check(view({"n4": 90})) is not None  # exactly max_lag behind counts


def test_nothing_is_proposed_while_a_change_is_pending_but_streaks_keep_counting() -> None:
    p = Promoter(max_lag=0, checks=2)
    assert p.check(view({"n4": 100}, can_change=False)) is None
    assert p.check(view({"n4": 100}, can_change=False)) is None
    assert p.streaks == {"n4": 2}
    change = p.check(view({"n4": 100}))
    assert change is not None and change.node_id == "n4"


def test_one_learner_at_a_time_smallest_id_first() -> None:
    p = Promoter(max_lag=0, checks=1)
    change = p.check(view({"n9": 100, "n5": 100}))
    assert change is not None and change.node_id == "n5"


def test_a_follower_forgets_everything() -> None:
    p = Promoter(max_lag=0, checks=2)
    p.check(view({"n4": 100}))
    assert p.check(view({"n4": 100}, leader=False)) is None
    assert p.streaks == {}
    assert p.check(view({"n4": 100})) is None  # a new leader counts from its own checks


def test_removed_learners_are_forgotten() -> None:
    p = Promoter(max_lag=0, checks=2)
    p.check(view({"n4": 100, "n5": 100}))
    p.check(view({"n5": 0}))
    assert p.streaks == {"n5": 0}


def test_checks_are_due_every_n_ticks() -> None:
    p = Promoter(every_ticks=5)
    assert [p.tick(1) for _ in range(10)] == [False] * 4 + [True] + [False] * 4 + [True]
    assert p.tick(7) is True
    with pytest.raises(ValueError):
        Promoter(checks=0)


def test_the_leader_promotes_a_caught_up_joiner_by_itself() -> None:
    async def main(net: MemoryIpc) -> None:
        async with cluster(net, 3, joiners=1) as c:
            leader = await c.wait_one_leader()
            front = c.fronts[leader]
            for n in range(10):
                await front.propose(b"before%d" % n)
            added = await front.request(
                "conf_change", wire.ConfChange("add_learner", "n4", "127.0.0.1:4104")
            )
            assert isinstance(added, wire.Proposed)
            joiner = c.nodes["n4"].driver
            await until(
                lambda: joiner.core.membership.is_voter("n4"), "auto promotion", clock=net.clock
            )
            await until(lambda: joiner.core.role.value == "follower", clock=net.clock)
            assert c.nodes[leader].driver.promoter is not None
            assert c.nodes[leader].driver.promoter.promoted == 1
            last = (await front.propose(b"after")).index
            await until(lambda: c.storages["n4"].applied >= last, "n4 applies", clock=net.clock)

    run(main)


def test_a_node_outside_the_membership_serves_nothing() -> None:
    async def main(net: MemoryIpc) -> None:
        async with cluster(net, 3, joiners=1) as c:
            await c.wait_one_leader()
            outsider = c.fronts["n4"]  # started with --join, never added
            with pytest.raises(errors.Unavailable, match="not a member"):
                await outsider.propose(b"x")
            with pytest.raises(errors.Unavailable, match="not a member"):
                await outsider.read_index()
            with pytest.raises(errors.Unavailable, match="not a member"):
                await outsider.request("conf_change", wire.ConfChange("remove", "n1"))

    run(main)


def test_a_removed_leader_steps_down_and_the_rest_carry_on() -> None:
    async def main(net: MemoryIpc) -> None:
        async with cluster(net, 3) as c:
            leader = await c.wait_one_leader()
            front = c.fronts[leader]
            await front.propose(b"x")
            removed = await front.request("conf_change", wire.ConfChange("remove", leader))
            assert isinstance(removed, wire.Proposed)
            old = c.nodes[leader].driver
            await until(lambda: old.core.role.value != "leader", "step down", clock=net.clock)
            assert not old.core.membership.contains(leader)
            with pytest.raises(errors.Unavailable, match="not a member"):
                await front.propose(b"refused")
            rest = [n for n in c.nodes if n != leader]

            def new_leader() -> str | None:
                leaders = [n for n in rest if c.nodes[n].driver.core.role.value == "leader"]
                return leaders[0] if leaders else None

            second = await until(new_leader, "a new leader among the rest", clock=net.clock)
            reply = await c.fronts[second].propose(b"y")
            for nid in rest:
                await until(lambda nid=nid: c.storages[nid].applied >= reply.index, clock=net.clock)
            assert old.core.role.value != "leader"  # it never campaigns again

    run(main)
