"""Back up a node with data, restore it into a new cluster, read it back, write more, grow it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.helpers import ROOT, Node, free_port, wait_for
from tests.integration.test_membership import listing, status, voters, wait_converged

PREFIX = "tenant:bk/"


def download_backup(node: Node, dest: Path) -> None:
    resp = node.request("GET", "/api/v1/cluster/backup", timeout=60)
    assert resp.status == 200, resp.body[:300]
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert resp.body[:16] == b"SQLite format 3\x00"
    dest.write_bytes(resp.body)


def restore_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "concordance.cli", "restore", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_backup_restore_into_a_new_cluster_then_grow_it(root: Path) -> None:
    old = Node("n1", data=root / "n1")
    nodes: list[Node] = [old]
    try:
        old.start()
        for i in range(30):
            assert old.put(f"{PREFIX}k{i}", {"i": i}).status == 200
        assert old.put(f"{PREFIX}k0", "second").status == 200  # version 2
        assert old.request("DELETE", f"/api/v1/kv/{PREFIX}k1").status == 200
        secret = old.put("tenant:bk/credentials/token", "s3cret")  # encrypted at rest
        assert secret.status == 200
        backup = root / "backup.db"
        download_backup(old, backup)
        before: tuple[list[dict[str, Any]], int] = listing(old, PREFIX)
        revision = status(old)["revision"]
        old.stop()

        port = free_port()
        done = restore_cli(
            "--backup", str(backup), "--data", str(root / "m1"), "--id", "m1",
            "--listen", f"127.0.0.1:{port}",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "concordance node --id m1" in done.stdout
        again = restore_cli(
            "--backup", str(backup), "--data", str(root / "m1"), "--id", "m1",
            "--listen", f"127.0.0.1:{port}",
        )  # fmt: skip
        assert again.returncode == 2 and "already holds" in again.stderr

        m1 = Node("m1", data=root / "m1", port=port)
        nodes.append(m1)
        m1.start()
        st = status(m1)
        assert st["role"] == "leader" and st["member"] is True
        assert [m["id"] for m in st["members"]] == ["m1"]
        assert st["revision"] == revision
        assert listing(m1, PREFIX) == before  # values, versions, revisions, timestamps
        got = m1.get(f"{PREFIX}k0")
        assert got.json()["value"] == "second" and got.json()["version"] == 2
        assert m1.get(f"{PREFIX}k1").status == 404
        token = m1.get("tenant:bk/credentials/token")
        assert token.status == 200 and token.json()["value"] == "s3cret"

        # the restored cluster goes on: versions and revisions continue from the backup
        more = m1.put(f"{PREFIX}k0", "third")
        assert more.status == 200
        assert more.json()["version"] == 3 and more.json()["revision"] == revision + 1
        recreated = m1.put(f"{PREFIX}k1", "back")
        assert recreated.json()["version"] == 2  # a re-created key continues its version

        # a new member starts empty and receives the restored state as a snapshot
        m2 = Node("m2", data=root / "m2", join=m1.address)
        nodes.append(m2)
        m2.start(wait=False)
        wait_for(lambda: voters(m1) == {"m1", "m2"}, 60, "m2 joins and is promoted")
        m2.wait_ready()
        assert list((root / "m2" / "raft" / "snapshots").glob("*.snap"))
        after = m2.put(f"{PREFIX}via-m2", 1)
        assert after.status == 200, after.body
        entries, _ = wait_converged([m1, m2], PREFIX)
        assert {e["key"] for e in entries} >= {e["key"] for e in before[0]}
        assert m2.get("tenant:bk/credentials/token").json()["value"] == "s3cret"
        changes = m2.request("GET", f"/api/v1/changes?prefix={PREFIX}&since={revision}")
        assert [c["key"] for c in changes.json()["changes"]][:2] == [f"{PREFIX}k0", f"{PREFIX}k1"]
    finally:
        for node in reversed(nodes):
            node.stop()


def test_restore_needs_a_backup(root: Path) -> None:
    junk = root / "junk.db"
    junk.write_bytes(b"not a database at all" * 10)
    done = restore_cli(
        "--backup", str(junk), "--data", str(root / "x"), "--id", "x1", "--listen", "127.0.0.1:1"
    )  # fmt: skip
    assert done.returncode == 2 and "not a Concordance backup" in done.stderr
    assert not (root / "x" / "raft").exists()
