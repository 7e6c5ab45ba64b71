"""Encryption at rest of ``tenant:{id}/credentials``: the cipher alone, then through the front."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest

from concordance.config import Secrets
from concordance.errors import EncryptionUnavailable
from concordance.security.crypto import Cipher, DecryptionFailed, is_sensitive
from tests.unit.front.fakes import AGENT, ENC_KEY, FULL, OLD_KEY, PEER, Harness, harness

SECRET = b'{"token":"ghp_plaintext_marker"}'
CRED = "tenant:acme/credentials/github"


@pytest.mark.parametrize(
    ("key", "sensitive"),
    [
        ("tenant:acme/credentials", True),
        ("tenant:acme/credentials/github", True),
        ("tenant:acme/credentials/a/b", True),
        ("tenant:acme/credentials/", True),  # a prefix
        ("tenant:acme/credentialsx", False),
        ("tenant:acme/credential", False),
        ("tenant:acme/settings/credentials", False),
        ("tenant:acme/x", False),
        ("credentials/x", False),
    ],
)
def test_which_keys_are_sensitive(key: str, sensitive: bool) -> None:
    assert is_sensitive(key) is sensitive


def test_round_trip_and_envelope_shape() -> None:
    cipher = Cipher((ENC_KEY,))
    sealed = cipher.seal(CRED, SECRET)
    envelope = json.loads(sealed)
    assert set(envelope) == {"$concordance_enc", "kid", "nonce", "ct"}
    assert envelope["kid"] == ENC_KEY[0] and b"ghp_plaintext" not in sealed
    assert cipher.open(CRED, sealed) == SECRET
    assert cipher.seal(CRED, SECRET) != sealed  # a fresh nonce each time


def test_other_keys_pass_through_unchanged() -> None:
    cipher = Cipher((ENC_KEY,))
    assert cipher.seal("tenant:acme/x", SECRET) == SECRET
    assert cipher.open("tenant:acme/x", SECRET) == SECRET
    assert Cipher().seal("tenant:acme/x", SECRET) == SECRET


def test_rotation_old_keys_still_open() -> None:
    old = Cipher((OLD_KEY,))
    sealed_old = old.seal(CRED, SECRET)
    rotated = Cipher((ENC_KEY, OLD_KEY))
    assert rotated.open(CRED, sealed_old) == SECRET
    assert json.loads(rotated.seal(CRED, SECRET))["kid"] == ENC_KEY[0]
    with pytest.raises(DecryptionFailed):
        Cipher((ENC_KEY,)).open(CRED, sealed_old)  # the old key was dropped


def test_key_is_authenticated_data_and_tampering_is_detected() -> None:
    cipher = Cipher((ENC_KEY,))
    sealed = cipher.seal(CRED, SECRET)
    with pytest.raises(DecryptionFailed):
        cipher.open("tenant:acme/credentials/other", sealed)  # moved to another key
    envelope = json.loads(sealed)
    ct = bytearray(base64.b64decode(envelope["ct"]))
    ct[0] ^= 1
    envelope["ct"] = base64.b64encode(bytes(ct)).decode()
    with pytest.raises(DecryptionFailed):
        cipher.open(CRED, json.dumps(envelope).encode())
    for garbage in (SECRET, b"not json", b'{"$concordance_enc": 1}'):
        with pytest.raises(DecryptionFailed):
            cipher.open(CRED, garbage)


def test_no_key_refuses_to_seal() -> None:
    with pytest.raises(EncryptionUnavailable):
        Cipher().seal(CRED, SECRET)
    with pytest.raises(ValueError):
        Cipher((("short", b"x" * 16),))


def test_through_the_front_plaintext_never_reaches_storage(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            secret = {"token": "ghp_plaintext_marker"}
            status, body = await h.put(CRED, secret)
            assert status == 200 and body["value"] == secret
            ops = [{"op": "set", "key": "tenant:acme/credentials", "value": secret}]
            assert (await h.call("POST", "/api/v1/batch", json={"ops": ops}))[0] == 200
            assert all(b"ghp_plaintext" not in data for data in h.node.knobs.proposed)
            stored = h.node.sm.get(CRED, 0)
            assert stored is not None and b"ghp_plaintext" not in stored.value
            assert (await h.call("GET", f"/api/v1/kv/{CRED}"))[1]["value"] == secret
            listed = (await h.call("GET", "/api/v1/kv?prefix=tenant:acme/"))[1]["entries"]
            assert [e["value"] for e in listed] == [secret, secret]
            changes = (await h.call("GET", "/api/v1/changes?prefix=tenant:acme/"))[1]
            assert [c["value"] for c in changes["changes"]] == [secret, secret]
            status, body = await h.put(CRED, "x", ifVersion=0)
            assert status == 409 and body["error"]["current"]["value"] == secret
            h.node.sm.close()
            assert b"ghp_plaintext" not in (tmp_path / "state.db").read_bytes()
            h.node.sm = type(h.node.sm)(tmp_path / "state.db")

    asyncio.run(main())


def test_without_a_key_credentials_writes_are_503(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        status, body = await h.put(CRED, "x")
        assert (status, body["error"]["code"]) == (503, "encryption_unavailable")
        ops = [{"op": "set", "key": CRED, "value": 1}]
        status, body = await h.call("POST", "/api/v1/batch", json={"ops": ops})
        assert (status, body["error"]["code"]) == (503, "encryption_unavailable")
        assert (await h.put("tenant:acme/other", "x"))[0] == 200
        assert h.node.knobs.proposed and all(CRED.encode() not in p for p in h.node.knobs.proposed)

    async def main() -> None:
        async with harness(tmp_path, secrets=Secrets(FULL, AGENT, PEER)) as h:
            await scenario(h)

    asyncio.run(main())


def test_a_value_that_does_not_open_is_503_not_500(tmp_path: Path) -> None:
    async def main() -> None:
        async with harness(tmp_path) as h:
            await h.put(CRED, "x")
            wrong = Cipher((OLD_KEY,)).seal(CRED, b'"y"')  # sealed with a key the node lacks
            from concordance.protocol.commands import Command, Set

            h.node.apply(Command("n9", 1, 0, Set(CRED, wrong)).encode())
            await h.settle()
            status, body = await h.call("GET", f"/api/v1/kv/{CRED}")
            assert (status, body["error"]["code"]) == (503, "encryption_unavailable")
            changes = (await h.call("GET", "/api/v1/changes?prefix=tenant:acme/"))[1]
            assert [c["value"] for c in changes["changes"]] == ["x", None]

    asyncio.run(main())
