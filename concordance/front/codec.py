"""JSON in and out of the front: strict request parsing, canonical value text, API rendering.

Why one module: values cross three representations (the client's JSON, the
canonical JSON text that is proposed and stored, possibly sealed by
``concordance.security.crypto``, and the decoded value in responses), and every path
(HTTP, WebSocket, watch events, write results) must convert them the same way.

Rules:

* Request JSON is parsed strictly: ``NaN``/``Infinity``, numbers that
  overflow to infinity, invalid UTF-8, lone surrogates and nesting deeper
  than the parser allows are ``400 invalid_request``, never a 500.
* A value's canonical text is compact UTF-8 JSON (no ASCII escaping); its
  length is what the size limit measures (API.md §2).
* Values from storage are JSON text bytes; sensitive keys are opened with the
  node's :class:`~concordance.security.crypto.Cipher` before decoding.
* Storage sends typed records (``concordance.protocol.payloads``); this module alone
  gives them the API's field names and order.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any, ClassVar

from concordance.errors import InvalidRequest
from concordance.protocol.payloads import (
    BatchDone,
    Change,
    Deleted,
    Entry,
    Expired,
    PrefixDeleted,
    WriteResult,
)
from concordance.security.crypto import Cipher, DecryptionFailed

__all__ = ["Renderer", "dumps", "encode_value", "parse_json"]

log = logging.getLogger(__name__)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# Built once: ``json.loads``/``json.dumps`` with any keyword build a new decoder or
# encoder per call, which cost more than parsing or rendering a small body (two
# to four microseconds of the front's CPU per write, docs/PERFORMANCE.md).
_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_VALUE_TEXT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_RESPONSE_TEXT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_RESPONSE_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def parse_json(raw: bytes | str) -> Any:
    """Parse request JSON (bytes in any encoding ``json.loads`` detects, as it does).

    Raises:
        InvalidRequest: not valid JSON text.
    """
    try:
        if isinstance(raw, str):
            if raw.startswith("\ufeff"):
                raise ValueError("Unexpected UTF-8 BOM (decode using utf-8-sig)")
            text = raw
        else:
            text = raw.decode(json.detect_encoding(raw), "surrogatepass")
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise InvalidRequest(f"body is not valid JSON: {_short(e)}") from None


def encode_value(value: Any) -> bytes:
    """The canonical JSON text of a value, as proposed and stored.

    Raises:
        InvalidRequest: the value cannot be represented (infinite numbers,
            lone surrogates, too deep).
    """
    try:
        return _VALUE_TEXT(value).encode("utf-8")
    except (ValueError, RecursionError, TypeError) as e:
        raise InvalidRequest(f"value cannot be stored as JSON: {_short(e)}") from None


def dumps(obj: Any) -> str:
    """Response JSON (compact), always encodable as UTF-8.

    A lone surrogate (``"\\ud800"`` in a request, echoed in an error message)
    cannot be encoded: sent raw it killed a ``/stream`` connection's writer and
    left the connection silent (found by the ``/stream`` fuzzer). Such a text
    is rendered with ``\\u`` escapes instead; the check runs on non-ASCII
    text only.
    """
    text = _RESPONSE_TEXT(obj)
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return _RESPONSE_ASCII(obj)
    return text


def _short(e: BaseException) -> str:
    return str(e)[:120]


class Renderer:
    """Turns storage's typed records (values as stored JSON text) into the API's JSON shapes.

    The one place that knows the API's field names for what storage sends
    (PROTOCOL.md §3.7): each record kind has its own method, so nothing is
    guessed from which keys are present.
    """

    def __init__(self, cipher: Cipher) -> None:
        self.cipher = cipher

    def value(self, key: str, stored: bytes) -> Any:
        """The decoded value of ``key`` from its stored text.

        Raises:
            DecryptionFailed: a sensitive value that does not open.
        """
        return json.loads(self.cipher.open(key, stored))

    def entry(self, entry: Entry | None) -> dict[str, Any] | None:
        """An API entry (API.md §2), or None."""
        if entry is None:
            return None
        return {
            "key": entry.key,
            "value": self.value(entry.key, entry.value),
            "version": entry.version,
            "revision": entry.revision,
            "createdAt": entry.created_at,
            "updatedAt": entry.updated_at,
            "expiresAt": entry.expires_at,
        }

    def event(self, event: Change) -> dict[str, Any]:
        """An API change event (API.md §3.2). A value that does not open becomes null
        (logged): a notification stream must not stop or skip because of one value."""
        if event.type != "set":
            return {
                "type": event.type,
                "key": event.key,
                "version": event.version,
                "revision": event.revision,
                "timestamp": event.timestamp,
            }
        try:
            value = self.value(event.key, event.value or b"")
        except (DecryptionFailed, ValueError) as e:
            log.error("change event of %s at revision %s: %s", event.key, event.revision, e)
            value = None
        return {
            "type": "set",
            "key": event.key,
            "value": value,
            "version": event.version,
            "revision": event.revision,
            "timestamp": event.timestamp,
        }

    def result(self, result: WriteResult) -> dict[str, Any]:
        """A write's API result (API.md §3, §3.1), by the record's kind."""
        render = self._RESULTS.get(type(result))
        if render is None:
            raise TypeError(f"not a write result: {type(result).__name__}")
        return render(self, result)

    def _entry(self, entry: Entry) -> dict[str, Any]:
        out = self.entry(entry)
        assert out is not None
        return out

    def result_text(self, result: WriteResult) -> str:
        """``dumps(self.result(result))``, with each entry's value spliced in as its
        stored text instead of decoded and encoded again.

        Why: a batch of 128 sets of 1 KiB values answers with every entry, value
        included; decoding the 128 values and encoding them again was a fifth of
        the front's work per batch. A stored value is the canonical text
        :func:`encode_value` made (compact UTF-8 JSON, opened here if sealed), so
        it is valid JSON text as it stands; the output parses to the same object.
        """
        if isinstance(result, BatchDone):
            items = ",".join("null" if i is None else self._item_text(i) for i in result.results)
            text = f'{{"results":[{items}],"revision":{int(result.revision)}}}'
        else:
            text = self._item_text(result)
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:  # as dumps: \u escapes rather than unencodable text
                return dumps(self.result(result))
        return text

    def _item_text(self, item: WriteResult) -> str:
        if not isinstance(item, Entry):
            return dumps(self.result(item))
        value = self.cipher.open(item.key, item.value).decode("utf-8")
        expires = item.expires_at
        return (
            f'{{"key":{encode_basestring(item.key)},"value":{value},'
            f'"version":{int(item.version)},"revision":{int(item.revision)},'
            f'"createdAt":{int(item.created_at)},"updatedAt":{int(item.updated_at)},'
            f'"expiresAt":{"null" if expires is None else int(expires)}}}'
        )

    def _deleted(self, d: Deleted) -> dict[str, Any]:
        return {"key": d.key, "deleted": True, "version": d.version, "revision": d.revision}

    def _expired(self, e: Expired) -> dict[str, Any]:
        return {"key": e.key, "expired": True, "version": e.version, "revision": e.revision}

    def _prefix_deleted(self, p: PrefixDeleted) -> dict[str, Any]:
        return {"deleted": p.deleted, "revision": p.revision}

    def _batch(self, b: BatchDone) -> dict[str, Any]:
        items = [None if item is None else self.result(item) for item in b.results]
        return {"results": items, "revision": b.revision}

    _RESULTS: ClassVar[dict[type, Callable[[Renderer, Any], dict[str, Any]]]] = {
        Entry: _entry,
        Deleted: _deleted,
        Expired: _expired,
        PrefixDeleted: _prefix_deleted,
        BatchDone: _batch,
    }
