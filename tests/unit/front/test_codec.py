"""The front's JSON codec: strict parsing and compact rendering, as ``json`` with its options."""

from __future__ import annotations

import json
from typing import Any

import pytest

from concordance.errors import InvalidRequest
from concordance.front.codec import dumps, encode_value, parse_json

VALID: list[bytes | str] = [
    b'{"value": {"theme": "dark", "n": 5}}',
    '{"value": "caf\u00e9"}',
    b"[1, 2.5, -3e2, true, false, null]",
    '{"value": "\\ud800"}',  # a lone surrogate parses; storing it is refused later
    '{"value": "é"}'.encode("utf-16"),  # json.loads detects UTF-16/32 in bytes
    b'\xef\xbb\xbf{"value": 1}',  # a UTF-8 BOM in bytes is skipped, as json.loads does
]
INVALID: list[bytes | str] = [
    b"",
    b"{",
    b'{"value": NaN}',
    b'{"value": -Infinity}',
    b'{"value": "\xff"}',  # not UTF-8
    '\ufeff{"value": 1}',  # a BOM in text is refused, as json.loads does
    b"[" * 100_000 + b"]" * 100_000,  # deeper than the parser allows
]


@pytest.mark.parametrize("raw", VALID)
def test_valid_request_json_parses_as_json_loads_does(raw: bytes | str) -> None:
    assert parse_json(raw) == json.loads(raw)


@pytest.mark.parametrize("raw", INVALID)
def test_invalid_request_json_is_invalid_request(raw: bytes | str) -> None:
    with pytest.raises(InvalidRequest):
        parse_json(raw)


@pytest.mark.parametrize(
    "value", [{"theme": "dark", "n": 5}, "café", [1, 2.5, None], 10**30, {"a": {"b": [True]}}]
)
def test_values_and_responses_are_compact_and_not_ascii_escaped(value: Any) -> None:
    compact = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    assert encode_value(value) == compact.encode("utf-8")
    assert dumps({"entry": value}) == json.dumps(
        {"entry": value}, ensure_ascii=False, separators=(",", ":")
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "\ud800"])
def test_a_value_json_cannot_carry_is_invalid_request(value: Any) -> None:
    with pytest.raises(InvalidRequest):
        encode_value(value)


def test_a_response_with_a_lone_surrogate_is_escaped_not_broken() -> None:
    text = dumps({"message": "bad key \ud800"})
    text.encode("utf-8")  # encodable
    assert json.loads(text) == {"message": "bad key \ud800"}
