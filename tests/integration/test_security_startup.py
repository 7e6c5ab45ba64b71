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
    root: Path, *args: str, cluster_key: bool = False, require: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONCORDANCE_API_KEY": API_KEY, "PYTHONPATH": str(ROOT)}
    env.pop("CONCORDANCE_CLUSTER_KEY", None)
    if require:
        env["CONCORDANCE_REQUIRE_CLUSTER_KEY"] = "1"
    if cluster_key:
        env["CONCORDANCE_CLUSTER_KEY"] = "k"
    cmd = [sys.executable, "-m", "concordance.cli", "node", "--id", "n1",
           "--listen", f"127.0.0.1:{free_port()}", "--data", str(root / "n1"), *args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


def test_a_cluster_without_a_cluster_key_refuses_to_start_when_one_is_required(
    root: Path,
) -> None:
    peers = "n1=127.0.0.1:1,n2=127.0.0.1:2,n3=127.0.0.1:3"
    done = node(root, "--peers", peers, require=True)
    assert done.returncode == 2
    assert "CONCORDANCE_CLUSTER_KEY is not set" in done.stderr
    assert "CONCORDANCE_REQUIRE_CLUSTER_KEY=1" in " ".join(done.stderr.split())
    joined = node(root, "--join", "127.0.0.1:1", require=True)
    assert joined.returncode == 2 and "CONCORDANCE_CLUSTER_KEY" in joined.stderr
    assert not (root / "n1" / "node.json").exists()  # refused before anything was written


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
