"""``POST /api/v1/cluster/roles/{role}/restart`` against an in-memory supervisor."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from concordance.testing.supervisor import MemorySupervisor
from tests.unit.front.fakes import AGENT, harness


@pytest.fixture
def supervisor() -> MemorySupervisor:
    return MemorySupervisor()


def run(path: Path, scenario: Any, supervisor: MemorySupervisor) -> None:
    async def main() -> None:
        async with harness(path, supervisor=supervisor) as h:
            await scenario(h)

    asyncio.run(main())


@pytest.mark.parametrize("role", ["storage", "consensus", "front"])
def test_a_restart_is_awaited_and_answers_the_new_pid(
    tmp_path: Path, supervisor: MemorySupervisor, role: str
) -> None:
    before = supervisor.states[role]["pid"]

    async def scenario(h: Any) -> None:
        status, body = await h.call("POST", f"/api/v1/cluster/roles/{role}/restart")
        new = supervisor.states[role]["pid"]
        assert (status, body) == (200, {"role": role, "restarted": True, "pid": new})
        assert new != before and supervisor.restarted == [role]
        if role != "front":  # the status route asks the same supervisor
            status, body = await h.call("GET", "/api/v1/cluster/status")
            assert status == 200 and body["roles"][role] == {"pid": new, "up": True}

    run(tmp_path, scenario, supervisor)


def test_unknown_role_is_400_in_the_api_error_format(
    tmp_path: Path, supervisor: MemorySupervisor
) -> None:
    async def scenario(h: Any) -> None:
        status, body = await h.call("POST", "/api/v1/cluster/roles/raft/restart")
        assert status == 400 and body["error"]["code"] == "invalid_request"
        assert "front" in body["error"]["message"]
        assert supervisor.restarted == []

    run(tmp_path, scenario, supervisor)


def test_only_the_full_key_may_restart(tmp_path: Path, supervisor: MemorySupervisor) -> None:
    async def scenario(h: Any) -> None:
        status, body = await h.call("POST", "/api/v1/cluster/roles/storage/restart", key=AGENT)
        assert status == 403 and body["error"]["code"] == "forbidden"
        status, body = await h.call("POST", "/api/v1/cluster/roles/storage/restart", key=None)
        assert status == 401
        assert supervisor.restarted == []

    run(tmp_path, scenario, supervisor)


def test_a_supervisor_that_cannot_restart_is_503(
    tmp_path: Path, supervisor: MemorySupervisor
) -> None:
    supervisor.refuse = "no supervisor answers"

    async def scenario(h: Any) -> None:
        status, body = await h.call("POST", "/api/v1/cluster/roles/consensus/restart")
        assert status == 503 and body["error"]["code"] == "unavailable"

    run(tmp_path, scenario, supervisor)
