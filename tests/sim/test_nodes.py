"""The node simulation (``concordance.testing.node_sim``): every real role of a 3- and a
5-node cluster in one process, faults and crashes from one seed.

``NODE_SIM_SEEDS`` sets how many seeds the sweep runs (``make sim NODE_SEEDS=N``
runs more outside the suite; a failing seed replays with ``make sim NODE_SEED=n``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest

from concordance.testing.node_sim import NodeSimulation, SimFailure, run_seed
from tests.sim import planted_node_bugs

SEEDS = int(os.environ.get("NODE_SIM_SEEDS", "36"))
CHUNK = 6
FIND_WITHIN = 10  # seeds a planted bug must be found within


@pytest.mark.parametrize("start", range(0, SEEDS, CHUNK))
def test_node_seeds_hold_every_property(start: int) -> None:
    for seed in range(start, min(start + CHUNK, SEEDS)):
        run_seed(seed)  # raises SimFailure naming the property and the seed


def test_a_node_seed_replays_exactly() -> None:
    """Same seed, same run: history, watch streams, final state and faults (trace_hash)."""
    first, second = run_seed(5), run_seed(5)
    assert first.trace_hash == second.trace_hash
    assert [op.describe() for op in first.history] == [op.describe() for op in second.history]
    assert run_seed(6).trace_hash != first.trace_hash


def test_node_runs_do_real_work() -> None:
    """Across a few seeds: acknowledged writes and reads, watch events, compactions and
    snapshot files, membership changes, and clean stops and crashes of every role."""
    totals: dict[str, int] = {}
    for seed in range(8):
        sim = NodeSimulation(seed)
        sim.run()
        for name, count in sim.stats.items():
            totals[name] = totals.get(name, 0) + count
    for role in ("consensus", "storage", "front"):
        assert totals.get(f"stop {role}", 0) > 0 and totals.get(f"kill {role}", 0) > 0, totals
    for name in (
        "acknowledged",
        "watch events",
        "compactions",
        "snapshot files",
        "add_voter",
        "lists of batches",  # lists that showed two or more batch keys: the atomicity check
        "local reads after a write there",  # what the read-your-writes check looks at
    ):
        assert totals.get(name, 0) > 0, (name, totals)


@pytest.mark.parametrize("seed", [1353867, 1405320, 1760602, 1780144, 1790480])
def test_node_seeds_that_found_bugs_hold(seed: int) -> None:
    """Seeds of the sweeps that once failed (TESTING.md, "Bugs the node simulation
    found", 7 to 10), replayed as regression tests."""
    run_seed(seed)


PLANTED: list[tuple[Callable[[], AbstractContextManager[None]], str]] = [
    (planted_node_bugs.consensus_reads_its_own_commit_index, "linearizability"),
    (planted_node_bugs.storage_resumes_one_past_its_applied_index, "convergence"),
    (planted_node_bugs.front_resumes_a_watch_one_revision_late, "watch without gaps"),
    (planted_node_bugs.front_proposes_a_batch_op_by_op, "atomic batches"),
]


def _found_within(
    bug: Callable[[], AbstractContextManager[None]], symptom: str, within: int
) -> None:
    """Run seeds 0, 1, ... with ``bug`` switched on until one fails by ``symptom``."""
    with bug():
        for seed in range(within):
            try:
                run_seed(seed)
            except SimFailure as e:
                assert symptom in str(e).splitlines()[0], str(e)
                return
    pytest.fail(f"{bug.__name__} not found within {within} seeds")


@pytest.mark.parametrize(("bug", "symptom"), PLANTED, ids=lambda p: getattr(p, "__name__", p))
def test_node_simulation_finds_planted_bug(
    bug: Callable[[], AbstractContextManager[None]], symptom: str
) -> None:
    """Each planted bug (one per role, see ``planted_node_bugs``) is caught within
    ``FIND_WITHIN`` seeds, by the property it breaks."""
    _found_within(bug, symptom, FIND_WITHIN)


def test_node_simulation_finds_a_replay_that_ends_at_a_batch_on_a_page_edge() -> None:
    """A real bug the simulation missed until its workload had atomic batches and its
    fronts a small replay page (``planted_node_bugs.front_takes_a_short_replay_page_
    for_the_end``, the old code): rarer than the planted ones, so more seeds."""
    bug = planted_node_bugs.front_takes_a_short_replay_page_for_the_end
    _found_within(bug, "watch without gaps", 40)


def test_node_simulation_finds_a_storage_that_forgets_what_it_had_applied() -> None:
    """A real bug of the lazy commit (``planted_node_bugs.storage_forgets_what_it_had_
    applied``, the code of 8 December morning): its window is a crash right after an
    answer, so it takes more seeds than the planted ones."""
    bug = planted_node_bugs.storage_forgets_what_it_had_applied
    _found_within(bug, "read your writes on a node", 200)
