"""How results are printed: ``--json`` for programs, a plain table for people.

Why one module: every command prints through :class:`Output`, so ``--json``
means the same shape everywhere (the API's JSON), and tables line up the same.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["Output", "render_value"]


def render_value(value: Any, raw: bool = False) -> str:
    """A value for a table cell (compact JSON) or, ``raw``, as it would go in a file: a
    string without quotes, anything else as JSON."""
    if raw and isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Output:
    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream or sys.stdout

    def json(self, data: Any) -> None:
        print(json.dumps(data, ensure_ascii=False), file=self.stream, flush=True)

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Columns padded to their widest cell; the last column is not padded."""
        cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r]
                                               for r in rows]  # fmt: skip
        widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
        for row in cells:
            padded = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)]
            self.line("  ".join([*padded, row[-1]]).rstrip())
