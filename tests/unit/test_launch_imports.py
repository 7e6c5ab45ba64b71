"""The keepers stay light: they import none of the roles' runtime (ZeroMQ, the wire types,
the Raft core, uvloop, aiohttp), which each role process imports for itself."""

from __future__ import annotations

import subprocess
import sys

HEAVY = (
    "zmq",
    "uvloop",
    "aiohttp",
    "concordance.ipc",
    "concordance.protocol.wire",
    "concordance.raft",
)


def test_keepers_do_not_import_the_roles_runtime() -> None:
    code = (
        "import sys, procs.role_keeper, procs.front_keeper, procs._launch\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == []


def test_the_role_entry_points_import_it() -> None:
    code = f"import sys, procs.storage\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert {"zmq", "concordance.ipc"} <= set(out.stdout.split())


def _loaded_after(statement: str, modules: tuple[str, ...]) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {modules!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(out.stdout.split())


def test_the_command_line_loads_the_client_stack_only_to_talk_to_a_node() -> None:
    # `concordance node` builds the whole parser before it execs supervisord
    assert (
        _loaded_after("import concordance.cli", ("aiohttp", "concordance.client.client")) == set()
    )
    # and a command that talks gets it: the package's names are there on first use
    assert _loaded_after("from concordance.client import Client, SyncClient", ("aiohttp",)) == {
        "aiohttp"
    }
