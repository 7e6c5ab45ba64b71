"""The peer-link protocol without I/O: preface, length-prefixed frames, hello, ClientHello probe.

Theory of operation (docs/PROTOCOL.md §6): a dialler sends :data:`PREFACE`,
then frames of a 4-byte big-endian length and that many bytes of msgpack.
The first frame is the dialler's ``hello`` (who it is, whom it wants, the
cluster key); the acceptor answers ``welcome`` or ``refused``. Everything
after is one Raft message per non-empty frame; an empty frame is a keepalive.

This module holds no sockets and no clock, like the Raft core: bytes go in
(:meth:`FrameReader.feed`), frames and verdicts come out, and bad bytes raise
:class:`~concordance.errors.RemoteProtocolError`. That is what lets the tests
split a stream at every byte. The front uses :func:`classify` on bytes it
peeked at accept; consensus uses the rest on the connections it owns.
"""

from __future__ import annotations

import enum
import hmac
import struct
from dataclasses import dataclass

import msgpack  # type: ignore[import-untyped]

from concordance.errors import RemoteProtocolError

__all__ = [
    "ALPN",
    "HELLO_MAX",
    "KEEPALIVE",
    "MAX_FRAME",
    "PREFACE",
    "TLS_PROBE_MAX",
    "FrameReader",
    "Hello",
    "Kind",
    "check_hello",
    "classify",
    "client_hello_alpn",
    "encode_drain",
    "encode_frame",
    "encode_hello",
    "encode_refused",
    "encode_welcome",
    "is_drain",
    "read_welcome",
]

PREFACE = b"\x00CCRAFT1"  # no HTTP request and no TLS record starts with a zero byte
ALPN = "concordance-raft/1"
MAX_FRAME = 64 << 20  # snapshot chunks are bounded by consensus; this only bounds garbage
HELLO_MAX = 4096  # a handshake frame larger than this is refused before it is read
KEEPALIVE = b"\x00\x00\x00\x00"  # an empty frame
TLS_PROBE_MAX = 5 + (16 << 10)  # one TLS record: header + at most 16 KiB
VERSION = 1

_LEN = struct.Struct(">I")


class Kind(enum.Enum):
    """What the first bytes of an accepted connection say it is."""

    PEER = "peer"
    HTTP = "http"
    MORE = "more"  # not enough bytes yet to tell


def encode_frame(payload: bytes) -> bytes:
    """One frame: the length, then the payload (an empty payload is a keepalive)."""
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME}")
    return _LEN.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into frames, wherever the reads split it.

    Args:
        limit: the largest frame accepted; a length above it raises at once,
            before its bytes arrive (the handshake reads with ``HELLO_MAX``).
    """

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._preface_left = 0

    def expect_preface(self) -> None:
        """Make the next bytes the preface (the acceptor's side)."""
        self._preface_left = len(PREFACE)

    def feed(self, data: bytes) -> list[bytes]:
        """Every frame completed by ``data`` (keepalives included, as ``b""``).

        Raises:
            RemoteProtocolError: a wrong preface or a frame over the limit.
        """
        self._buf += data
        if self._preface_left:
            have = min(len(self._buf), self._preface_left)
            start = len(PREFACE) - self._preface_left
            if bytes(self._buf[:have]) != PREFACE[start : start + have]:
                raise RemoteProtocolError("not a concordance peer link (wrong preface)")
            del self._buf[:have]
            self._preface_left -= have
            if self._preface_left:
                return []
        frames: list[bytes] = []
        while len(self._buf) >= _LEN.size:
            (n,) = _LEN.unpack_from(self._buf)
            if n > self.limit:
                raise RemoteProtocolError(f"a peer frame of {n} bytes exceeds {self.limit}")
            if len(self._buf) < _LEN.size + n:
                break
            frames.append(bytes(self._buf[_LEN.size : _LEN.size + n]))
            del self._buf[: _LEN.size + n]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes received that are not a whole frame yet."""
        return len(self._buf)


@dataclass(frozen=True, slots=True)
class Hello:
    """The dialler's first frame."""

    src: str
    dst: str
    key: str


def _pack(value: dict[str, object]) -> bytes:
    return encode_frame(msgpack.packb(value, use_bin_type=True))


def encode_hello(hello: Hello) -> bytes:
    """The preface and the hello frame: what a dialler sends first."""
    return PREFACE + _pack({"hello": VERSION, "from": hello.src, "to": hello.dst, "key": hello.key})


def encode_welcome(node_id: str) -> bytes:
    return _pack({"welcome": VERSION, "node": node_id})


def encode_refused(reason: str) -> bytes:
    return _pack({"refused": reason})


DRAIN: dict[str, object] = {"drain": VERSION}


def encode_drain() -> bytes:
    """The acceptor's "stop sending here, close, dial again" (a planned stop)."""
    return _pack(DRAIN)


def is_drain(frame: bytes) -> bool:
    """Whether a frame received after the handshake is a drain, not a Raft message.

    Raft frames are msgpack arrays; a control frame is a map (first byte
    0x80-0x8f), so one byte tells them apart on the hot path.
    """
    if not frame or frame[0] & 0xF0 != 0x80:
        return False
    try:
        return _map(frame) == DRAIN
    except RemoteProtocolError:
        return False


def _map(payload: bytes) -> dict[str, object]:
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several types for garbage
        raise RemoteProtocolError(f"undecodable handshake frame: {e}") from e
    if not isinstance(value, dict):
        raise RemoteProtocolError("a handshake frame must be a map")
    return value


def check_hello(payload: bytes, node_id: str, key: str | None) -> Hello:
    """The dialler's hello, if it may talk to ``node_id``.

    Args:
        key: the cluster key to demand; None on an insecure node without one
            (any key passes).

    Raises:
        RemoteProtocolError: not a hello, another version, another node, or a
            wrong key (the message says which, for the refusal).
    """
    value = _map(payload)
    src, dst, given = value.get("from"), value.get("to"), value.get("key")
    if value.get("hello") != VERSION:
        raise RemoteProtocolError(f"expected hello version {VERSION}")
    if not isinstance(src, str) or not src or not isinstance(dst, str):
        raise RemoteProtocolError("hello needs string from and to")
    if not isinstance(given, str):
        raise RemoteProtocolError("hello needs a string key")
    if dst != node_id:
        raise RemoteProtocolError(f"this is {node_id}, not {dst}")
    # compare_digest on bytes: str needs ASCII, and a key is any string
    if key is not None and not hmac.compare_digest(given.encode(), key.encode()):
        raise RemoteProtocolError("wrong cluster key")
    return Hello(src, dst, given)


def read_welcome(payload: bytes, expected: str) -> None:
    """Check the acceptor's answer to our hello.

    Raises:
        RemoteProtocolError: a refusal (with its reason), or another node.
    """
    value = _map(payload)
    if "refused" in value:
        raise RemoteProtocolError(f"refused: {value['refused']}")
    if value.get("welcome") != VERSION or value.get("node") != expected:
        raise RemoteProtocolError(f"expected a welcome from {expected}, got {value!r}")


def classify(head: bytes, *, tls: bool) -> Kind:
    """What a connection is, from the bytes peeked at accept (PROTOCOL.md §6).

    ``head`` is everything peeked so far; :data:`Kind.MORE` asks for more
    (the caller bounds the wait and treats a timeout as HTTP).
    """
    if not head:
        return Kind.MORE
    if not tls:
        if head[0] != PREFACE[0]:
            return Kind.HTTP
        if len(head) < len(PREFACE):
            return Kind.MORE if PREFACE.startswith(head) else Kind.HTTP
        return Kind.PEER if head.startswith(PREFACE) else Kind.HTTP
    if head[0] != 0x16:  # not a TLS handshake record: leave it to the TLS server
        return Kind.HTTP
    if len(head) < 5:
        return Kind.MORE
    size = int.from_bytes(head[3:5], "big")
    if len(head) < 5 + size:
        return Kind.MORE if 5 + size <= TLS_PROBE_MAX else Kind.HTTP
    alpn = client_hello_alpn(head[5 : 5 + size])
    return Kind.PEER if ALPN in alpn else Kind.HTTP


def client_hello_alpn(record: bytes) -> tuple[str, ...]:
    """The ALPN protocols a ClientHello offers (RFC 8446 §4.1.2, RFC 7301), or ().

    ``record`` is one TLS record's body. Anything malformed or cut short
    yields () (the connection is then served as HTTP, whose TLS server
    refuses it properly).
    """
    try:
        return _alpn(memoryview(record))
    except (IndexError, ValueError):
        return ()


def _alpn(m: memoryview) -> tuple[str, ...]:
    if m[0] != 1:  # handshake type client_hello
        return ()
    end = 4 + int.from_bytes(m[1:4], "big")
    if end > len(m):
        return ()  # a ClientHello spread over records: not ours (ours fits in one)
    pos = 4 + 2 + 32  # legacy_version, random
    pos += 1 + m[pos]  # session id
    pos += 2 + int.from_bytes(m[pos : pos + 2], "big")  # cipher suites
    pos += 1 + m[pos]  # compression methods
    if pos + 2 > end:
        return ()
    ext_end = pos + 2 + int.from_bytes(m[pos : pos + 2], "big")
    pos += 2
    if ext_end > end:
        return ()
    while pos + 4 <= ext_end:
        ext_type = int.from_bytes(m[pos : pos + 2], "big")
        ext_len = int.from_bytes(m[pos + 2 : pos + 4], "big")
        body = m[pos + 4 : pos + 4 + ext_len]
        if len(body) != ext_len:
            return ()
        if ext_type == 16:  # application_layer_protocol_negotiation
            names: list[str] = []
            i = 2
            list_end = 2 + int.from_bytes(body[0:2], "big")
            while i < min(list_end, ext_len):
                n = body[i]
                names.append(bytes(body[i + 1 : i + 1 + n]).decode("ascii", "replace"))
                i += 1 + n
            return tuple(names)
        pos += 4 + ext_len
    return ()
