"""Scoped keys: the key file's rules, what a grant covers, the credentials exception."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from concordance.config import ConfigError
from concordance.errors import Forbidden
from concordance.security.access import AGENT, FULL, AccessKeyRing, hash_secret, parse_key_file

ACME = hash_secret("acme-secret")
OPS = hash_secret("ops-secret")


def key_file(*keys: dict[str, object]) -> str:
    return json.dumps({"keys": list(keys)})


def acme(**grant: object) -> dict[str, object]:
    return {"id": "acme", "sha256": ACME, "grants": [{"prefix": "tenant:acme/", **grant}]}


def principal(text: str, path: str = "keys.json"):  # type: ignore[no-untyped-def]
    (key,) = parse_key_file(path, text)
    return key.principal


def test_a_read_grant_reads_its_prefix_and_nothing_else() -> None:
    p = principal(key_file(acme(access="read")))
    assert p.may_read("tenant:acme/settings/theme")
    assert not p.may_read("tenant:acmex/settings/theme")
    assert not p.may_read("tenant:other/settings/theme")
    assert not p.may_write("tenant:acme/settings/theme")
    assert not p.writer and not p.admin and p.scoped
    with pytest.raises(Forbidden):
        p.check_write("tenant:acme/settings/theme")


def test_credentials_need_an_explicit_grant() -> None:
    p = principal(key_file(acme(access="readwrite")))
    for key in ("tenant:acme/credentials", "tenant:acme/credentials/github"):
        assert not p.may_read(key) and not p.may_write(key)
    assert p.may_read("tenant:acme/credentialsfoo")  # not the credentials namespace
    with pytest.raises(Forbidden):
        p.check_read_prefix("tenant:acme/credentials/")
    p.check_read_prefix("tenant:acme/")  # allowed, but filtered:
    shown = p.visible([{"key": "tenant:acme/a"}, {"key": "tenant:acme/credentials/gh"}])
    assert shown == [{"key": "tenant:acme/a"}]
    # a prefix delete that would reach the credentials is refused
    for prefix in ("tenant:acme/", "tenant:acme/cred", "tenant:acme/credentials/"):
        with pytest.raises(Forbidden):
            p.check_write_prefix(prefix)
    p.check_write_prefix("tenant:acme/settings/")

    c = principal(key_file(acme(access="readwrite", credentials=True)))
    assert c.may_write("tenant:acme/credentials/github")
    c.check_write_prefix("tenant:acme/")


def test_a_narrow_grant_refuses_a_wider_prefix() -> None:
    text = key_file(
        {
            "id": "s",
            "sha256": ACME,
            "grants": [{"prefix": "tenant:acme/settings/", "access": "read"}],
        }
    )
    p = principal(text)
    p.check_read_prefix("tenant:acme/settings/ui/")
    with pytest.raises(Forbidden):
        p.check_read_prefix("tenant:acme/")


def test_full_and_agent() -> None:
    assert FULL.may_write("tenant:a/credentials") and FULL.admin
    assert AGENT.may_read("tenant:a/credentials") and not AGENT.may_write("tenant:a/x")
    items = [{"key": "tenant:a/x"}]
    assert FULL.visible(items) == items


def test_toml_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(
        f"""
[[keys]]
id = "acme"
sha256 = "{ACME}"
[[keys.grants]]
prefix = "tenant:acme/"
access = "readwrite"
credentials = true

[[keys]]
id = "ops"
sha256 = "{OPS}"
[[keys.grants]]
prefix = "tenant:ops/"
access = "read"
"""
    )
    ring = AccessKeyRing(str(path))
    found = ring.find("acme-secret")
    assert found is not None and found.name == "acme"
    assert found.may_write("tenant:acme/credentials/x")
    ops = ring.find("ops-secret")
    assert ops is not None and not ops.writer
    assert ring.find("nope") is None and ring.find("") is None


def test_reload_keeps_the_old_keys_when_the_new_file_is_bad(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(key_file(acme(access="read")))
    ring = AccessKeyRing(str(path))
    path.write_text("{not json")
    assert ring.reload() is False
    assert ring.find("acme-secret") is not None
    # rotation: two keys valid at once, then the old one removed
    new = {**acme(access="read"), "id": "acme-2", "sha256": hash_secret("acme-new")}
    path.write_text(key_file(acme(access="read"), new))
    assert ring.reload() and ring.find("acme-new") is not None
    path.write_text(key_file(new))
    assert ring.reload() and ring.find("acme-secret") is None


BAD_FILES = [
    ("[]", "top-level 'keys'"),
    ('{"keys": {}}', "must be a list"),
    ('{"keys": [], "other": 1}', "top-level"),
    (key_file({"id": "a", "sha256": "acme-secret", "grants": []}), "never the secret"),
    (key_file({"id": "a", "sha256": ACME.upper(), "grants": []}), "lowercase hex"),
    (key_file({"id": "a", "sha256": ACME, "grants": []}), "non-empty"),
    (key_file({"id": "a b", "sha256": ACME, "grants": [{}]}), "id must"),
    (key_file({**acme(access="read"), "secret": "x"}), "unknown field"),
    (key_file(acme(access="write")), "'read' or 'readwrite'"),
    (key_file(acme(access="read", credentials="yes")), "true or false"),
    (key_file(acme(access="read", extra=1)), "unknown field"),
    (
        key_file(
            {"id": "a", "sha256": ACME, "grants": [{"prefix": "tenant:acme", "access": "read"}]}
        ),
        "prefix",
    ),
    (key_file({"id": "a", "sha256": ACME, "grants": [{"prefix": "", "access": "read"}]}), "prefix"),
    (key_file(acme(access="read"), acme(access="read")), "listed twice"),
    (key_file(acme(access="read"), {**acme(access="read"), "id": "b"}), "listed twice"),
]


@pytest.mark.parametrize(("text", "why"), BAD_FILES)
def test_a_bad_key_file_is_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(ConfigError, match=r"key file keys\.json") as err:
        parse_key_file("keys.json", text)
    assert why in str(err.value)


def test_an_unreadable_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        AccessKeyRing(str(tmp_path / "missing.json"))
