"""The client library, SyncClient and the CLI against one real node."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from concordance import errors
from concordance.client import Client, Deleted, Entry, SyncClient, ops
from tests.integration.helpers import API_KEY, ROOT, Node


def tenant() -> str:
    return f"tenant:c{uuid.uuid4().hex[:8]}/"


def test_library_round_trip(node: Node, tmp_path: Path) -> None:
    prefix = tenant()

    async def scenario() -> None:
        async with Client(node.url, API_KEY) as c:
            entry = await c.put(f"{prefix}a", {"x": 1})
            assert isinstance(entry, Entry) and entry.version == 1
            assert (await c.get(f"{prefix}a", consistent=True)).value == {"x": 1}
            with pytest.raises(errors.VersionConflict):
                await c.put(f"{prefix}a", 2, if_version=0)
            deleted = await c.delete(f"{prefix}a")
            assert isinstance(deleted, Deleted) and deleted.version == 1
            assert await c.get_or_none(f"{prefix}a") is None

            # Paging: 250 keys come back whole and in key order.
            keys = [f"{prefix}many/{i:03d}" for i in range(250)]
            for chunk in (keys[:125], keys[125:]):
                await c.batch([ops.set(k, i) for i, k in enumerate(chunk)])
            assert [e.key async for e in c.list_all(f"{prefix}many/")] == keys
            assert len([e async for e in c.list_all(f"{prefix}many/", limit=120)]) == 120

            # A transaction: the failed check names its op; results are typed per op.
            with pytest.raises(errors.VersionConflict) as caught:
                await c.batch([ops.set(f"{prefix}b", 1), ops.check(f"{prefix}many/000", 0)])
            assert caught.value.extra["index"] == 1
            result = await c.batch([ops.check(f"{prefix}b", 0), ops.set(f"{prefix}b", 1),
                                    ops.delete(f"{prefix}many/000")])  # fmt: skip
            assert result.results[0] is None and isinstance(result.results[1], Entry)
            assert isinstance(result.results[2], Deleted)

            # The change feed resumes from a revision and long-polls for new changes.
            since = result.revision - 1
            feed = c.feed(f"{prefix}b", since=since, wait_ms=10_000)
            first = await anext(feed)
            assert (first.type, first.key, first.value) == ("set", f"{prefix}b", 1)
            await c.put(f"{prefix}b", 2)
            second = await anext(feed)
            assert (second.value, second.version) == (2, 2)
            await feed.aclose()

            # Scopes resolve the namespace the way the gateway's config/* calls do.
            prefs = c.scope("user", tenant=prefix[7:-1], user="u1")
            await prefs.set("theme", "dark")
            await prefs.set("editor/font", 12)
            assert (await c.get(f"{prefix}user:u1/preferences/theme")).value == "dark"
            assert await prefs.values() == {"editor/font": 12, "theme": "dark"}
            assert (await prefs.clear()).deleted == 2

            # Cluster admin.
            status = await c.status()
            assert status.node_id == "n1" and status.role == "leader"
            assert [m.id for m in await c.members()] == ["n1"]
            assert (await c.snapshot()).index >= 1
            size = await c.backup(tmp_path / "backup.db")
            assert size == (tmp_path / "backup.db").stat().st_size
            assert (tmp_path / "backup.db").read_bytes()[:16] == b"SQLite format 3\x00"
            [health] = await c.health()
            assert health.healthy and health.ready

    asyncio.run(scenario())


def test_a_watch_with_a_wrong_key_or_credentials_fails_at_once(node: Node) -> None:
    async def scenario() -> None:
        async with Client(node.url, API_KEY) as c:
            with pytest.raises(errors.InvalidKey):
                await c.watch("no-tenant").start()
        async with Client(node.url, "wrong-key") as c:
            with pytest.raises(errors.Unauthorized):
                await c.watch(tenant()).start()

    asyncio.run(scenario())


def test_sync_client_has_the_same_methods(node: Node) -> None:
    prefix = tenant()
    with SyncClient(node.url, API_KEY) as c:
        with c.watch(prefix) as watch:
            c.put(f"{prefix}k", 1)
            c.put(f"{prefix}k", 2)
            changes = [next(watch), next(watch)]
        assert [(ch.value, ch.version) for ch in changes] == [(1, 1), (2, 2)]
        assert watch.revision == changes[1].revision
        assert [e.value for e in c.list_all(prefix)] == [2]
        scope = c.scope("tenant", tenant=prefix[7:-1])
        scope.set("plan", "pro")
        assert scope.get("plan").value == "pro"


def cli(node: Node, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONCORDANCE_API_KEY": API_KEY, "CONCORDANCE_ENDPOINTS": node.url,
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "concordance.cli", *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_cli_against_a_node(node: Node, tmp_path: Path) -> None:
    prefix = tenant()
    put = cli(node, "kv", "put", f"{prefix}theme", "dark")
    assert put.returncode == 0, put.stderr
    got = cli(node, "kv", "get", f"{prefix}theme", "--json")  # --json after the verb
    assert json.loads(got.stdout)["value"] == "dark"
    assert cli(node, "kv", "get", f"{prefix}theme", "--raw").stdout == "dark\n"

    missing = cli(node, "kv", "get", f"{prefix}nope")
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1
    conflict = cli(node, "kv", "put", f"{prefix}theme", "x", "--if-version", "9")
    assert conflict.returncode == 4
    denied = cli(node, "kv", "get", f"{prefix}theme", "--api-key", "wrong")
    assert denied.returncode == 5 and "Traceback" not in denied.stderr

    batch: list[dict[str, Any]] = [ops.set(f"{prefix}n/{i:03d}", i) for i in range(120)]
    txn = cli(node, "kv", "txn", "-", stdin=json.dumps({"ops": batch}))
    assert txn.returncode == 0, txn.stderr
    listed = cli(node, "--json", "kv", "list", f"{prefix}n/")
    assert len(json.loads(listed.stdout)["entries"]) == 120  # past one page of 100
    (tmp_path / "v.json").write_text('{"deep": [1, 2]}')
    assert cli(node, "kv", "put", f"{prefix}f", f"@{tmp_path / 'v.json'}").returncode == 0
    assert json.loads(cli(node, "kv", "get", f"{prefix}f", "--raw").stdout) == {"deep": [1, 2]}
    gone = cli(node, "kv", "delete", f"{prefix}n/", "--prefix", "--json")
    assert json.loads(gone.stdout)["deleted"] == 120

    status = cli(node, "endpoint", "status")
    assert status.returncode == 0 and "leader" in status.stdout
    members = json.loads(cli(node, "member", "list", "--json").stdout)["members"]
    assert [m["id"] for m in members] == ["n1"]
    saved = cli(node, "snapshot", "save", str(tmp_path / "b.db"))
    assert saved.returncode == 0 and (tmp_path / "b.db").exists()
    changes = cli(node, "changes", f"{prefix}theme", "--json")
    assert [c["type"] for c in json.loads(changes.stdout)["changes"]] == ["set"]


def test_cli_watch_prints_changes_as_json_lines(node: Node) -> None:
    prefix = tenant()
    env = {**os.environ, "CONCORDANCE_API_KEY": API_KEY, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "concordance.cli", "kv", "watch", prefix, "--since", "0",
         "--json", "--endpoints", node.url],
        stdout=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        assert node.put(f"{prefix}k", "v").status == 200
        assert proc.stdout is not None
        line = json.loads(proc.stdout.readline())
        assert (line["type"], line["key"], line["value"]) == ("set", f"{prefix}k", "v")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
