"""storage's applied mark: what it reads back, and what it never mistakes for a mark."""

from __future__ import annotations

from pathlib import Path

from concordance.storage.applied_mark import AppliedMark


def test_a_mark_reads_back_across_processes_and_is_overwritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "applied.mark"
    mark = AppliedMark(path)
    assert mark.read() == 0  # a new file
    mark.note(41)
    mark.note(2**40 + 7)
    mark.close()  # a process gone; the next one reads what it wrote
    again = AppliedMark(path)
    assert again.read() == 2**40 + 7
    assert path.stat().st_size == 16  # one record, rewritten where it is
    again.close()


def test_a_short_or_foreign_file_reads_as_no_mark(tmp_path: Path) -> None:
    path = tmp_path / "applied.mark"
    for content in (b"", b"\x07" * 8, b"\x01" * 16, (5).to_bytes(8, "little") * 2):
        path.write_bytes(content)
        mark = AppliedMark(path)
        assert mark.read() == 0, content
        mark.close()
