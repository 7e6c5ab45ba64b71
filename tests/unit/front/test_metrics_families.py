"""The front's added families: WebSocket sessions apart, build info, database sizes, runtime."""

from __future__ import annotations

from pathlib import Path

from concordance import __version__
from concordance.front.metrics import Metrics, build_info, database_sizes, render, runtime_text


def test_websocket_sessions_do_not_count_as_request_latency() -> None:
    m = Metrics()
    m.observe("/stream", "GET", 101, 7200.0)
    m.observe("/stream", "GET", 401, 0.002)  # a refused upgrade is a request
    m.observe("/api/v1/kv/{key}", "GET", 200, 0.004)
    text = render(m.families())
    assert 'concordance_http_request_duration_seconds_count{route="/stream"} 1' in text
    assert 'concordance_websocket_session_duration_seconds_count{route="/stream"} 1' in text
    assert 'concordance_websocket_session_duration_seconds_bucket{route="/stream",le="14400"} 1'\
        in text  # fmt: skip
    assert 'concordance_http_requests_total{route="/stream",method="GET",status="101"} 1' in text


def test_build_info_and_database_sizes(tmp_path: Path) -> None:
    assert f'concordance_build_info{{version="{__version__}",' in render([build_info()])
    (tmp_path / "raft").mkdir()
    (tmp_path / "raft" / "raft.db").write_bytes(b"x" * 100)
    (tmp_path / "raft" / "raft.db-wal").write_bytes(b"x" * 20)
    text = render([database_sizes(tmp_path)])
    assert 'concordance_db_size_bytes{db="raft"} 120' in text
    assert 'db="state"' not in text  # no file, no sample


def test_runtime_families_come_from_prometheus_client() -> None:
    text = runtime_text()
    assert "# TYPE python_info gauge" in text and "python_gc_collections_total" in text
    assert "process_resident_memory_bytes" in text  # Linux: read from /proc
