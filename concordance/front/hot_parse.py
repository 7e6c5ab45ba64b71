"""Reading one request of the key-value hot routes from a connection's bytes (sans-I/O).

Why: most of the leader front's CPU per write was aiohttp's per-request
machinery (docs/PERFORMANCE.md, "The hot routes without aiohttp"). ``hot_path``
serves the routes that carry nearly all traffic (``GET``, ``PUT`` and
``DELETE /api/v1/kv/{key}``, ``POST /api/v1/batch``) itself, and hands
everything else to aiohttp.

The rule that keeps the two paths answering alike: this parser accepts only
a conservative subset of HTTP/1.1 that it reads exactly as aiohttp does, and
says :data:`TO_AIOHTTP` for anything else, however valid: another route or
method, HTTP/1.0, a percent-encoded or dot-segment path, a chunked body,
``Expect``, ``Upgrade``, a body over the limit, an oversized head, bytes
outside printable ASCII, a bare LF. aiohttp then answers that request (and
every later one on the connection) as it always has, errors included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from multidict import MultiDict

__all__ = ["BATCH", "KEY", "MAX_HEAD", "TO_AIOHTTP", "Head", "ToAiohttp", "parse_head"]

MAX_HEAD: Final = 8190  # aiohttp's line limit: a longer head is its to judge
PREFIX: Final = "/api/v1/kv/"
METHODS: Final = frozenset({"GET", "PUT", "DELETE"})

# Characters a key or query may hold here: those no URL parser decodes or
# normalizes (no "%", "+", ";", "#", "?" in a key). Others go to aiohttp.
_SAFE: Final = r"A-Za-z0-9\-._~:@!$*,=()'"
_REQUEST_LINE: Final = re.compile(
    rf"(GET|PUT|DELETE) /api/v1/kv/([{_SAFE}/]+)(?:\?([{_SAFE}&/]*))? HTTP/1\.1".encode()
)
KEY: Final = "kv_key"
_WITH_BODY: Final = frozenset({"PUT", "POST"})
_BATCH_LINE: Final = b"POST /api/v1/batch HTTP/1.1"
BATCH: Final = "batch"  # Head.route (aiohttp's route names)
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_NOT_PRINTABLE: Final = re.compile(rb"[^\t\r\n\x20-\x7e]")
_DIGITS: Final = re.compile(rb"[0-9]{1,19}")
# The headers read here; of the rest, only the name is checked (aiohttp ignores them too)
_READ_HEADERS: Final = frozenset(
    {
        b"content-length",
        b"authorization",
        b"connection",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)


class ToAiohttp:
    """The request is not the hot path's: aiohttp reads it, from its first byte."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TO_AIOHTTP"


TO_AIOHTTP: Final = ToAiohttp()


@dataclass(frozen=True, slots=True)
class Head:
    """A complete hot request's head; its body is ``buf[body_start:end]``."""

    route: str  # KEY or BATCH, the name of aiohttp's route
    method: str
    key: str  # as aiohttp's ``match_info["key"]`` would give it ("" for a batch)
    query: MultiDict[str]
    authorization: str  # the first Authorization header's value ("" without one)
    close: bool  # ``Connection: close``
    body_start: int
    end: int


def parse_head(buf: bytes | bytearray, max_body: int) -> Head | ToAiohttp | None:
    """The first request in ``buf``: its head, ``TO_AIOHTTP``, or None (need more bytes,
    the head or the body is incomplete)."""
    cut = buf.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if cut < 0:
        if len(buf) >= MAX_HEAD + 4 or buf.count(b"\n") != buf.count(b"\r\n"):
            return TO_AIOHTTP  # too long, or lines not ended by CRLF
        return None
    raw = bytes(buf[:cut])
    crlf = raw.count(b"\r\n")
    if _NOT_PRINTABLE.search(raw) or raw.count(b"\r") != crlf or raw.count(b"\n") != crlf:
        return TO_AIOHTTP  # a byte aiohttp may read otherwise, or a lone CR or LF
    lines = raw.split(b"\r\n")
    if lines[0] == _BATCH_LINE:
        route, method, key, query_b = BATCH, "POST", "", b""
    else:
        request = _REQUEST_LINE.fullmatch(lines[0])
        if request is None:
            return TO_AIOHTTP
        method_b, key_b, query_b = request.groups()
        route, method, key = KEY, method_b.decode("ascii"), key_b.decode("ascii")
        segments = key.split("/")
        if "" in segments[1:] or "." in segments or ".." in segments:
            return TO_AIOHTTP  # empty or dot segments: URL normalization is aiohttp's
    length: int | None = None
    authorization: str | None = None
    close = False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return TO_AIOHTTP  # folded, no colon, space before the colon
        name = name.lower()
        if name in _READ_HEADERS:
            value = value.strip(b" \t")
            if name == b"content-length":
                if length is not None or not _DIGITS.fullmatch(value):
                    return TO_AIOHTTP
                length = int(value)
            elif name == b"authorization":
                if authorization is None:
                    authorization = value.decode("ascii")
            elif name == b"connection":
                option = value.lower()
                if option == b"close":
                    close = True
                elif option != b"keep-alive":
                    return TO_AIOHTTP
            else:
                return TO_AIOHTTP  # transfer-encoding, upgrade, expect
    length = length or 0
    if length > max_body or (length and method not in _WITH_BODY):
        return TO_AIOHTTP
    body_start = cut + 4
    if len(buf) < body_start + length:
        return None
    query = _query(query_b.decode("ascii")) if query_b else MultiDict[str]()
    end = body_start + length
    return Head(route, method, key, query, authorization or "", close, body_start, end)


def _query(text: str) -> MultiDict[str]:
    pairs: list[tuple[str, str]] = []
    for part in text.split("&"):
        if part:
            name, _, value = part.partition("=")
            pairs.append((name, value))
    return MultiDict(pairs)
