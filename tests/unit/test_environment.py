"""``concordance.environment``: the one reader of ``CONCORDANCE_*``, against the docs."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from concordance import environment
from concordance.config import ConfigError
from concordance.environment import VARIABLES, read_client, read_node

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
KEY = base64.b64encode(bytes(range(32))).decode()


def _documented() -> set[str]:
    return {
        m for doc in DOCS for m in re.findall(r"CONCORDANCE_[A-Z0-9_]*[A-Z0-9]", doc.read_text())
    }


def test_every_documented_variable_is_in_the_table() -> None:
    missing = _documented() - set(VARIABLES)
    assert not missing, f"documented but not read by concordance.environment: {sorted(missing)}"


def test_every_variable_an_operator_or_user_sets_is_documented() -> None:
    public = {name for name, v in VARIABLES.items() if v.reader != "internal"}
    assert not public - _documented()


def _keys(env: environment.NodeEnv) -> list[bytes]:
    return [key for _, key in env.secrets.encryption_keys]


# (variable, a value, where read_node puts it, what it becomes): one per node variable
READS: list[tuple[str, str, Any, object]] = [
        ("CONCORDANCE_API_KEY", "k1", lambda e: e.secrets.api_key, "k1"),
        ("CONCORDANCE_AGENT_API_KEY", "k2", lambda e: e.secrets.agent_key, "k2"),
        ("CONCORDANCE_CLUSTER_KEY", "k3", lambda e: e.secrets.cluster_key, "k3"),
        ("CONCORDANCE_ENCRYPTION_KEY", KEY, lambda e: _keys(e), [bytes(range(32))]),
        ("CONCORDANCE_ENCRYPTION_OLD_KEYS", f"{KEY}, {KEY}", lambda e: len(_keys(e)), 2),
        ("CONCORDANCE_SNAPSHOT_EVERY", "7", lambda e: e.snapshot_every, 7),
        ("CONCORDANCE_SNAPSHOT_TRAILING", "0", lambda e: e.snapshot_trailing, 0),
        ("CONCORDANCE_CHANGE_RETENTION", "9", lambda e: e.change_retention, 9),
        ("CONCORDANCE_CHANGE_RETENTION_BYTES", "11", lambda e: e.change_retention_bytes, 11),
        ("CONCORDANCE_MAX_CLIENT_CONNECTIONS", "5", lambda e: e.limits.max_client_connections, 5),
        ("CONCORDANCE_RESERVED_CONNECTIONS", "6", lambda e: e.limits.reserved_connections, 6),
        ("CONCORDANCE_HEADER_TIMEOUT", "1.5", lambda e: e.limits.header_timeout, 1.5),
        ("CONCORDANCE_KEEPALIVE_TIMEOUT", "2.5", lambda e: e.limits.keepalive_timeout, 2.5),
        ("CONCORDANCE_LOG_FORMAT", " JSON ", lambda e: e.log_format, "json"),
        ("CONCORDANCE_LOG_LEVEL", " debug ", lambda e: e.log_level, "DEBUG"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value", "read", "expected"), READS)
def test_each_node_variable_is_read_into_its_setting(
    name: str, value: str, read: Any, expected: object
) -> None:
    default = read(read_node({}))
    assert default != expected  # the test value is not the default: the variable did it
    assert read(read_node({name: value})) == expected


def test_every_node_variable_has_a_reading_test() -> None:
    node = {name for name, v in VARIABLES.items() if v.reader == "node"}
    assert node == {case[0] for case in READS}


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("CONCORDANCE_ENCRYPTION_KEY", "not base64!"),
        ("CONCORDANCE_ENCRYPTION_KEY", base64.b64encode(b"short").decode()),
        ("CONCORDANCE_ENCRYPTION_OLD_KEYS", f"{KEY},nope"),
        ("CONCORDANCE_SNAPSHOT_EVERY", "ten"),
        ("CONCORDANCE_SNAPSHOT_TRAILING", "-1"),
        ("CONCORDANCE_CHANGE_RETENTION", "1e5"),
        ("CONCORDANCE_CHANGE_RETENTION_BYTES", "-5"),
        ("CONCORDANCE_MAX_CLIENT_CONNECTIONS", "0"),
        ("CONCORDANCE_RESERVED_CONNECTIONS", "1.5"),
        ("CONCORDANCE_HEADER_TIMEOUT", "soon"),
        ("CONCORDANCE_KEEPALIVE_TIMEOUT", "-1"),
        ("CONCORDANCE_LOG_FORMAT", "yaml"),
        ("CONCORDANCE_LOG_LEVEL", "loud"),
    ],
)
def test_a_bad_value_is_one_clear_line_naming_its_variable(name: str, bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        read_node({name: bad})
    message = str(caught.value)
    assert name in message and "\n" not in message


def test_the_node_command_exits_2_on_a_bad_value_before_starting_anything(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCORDANCE_")}
    env["CONCORDANCE_SNAPSHOT_EVERY"] = "often"
    data = tmp_path / "d"
    cmd = [sys.executable, "-m", "concordance.cli", "node", "--id", "n1",
           "--listen", "127.0.0.1:1", "--data", str(data), "--insecure"]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "CONCORDANCE_SNAPSHOT_EVERY" in done.stderr
    assert not data.exists()


def test_client_variables_unset_or_empty_are_none() -> None:
    assert read_client({}) == environment.ClientEnv()
    got = read_client(
        {"CONCORDANCE_ENDPOINT": "a:1", "CONCORDANCE_KEY": "", "CONCORDANCE_DEBUG": "1"}
    )
    assert got.endpoints == "a:1" and got.key is None and got.debug
    both = {"CONCORDANCE_ENDPOINTS": "b:2", "CONCORDANCE_ENDPOINT": "a:1"}
    assert read_client(both).endpoints == "b:2"  # the plural wins


def test_child_env_adds_to_a_copy_and_never_writes_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONCORDANCE_API_KEY", raising=False)
    monkeypatch.setenv("CONCORDANCE_LOG_LEVEL", "info")
    child = environment.child_env({"CONCORDANCE_API_KEY": "dev"})
    assert child["CONCORDANCE_API_KEY"] == "dev" and child["CONCORDANCE_LOG_LEVEL"] == "info"
    assert "CONCORDANCE_API_KEY" not in os.environ
    with pytest.raises(KeyError, match="CONCORDANCE_TYPO"):
        environment.child_env({"CONCORDANCE_TYPO": "x"})


def test_an_inherited_descriptor_is_parsed_and_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "CONCORDANCE_READY_FD"
    monkeypatch.delenv(name, raising=False)
    assert environment.inherited_fd(name) is None
    monkeypatch.setenv(name, "7")
    assert environment.inherited_fd(name) == 7 and os.environ[name] == "7"
    assert environment.inherited_fd(name, take=True) == 7 and name not in os.environ
    monkeypatch.setenv(name, "seven")
    with pytest.raises(ConfigError, match=name):
        environment.inherited_fd(name)
    with pytest.raises(KeyError):  # a node or client variable is not a descriptor
        environment.inherited_fd("CONCORDANCE_API_KEY")


def test_no_other_module_reads_or_writes_the_environment() -> None:
    touches = re.compile(r"\bos\.(environ|getenv|putenv|unsetenv)\b|\benviron\[")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for top in ("concordance", "procs")
        for path in sorted((ROOT / top).rglob("*.py"))
        if path.name != "environment.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if touches.search(line.split("#", 1)[0])
    ]
    assert found == []
