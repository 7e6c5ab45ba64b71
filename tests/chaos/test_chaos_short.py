"""The short chaos mode of ``make test``: two fixed-seed runs against real clusters.

Each run starts a cluster (3 or 5 nodes), drives clients and watchers through every node
for ~30 s while the nemesis injects faults, heals, and requires every check to pass
(``tests/chaos/harness.py``). The seeds were picked for their schedules: between them,
every kind of fault (3 nodes: delay, kill-role, isolate-leader + pause, kill-all, bridge +
transfer, kill-role-all, one-way; 5 nodes: isolate-leader, replace-member, partition +
transfer, kill-role, bridge + kill-node, one-way). They run without ``restart-role``
(added later; with it the same seeds would draw other schedules): planned restarts in
``make test`` are ``tests/integration/test_restart_loop.py``. Long runs, every kind:
``make chaos DURATION=... SEED=...``.
"""

from __future__ import annotations

import pytest

from tests.chaos import report
from tests.chaos.harness import Config, run_sync
from tests.chaos.nemesis import KINDS

SEEDED_KINDS = {k: w for k, w in KINDS.items() if k != "restart-role"}

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.parametrize(
    ("nodes", "seed"),
    [pytest.param(3, 574, id="3-nodes"), pytest.param(5, 35, id="5-nodes")],
)
def test_short_chaos_run(nodes: int, seed: int) -> None:
    config = Config(seed=seed, nodes=nodes, duration=30.0, min_faults=4, kinds=SEEDED_KINDS)
    result = run_sync(config)
    summary = report.summary(result)
    print(summary)
    assert result.ok, summary
    assert len(result.history.records) > 300, summary
    assert len(result.faults) >= 4, summary
