"""``concordance ctl status``: supervisord's pid of a role is its keeper; the row also
names the process serving the role, from the keeper's record."""

from __future__ import annotations

from pathlib import Path

from concordance.node.supervise import RoleState, record_serving, serving


def test_a_running_role_shows_its_keeper_and_the_process_serving_it(tmp_path: Path) -> None:
    record_serving(tmp_path, "consensus", 4242)
    row = RoleState("consensus", "RUNNING", 4100, "pid 4100, uptime 0:00:09")
    fields = row.line(serving(tmp_path, "consensus")).split()
    # $4 stays the keeper's pid (docs/SECURITY.md sends SIGHUP to it with awk '{print $4}').
    assert fields[:6] == ["consensus", "RUNNING", "pid", "4100", "serving", "4242"]


def test_a_stopped_role_serves_nothing_whatever_its_last_record_says(tmp_path: Path) -> None:
    record_serving(tmp_path, "storage", 4242)  # left behind by the last process
    row = RoleState("storage", "STOPPED", None, "Not started")
    assert row.line(serving(tmp_path, "storage")).split()[:6] == [
        "storage", "STOPPED", "pid", "-", "serving", "-",
    ]  # fmt: skip


def test_a_role_with_no_record_yet_shows_a_dash(tmp_path: Path) -> None:
    row = RoleState("front", "STARTING", 4100, "")
    assert row.line(serving(tmp_path, "front")).split()[4:6] == ["serving", "-"]
