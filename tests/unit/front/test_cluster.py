"""Cluster, health and metrics routes, and what /raft answers over HTTP."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from concordance.front.metrics import Family, Histogram, render
from concordance.testing.clock import ManualClock
from concordance.testing.supervisor import MemorySupervisor
from tests.unit.front.fakes import AGENT, FULL, PEER, Harness, harness, on_clock


def run(tmp_path: Path, scenario: Callable[[Harness], Awaitable[None]], **cfg: Any) -> None:
    async def main() -> None:
        async with harness(tmp_path, **cfg) as h:
            await scenario(h)

    asyncio.run(main())


def supervisor() -> MemorySupervisor:
    return MemorySupervisor(
        {
            "front": {"pid": 11, "up": True, "restarts": 0},
            "consensus": {"pid": 12, "up": True, "restarts": 2},
            "storage": {"pid": None, "up": False, "restarts": 5},
        }
    )


def test_status_shape_with_supervisor_roles(tmp_path: Path) -> None:
    clock = ManualClock()

    async def scenario(h: Harness) -> None:
        await h.put("tenant:a/x", 1)
        status, body = await h.call("GET", "/api/v1/cluster/status", key=AGENT)
        assert status == 200
        assert body == {
            "nodeId": "n1", "role": "leader", "term": 3, "leaderId": "n1",
            "commitIndex": 1, "appliedIndex": 1, "revision": 1,
            "members": [{"id": "n1", "address": "127.0.0.1:1", "voter": True, "matchIndex": 0}],
            "member": True,
            "roles": {
                "front": {"pid": os.getpid(), "up": True},  # the front answering, not its keeper
                "consensus": {"pid": 12, "up": True},
                "storage": {"pid": None, "up": True},  # answered just now, so it is up
            },
        }  # fmt: skip
        h.node.knobs.storage_down = True  # asked again until the probe's bound
        status, body = await on_clock(clock, h.call("GET", "/api/v1/cluster/status", key=AGENT))
        assert body["roles"]["storage"] == {"pid": None, "up": False}

    run(tmp_path, scenario, supervisor=supervisor(), timers=clock)


def test_status_without_supervisor_judges_roles_by_their_answers(tmp_path: Path) -> None:
    clock = ManualClock()

    async def scenario(h: Harness) -> None:
        h.node.knobs.storage_down = True
        status, body = await on_clock(clock, h.call("GET", "/api/v1/cluster/status"))
        assert status == 200 and body["revision"] is None and body["appliedIndex"] == 0
        assert body["roles"] == {
            "front": {"pid": os.getpid(), "up": True},
            "consensus": {"pid": None, "up": True},
            "storage": {"pid": None, "up": False},
        }

    run(tmp_path, scenario, timers=clock)


def test_members_add_promote_remove(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        status, body = await h.call("GET", "/api/v1/cluster/members")
        assert [m["id"] for m in body["members"]] == ["n1"]
        new = {"id": "n2", "address": "10.0.0.2:4100"}
        status, body = await h.call("POST", "/api/v1/cluster/members", json=new)
        assert status == 200 and body["members"][1] == {
            "id": "n2", "address": "10.0.0.2:4100", "voter": False, "matchIndex": 0,
        }  # fmt: skip
        promote = {**new, "voter": True}
        status, body = await h.call("POST", "/api/v1/cluster/members", json=promote)
        assert body["members"][1]["voter"] is True
        status, body = await h.call("DELETE", "/api/v1/cluster/members/n2")
        assert status == 200 and [m["id"] for m in body["members"]] == ["n1"]
        assert h.node.knobs.conf_changes == [
            ("add_learner", "n2", "10.0.0.2:4100"),
            ("add_voter", "n2", "10.0.0.2:4100"),
            ("remove", "n2", ""),
        ]

    run(tmp_path, scenario)


def test_leader_transfer_and_snapshot(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert await h.call("POST", "/api/v1/cluster/leader") == (200, {})
        assert await h.call("POST", "/api/v1/cluster/leader", json={"to": "n2"}) == (200, {})
        assert h.node.knobs.transfers == ["", "n2"]
        await h.put("tenant:a/x", 1)
        status, body = await h.call("POST", "/api/v1/cluster/snapshot")
        assert (status, body) == (200, {"index": 1, "term": 1, "bytes": 4096})

    run(tmp_path, scenario)


def test_backup_streams_a_sqlite_file_and_deletes_it(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.put("tenant:a/x", 1)
        async with h.client.get(
            "/api/v1/cluster/backup", headers={"Authorization": f"Bearer {FULL}"}
        ) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "application/octet-stream"
            body = await resp.read()
        assert body[:16] == b"SQLite format 3\x00"
        assert int(resp.headers["Content-Length"]) == len(body)
        assert not list(tmp_path.glob(".backup-*"))

    run(tmp_path, scenario)


def test_healthz_and_readyz(tmp_path: Path) -> None:
    clock = ManualClock()  # /readyz is cached for a second (probe_cache)

    async def scenario(h: Harness) -> None:
        assert (await h.call("GET", "/healthz", key=None)) == (200, {"ok": True})
        assert (await h.call("GET", "/readyz", key=None))[0] == 200
        h.node.knobs.lag = 1
        await h.put("tenant:a/x", 1)
        await clock.advance(1.0)
        async with h.client.get("/readyz") as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        h.node.knobs.lag = 0
        h.node.knobs.leader = None
        await clock.advance(1.0)
        status, body = await h.call("GET", "/readyz", key=None)
        assert (status, body["error"]["code"]) == (503, "unavailable")
        assert (await h.call("GET", "/healthz", key=None))[0] == 200

    run(tmp_path, scenario, timers=clock)


_SAMPLE = re.compile(r'^[a-z_]+(\{([a-z_]+="[^"]*",?)*\})? -?[0-9.e+Inf]+$')


def test_metrics_exposition(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.put("tenant:secretive/credentials/x", {"token": "t0ps3cret"})
        await h.call("GET", "/api/v1/kv/tenant:secretive/credentials/x")
        await h.call("GET", "/api/v1/kv/tenant:secretive/none")
        async with h.client.get("/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            text = await resp.text()
        for line in text.splitlines():
            assert line.startswith("# HELP ") or line.startswith("# TYPE ") or _SAMPLE.match(line)
        assert "secretive" not in text and "t0ps3cret" not in text and FULL not in text
        assert (
            'concordance_http_requests_total{route="/api/v1/kv/{key}",method="GET",status="404"} 1'
            in text
        )
        assert "concordance_raft_term 3" in text and "concordance_revision 1" in text
        assert 'concordance_role_restarts_total{role="consensus"} 2' in text
        assert 'concordance_peer_frames_dropped_total{peer="n2",reason="full"} 2' in text
        assert 'concordance_peer_queue_bytes{peer="n2"} 10' in text
        assert "concordance_peer_connections_refused_total 4" in text
        assert (
            'concordance_http_request_duration_seconds_bucket{route="/api/v1/kv/{key}",le="+Inf"}'
            in text
        )

    run(tmp_path, scenario, supervisor=supervisor())


def test_metrics_render_histograms_and_escapes() -> None:
    hist = Histogram()
    for value in (0.0005, 0.003, 100.0):
        hist.observe(value)
    fam = Family("x_seconds", "histogram", "help\nline")
    hist.into(fam, (("route", 'a"b\\c'),))
    text = render([fam, Family("empty", "gauge", "no samples")])
    assert "# HELP x_seconds help\\nline" in text
    assert 'x_seconds_bucket{route="a\\"b\\\\c",le="0.001"} 1' in text
    assert 'x_seconds_bucket{route="a\\"b\\\\c",le="0.005"} 2' in text
    assert 'x_seconds_bucket{route="a\\"b\\\\c",le="+Inf"} 3' in text
    assert 'x_seconds_count{route="a\\"b\\\\c"} 3' in text
    assert "# TYPE empty gauge" in text


# -- /raft -------------------------------------------------------------------------


def test_raft_over_http_is_401_without_the_cluster_key_and_400_with_it(tmp_path: Path) -> None:
    """Peer links no longer use HTTP (PROTOCOL.md §6); an old node or a curious client
    gets a clear answer, and the cluster key is still checked first (API.md §3)."""

    async def scenario(h: Harness) -> None:
        for key in (None, FULL, AGENT, "wrong"):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await h.client.ws_connect("/raft", headers=headers)
            assert err.value.status == 401
        async with h.client.get("/raft", headers={"Authorization": f"Bearer {PEER}"}) as resp:
            assert resp.status == 400
            body = await resp.json()
        assert body["error"]["code"] == "invalid_request"
        assert "concordance-raft/1" in body["error"]["message"]

    run(tmp_path, scenario)
