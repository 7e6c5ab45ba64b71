"""A batch's answer is rendered with each entry's stored value text spliced in, not decoded
and encoded again; it parses to exactly what the decoding renderer gives."""

from __future__ import annotations

import json
from typing import Any

from concordance.front.codec import Renderer, encode_value
from concordance.protocol.payloads import BatchDone, Deleted, Entry
from concordance.security.crypto import Cipher
from tests.unit.front.fakes import ENC_KEY

CRED = "tenant:acme/credentials/github"


def entry(key: str, value: bytes, version: int = 1, expires: int | None = None) -> Entry:
    return Entry(key, value, version, 7, 1_000, 2_000, expires)


def test_the_text_parses_to_the_decoded_rendering() -> None:
    cipher = Cipher((ENC_KEY,))
    values = [{"a": [1, 2.5, None]}, "é ü 中文 \u2028", 0, True, None, "x" * 1000]
    results: list[Any] = [
        entry(f"tenant:acme/k{i}", encode_value(v), version=i + 1) for i, v in enumerate(values)
    ]
    results.append(entry(CRED, cipher.seal(CRED, encode_value({"token": "t"})), expires=9_000))
    results.append(entry("tenant:acmé/ключ", encode_value([])))
    results.append(Deleted("tenant:acme/gone", 3, 7))
    results.append(None)  # a check of an absent key
    batch = BatchDone(tuple(results), 7)
    renderer = Renderer(cipher)
    text = renderer.result_text(batch)
    assert json.loads(text) == renderer.result(batch)
    assert json.loads(renderer.result_text(results[0])) == renderer.result(results[0])
    assert "ghp" not in text and '"token":"t"' in text  # the sealed value opened


def test_the_stored_text_is_spliced_as_it_is() -> None:
    stored = b'{"b": 1,  "a": [1, 2]}'  # not how the encoder would write it again
    text = Renderer(Cipher()).result_text(BatchDone((entry("tenant:acme/x", stored),), 7))
    assert '"value":{"b": 1,  "a": [1, 2]}' in text
    assert json.loads(text)["results"][0]["value"] == {"b": 1, "a": [1, 2]}
