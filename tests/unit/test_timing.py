"""The cross-process pairs of ``concordance.timing`` hold their relations, and live only there."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

from concordance import timing
from concordance.cli import remote_ctl, server
from concordance.config import ROLES, NodeConfig
from concordance.timing import (
    ACK_DELAY,
    ACK_EVERY,
    APPLY_STALL,
    APPLY_WINDOW,
    CONSENSUS_DRAIN,
    CONSENSUS_FLUSH,
    CONSENSUS_HAND_OVER,
    FRONT_ACCEPT_GRACE,
    FRONT_HELLO_PERIOD,
    FRONT_READY_TIMEOUT,
    FRONT_SHUTDOWN_GRACE,
    HAND_OVER_TIMEOUT,
    KEEPER_STOP_TIMEOUT,
    PEER_DEAD_AFTER,
    PEER_FLUSH,
    PEER_KEEPALIVE,
    ROLE_READY_TIMEOUT,
    ROLLING_ORDER,
    STOPPING_BOUND,
    STORAGE_DRAIN,
    STORAGE_FLUSH,
    SUPERVISORD_STOPWAITSECS,
    UNAVAILABLE_RETRY,
    WATCHING_FRESH,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_apply_window_holds_two_acknowledgements() -> None:
    # Storage acknowledges at once every ACK_EVERY entries; consensus stops sending
    # at APPLY_WINDOW unacknowledged. With room for two, the next ACK_EVERY entries
    # are on their way while the first ``applied`` travels back: the stream never
    # waits a round trip (or an ACK_DELAY timer) per acknowledgement.
    assert APPLY_WINDOW >= 2 * ACK_EVERY


def test_a_batch_is_called_lost_long_after_storage_may_hold_its_ack() -> None:
    # Storage holds ``applied`` up to ACK_DELAY on purpose (one ack for several
    # batches); consensus resends a batch unacknowledged for APPLY_STALL. Ten times
    # the delay leaves a busy storage's late ack its margin before a needless resend.
    assert APPLY_STALL >= 10 * ACK_DELAY


def test_one_lost_front_watching_does_not_age_a_front_out() -> None:
    # Storage believes a front's front_watching for WATCHING_FRESH; the front repeats
    # it every FRONT_HELLO_PERIOD. At least two arrive per window, so one lost
    # message does not make the front count as gone quiet (which makes storage
    # publish every change batch again, for nobody).
    assert FRONT_HELLO_PERIOD < WATCHING_FRESH / 2


def test_the_front_holds_a_stopping_role_until_its_old_process_is_gone() -> None:
    # After ``stopping`` the front holds requests until the old connection is gone,
    # at most STOPPING_BOUND; a request released earlier goes to the old process and
    # is lost with it. The old process closes within its drain and flushes after
    # ``stopping``; twice that leaves room for closing its files and exiting.
    assert STOPPING_BOUND >= 2 * (CONSENSUS_DRAIN + CONSENSUS_FLUSH + PEER_FLUSH)
    assert STOPPING_BOUND >= 2 * (STORAGE_DRAIN + STORAGE_FLUSH)


def test_a_planned_stop_ends_before_the_keeper_kills_it() -> None:
    # A keeper SIGKILLs its child KEEPER_STOP_TIMEOUT after SIGTERM. Every role's
    # graceful stop (consensus: hand leadership over, drain, flush; the front:
    # accept grace, then requests in flight) must end well inside it, or a planned
    # restart becomes a crash.
    consensus_stop = CONSENSUS_HAND_OVER + CONSENSUS_DRAIN + CONSENSUS_FLUSH + PEER_FLUSH
    assert consensus_stop < KEEPER_STOP_TIMEOUT
    assert STORAGE_DRAIN + STORAGE_FLUSH < KEEPER_STOP_TIMEOUT
    assert FRONT_ACCEPT_GRACE + FRONT_SHUTDOWN_GRACE < KEEPER_STOP_TIMEOUT


def test_supervisord_waits_longer_than_the_keepers() -> None:
    # supervisord SIGKILLs a program (a keeper) stopwaitsecs after SIGTERM; the
    # keeper must have ended its child by then, or the child outlives its keeper.
    for conf in (ROOT / "supervisor.conf", ROOT / "concordance" / "supervisor.conf"):
        parser = configparser.RawConfigParser(strict=False)
        parser.read_string(conf.read_text())
        programs = [s for s in parser.sections() if s.startswith("program:")]
        assert {p.split(":", 1)[1] for p in programs} == set(ROLES), conf
        for program in programs:
            assert parser.getint(program, "stopwaitsecs") == SUPERVISORD_STOPWAITSECS, program
    assert KEEPER_STOP_TIMEOUT < SUPERVISORD_STOPWAITSECS


def test_the_ctl_waits_for_a_new_front_as_long_as_its_keeper_does() -> None:
    # ``concordance ctl restart front`` reports failure after HAND_OVER_TIMEOUT; the
    # front keeper gives a new front FRONT_READY_TIMEOUT to serve. Shorter on the
    # ctl's side, a hand-over that then succeeds would be reported failed.
    assert HAND_OVER_TIMEOUT >= FRONT_READY_TIMEOUT


def test_the_ctl_waits_for_a_new_role_as_long_as_its_keeper_does() -> None:
    # The role keeper starts a consensus or storage successor, gives its imports
    # ROLE_READY_TIMEOUT, and only then stops the old process (up to
    # KEEPER_STOP_TIMEOUT) so the successor can take over. ``concordance ctl restart
    # ROLE`` reports failure after HAND_OVER_TIMEOUT: shorter than the keeper's
    # worst case, it would call failed a restart that then goes through.
    assert HAND_OVER_TIMEOUT >= ROLE_READY_TIMEOUT + KEEPER_STOP_TIMEOUT


def test_a_front_rides_out_a_hand_over_and_the_fastest_election_only() -> None:
    # A front asks a role answering "unavailable" (no leader known) again for
    # UNAVAILABLE_RETRY. A planned hand-over elects at once, and the first
    # follower to time out after a crash does so after the shortest election
    # timeout (election_ticks ticks; the core draws from [1x, 2x)): the retry
    # covers the first, and the second at its fastest. Longer than the longest
    # election and a node cut off from every leader would hold each client past
    # the point where 503 (API.md: safe to retry) serves it better.
    defaults = NodeConfig(node_id="n1", listen="127.0.0.1:1", data_dir="/tmp/x")
    election = defaults.tick_ms * defaults.election_ticks / 1000
    assert election < UNAVAILABLE_RETRY < 2 * election


def test_an_idle_peer_link_outlives_one_late_keepalive() -> None:
    # A link's sender wakes every PEER_KEEPALIVE / 2 and sends a keepalive once idle
    # for PEER_KEEPALIVE: an idle link carries a frame at least every 1.5 of it.
    # The other node closes a link silent for PEER_DEAD_AFTER: twice that gap, so
    # one late wake-up on a loaded peer does not cut a live link.
    assert PEER_DEAD_AFTER >= 2 * 1.5 * PEER_KEEPALIVE


def test_restart_all_restarts_every_role_once_the_front_last_in_both_ctls() -> None:
    assert sorted(ROLLING_ORDER) == sorted(ROLES) and ROLLING_ORDER[-1] == "front"
    assert server.ROLLING_ORDER is ROLLING_ORDER and remote_ctl.ROLLING_ORDER is ROLLING_ORDER


def test_no_module_defines_a_pair_member_of_its_own() -> None:
    names = "|".join(timing.__all__)
    defined = re.compile(rf"^\s*({names})\s*(:[^=]*)?=", re.M)
    found = [
        f"{path.relative_to(ROOT)}: {m.group(1)}"
        for top in ("concordance", "procs")
        for path in sorted((ROOT / top).rglob("*.py"))
        if path.name != "timing.py"
        for m in defined.finditer(path.read_text())
    ]
    assert found == []
