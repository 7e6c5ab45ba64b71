"""``python -m bench.wakeups`` reads every thread's counters from /proc and divides by writes."""

from __future__ import annotations

import os
import threading

from bench.wakeups import Counters, per_write, thread_counters


def test_the_counters_of_this_process_cover_its_threads_and_only_grow() -> None:
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait, name="wakeups-test")
    worker.start()
    try:
        before = thread_counters(os.getpid())
        assert any(tid == threading.get_native_id() for tid, _ in before)
        assert any(tid == worker.native_id for tid, _ in before)
        sum(range(200_000))  # some CPU
        after = thread_counters(os.getpid())
    finally:
        stop.set()
        worker.join()
    for key, start in before.items():
        if key in after:
            end = after[key]
            assert end.voluntary >= start.voluntary and end.cpu >= start.cpu
    assert thread_counters(-1) == {}


def test_per_write_sums_threads_of_one_name_and_skips_threads_not_seen_twice() -> None:
    before = {(1, "python"): Counters(10, 1, 1.0), (2, "ZMQbg/IO/0"): Counters(5, 0, 0.5)}
    after = {
        (1, "python"): Counters(30, 5, 1.5),
        (2, "ZMQbg/IO/0"): Counters(15, 2, 0.6),
        (3, "python"): Counters(100, 100, 9.0),  # started meanwhile: not counted
    }
    rows = per_write(before, after, 10)
    assert rows["python"] == (2.0, 0.4, 50.0)
    v, i, ms = rows["ZMQbg/IO/0"]
    assert (v, i) == (1.0, 0.2) and abs(ms - 10.0) < 1e-9
