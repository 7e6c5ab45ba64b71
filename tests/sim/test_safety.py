"""Seeded whole-cluster simulation: safety after every step, liveness after healing."""

from __future__ import annotations

import os

import pytest

from concordance.testing.sim import SafetyViolation, SimOptions, Simulation
from concordance.testing.sim_cli import options_for, run_seed
from tests.sim import planted_bugs

SEEDS = int(os.environ.get("SIM_SEEDS", "1000"))
CHUNK = 50


@pytest.mark.slow
@pytest.mark.parametrize("start", range(0, SEEDS, CHUNK))
def test_seeds_hold_every_property(start: int) -> None:
    failures = [f for s in range(start, min(start + CHUNK, SEEDS)) if (f := run_seed(s))]
    assert not failures, "\n".join(failures)


def test_a_seed_replays_exactly() -> None:
    first = Simulation(7, options_for(7)).run()
    second = Simulation(7, options_for(7)).run()
    assert first == second
    assert first.acked > 0 and first.reads > 0


def test_runs_do_real_work() -> None:
    """Guard against a simulator that passes because nothing happens."""
    results = [Simulation(s, options_for(s)).run() for s in range(10)]
    assert sum(r.acked for r in results) > 500
    assert sum(r.reads for r in results) > 100
    assert sum(r.dropped for r in results) > 50  # refused forwards, checked never appended
    assert len({r.trace for r in results}) == 10


def test_leader_targeted_faults_hold() -> None:
    for seed in range(20):
        Simulation(seed, SimOptions(nodes=5, leader_fault_rate=0.005)).run()


def _first_violation(core_class: type, seeds: int = 100) -> str | None:
    for seed in range(seeds):
        try:
            Simulation(seed, options_for(seed), core_factory=core_class).run()
        except SafetyViolation as e:
            return str(e)
    return None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bug", "symptom"),
    [
        (planted_bugs.VotesForShorterLogs, "leader completeness"),
        (planted_bugs.ReadsWithoutHeartbeatRound, "stale read"),
        (planted_bugs.RefusesWhatItAppended, "reported dropped but is in a log"),
    ],
)
def test_simulator_catches_planted_bug(bug: type, symptom: str) -> None:
    violation = _first_violation(bug)
    assert violation is not None, f"{bug.__name__} went unnoticed"
    assert symptom in violation
