"""Key and prefix validation against every rule of API.md §2."""

from __future__ import annotations

import pytest

from concordance.errors import InvalidKey
from concordance.protocol.kv_keys import MAX_KEY_BYTES, tenant_of, validate_key, validate_prefix

HEAD = "tenant:a/"

VALID_KEYS = [
    "tenant:acme/settings",
    "tenant:acme/user:u1/preferences/theme",
    "tenant:A-Z_0.9/x",
    "tenant:" + "t" * 64 + "/x",
    "tenant:./x",  # the tenantId pattern admits dots
    "tenant:../x",
    "tenant:acme/...",  # three dots is an ordinary segment
    "tenant:acme/.hidden/a./b..",
    "tenant:acme/ü/日本語/🎉",
    "tenant:acme/with space/a:b@c?d#e%20",
    "tenant:acme/\u0080\u00a0\u2028",  # only C0 controls and DEL are banned
    HEAD + "x" * (MAX_KEY_BYTES - len(HEAD)),  # exactly 1024 bytes
    HEAD + "é" * 507 + "x",  # 9 + 1014 + 1 = 1024 bytes, 517 characters
    HEAD + "😀" * 253 + "xxx",  # 9 + 1012 + 3 = 1024 bytes
]

INVALID_KEYS = [
    ("", "start with"),
    ("tenant:", "tenantId"),
    ("tenant:acme", "needs a '/'"),
    ("tenant:acme/", "empty path"),
    ("tenant:/x", "tenantId"),
    ("tenant:" + "t" * 65 + "/x", "tenantId"),
    ("tenant:ac me/x", "tenantId"),
    ("tenant:acme!/x", "tenantId"),
    ("tenant:acmé/x", "tenantId"),
    ("tenant:*/x", "tenantId"),
    ("Tenant:acme/x", "start with"),
    ("tenants:acme/x", "start with"),
    (" tenant:acme/x", "start with"),
    ("acme/x", "start with"),
    ("tenant:acme//x", "empty segment"),
    ("tenant:acme/x/", "empty segment"),
    ("tenant:acme/x//y", "empty segment"),
    ("tenant:acme/./x", "'.' segment"),
    ("tenant:acme/x/..", "'..' segment"),
    ("tenant:acme/.", "'.' segment"),
    ("tenant:acme/..", "'..' segment"),
    ("tenant:acme/a/../b", "'..' segment"),
    ("tenant:acme/a\x00b", "control"),
    ("tenant:acme/a\x1fb", "control"),
    ("tenant:acme/a\x7fb", "control"),
    ("tenant:acme/a\tb", "control"),
    ("tenant:acme/x\n", "control"),
    ("tenant:acme/x\r", "control"),
    (HEAD + "x" * (MAX_KEY_BYTES - len(HEAD) + 1), "1025 bytes"),
    (HEAD + "é" * 508, "1025 bytes"),  # only 517 characters, but 1025 bytes
    ("tenant:acme/\ud800", "surrogate"),
]


@pytest.mark.parametrize("key", VALID_KEYS)
def test_valid_keys_are_returned_unchanged(key: str) -> None:
    assert validate_key(key) is key


@pytest.mark.parametrize(("key", "reason"), INVALID_KEYS)
def test_invalid_keys_raise_invalid_key_naming_the_rule(key: str, reason: str) -> None:
    with pytest.raises(InvalidKey) as info:
        validate_key(key)
    assert reason in info.value.message
    assert info.value.code == "invalid_key"
    assert info.value.http_status == 400


@pytest.mark.parametrize("value", [None, b"tenant:a/x", 5, ["tenant:a/x"]])
def test_non_strings_are_invalid(value: object) -> None:
    with pytest.raises(InvalidKey, match="string"):
        validate_key(value)  # type: ignore[arg-type]
    with pytest.raises(InvalidKey, match="string"):
        validate_prefix(value)  # type: ignore[arg-type]


def test_error_message_is_bounded_for_huge_input() -> None:
    with pytest.raises(InvalidKey) as info:
        validate_key("tenant:a/" + "x" * 100_000 + "\x00")
    assert len(info.value.message) < 300


VALID_PREFIXES = [
    "tenant:acme/",
    "tenant:acme/settings",
    "tenant:acme/settings/",
    "tenant:acme/user:u1/pre",  # a partial segment matches user:u1/preferences
    "tenant:acme/a/.",  # the start of ".hidden"
    "tenant:acme/..",  # the start of "..x"
    "tenant:acme/ü",
    "tenant:" + "t" * 64 + "/",
    HEAD + "x" * (MAX_KEY_BYTES - len(HEAD)),
]

INVALID_PREFIXES = [
    ("", "start with"),
    ("tenant:", "tenantId"),
    ("tenant:acme", "needs a '/'"),  # API.md: tenant:{id} without the slash
    ("tenant:/", "tenantId"),
    ("tenant:*/", "tenantId"),
    ("tenant:" + "t" * 65 + "/", "tenantId"),
    ("acme/", "start with"),
    ("tenant:acme//", "empty segment"),
    ("tenant:acme/a//", "empty segment"),
    ("tenant:acme/a//b", "empty segment"),
    ("tenant:acme/./", "'.' segment"),
    ("tenant:acme/../x", "'..' segment"),
    ("tenant:acme/a\x00", "control"),
    ("tenant:acme/\x7f", "control"),
    ("tenant:acme/\ud800", "surrogate"),
    (HEAD + "x" * (MAX_KEY_BYTES - len(HEAD) + 1), "1025 bytes"),
]


@pytest.mark.parametrize("prefix", VALID_PREFIXES)
def test_valid_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) is prefix


@pytest.mark.parametrize(("prefix", "reason"), INVALID_PREFIXES)
def test_invalid_prefixes(prefix: str, reason: str) -> None:
    with pytest.raises(InvalidKey) as info:
        validate_prefix(prefix)
    assert reason in info.value.message


@pytest.mark.parametrize("key", VALID_KEYS)
def test_every_valid_key_is_a_valid_prefix_of_itself(key: str) -> None:
    assert validate_prefix(key) is key


@pytest.mark.parametrize(
    ("text", "tenant"),
    [
        ("tenant:acme/x", "acme"),
        ("tenant:acme/", "acme"),
        ("tenant:a.b-c_d/x/y", "a.b-c_d"),
        ("tenant:acme/x:tenant:other/y", "acme"),
    ],
)
def test_tenant_of(text: str, tenant: str) -> None:
    assert tenant_of(text) == tenant


@pytest.mark.parametrize("text", ["tenant:acme", "tenant:/x", "acme/x", "tenant:a b/x", ""])
def test_tenant_of_rejects_unscoped_text(text: str) -> None:
    with pytest.raises(InvalidKey):
        tenant_of(text)
