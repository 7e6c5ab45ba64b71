"""The peer-link protocol without I/O: every split of a stream, every refusal."""

from __future__ import annotations

import ssl

import msgpack
import pytest

from concordance.errors import RemoteProtocolError
from concordance.protocol import peerwire
from concordance.protocol.peerwire import FrameReader, Hello, Kind

STREAM_FRAMES = [b"", b"a", b"\x93\x01\x02\x03", bytes(range(256)) * 3, b""]


def _stream() -> bytes:
    return peerwire.encode_hello(Hello("n1", "n2", "k")) + b"".join(
        peerwire.encode_frame(f) for f in STREAM_FRAMES
    )


def _read_all(chunks: list[bytes]) -> list[bytes]:
    reader = FrameReader()
    reader.expect_preface()
    out: list[bytes] = []
    for chunk in chunks:
        out += reader.feed(chunk)
    assert reader.buffered == 0
    return out


def test_frames_come_out_whole_wherever_the_stream_is_split() -> None:
    data = _stream()
    whole = _read_all([data])
    assert whole[1:] == STREAM_FRAMES
    for cut in range(len(data) + 1):
        assert _read_all([data[:cut], data[cut:]]) == whole, cut
    assert _read_all([data[i : i + 1] for i in range(len(data))]) == whole


def test_hello_round_trips_through_the_reader() -> None:
    frames = _read_all([_stream()])
    assert peerwire.check_hello(frames[0], "n2", "k") == Hello("n1", "n2", "k")


def test_an_oversized_length_is_refused_before_its_bytes_arrive() -> None:
    reader = FrameReader(limit=10)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        reader.feed(b"\x00\x00\x00\x0b")
    assert FrameReader(limit=10).feed(b"\x00\x00\x00\x0a" + b"x" * 10) == [b"x" * 10]


def test_encoding_an_oversized_frame_is_refused() -> None:
    with pytest.raises(ValueError):
        peerwire.encode_frame(b"x" * (peerwire.MAX_FRAME + 1))


@pytest.mark.parametrize("garbage", [b"GET /raft HTTP/1.1\r\n", b"\x00CCRAFT2", b"\x16\x03\x01"])
def test_a_wrong_preface_is_refused_at_its_first_wrong_byte(garbage: bytes) -> None:
    reader = FrameReader()
    reader.expect_preface()
    with pytest.raises(RemoteProtocolError, match="preface"):
        for i in range(len(garbage)):
            reader.feed(garbage[i : i + 1])


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\xc1", "undecodable"),
        (msgpack.packb([1, 2]), "map"),
        (msgpack.packb({"hello": 2, "from": "n1", "to": "n2", "key": "k"}), "version"),
        (msgpack.packb({"hello": 1, "from": "", "to": "n2", "key": "k"}), "from and to"),
        (msgpack.packb({"hello": 1, "from": "n1", "to": "n2", "key": 7}), "string key"),
        (msgpack.packb({"hello": 1, "from": "n1", "to": "n3", "key": "k"}), "not n3"),
        (msgpack.packb({"hello": 1, "from": "n1", "to": "n2", "key": "kk"}), "wrong cluster key"),
        (msgpack.packb({"hello": 1, "from": "n1", "to": "n2", "key": ""}), "wrong cluster key"),
    ],
)
def test_a_bad_hello_is_refused(payload: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        peerwire.check_hello(payload, "n2", "k")


def test_any_key_passes_on_a_node_without_one() -> None:
    payload = msgpack.packb({"hello": 1, "from": "n1", "to": "n2", "key": ""})
    assert peerwire.check_hello(payload, "n2", None).src == "n1"


def test_welcome_and_refusal() -> None:
    reader = FrameReader()
    (welcome,) = reader.feed(peerwire.encode_welcome("n2"))
    peerwire.read_welcome(welcome, "n2")
    with pytest.raises(RemoteProtocolError, match="expected a welcome from n3"):
        peerwire.read_welcome(welcome, "n3")
    (refused,) = reader.feed(peerwire.encode_refused("wrong cluster key"))
    with pytest.raises(RemoteProtocolError, match="refused: wrong cluster key"):
        peerwire.read_welcome(refused, "n2")


def test_classify_plain() -> None:
    for method in (b"GET / HTTP/1.1\r\n", b"PUT", b"\x16\x03\x01"):
        assert peerwire.classify(method, tls=False) is Kind.HTTP
    assert peerwire.classify(b"", tls=False) is Kind.MORE
    for n in range(1, len(peerwire.PREFACE)):
        assert peerwire.classify(peerwire.PREFACE[:n], tls=False) is Kind.MORE
    assert peerwire.classify(peerwire.PREFACE + b"\x00\x00", tls=False) is Kind.PEER
    assert peerwire.classify(b"\x00CCX", tls=False) is Kind.HTTP


def _client_hello(alpn: list[str] | None) -> bytes:
    """The first bytes a real TLS client sends (no network: memory BIOs)."""
    ctx = ssl.create_default_context()
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname="n2.test")
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def test_classify_tls_by_alpn_at_every_cut() -> None:
    peer = _client_hello(["h2", peerwire.ALPN])
    http = _client_hello(["http/1.1"])
    bare = _client_hello(None)
    assert peerwire.client_hello_alpn(peer[5:]) == ("h2", peerwire.ALPN)
    assert peerwire.classify(peer, tls=True) is Kind.PEER
    assert peerwire.classify(http, tls=True) is Kind.HTTP
    assert peerwire.classify(bare, tls=True) is Kind.HTTP
    assert peerwire.classify(b"GET / HTTP/1.1", tls=True) is Kind.HTTP
    assert peerwire.classify(peerwire.PREFACE, tls=True) is Kind.HTTP
    for cut in range(len(peer)):
        assert peerwire.classify(peer[:cut], tls=True) is Kind.MORE, cut


def test_a_malformed_client_hello_offers_nothing() -> None:
    peer = _client_hello([peerwire.ALPN])
    body = peer[5:]
    for cut in range(len(body)):
        assert peerwire.client_hello_alpn(body[:cut]) == ()
    assert peerwire.client_hello_alpn(b"\x02" + body[1:]) == ()
    huge = b"\x16\x03\x01\xff\xff"
    assert peerwire.classify(huge, tls=True) is Kind.HTTP


def test_a_drain_is_told_apart_from_raft_frames_by_its_first_byte() -> None:
    (drain,) = FrameReader().feed(peerwire.encode_drain())
    assert peerwire.is_drain(drain)
    assert not peerwire.is_drain(msgpack.packb([3, 1, "n1", "n2"]))  # a Raft frame: an array
    assert not peerwire.is_drain(msgpack.packb({"drain": 2}))
    assert not peerwire.is_drain(b"\x81\xc1")  # a map that does not decode
    assert not peerwire.is_drain(b"")
