"""Per-follower replication state and flow control (thesis §10.2.2)."""

from __future__ import annotations

from concordance.raft.progress import Progress, ProgressState


def probe(match: int = 0, next_: int = 1) -> Progress:
    return Progress(match=match, next=next_)


def replicate(match: int, window: int = 0) -> Progress:
    pr = Progress(match=match, next=match + 1)
    pr.become_replicate()
    for k in range(window):
        pr.sent_entries(match + 1 + k)
    return pr


def test_new_progress_probes_and_is_not_paused() -> None:
    pr = Progress()
    assert (pr.state, pr.match, pr.next) == (ProgressState.PROBE, 0, 1)
    assert not pr.paused(max_inflight=4)


def test_probe_allows_one_message_until_answered() -> None:
    pr = probe(next_=6)
    pr.sent_entries(8)
    assert pr.next == 6  # a probe does not move next optimistically
    assert pr.paused(4)
    assert pr.update_match(7)
    assert not pr.paused(4)
    assert (pr.match, pr.next) == (7, 8)


def test_replicate_sends_optimistically_up_to_the_window() -> None:
    pr = replicate(match=3)
    assert pr.next == 4
    for last in (5, 7, 8):
        assert not pr.paused(3)
        pr.sent_entries(last)
    assert pr.next == 9 and list(pr.inflight) == [5, 7, 8]
    assert pr.paused(3)
    assert pr.update_match(7)  # frees every message up to 7
    assert list(pr.inflight) == [8] and not pr.paused(3)
    assert (pr.match, pr.next) == (7, 9)


def test_stale_ack_frees_nothing_new_and_does_not_move_match() -> None:
    pr = replicate(match=5, window=2)
    assert not pr.update_match(4)
    assert (pr.match, list(pr.inflight)) == (5, [6, 7])
    assert not pr.update_match(5)


def test_update_match_resets_stalled_heartbeats_only_on_progress() -> None:
    pr = replicate(match=2, window=1)
    pr.stalled_heartbeats = 1
    pr.update_match(2)
    assert pr.stalled_heartbeats == 1
    pr.update_match(3)
    assert pr.stalled_heartbeats == 0


def test_rejection_in_replicate_falls_back_to_probe() -> None:
    pr = replicate(match=5, window=3)  # sent 6, 7, 8
    assert pr.back_off(rejected=7, hint_next=6)
    assert pr.state is ProgressState.PROBE
    assert (pr.next, list(pr.inflight), pr.probe_sent) == (6, [], False)


def test_stale_rejection_in_replicate_is_ignored() -> None:
    pr = replicate(match=5, window=2)
    assert not pr.back_off(rejected=4, hint_next=1)
    assert not pr.back_off(rejected=5, hint_next=1)
    assert (pr.state, pr.next, list(pr.inflight)) == (ProgressState.REPLICATE, 8, [6, 7])


def test_rejection_in_probe_moves_next_to_the_hint() -> None:
    pr = probe(match=2, next_=10)
    pr.sent_entries(10)
    assert pr.back_off(rejected=9, hint_next=5)
    assert (pr.next, pr.probe_sent) == (5, False)


def test_stale_rejection_in_probe_is_ignored() -> None:
    pr = probe(match=2, next_=5)
    pr.sent_entries(5)
    assert not pr.back_off(rejected=9, hint_next=3)  # answers an older probe
    assert (pr.next, pr.probe_sent) == (5, True)


def test_back_off_never_goes_below_match_or_above_the_rejected_index() -> None:
    pr = probe(match=4, next_=8)
    assert pr.back_off(rejected=7, hint_next=1)
    assert pr.next == 5
    pr = probe(match=0, next_=8)
    assert pr.back_off(rejected=7, hint_next=100)
    assert pr.next == 7


def test_snapshot_state_pauses_until_installed() -> None:
    pr = replicate(match=2, window=2)
    pr.become_snapshot(20)
    assert pr.state is ProgressState.SNAPSHOT and pr.paused(100)
    assert (pr.snapshot_index, pr.snapshot_offset, list(pr.inflight)) == (20, 0, [])
    pr.snapshot_offset = 64
    pr.become_probe()  # e.g. after the follower acknowledged the last chunk
    assert (pr.state, pr.next, pr.snapshot_index, pr.snapshot_offset) == (
        ProgressState.PROBE,
        21,
        0,
        0,
    )


def test_probe_after_snapshot_resumes_after_match_if_further() -> None:
    pr = Progress(match=30, next=31)
    pr.become_snapshot(20)
    pr.become_probe()
    assert pr.next == 31


def test_become_replicate_restarts_from_match() -> None:
    pr = probe(match=7, next_=3)
    pr.probe_sent = True
    pr.become_replicate()
    assert (pr.state, pr.next, pr.probe_sent) == (ProgressState.REPLICATE, 8, False)
