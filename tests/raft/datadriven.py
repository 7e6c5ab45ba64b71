"""A small reader and runner for scenario files: commands, each followed by its output.

File format (one scenario per file)::

    # Prose: lines starting with '#', and blank lines, are kept as they are.
    command arg key=value
    ----
    expected output, one or more non-blank lines
    <blank line or end of file>

The runner feeds each command to a handler and compares what it returns with
the expected block. With ``REWRITE=1`` in the environment the file is written
back with the actual outputs instead, so a behaviour change shows up as a
diff to review rather than as hand-edited expectations.
"""

from __future__ import annotations

import difflib
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SEPARATOR = "----"


@dataclass
class Command:
    """One command of a scenario, and where it sits in its file."""

    line: int
    text: str
    expected: list[str]
    name: str = ""
    args: list[str] = field(default_factory=list)
    kwargs: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        words = shlex.split(self.text)
        self.name = words[0]
        for word in words[1:]:
            key, eq, value = word.partition("=")
            if eq:
                self.kwargs[key] = value
            else:
                self.args.append(word)


Item = Command | str  # a command, or a line of prose kept verbatim


def parse(path: Path) -> list[Item]:
    lines = path.read_text().splitlines()
    items: list[Item] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.startswith("#"):
            items.append(line)
            i += 1
            continue
        if i + 1 >= len(lines) or lines[i + 1] != SEPARATOR:
            raise ValueError(f"{path.name}:{i + 1}: expected '{SEPARATOR}' after {line!r}")
        start, i = i, i + 2
        expected = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        items.append(Command(start + 1, line, expected))
    return items


def render(items: list[Item]) -> str:
    out: list[str] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        else:
            out += [item.text, SEPARATOR, *item.expected]
            out.append("")  # a command's block always ends with a blank line
    # Prose blank lines right after a block would double up: keep one.
    text = "\n".join(out)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.rstrip("\n") + "\n"


def run_file(path: Path, handle: Callable[[Command], str]) -> None:
    """Run every command of ``path`` through ``handle``; fail on the first
    difference, or rewrite the file when ``REWRITE`` is set."""
    items = parse(path)
    rewrite = bool(os.environ.get("REWRITE"))
    for item in items:
        if isinstance(item, str):
            continue
        actual = handle(item).splitlines() or ["ok"]
        assert all(line.strip() for line in actual), f"{item.text}: blank line in output"
        if rewrite:
            item.expected = actual
        elif actual != item.expected:
            diff = "\n".join(
                difflib.unified_diff(item.expected, actual, "expected", "actual", lineterm="")
            )
            raise AssertionError(f"{path.name}:{item.line}: {item.text}\n{diff}")
    if rewrite:
        path.write_text(render(items))
