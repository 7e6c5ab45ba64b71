"""The typed storage payloads: an FSM error as a record and back, and what a record may carry."""

from __future__ import annotations

import pytest

from concordance import errors
from concordance.protocol import wire
from concordance.protocol.payloads import TAGS, Entry, Outcome, Rejected

E = Entry("tenant:a/k", b"1", 2, 7, 1, 2, None)


def test_a_conflict_keeps_current_then_index_in_the_apis_order() -> None:
    error = errors.VersionConflict("k is at 2", current=E, index=1)
    back = Rejected.of(error).to_exception()
    assert isinstance(back, errors.VersionConflict) and back.message == "k is at 2"
    assert list(back.extra.items()) == [("current", E), ("index", 1)]


def test_a_conflict_on_an_absent_key_still_says_current_none() -> None:
    back = Rejected.of(errors.VersionConflict("absent", current=None)).to_exception()
    assert back.extra == {"current": None}


def test_not_found_carries_no_current() -> None:
    back = Rejected.of(errors.NotFound("gone", index=3)).to_exception()
    assert isinstance(back, errors.NotFound) and back.extra == {"index": 3}
    assert Rejected.of(errors.InvalidRequest("bad")).to_exception().extra == {}


@pytest.mark.parametrize(
    "error",
    [
        errors.Compacted("old", oldest=4),  # a field no record holds
        errors.VersionConflict("no current"),  # a conflict must say what it saw
        errors.NotFound("x", current=None),  # only a conflict carries current
    ],
)
def test_an_error_the_record_cannot_carry_is_a_local_bug(error: errors.ConcordanceError) -> None:
    with pytest.raises(TypeError):
        Rejected.of(error)


def test_tags_are_unique_and_every_record_round_trips() -> None:
    assert len(set(TAGS.values())) == len(TAGS)
    body = wire.Results("n1", (Outcome(1, Rejected("version_conflict", "m", E, 0)),))
    env = wire.Envelope("results", 9, body)
    assert wire.decode_envelope(wire.encode_envelope(env)) == env
