"""state.db's WAL is copied back beside the applies: a commit never checkpoints when the
state machine is told so, and the pace counts the pages the applies wrote."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from concordance.commands import Batch, Command, Set
from concordance.storage import durability
from concordance.storage.fsm import StateMachine
from concordance.storage.wal_checkpoints import PageCount

VALUE = b'"' + b"x" * 1000 + b'"'


def _batch(index: int) -> tuple[int, int, bytes]:
    ops = tuple(Set(f"tenant:t{i % 50:02d}/k{index:04d}-{i:03d}", VALUE) for i in range(128))
    return index, 1, Command("n1", index, 1_000, Batch(ops)).encode()


def _applied_in_file_alone(db: Path, tmp: Path) -> int:
    """The applied index state.db holds without its WAL (what checkpoints copied)."""
    alone = tmp / "alone.db"
    shutil.copyfile(db, alone)
    conn = sqlite3.connect(alone)
    try:
        return int(conn.execute("SELECT applied_index FROM meta").fetchone()[0])
    except sqlite3.OperationalError:  # not even the tables are in the file yet
        return 0
    finally:
        conn.close()


def test_the_writer_never_checkpoints_when_told_so(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with StateMachine(db, auto_checkpoint=False) as sm:
        for i in range(1, 41):  # about 4,000 pages of WAL, past SQLite's 1,000
            sm.apply([_batch(i)])
        assert _applied_in_file_alone(db, tmp_path) == 0  # everything still in the WAL
        assert durability.checkpoint_once(db)  # a checkpoint beside it copies it all
        assert _applied_in_file_alone(db, tmp_path) == 40


def test_by_default_a_commit_checkpoints_as_sqlite_does(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with StateMachine(db) as sm:
        for i in range(1, 41):
            sm.apply([_batch(i)])
        assert _applied_in_file_alone(db, tmp_path) > 0


def _applied(events: int) -> SimpleNamespace:
    return SimpleNamespace(events=[{}] * events)


def test_page_count_says_when_a_checkpoint_is_due_and_one_at_a_time() -> None:
    pages = PageCount(every=280)
    assert not pages.applied([_applied(128)])  # 1 + 131 pages
    assert not pages.applied([_applied(10), _applied(0)])  # + 1 + 13 + 3: 149
    assert pages.applied([_applied(128)])  # + 132 = 281 >= 280: due
    pages.started()
    assert pages.pages == 0
    for _ in range(5):
        assert not pages.applied([_applied(128)])  # not while one runs
    pages.finished()
    assert pages.applied([])  # the pages counted meanwhile make the next one due at once


def test_page_count_rejects_a_zero_pace() -> None:
    with pytest.raises(ValueError):
        PageCount(every=0)
