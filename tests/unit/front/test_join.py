"""``--join``: the joiner's task against a real front, the cluster key on /members,
idempotent membership changes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from concordance.config import NodeConfig, Secrets
from concordance.front import cluster
from concordance.front.app_state import METRICS
from concordance.front.join import JoinOutcome, is_fresh, join_cluster
from concordance.protocol import wire
from concordance.testing.poll import until
from tests.unit.front.fakes import AGENT, PEER, Harness, harness


class JoinerConsensus:
    """The joiner's own consensus, as its front sees it: no membership until added."""

    def __init__(self, members: tuple[wire.MemberStatus, ...] = (), commit: int = 0) -> None:
        self.members = members
        self.commit = commit
        self.down = 0  # answer this many status calls with an error (consensus starting)

    async def status(self, timeout: float) -> wire.StatusOk:
        if self.down:
            self.down -= 1
            raise ConnectionError("consensus is not up yet")
        role = "learner" if self.members else "follower"
        return wire.StatusOk("n9", role, 0, None, self.commit, self.commit, self.members)


def joiner_cfg(path: Path, join: str, key: str | None = PEER) -> NodeConfig:
    return NodeConfig(
        node_id="n9",
        listen="127.0.0.1:4109",
        data_dir=str(path),
        join=join,
        secrets=Secrets(api_key="the-joiners-own-api-key", cluster_key=key),
    )


def refusals(h: Harness) -> int:
    """How many requests this front answered 401 (its metrics count every answer)."""
    counts = h.app[METRICS]._requests
    return sum(n for (_, method, status), n in counts.items() if (method, status) == ("POST", 401))


def run(tmp_path: Path, scenario: Any) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            await scenario(h)

    asyncio.run(main())


def test_a_joiner_asks_until_added_then_waits_for_the_log(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        member = f"127.0.0.1:{h.client.server.port}"
        mine = JoinerConsensus()
        mine.down = 2
        async with aiohttp.ClientSession() as http:
            task = asyncio.ensure_future(join_cluster(joiner_cfg(tmp_path, member), mine, http))
            await until(lambda: bool(h.node.knobs.conf_changes), "the join answer")
            assert h.node.knobs.conf_changes == [("add_learner", "n9", "127.0.0.1:4109")]
            assert not task.done()  # added, but the log has not reached it yet
            mine.members = (wire.MemberStatus("n9", "127.0.0.1:4109", False, 0),)
            assert await asyncio.wait_for(task, 5) == JoinOutcome.JOINED

    run(tmp_path, scenario)


def test_a_refused_join_is_retried(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        member = f"127.0.0.1:{h.client.server.port}"
        mine = JoinerConsensus()
        async with aiohttp.ClientSession() as http:
            wrong = joiner_cfg(tmp_path, member, key="wrong")
            task = asyncio.ensure_future(join_cluster(wrong, mine, http, backoff_max=0.05))
            await until(lambda: refusals(h) >= 2, "two refused join requests")
            assert not h.node.knobs.conf_changes  # 401: asked, refused, again
            task.cancel()
            ok = joiner_cfg(tmp_path, member)
            task = asyncio.ensure_future(join_cluster(ok, mine, http, backoff_max=0.05))
            await until(lambda: bool(h.node.knobs.conf_changes), "the join answer")
            mine.members = (wire.MemberStatus("n9", "127.0.0.1:4109", False, 0),)
            assert await asyncio.wait_for(task, 5) == JoinOutcome.JOINED

    run(tmp_path, scenario)


def test_join_is_ignored_when_the_node_holds_cluster_state(tmp_path: Path) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            cfg = joiner_cfg(tmp_path, "127.0.0.1:9")  # nothing listens: must not be asked
            member = JoinerConsensus((wire.MemberStatus("n9", "a:1", True, 5),), commit=5)
            assert await join_cluster(cfg, member, http) == JoinOutcome.ALREADY_MEMBER
            removed = JoinerConsensus((wire.MemberStatus("n1", "a:1", True, 5),), commit=5)
            assert await join_cluster(cfg, removed, http) == JoinOutcome.HOLDS_STATE

    asyncio.run(main())
    entries_only = wire.StatusOk("n9", "learner", 2, "n1", 7, 7, ())
    assert is_fresh(entries_only)  # log entries but no membership yet: still joining


def test_the_cluster_key_may_add_members_but_nothing_else(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        new = {"id": "n2", "address": "10.0.0.2:4100"}
        assert (await h.call("POST", "/api/v1/cluster/members", key=PEER, json=new))[0] == 200
        assert (await h.call("GET", "/api/v1/cluster/members", key=PEER))[0] == 200
        assert (await h.call("POST", "/api/v1/cluster/members", key=AGENT, json=new))[0] == 403
        assert (await h.call("GET", "/api/v1/kv/tenant:a/x", key=PEER))[0] == 401
        assert (await h.call("DELETE", "/api/v1/cluster/members/n2", key=PEER))[0] == 401
        assert (await h.call("GET", "/api/v1/cluster/backup", key=PEER))[0] == 401

    run(tmp_path, scenario)


def test_membership_changes_are_idempotent(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        new = {"id": "n2", "address": "10.0.0.2:4100"}
        for _ in range(2):
            status, body = await h.call("POST", "/api/v1/cluster/members", json=new)
            assert status == 200 and [m["id"] for m in body["members"]] == ["n1", "n2"]
        status, body = await h.call(
            "POST", "/api/v1/cluster/members", json={"id": "n2", "address": "10.0.0.3:4100"}
        )
        assert status == 400 and "never reused" in body["error"]["message"]
        for _ in range(2):
            status, body = await h.call("DELETE", "/api/v1/cluster/members/n2")
            assert status == 200 and [m["id"] for m in body["members"]] == ["n1"]
        assert h.node.knobs.conf_changes == [
            ("add_learner", "n2", "10.0.0.2:4100"),
            ("remove", "n2", ""),
        ]

    run(tmp_path, scenario)


def test_a_change_that_never_shows_is_a_504(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "MEMBERSHIP_WAIT", 0.1)

    async def scenario(h: Harness) -> None:
        consensus = h.node.clients().consensus

        async def refused_by_the_leader(*args: Any) -> None:
            pass  # forwarded; the leader dropped it (another change in progress)

        monkeypatch.setattr(type(consensus), "conf_change", refused_by_the_leader)
        new = {"id": "n2", "address": "10.0.0.2:4100"}
        status, body = await h.call("POST", "/api/v1/cluster/members", json=new)
        assert status == 504 and body["error"]["code"] == "timeout"

    run(tmp_path, scenario)


def test_join_requires_a_reachable_listen_address(tmp_path: Path) -> None:
    from concordance.config import ConfigError

    cfg = NodeConfig("n9", "0.0.0.0:4100", str(tmp_path), join="10.0.0.1:4100", insecure=True)
    with pytest.raises(ConfigError, match="not a wildcard"):
        cfg.validate()
