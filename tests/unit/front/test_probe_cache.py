"""``/readyz`` and ``/metrics`` need no key, so they must not make the roles answer per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

from concordance.front.probe_cache import NOT_READY_TTL
from concordance.testing.clock import ManualClock
from concordance.testing.supervisor import MemorySupervisor
from tests.unit.front.fakes import harness


def test_probes_ask_the_roles_at_most_once_a_second(tmp_path: Path) -> None:
    clock = ManualClock()
    supervisor = MemorySupervisor()

    async def main() -> None:
        async with harness(tmp_path, timers=clock, supervisor=supervisor) as h:
            knobs = h.node.knobs
            before = knobs.status_calls
            for path in ("/readyz", "/metrics"):
                answers = await asyncio.gather(*(h.client.get(path) for _ in range(20)))
                assert {a.status for a in answers} == {200}
                for _ in range(20):
                    assert (await h.client.get(path)).status == 200
            assert knobs.status_calls - before == 2  # once for each probe
            assert supervisor.state_calls == 1  # /metrics asks supervisord once
            knobs.leader = None
            assert (await h.client.get("/readyz")).status == 200  # still the cached answer
            await clock.advance(1.0)
            assert (await h.client.get("/readyz")).status == 503  # computed again
            assert (await h.client.get("/readyz")).status == 503  # and the 503 is cached too
            assert knobs.status_calls - before == 3
            knobs.leader = "n1"
            await clock.advance(NOT_READY_TTL)  # a 503 only briefly: ready as soon as it is
            assert (await h.client.get("/readyz")).status == 200
            assert (await h.client.get("/readyz")).status == 200  # the 200 cached again
            assert knobs.status_calls - before == 4
            assert (await h.client.get("/metrics")).status == 200
            assert supervisor.state_calls == 2

    asyncio.run(main())
