"""Who may touch which keys: the full, agent and scoped keys, and the key file (``--keys``).

Why it exists: one full key and one agent key that reads every tenant's
decrypted credentials cannot serve many tenants. A *scoped key* is listed in
a key file by id, with the SHA-256 of its secret (never the secret) and a
list of grants; a request outside its grants is ``403 forbidden``, and a
list, change feed or watch never shows it a key outside them.

Rules (docs/SECURITY.md):

* A grant is ``{prefix, access: "read" | "readwrite", credentials?: bool}``.
  It covers a key when the key starts with its prefix, except keys under
  ``tenant:{id}/credentials``, which it covers only with ``credentials: true``
  (the same namespace :func:`concordance.security.crypto.is_sensitive` encrypts).
* A key may read a key that one of its grants covers, and write it when that
  grant is ``readwrite``.
* A prefix request (list, changes, watch) is allowed when the prefix lies
  inside one grant's prefix and is not wholly inside a credentials namespace
  the grant leaves out; its results are then filtered key by key, so the
  credentials such a prefix spans stay hidden. A prefix delete needs one
  ``readwrite`` grant that covers everything the prefix can match.
* Scoped keys use the key-value API (``/api/v1/kv``, ``/batch``,
  ``/changes``, ``/stream``) only; cluster routes are closed to them.
* Secrets are high-entropy random tokens, so a plain SHA-256 (hex) is enough
  to keep them off the disk (no slow password hash is needed); a presented
  token is hashed once and compared to every listed hash in constant time.
* Several keys may be valid at once (rotation: add the new one, reload,
  move the clients, remove the old one, reload). The file is read at start
  (an invalid file stops the node) and again on SIGHUP (an invalid file then
  keeps the previous keys and logs why).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from concordance.config import ConfigError
from concordance.errors import Forbidden, InvalidKey
from concordance.protocol.kv_keys import tenant_of, validate_prefix
from concordance.security.crypto import is_sensitive

__all__ = [
    "AGENT",
    "FULL",
    "AccessKeyRing",
    "Grant",
    "Principal",
    "ScopedKey",
    "hash_secret",
    "parse_key_file",
]

log = logging.getLogger(__name__)

_HEX64: Final = re.compile(r"[0-9a-f]{64}\Z")
_ID: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}\Z")
_CREDENTIALS: Final = "credentials"


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of a key's secret, as the key file lists it."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _spans_credentials(prefix: str) -> bool:
    """Whether some key under ``prefix`` may be in its tenant's credentials namespace."""
    credentials = f"tenant:{tenant_of(prefix)}/{_CREDENTIALS}"
    return credentials.startswith(prefix) or is_sensitive(prefix)


@dataclass(frozen=True, slots=True)
class Grant:
    """Access to the keys under one prefix."""

    prefix: str
    write: bool = False
    credentials: bool = False

    def covers(self, key: str) -> bool:
        return key.startswith(self.prefix) and (self.credentials or not is_sensitive(key))

    def holds(self, prefix: str) -> bool:
        """Whether a prefix request lies inside this grant (results still filtered)."""
        return prefix.startswith(self.prefix) and (self.credentials or not is_sensitive(prefix))

    def holds_all(self, prefix: str) -> bool:
        """Whether every key ``prefix`` can match is covered (for a prefix delete)."""
        return prefix.startswith(self.prefix) and (
            self.credentials or not _spans_credentials(prefix)
        )


@dataclass(frozen=True, slots=True)
class Principal:
    """What the presented key may do: ``grants`` None means every key.

    ``admin``: the cluster routes (members, leader, snapshot, backup...).
    ``writer``: writes at all (False for the agent key).
    """

    name: str
    admin: bool
    writer: bool
    grants: tuple[Grant, ...] | None = None

    @property
    def scoped(self) -> bool:
        return self.grants is not None

    def may_read(self, key: str) -> bool:
        return self.grants is None or any(g.covers(key) for g in self.grants)

    def may_write(self, key: str) -> bool:
        if not self.writer:
            return False
        return self.grants is None or any(g.write and g.covers(key) for g in self.grants)

    def check_read(self, key: str) -> None:
        if not self.may_read(key):
            raise Forbidden(f"key {self.name!r} may not read {key}"[:300])

    def check_write(self, key: str) -> None:
        if not self.may_write(key):
            what = "is read-only" if self.grants is None else f"may not write {key}"
            raise Forbidden(f"key {self.name!r} {what}"[:300])

    def check_read_prefix(self, prefix: str) -> None:
        if self.grants is not None and not any(g.holds(prefix) for g in self.grants):
            raise Forbidden(f"key {self.name!r} may not read under {prefix}"[:300])

    def check_write_prefix(self, prefix: str) -> None:
        if not self.writer:
            raise Forbidden(f"key {self.name!r} is read-only")
        if self.grants is not None and not any(
            g.write and g.holds_all(prefix) for g in self.grants
        ):
            raise Forbidden(f"key {self.name!r} may not delete everything under {prefix}"[:300])

    def visible(self, items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The entries or change events this key may see (by their ``key``)."""
        if self.grants is None:
            return list(items)
        return [item for item in items if self.may_read(str(item.get("key", "")))]


FULL: Final = Principal("full", admin=True, writer=True)
AGENT: Final = Principal("agent", admin=False, writer=False)


@dataclass(frozen=True, slots=True)
class ScopedKey:
    """One entry of the key file."""

    key_id: str
    digest: bytes  # SHA-256 of the secret (32 bytes)
    principal: Principal


def _fail(path: str, message: str) -> ConfigError:
    return ConfigError(f"key file {path}: {message}")


def _grant(path: str, where: str, raw: Any) -> Grant:
    if not isinstance(raw, Mapping):
        raise _fail(path, f"{where} must be a table/object")
    unknown = set(raw) - {"prefix", "access", "credentials"}
    if unknown:
        raise _fail(path, f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
    prefix, access = raw.get("prefix"), raw.get("access")
    credentials = raw.get("credentials", False)
    if not isinstance(prefix, str):
        raise _fail(path, f"{where}.prefix must be a string")
    try:
        validate_prefix(prefix)
    except InvalidKey as e:
        raise _fail(path, f"{where}.prefix: {e.message}") from None
    if access not in ("read", "readwrite"):
        raise _fail(path, f"{where}.access must be 'read' or 'readwrite'")
    if not isinstance(credentials, bool):
        raise _fail(path, f"{where}.credentials must be true or false")
    return Grant(prefix, write=access == "readwrite", credentials=credentials)


def parse_key_file(path: str, text: str) -> tuple[ScopedKey, ...]:
    """The scoped keys of a key file's text (TOML if ``path`` ends in ``.toml``, else JSON).

    Raises:
        ConfigError: naming the file, the entry and the broken rule.
    """
    try:
        body: Any = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise _fail(path, f"not valid {'TOML' if path.endswith('.toml') else 'JSON'}: {e}") from e
    if not isinstance(body, Mapping) or set(body) - {"keys"}:
        raise _fail(path, "expected a single top-level 'keys' list")
    entries = body.get("keys", [])
    if not isinstance(entries, list):
        raise _fail(path, "'keys' must be a list")
    out: list[ScopedKey] = []
    ids: set[str] = set()
    digests: set[str] = set()
    for i, raw in enumerate(entries):
        where = f"keys[{i}]"
        if not isinstance(raw, Mapping):
            raise _fail(path, f"{where} must be a table/object")
        unknown = set(raw) - {"id", "sha256", "grants"}
        if unknown:
            raise _fail(path, f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        key_id, digest, grants = raw.get("id"), raw.get("sha256"), raw.get("grants")
        if not isinstance(key_id, str) or not _ID.match(key_id):
            raise _fail(path, f"{where}.id must be 1-64 of [A-Za-z0-9_.:-]")
        if key_id in ids:
            raise _fail(path, f"key id {key_id!r} is listed twice")
        if not isinstance(digest, str) or not _HEX64.match(digest):
            raise _fail(path, f"{where}.sha256 must be 64 lowercase hex digits (never the secret)")
        if digest in digests:
            raise _fail(path, f"{where}: the same secret hash is listed twice")
        if not isinstance(grants, list) or not grants:
            raise _fail(path, f"{where}.grants must be a non-empty list")
        parsed = tuple(_grant(path, f"{where}.grants[{j}]", g) for j, g in enumerate(grants))
        ids.add(key_id)
        digests.add(digest)
        writer = any(g.write for g in parsed)
        principal = Principal(key_id, admin=False, writer=writer, grants=parsed)
        out.append(ScopedKey(key_id, bytes.fromhex(digest), principal))
    return tuple(out)


class AccessKeyRing:
    """The scoped keys a node accepts now; :meth:`reload` swaps them atomically.

    Args:
        path: the key file (``--keys``), or None for a node without scoped keys.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.keys: tuple[ScopedKey, ...] = self._read() if path else ()

    def _read(self) -> tuple[ScopedKey, ...]:
        assert self.path is not None
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise _fail(self.path, f"cannot read it: {e}") from e
        return parse_key_file(self.path, text)

    def reload(self) -> bool:
        """Re-read the file; on error keep the current keys, log why, return False."""
        if not self.path:
            return True
        try:
            keys = self._read()
        except ConfigError as e:
            log.error("%s; keeping the %d key(s) loaded before", e, len(self.keys))
            return False
        self.keys = keys
        log.info("key file %s: %d scoped key(s) loaded", self.path, len(keys))
        return True

    def find(self, token: str) -> Principal | None:
        """The principal of the scoped key whose secret is ``token``, if any.

        Every listed hash is compared (constant time each), so the time taken
        does not say which entry matched or how far the search went.
        """
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: Principal | None = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key.principal
        return found
