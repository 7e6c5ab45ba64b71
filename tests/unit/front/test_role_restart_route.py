"""``POST /api/v1/cluster/roles/{role}/restart`` against a fake supervisor."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from concordance.config import NodeConfig
from concordance.front import restart
from tests.unit.front.fakes import AGENT, harness


class FakeSupervisor:
    def __init__(self) -> None:
        self.restarted: list[str] = []
        self.fail = False

    def restart(self, cfg: NodeConfig, role: str) -> int | None:
        if self.fail:
            raise RuntimeError("no supervisor answers")
        self.restarted.append(role)
        return 4242


@pytest.fixture
def supervisor(monkeypatch: pytest.MonkeyPatch) -> FakeSupervisor:
    fake = FakeSupervisor()
    monkeypatch.setattr(restart, "supervisor_restarter", restart.Restarter(fake.restart))
    return fake


def run(path: Path, scenario: Any) -> None:
    async def main() -> None:
        async with harness(path) as h:
            await scenario(h)

    asyncio.run(main())


@pytest.mark.parametrize("role", ["storage", "consensus", "front"])
def test_a_restart_is_awaited_and_answers_the_new_pid(
    tmp_path: Path, supervisor: FakeSupervisor, role: str
) -> None:
    async def scenario(h: Any) -> None:
        status, body = await h.call("POST", f"/api/v1/cluster/roles/{role}/restart")
        assert (status, body) == (200, {"role": role, "restarted": True, "pid": 4242})
        assert supervisor.restarted == [role]

    run(tmp_path, scenario)


def test_unknown_role_is_400_in_the_api_error_format(
    tmp_path: Path, supervisor: FakeSupervisor
) -> None:
    async def scenario(h: Any) -> None:
        status, body = await h.call("POST", "/api/v1/cluster/roles/raft/restart")
        assert status == 400 and body["error"]["code"] == "invalid_request"
        assert "front" in body["error"]["message"]
        assert supervisor.restarted == []

    run(tmp_path, scenario)


def test_only_the_full_key_may_restart(tmp_path: Path, supervisor: FakeSupervisor) -> None:
    async def scenario(h: Any) -> None:
        status, body = await h.call("POST", "/api/v1/cluster/roles/storage/restart", key=AGENT)
        assert status == 403 and body["error"]["code"] == "forbidden"
        status, body = await h.call("POST", "/api/v1/cluster/roles/storage/restart", key=None)
        assert status == 401
        assert supervisor.restarted == []

    run(tmp_path, scenario)


def test_a_supervisor_that_cannot_restart_is_503(
    tmp_path: Path, supervisor: FakeSupervisor
) -> None:
    supervisor.fail = True

    async def scenario(h: Any) -> None:
        status, body = await h.call("POST", "/api/v1/cluster/roles/consensus/restart")
        assert status == 503 and body["error"]["code"] == "unavailable"

    run(tmp_path, scenario)
