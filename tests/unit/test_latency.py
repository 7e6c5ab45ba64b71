"""Latency counts a role ships to the front, and the histogram the front renders from them."""

from __future__ import annotations

from concordance import latency
from concordance.front import metrics


def test_counts_fall_in_their_bucket_and_overflow_last() -> None:
    counts = latency.LatencyCounts()
    for seconds in (0.0001, 0.0005, 0.003, 100.0):
        counts.observe(seconds)
    per_bucket, total_us = counts.snapshot()
    assert len(per_bucket) == len(latency.BUCKETS) + 1
    assert per_bucket[0] == 2  # 0.1 ms and exactly 0.5 ms
    assert per_bucket[latency.BUCKETS.index(0.005)] == 1
    assert per_bucket[-1] == 1  # beyond the last bound
    assert total_us == 100 + 500 + 3000 + 100_000_000


def test_the_front_renders_a_cumulative_histogram_from_shipped_counts() -> None:
    counts = latency.LatencyCounts()
    for seconds in (0.0004, 0.002, 0.002, 9.0):
        counts.observe(seconds)
    text = metrics.render([metrics.latency_family("x_seconds", "help", counts.snapshot())])
    assert "# TYPE x_seconds histogram" in text
    assert 'x_seconds_bucket{le="0.0005"} 1' in text
    assert 'x_seconds_bucket{le="0.0025"} 3' in text
    assert 'x_seconds_bucket{le="2.5"} 3' in text and 'x_seconds_bucket{le="+Inf"} 4' in text
    assert "x_seconds_count 4" in text
    # A role that did not answer, or an older one that sends no counts: no samples.
    assert "x_seconds_count" not in metrics.render([metrics.latency_family("x", "h", None)])
    empty = metrics.render([metrics.latency_family("x_seconds", "h", ((), 0))])
    assert "x_seconds_count" not in empty
