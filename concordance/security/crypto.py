"""Encryption at rest for ``tenant:{id}/credentials``: the front seals, storage sees ciphertext.

Why here: the front is the only role that sees plaintext. It seals a value
before proposing it, so the Raft log, snapshots, state.db, backups and the
change log hold only ciphertext, and it opens every value it hands out (reads,
write results, change events, watch notifications).

Rules / theory of operation:

* A key is sensitive when its path, after ``tenant:{id}/``, is ``credentials``
  or starts with ``credentials/`` (:func:`is_sensitive`).
* The stored value is itself JSON text, so storage needs no special case::

      {"$concordance_enc":1,"kid":"1a2b3c4d","nonce":"<b64>","ct":"<b64>"}

  ``ct`` is AES-256-GCM over the plaintext JSON text with a fresh 96-bit
  random nonce; the key (UTF-8) is the associated data, so a ciphertext moved
  to another key does not open.
* ``kid`` names the key that sealed it. The first configured key seals; every
  configured key opens (rotation: old keys stay readable).
* No key configured: sealing raises ``EncryptionUnavailable`` (the write is
  refused, never stored in clear). A sensitive value that does not open
  (unknown kid, tampering, not an envelope at all) raises
  :class:`DecryptionFailed`, also a 503: it says nothing about the plaintext.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from concordance.errors import EncryptionUnavailable
from concordance.protocol.kv_keys import TENANT_PREFIX

__all__ = ["ENVELOPE_MARK", "Cipher", "DecryptionFailed", "is_sensitive"]

ENVELOPE_MARK: Final = "$concordance_enc"
_SENSITIVE: Final = "credentials"
_NONCE_BYTES: Final = 12
_FIELDS: Final = frozenset({ENVELOPE_MARK, "kid", "nonce", "ct"})


class DecryptionFailed(EncryptionUnavailable):
    """A stored ciphertext could not be opened (unknown key id, or it was altered)."""


def is_sensitive(key: str) -> bool:
    """Whether values under ``key`` (a key or a prefix) are encrypted at rest."""
    if not key.startswith(TENANT_PREFIX):
        return False
    _, slash, path = key.partition("/")
    if not slash or not path.startswith(_SENSITIVE):
        return False
    return len(path) == len(_SENSITIVE) or path[len(_SENSITIVE)] == "/"


class Cipher:
    """Seals and opens values of sensitive keys with the node's encryption keys.

    Args:
        keys: ``(key id, 32-byte key)`` pairs; the first seals, all open
            (``Secrets.encryption_keys``).
    """

    def __init__(self, keys: tuple[tuple[str, bytes], ...] = ()) -> None:
        for kid, key in keys:
            if len(key) != 32:
                raise ValueError(f"encryption key {kid} is not 32 bytes")
        self._current = keys[0][0] if keys else None
        self._aead = {kid: AESGCM(key) for kid, key in keys}

    @property
    def enabled(self) -> bool:
        return self._current is not None

    def seal(self, key: str, plaintext: bytes) -> bytes:
        """The stored form of ``plaintext`` (JSON text) for ``key``; unchanged if not sensitive.

        Raises:
            EncryptionUnavailable: ``key`` is sensitive and no key is configured.
        """
        if not is_sensitive(key):
            return plaintext
        if self._current is None:
            raise EncryptionUnavailable(
                "no encryption key is configured: values under credentials cannot be stored"
            )
        nonce = os.urandom(_NONCE_BYTES)
        ct = self._aead[self._current].encrypt(nonce, plaintext, key.encode("utf-8"))
        envelope = {
            ENVELOPE_MARK: 1,
            "kid": self._current,
            "nonce": base64.b64encode(nonce).decode("ascii"),
            "ct": base64.b64encode(ct).decode("ascii"),
        }
        return json.dumps(envelope, separators=(",", ":")).encode("ascii")

    def open(self, key: str, stored: bytes) -> bytes:
        """The plaintext JSON text of a stored value of ``key``.

        Values of keys that are not sensitive come back unchanged.

        Raises:
            DecryptionFailed: a sensitive key's value is not an envelope that opens
                (every write there is sealed, so anything else was altered).
        """
        if not is_sensitive(key):
            return stored
        envelope = _parse_envelope(stored)
        if envelope is None:
            raise DecryptionFailed(f"the stored value of {key} is not a sealed value")
        kid, nonce, ct = envelope
        aead = self._aead.get(kid)
        if aead is None:
            raise DecryptionFailed(f"the value of {key} was sealed with unknown key id {kid}")
        try:
            return aead.decrypt(nonce, ct, key.encode("utf-8"))
        except InvalidTag:
            raise DecryptionFailed(f"the stored value of {key} does not authenticate") from None


def _parse_envelope(stored: bytes) -> tuple[str, bytes, bytes] | None:
    try:
        obj: Any = json.loads(stored)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or obj.keys() != _FIELDS or obj[ENVELOPE_MARK] != 1:
        return None
    kid, nonce, ct = obj["kid"], obj["nonce"], obj["ct"]
    if not (isinstance(kid, str) and isinstance(nonce, str) and isinstance(ct, str)):
        return None
    try:
        return kid, base64.b64decode(nonce, validate=True), base64.b64decode(ct, validate=True)
    except (binascii.Error, ValueError):
        return None
