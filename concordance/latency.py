"""Latency counts a role keeps for the front's ``/metrics``: fixed buckets, shipped over IPC.

Consensus times its fsyncs and storage its applies; neither serves HTTP, so
each keeps bucket counts here and sends them in its status reply
(``status_ok``, ``storage_status_ok``), and the front renders them as
Prometheus histograms. Fixed buckets keep the wire format a plain tuple of
ints; the last count is the overflow (+Inf) bucket.
"""

from __future__ import annotations

__all__ = ["BUCKETS", "LatencyCounts"]

# Seconds: an fsync on an SSD is ~0.1-1 ms, an apply batch ~0.1-10 ms.
BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


class LatencyCounts:
    """How many observations fell in each of ``BUCKETS`` (plus overflow), and their sum."""

    __slots__ = ("counts", "total_us")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total_us = 0

    def observe(self, seconds: float) -> None:
        self.total_us += max(0, round(seconds * 1_000_000))
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                self.counts[i] += 1
                return
        self.counts[-1] += 1

    def snapshot(self) -> tuple[tuple[int, ...], int]:
        """(per-bucket counts, not cumulative, overflow last; total microseconds)."""
        return tuple(self.counts), self.total_us
