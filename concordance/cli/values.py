"""Values and documents from the command line: inline, ``-`` for stdin, ``@FILE``.

Why a JSON-first rule: a value is any JSON value, and ``42``, ``true`` or
``{"a": 1}`` typed on the line mean those; text that is not JSON is a string,
so ``concordance kv put k dark`` stores ``"dark"``. ``--string`` forces a string.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["InputError", "parse_value", "read_document", "read_text"]


class InputError(ValueError):
    """Input that cannot be read or parsed: one line to the user, exit code 2."""


def read_text(arg: str) -> str:
    """``-``: all of stdin; ``@path``: that file; anything else: itself."""
    if arg == "-":
        return sys.stdin.read()
    if arg.startswith("@"):
        path = Path(arg[1:])
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise InputError(f"cannot read {path}: {reason}") from None
    return arg


def parse_value(arg: str, as_string: bool = False) -> Any:
    text = read_text(arg)
    if as_string:
        return text
    try:
        return json.loads(text)
    except ValueError:
        # Read from a file or stdin, a trailing newline is the file's, not the value's.
        return text.rstrip("\n") if arg == "-" or arg.startswith("@") else text


def read_document(arg: str, what: str) -> Any:
    """A JSON document (from ``-``, ``@file`` or a bare path); a parse error names its line."""
    source = arg if arg == "-" or arg.startswith("@") else "@" + arg
    text = read_text(source)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} is not JSON: {e.msg} at line {e.lineno}") from None
