"""`concordance node` refuses unsafe or broken security settings before it starts anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import API_KEY, ROOT, free_port

pytestmark = pytest.mark.slow


def node(
    root: Path, *args: str, cluster_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONCORDANCE_API_KEY": API_KEY, "PYTHONPATH": str(ROOT)}
    env.pop("CONCORDANCE_CLUSTER_KEY", None)
    if cluster_key is not None:
        env["CONCORDANCE_CLUSTER_KEY"] = cluster_key
    cmd = [sys.executable, "-m", "concordance.cli", "node", "--id", "n1",
           "--listen", f"127.0.0.1:{free_port()}", "--data", str(root / "n1"), *args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def refused(done: subprocess.CompletedProcess[str], why: str) -> bool:
    """Exit 2 with one line on stderr that says ``why``."""
    lines = done.stderr.strip().splitlines()
    return done.returncode == 2 and len(lines) == 1 and why in lines[0]


def test_a_cluster_without_its_own_cluster_key_refuses_to_start(root: Path) -> None:
    peers = "n1=127.0.0.1:1,n2=127.0.0.1:2,n3=127.0.0.1:3"
    done = node(root, "--peers", peers)
    assert refused(done, "CONCORDANCE_CLUSTER_KEY is not set"), done.stderr
    done = node(root, "--peers", peers, cluster_key=API_KEY)
    assert refused(done, "CONCORDANCE_CLUSTER_KEY equals CONCORDANCE_API_KEY"), done.stderr
    joined = node(root, "--join", "127.0.0.1:1")
    assert refused(joined, "CONCORDANCE_CLUSTER_KEY is not set"), joined.stderr
    assert not (root / "n1" / "node.json").exists()  # refused before anything was written


def test_a_restart_on_a_multi_member_data_dir_needs_the_cluster_key(root: Path) -> None:
    """No --peers on a restart: the members recorded in raft.db decide."""
    from concordance.raft.entries import Entry, EntryKind, HardState, Membership
    from concordance.raft.sqlite_store import SqliteRaftStore

    raft = root / "n1" / "raft"
    raft.mkdir(parents=True)
    three = Membership(("n1", "n2", "n3"), (), (("n1", "127.0.0.1:1"),))
    with SqliteRaftStore(raft / "raft.db") as store:
        store.persist(HardState(1, None, 0), [Entry(1, 1, EntryKind.CONFIG, three.encode())], None)
    done = node(root)
    assert refused(done, "the data dir holds a cluster of 3 members"), done.stderr


def test_a_bad_key_file_or_tls_file_refuses_to_start(root: Path) -> None:
    keys = root / "keys.json"
    keys.write_text(json.dumps({"keys": [{"id": "a", "sha256": "the-secret", "grants": []}]}))
    done = node(root, "--keys", str(keys))
    assert done.returncode == 2 and "never the secret" in done.stderr, done.stderr
    pem = root / "junk.pem"
    pem.write_text("not a certificate")
    done = node(root, "--tls-cert", str(pem), "--tls-key", str(pem))
    assert done.returncode == 2 and "TLS: cannot load" in done.stderr, done.stderr
    done = node(root, "--tls-cert", str(pem))
    assert done.returncode == 2 and "go together" in done.stderr
