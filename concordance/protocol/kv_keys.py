"""Key and prefix validation (API.md §2): one place decides what a key is.

The front validates every key and prefix it receives; storage re-checks keys
when it decodes a command. Valid input takes one regex match; the slower
step-by-step diagnosis runs only to word the error message.

Rules (API.md §2):

* key: ``tenant:{tenantId}/{path}``; tenantId matches ``[A-Za-z0-9_.-]{1,64}``;
  path is non-empty; at most 1024 bytes of UTF-8 for the whole key; no empty
  segment (``//`` or a trailing ``/``); no segment ``.`` or ``..``; no control
  character (U+0000-U+001F, U+007F).
* prefix: ``tenant:{tenantId}/`` optionally followed by more path. Every
  segment followed by ``/`` is a whole segment and obeys the key rules; the
  part after the last ``/`` is the start of a segment, so it may be empty or
  look like ``.`` (it can still match ``.profile``). ``tenant:x`` is invalid.
"""

from __future__ import annotations

import re

from concordance.errors import InvalidKey

__all__ = ["MAX_KEY_BYTES", "TENANT_PREFIX", "tenant_of", "validate_key", "validate_prefix"]

TENANT_PREFIX = "tenant:"
MAX_KEY_BYTES = 1024

_TENANT = r"[A-Za-z0-9_.-]{1,64}"
_CHARS = r"[^/\x00-\x1f\x7f]"
_SEGMENT = rf"(?!\.\.?(?:/|\Z)){_CHARS}+"
_KEY_RE = re.compile(rf"tenant:{_TENANT}/{_SEGMENT}(?:/{_SEGMENT})*\Z")
_PREFIX_RE = re.compile(rf"tenant:{_TENANT}/(?:{_SEGMENT}/)*{_CHARS}*\Z")
_TENANT_RE = re.compile(rf"{_TENANT}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid key.

    Raises:
        InvalidKey: with a message that names the broken rule.
    """
    if isinstance(key, str) and _KEY_RE.match(key) and _utf8_len(key) <= MAX_KEY_BYTES:
        return key
    raise InvalidKey(_diagnose(key, is_prefix=False))


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` unchanged if it is a valid tenant-scoped prefix.

    Raises:
        InvalidKey: with a message that names the broken rule.
    """
    if isinstance(prefix, str) and _PREFIX_RE.match(prefix) and _utf8_len(prefix) <= MAX_KEY_BYTES:
        return prefix
    raise InvalidKey(_diagnose(prefix, is_prefix=True))


def tenant_of(key: str) -> str:
    """The tenantId of a key or prefix (``tenant:acme/x`` -> ``acme``).

    Raises:
        InvalidKey: if ``key`` does not start with ``tenant:{tenantId}/``.
    """
    if isinstance(key, str) and key.startswith(TENANT_PREFIX):
        tenant, slash, _ = key[len(TENANT_PREFIX) :].partition("/")
        if slash and _TENANT_RE.match(tenant):
            return tenant
    raise InvalidKey(f"not tenant-scoped: {key!r}"[:200])


def _utf8_len(text: str) -> int:
    if text.isascii():
        return len(text)
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates cannot be stored
        return MAX_KEY_BYTES + 1


def _diagnose(text: object, *, is_prefix: bool) -> str:
    """Explain why ``text`` was rejected (only called on the failure path)."""
    what = "prefix" if is_prefix else "key"
    if not isinstance(text, str):
        return f"{what} must be a string"
    shown = repr(text) if len(text) <= 80 else repr(text[:80]) + "..."
    if not text.startswith(TENANT_PREFIX):
        return f"{what} must start with 'tenant:{{tenantId}}/': {shown}"
    tenant, slash, path = text[len(TENANT_PREFIX) :].partition("/")
    if not _TENANT_RE.match(tenant):
        return f"tenantId must match [A-Za-z0-9_.-]{{1,64}}: {shown}"
    if not slash:
        return f"{what} needs a '/' after the tenantId: {shown}"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{what} is not valid UTF-8 (lone surrogate): {shown}"
    if size > MAX_KEY_BYTES:
        return f"{what} is {size} bytes of UTF-8, more than {MAX_KEY_BYTES}"
    if _CONTROL_RE.search(text):
        return f"{what} contains a control character: {shown}"
    if not is_prefix and not path:
        return f"key has an empty path: {shown}"
    segments = path.split("/")
    whole = segments[:-1] if is_prefix else segments
    for segment in whole:
        if not segment:
            return f"{what} has an empty segment ('//' or a trailing '/'): {shown}"
        if segment in (".", ".."):
            return f"{what} has a '{segment}' segment: {shown}"
    return f"invalid {what}: {shown}"
