"""ConcordanceError.from_dict: the one way back from an error's dict form."""

from __future__ import annotations

from concordance import errors
from concordance.errors import ConcordanceError


def test_from_dict_inverts_to_dict() -> None:
    original = errors.VersionConflict("version mismatch", current=None, index=2)
    rebuilt = ConcordanceError.from_dict(original.to_dict())
    assert type(rebuilt) is errors.VersionConflict
    assert (rebuilt.message, rebuilt.extra) == ("version mismatch", {"current": None, "index": 2})


def test_every_code_round_trips() -> None:
    for code, cls in errors.BY_CODE.items():
        assert type(ConcordanceError.from_dict(cls("m").to_dict())) is cls, code


def test_unknown_or_missing_code_is_unavailable() -> None:
    assert type(ConcordanceError.from_dict({"code": "no_such", "message": "m"})) is (
        errors.Unavailable
    )
    assert type(ConcordanceError.from_dict({"message": "m"})) is errors.Unavailable
    assert type(ConcordanceError.from_dict({"code": 7})) is errors.Unavailable


def test_a_missing_or_non_text_message_gives_the_default() -> None:
    assert ConcordanceError.from_dict({"code": "not_found"}).message == "not found"
    assert ConcordanceError.from_dict({"code": "not_found", "message": 5}).message == "not found"
