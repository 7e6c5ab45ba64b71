"""Prometheus text exposition (format 0.0.4) of the front: our families, and the process's.

Why two sources: the process and Python collectors (CPU, memory, file
descriptors, GC, interpreter) come from prometheus_client, which reads them
properly on each platform. Concordance's own families keep this small
renderer: a request's observation is on the path of every request, and
measured there it costs 1.4 us here against 6.4 us with prometheus_client's
labelled Histogram and Counter (200,000 observations on the dev machine);
and the exposition of these families (integer samples, names, labels) is
what dashboards, docs/OPERATIONS.md and the tests read.

Labels only ever hold route templates (``/api/v1/kv/{key}``), methods,
statuses, role and database names: metrics carry no keys, values or tokens.
Request counters and latency histograms are recorded by a middleware, with
WebSocket sessions (``/stream``) in a histogram of their own so
that hour-long sessions do not swamp request latency; gauges (Raft
term/commit/applied, revision, watchers, database sizes, ...) are gathered
when ``/metrics`` is scraped.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import prometheus_client

from concordance import __version__, latency

__all__ = [
    "BUCKETS",
    "CONTENT_TYPE",
    "SESSION_BUCKETS",
    "WEBSOCKET_ROUTES",
    "Family",
    "Histogram",
    "Metrics",
    "build_info",
    "database_sizes",
    "latency_family",
    "render",
    "runtime_text",
]

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

# A WebSocket session lasts from seconds to days: these buckets, not BUCKETS.
SESSION_BUCKETS: tuple[float, ...] = (1, 10, 60, 300, 1800, 3600, 4 * 3600, 24 * 3600)
WEBSOCKET_ROUTES = frozenset({"/stream"})

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
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)

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
        self._sessions: dict[str, Histogram] = {}
        self.hot_requests = 0  # answered by the front's hot path (front/hot_path.py)
        self.to_aiohttp = 0  # connections the hot path gave to aiohttp

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        if route in WEBSOCKET_ROUTES and status == 101:
            hist = self._sessions.get(route)
            if hist is None:
                hist = self._sessions[route] = Histogram(SESSION_BUCKETS)
        else:
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
            "Time to answer an HTTP request (not WebSocket sessions), by route template.",
        )
        for route, hist in sorted(self._latency.items()):
            hist.into(latency, (("route", route),))
        sessions = Family(
            "concordance_websocket_session_duration_seconds",
            "histogram",
            "Length of the WebSocket sessions that ended (/stream), by route.",
        )
        for route, hist in sorted(self._sessions.items()):
            hist.into(sessions, (("route", route),))
        hot = Family(
            "concordance_http_hot_requests_total",
            "counter",
            "HTTP requests answered by the front's own parser (the key routes and batches).",
        ).add(self.hot_requests, ())
        given = Family(
            "concordance_http_connections_to_aiohttp_total",
            "counter",
            "Connections the front's own parser gave to aiohttp (another route, a WebSocket,"
            " a request it does not take); their later requests are aiohttp's.",
        ).add(self.to_aiohttp, ())
        return [requests, latency, sessions, hot, given]


def latency_family(name: str, help: str, shipped: tuple[Sequence[int], int] | None) -> Family:
    """A histogram from a role's :class:`~concordance.latency.LatencyCounts` snapshot
    (per-bucket counts with the overflow last, total microseconds); empty when the
    role did not answer or sent none."""
    family = Family(name, "histogram", help)
    if shipped is None or len(shipped[0]) != len(latency.BUCKETS) + 1:
        return family
    counts, total_us = shipped
    hist = Histogram(latency.BUCKETS, list(counts[:-1]), total_us / 1e6, sum(counts))
    hist.into(family, ())
    return family


def build_info() -> Family:
    """``concordance_build_info{version, python}`` 1: which build runs where."""
    return Family(
        "concordance_build_info", "gauge", "Always 1; the labels say which build this node runs."
    ).add(1, (("version", __version__), ("python", platform.python_version())))


def database_sizes(data_dir: str | os.PathLike[str]) -> Family:
    """``concordance_db_size_bytes{db}``: raft.db and state.db with their WAL files, on disk."""
    fam = Family(
        "concordance_db_size_bytes", "gauge", "Size on disk of a SQLite database and its WAL."
    )
    root = Path(data_dir)
    for db, path in (("raft", root / "raft" / "raft.db"), ("state", root / "state" / "state.db")):
        size, found = 0, False
        for suffix in ("", "-wal"):
            try:
                size += os.stat(f"{path}{suffix}").st_size
                found = True
            except OSError:
                continue
        if found:
            fam.add(size, (("db", db),))
    return fam


@cache
def _runtime_registry() -> prometheus_client.CollectorRegistry:
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    return registry


def runtime_text() -> str:
    """The front process's own families (``process_*``, ``python_*``), from prometheus_client."""
    return prometheus_client.generate_latest(_runtime_registry()).decode("utf-8")


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
