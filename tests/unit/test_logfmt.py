"""Role log formats: JSON lines carry the fields a log pipeline indexes."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from concordance.node.logfmt import formatter


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            exc_info = sys.exc_info()
    return logging.LogRecord("concordance.x", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_json_lines_have_level_role_node_logger_message_and_exception() -> None:
    line = formatter("json", "front", "n1").format(record("took %d ms", 12, exc=True))
    data = json.loads(line)
    assert "\n" not in line
    assert {k: data[k] for k in ("level", "role", "node", "logger", "msg")} == {
        "level": "WARNING", "role": "front", "node": "n1", "logger": "concordance.x",
        "msg": "took 12 ms"}  # fmt: skip
    assert data["ts"].endswith("+00:00") and "RuntimeError: boom" in data["exc"]


def test_text_stays_the_default_format_and_anything_else_is_refused() -> None:
    text = formatter("text", "storage", "n2").format(record("hello"))
    assert "storage[n2] WARNING concordance.x: hello" in text
    with pytest.raises(ValueError, match="text, json"):
        formatter("yaml", "front", "n1")
