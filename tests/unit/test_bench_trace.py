"""``python -m bench.trace`` merges the per-process trace files into one write's timeline."""

from __future__ import annotations

from pathlib import Path

from bench.trace import timeline


def test_the_timeline_starts_at_the_chosen_write_and_merges_every_process(tmp_path: Path) -> None:
    (tmp_path / "1.tr").write_text(
        "1000000 n1-fro tcp_in 240 b'PUT '\n"
        "4000000 n1-fro tcp_in 240 b'PUT '\n"
        "4500000 n1-fro send propose\n"
        "9000000 n1-fro http_out\n"
    )
    (tmp_path / "2.tr").write_text("2000000 n1-con recv propose\n4750000 n1-con recv propose\n")
    last = timeline(tmp_path, 1)
    assert last == [
        "   0.000  n1-fro tcp_in 240 b'PUT '",
        "   0.500  n1-fro send propose",
        "   0.750  n1-con recv propose",
        "   5.000  n1-fro http_out",
    ]
    assert timeline(tmp_path, 2)[:2] == [
        "   0.000  n1-fro tcp_in 240 b'PUT '",
        "   1.000  n1-con recv propose",
    ]
    assert timeline(tmp_path, 3) == []
