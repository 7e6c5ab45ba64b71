"""Log line formats of the role processes: ``text`` (default) or ``json`` (one object a line).

Why JSON on request: a log pipeline (Loki, Elasticsearch, CloudWatch) indexes
fields without a parsing rule per message; people reading ``front.log`` in a
terminal keep the text lines. Chosen by ``CONCORDANCE_LOG_FORMAT``; the level
by ``CONCORDANCE_LOG_LEVEL`` (docs/OPERATIONS.md; both read by ``concordance.environment``).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")  # checked in ``concordance.environment``

__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "formatter"]

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "role", "node", "logger", "msg"[, "exc"]}``, one line per record."""

    def __init__(self, role: str, node_id: str) -> None:
        super().__init__()
        self.role, self.node_id = role, node_id

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "role": self.role,
            "node": self.node_id,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def formatter(kind: str, role: str, node_id: str) -> logging.Formatter:
    """The formatter of ``kind`` (one of :data:`FORMATS`; anything else is a ValueError)."""
    if kind == "json":
        return JsonFormatter(role, node_id)
    if kind == "text":
        return logging.Formatter(
            f"%(asctime)s {role}[{node_id}] %(levelname)s %(name)s: %(message)s"
        )
    raise ValueError(f"CONCORDANCE_LOG_FORMAT must be one of {', '.join(FORMATS)}, not {kind!r}")
