"""A real node with JSON logs: every role's lines parse, and /metrics has the added families."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.integration.helpers import API_KEY, ROOT, Node, short_tmpdir


def test_json_logs_and_metrics_of_a_real_node() -> None:
    root = short_tmpdir()
    node = Node("n1", data=root / "n1", extra_env={"CONCORDANCE_LOG_FORMAT": "json"})
    try:
        node.start()
        assert node.put("tenant:obs/k", 1).status == 200
        text = node.request("GET", "/metrics", auth=None).body.decode()
        assert 'concordance_build_info{version="' in text
        assert 'concordance_db_size_bytes{db="raft"}' in text
        assert 'concordance_db_size_bytes{db="state"}' in text
        assert "process_cpu_seconds_total" in text and "python_info" in text
        assert "concordance_http_requests_total" in text and API_KEY not in text
        samples = dict(
            line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
        )
        assert float(samples["concordance_fsync_duration_seconds_count"]) >= 1  # the write
        assert float(samples["concordance_apply_duration_seconds_count"]) >= 1
        assert float(samples["concordance_fsync_duration_seconds_sum"]) > 0
        assert samples["concordance_raft_leader_changes_total"] == "1"  # it elected itself
        assert samples['concordance_proposals_failed_total{reason="timeout"}'] == "0"
        roles = set()
        for log in sorted((node.data / "logs").glob("*.log")):
            for line in log.read_text().splitlines():
                if line.startswith("{"):
                    entry = json.loads(line)
                    assert entry["node"] == "n1" and entry["level"] and "msg" in entry
                    roles.add(entry["role"])
        assert roles == {"front", "consensus", "storage"}, node.logs()
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


def _node_with(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "concordance.cli", "node", "--id", "n1", "--listen",
         "127.0.0.1:1", "--data", str(root / "n1"), "--insecure"],
        capture_output=True, text=True, timeout=60,
        env={**env, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin"},
    )  # fmt: skip


def test_a_bad_log_format_or_level_is_refused_in_one_line(root: Path) -> None:
    done = _node_with(root, {"CONCORDANCE_LOG_FORMAT": "yaml"})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "text, json" in done.stderr
    done = _node_with(root, {"CONCORDANCE_LOG_LEVEL": "loud"})
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "CONCORDANCE_LOG_LEVEL" in done.stderr
