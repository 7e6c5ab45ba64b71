"""The Raft core is sans-I/O: it imports no clock, randomness, threads, sockets or disks."""

from __future__ import annotations

import ast
from pathlib import Path

import concordance

FORBIDDEN = {"asyncio", "zmq", "sqlite3", "socket", "time", "random", "threading", "os", "io"}
CORE = [
    "core", "log", "progress", "quorum", "read_only", "ready", "entries", "messages", "config",
    "stores", "membership_history", "replication", "snapshot_transfer", "forwarding",
]  # fmt: skip
PACKAGE = Path(concordance.__file__).parent


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            # ``from concordance.raft import quorum`` imports a module too.
            names |= {
                f"{node.module}.{a.name}"
                for a in node.names
                if _is_module(f"{node.module}.{a.name}")
            }
    return names


def _is_module(name: str) -> bool:
    rel = name.removeprefix("concordance.").replace(".", "/")
    return name.startswith("concordance.") and (PACKAGE / f"{rel}.py").exists()


def _closure(module: str) -> set[str]:
    """Every module the core reaches, following imports inside the package."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        rel = name.removeprefix("concordance.").replace(".", "/")
        for path in (PACKAGE / f"{rel}.py", PACKAGE / rel / "__init__.py"):
            if path.exists():
                todo += [m for m in _imports(path) if m.startswith("concordance")]
                seen |= {m for m in _imports(path) if not m.startswith("concordance")}
    return seen


def test_core_modules_import_nothing_with_io() -> None:
    for name in CORE:
        reached = _closure(f"concordance.raft.{name}")
        bad = {m for m in reached if m.split(".")[0] in FORBIDDEN}
        assert not bad, f"concordance.raft.{name} reaches {sorted(bad)}"


def test_every_raft_module_the_core_reaches_is_listed() -> None:
    """A collaborator split out of core.py must join CORE, so it stays checked
    on its own even if the core later stops importing it."""
    reached = {m for m in _closure("concordance.raft.core") if m.startswith("concordance.raft.")}
    listed = {f"concordance.raft.{name}" for name in CORE}
    assert reached <= listed, f"add {sorted(reached - listed)} to CORE"


def test_the_check_sees_imports() -> None:
    """The closure really follows the package: the SQLite store does reach sqlite3."""
    assert "sqlite3" in _closure("concordance.raft.sqlite_store")
