"""A node's supervisord is woken once its control socket accepts, so it spawns the roles
in its first loop turn instead of after its one-second poll."""

from __future__ import annotations

import itertools
import socket
import sys
import tempfile
from pathlib import Path

from concordance import config
from concordance.node import supervise
from concordance.node.supervisor_start import wake_when_listening


def test_wakes_a_listening_socket_with_one_connection() -> None:
    with tempfile.TemporaryDirectory(dir="/tmp") as d, socket.socket(socket.AF_UNIX) as srv:
        path = str(Path(d) / "s.sock")
        srv.bind(path)
        srv.listen(4)
        assert wake_when_listening(path, within=5.0)
        srv.settimeout(5.0)
        conn, _ = srv.accept()  # the wake-up is a connection that supervisord's poll sees
        with conn:
            assert conn.recv(1) == b""  # it says nothing and closes
        srv.setblocking(False)
        try:
            srv.accept()
            raise AssertionError("connected more than once")
        except BlockingIOError:
            pass


def test_gives_up_on_a_socket_nobody_listens_on() -> None:
    ticks = itertools.count()
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        stale = Path(d) / "old.sock"
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(stale))  # bound, never listening: a crashed supervisord's file
        assert not wake_when_listening(str(stale), within=3.0, now=lambda: float(next(ticks)))


def test_the_node_execs_supervisord_through_the_wake_up(tmp_path: Path) -> None:
    cfg = config.NodeConfig(node_id="n1", listen="127.0.0.1:1", data_dir=str(tmp_path / "n1"))
    cmd = supervise.supervisord_command(cfg)
    assert cmd[:4] == [sys.executable, "-m", "concordance.node.supervisor_start",
                       config.supervisor_socket(cfg.data)]  # fmt: skip
    assert cmd[4:] == ["-n", "-c", str(supervise.config_path())]
