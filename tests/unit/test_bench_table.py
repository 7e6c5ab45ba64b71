"""The bench's summary table: best-round ratio, paired median, the watch row's details."""

from __future__ import annotations

from bench.__main__ import table


def _row(ops: float, p50: float = 1.0, p99: float = 2.0, **extra: float) -> dict[str, float]:
    return {"ops": ops, "p50": p50, "p99": p99, "errors": 0, "core_ms_per_op": 0.5, **extra}


def _line(text: str, name: str) -> list[str]:
    [line] = [ln for ln in text.splitlines() if ln.startswith(name)]
    return line.split()


def test_ratio_is_best_against_best_and_paired_is_the_median_of_each_rounds_ratio() -> None:
    results = {
        "write, 1 client": {
            # round 1: the machine is slow for both; round 3: fast for both
            "etcd": [_row(100), _row(200), _row(400)],
            "concordance": [_row(50), _row(150), _row(100)],
        }
    }
    cells = _line(table(results), "write, 1 client")
    assert cells[-2:] == ["0.38", "0.50"]  # 150/400; median of 0.5, 0.75, 0.25


def test_the_watch_row_shows_its_write_latency_and_receipt_from_the_start() -> None:
    def watch(p99: float, sent99: float, write99: float) -> dict[str, float]:
        return _row(0, 1.0, p99, sent_p50=5.0, sent_p99=sent99, write_p50=2.0, write_p99=write99)

    name = "watch, 1000 watchers, 10 writes/s"
    results = {name: {"etcd": [watch(40, 100, 10)], "concordance": [watch(20, 150, 5)]}}
    text = table(results)
    assert _line(text, name)[-2:] == ["0.50", "0.50"]
    assert _line(text, "  receipt from the write's start")[-1] == "1.50"
    assert _line(text, "  the writes")[-1] == "0.50"
