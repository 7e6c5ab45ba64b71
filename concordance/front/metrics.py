"""Prometheus text exposition (format 0.0.4), written by hand: no client library is needed.

Why by hand: the front exports a handful of families, and the format is
small and stable. Labels only ever hold route templates (``/api/v1/kv/{key}``),
methods, statuses and role names: metrics carry no keys, values or tokens.

Request counters and latency histograms are recorded by a middleware; gauges
(Raft term/commit/applied, revision, watchers, ...) are gathered when
``/metrics`` is scraped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["BUCKETS", "CONTENT_TYPE", "Family", "Histogram", "Metrics", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)

Labels = tuple[tuple[str, str], ...]


@dataclass
class Family:
    """One metric family: its samples are ``(suffix, labels, value)``."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Labels = (), suffix: str = "") -> Family:
        self.samples.append((suffix, labels, value))
        return self


@dataclass
class Histogram:
    buckets: Sequence[float] = BUCKETS
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1
                break

    def into(self, family: Family, labels: Labels) -> None:
        cumulative = 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            cumulative += n
            family.add(cumulative, (*labels, ("le", _number(bound))), "_bucket")
        family.add(self.count, (*labels, ("le", "+Inf")), "_bucket")
        family.add(self.total, labels, "_sum")
        family.add(self.count, labels, "_count")


class Metrics:
    """Per-route request counts and latencies of this front process."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[str, Histogram] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        hist = self._latency.get(route)
        if hist is None:
            hist = self._latency[route] = Histogram()
        hist.observe(seconds)

    def families(self) -> list[Family]:
        requests = Family(
            "concordance_http_requests_total",
            "counter",
            "HTTP requests answered, by route template, method and status.",
        )
        for (route, method, status), n in sorted(self._requests.items()):
            requests.add(n, (("route", route), ("method", method), ("status", str(status))))
        latency = Family(
            "concordance_http_request_duration_seconds",
            "histogram",
            "Time to answer an HTTP request (WebSocket: the whole session), by route template.",
        )
        for route, hist in sorted(self._latency.items()):
            hist.into(latency, (("route", route),))
        return [requests, latency]


def render(families: Iterable[Family]) -> str:
    """The exposition text of ``families``."""
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for suffix, labels, value in fam.samples:
            lines.append(f"{fam.name}{suffix}{_labels(labels)} {_number(value)}")
    return "\n".join(lines) + "\n"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels)
    return "{" + inner + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int) or (math.isfinite(value) and value == int(value)):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
