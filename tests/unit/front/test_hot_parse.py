"""The hot routes' request parser: what it takes, what it leaves to aiohttp, and when it waits."""

from __future__ import annotations

import pytest

from concordance.front.hot_parse import BATCH, KEY, MAX_HEAD, TO_AIOHTTP, Head, parse_head
from concordance.front.middlewares import bearer_token

MAX_BODY = 1000
BODY = b'{"value":1}'


def request(
    line: str = "PUT /api/v1/kv/tenant:a/k HTTP/1.1",
    headers: tuple[str, ...] = ("Host: x", "Authorization: Bearer tok"),
    body: bytes = BODY,
    *,
    length: bool = True,
) -> bytes:
    lines = [line, *headers]
    if length and body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def head(buf: bytes) -> Head:
    parsed = parse_head(buf, MAX_BODY)
    assert isinstance(parsed, Head), parsed
    return parsed


def test_a_put_is_read_whole_with_its_key_token_and_body() -> None:
    buf = request()
    h = head(buf)
    assert (h.route, h.method, h.key, h.close) == (KEY, "PUT", "tenant:a/k", False)
    assert bearer_token(h.authorization) == "tok"
    assert buf[h.body_start : h.end] == BODY and h.end == len(buf)


def test_a_batch_is_read_with_its_body_and_no_key() -> None:
    buf = request("POST /api/v1/batch HTTP/1.1", body=b'[{"op":"check","key":"tenant:a/k"}]')
    h = head(buf)
    assert (h.route, h.method, h.key) == (BATCH, "POST", "")
    assert bearer_token(h.authorization) == "tok"
    assert buf[h.body_start : h.end].startswith(b"[{") and h.end == len(buf)


def test_a_get_reads_its_query_as_a_multidict_keeping_every_value() -> None:
    h = head(request("GET /api/v1/kv/tenant:a/k?consistent=true&x&consistent=1 HTTP/1.1", body=b""))
    assert h.query.getall("consistent") == ["true", "1"]
    assert h.query["x"] == ""


def test_pipelined_requests_are_read_one_at_a_time() -> None:
    first = request()
    second = request("DELETE /api/v1/kv/tenant:a/k?ifVersion=3 HTTP/1.1", body=b"")
    buf = first + second
    h = head(buf)
    assert h.end == len(first)
    assert head(buf[h.end :]).method == "DELETE"


@pytest.mark.parametrize("cut", [0, 5, 40, len(request()) - len(BODY) - 2, len(request()) - 1])
def test_a_request_cut_anywhere_waits_for_more(cut: int) -> None:
    assert parse_head(request()[:cut], MAX_BODY) is None


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Authorization: Bearer   tok  ", "tok"),
        ("authorization: bearer tok", "tok"),
        ("Authorization: Basic dXNlcg==", None),
        ("Authorization: Bearer ", None),
    ],
)
def test_the_token_is_read_as_the_auth_middleware_reads_it(header: str, token: str | None) -> None:
    authorization = head(request(headers=(header, "Authorization: Bearer second"))).authorization
    assert bearer_token(authorization) == token


def test_connection_close_is_noted_and_keep_alive_accepted() -> None:
    assert head(request(headers=("Connection: close",))).close
    assert not head(request(headers=("Connection: Keep-Alive",))).close


@pytest.mark.parametrize(
    "buf",
    [
        request("POST /api/v1/batch?x=1 HTTP/1.1"),
        request("POST /api/v1/kv/tenant:a/k HTTP/1.1"),
        request("PUT /api/v1/batch HTTP/1.1"),
        request("GET /healthz HTTP/1.1", body=b""),
        request("GET /stream HTTP/1.1", ("Upgrade: websocket", "Connection: Upgrade"), b""),
        request("HEAD /api/v1/kv/tenant:a/k HTTP/1.1", body=b""),
        request("GET /api/v1/kv?prefix=tenant:a/ HTTP/1.1", body=b""),
        request("GET /api/v1/kv/ HTTP/1.1", body=b""),
        request("PUT /api/v1/kv/tenant:a/k HTTP/1.0"),
        request("PUT /api/v1/kv/tenant:a%2Fk HTTP/1.1"),
        request("PUT /api/v1/kv/tenant:a/k+1 HTTP/1.1"),
        request("PUT /api/v1/kv/tenant:a/k;v=1 HTTP/1.1"),
        request("PUT /api/v1/kv/tenant:a/../b HTTP/1.1"),
        request("PUT /api/v1/kv/tenant:a/./b HTTP/1.1"),
        request("PUT /api/v1/kv/tenant:a//b HTTP/1.1"),
        request("PUT /api/v1/kv/tenant:a/k#f HTTP/1.1"),
        request("GET /api/v1/kv/tenant:a/k?consistent=%74rue HTTP/1.1", body=b""),
        request(headers=("Transfer-Encoding: chunked",), length=False),
        request(headers=("Expect: 100-continue",)),
        request(headers=("Connection: upgrade",)),
        request(headers=("Content-Length: 3",)),  # a second, different length
        request(headers=("X: a", " folded")),
        request(headers=("X : a",)),
        request(headers=("no colon",)),
        request(headers=("X: caf\xe9",)),
        request(headers=("X: a\x01b",)),
        request(body=b"x" * (MAX_BODY + 1)),
        request("GET /api/v1/kv/tenant:a/k HTTP/1.1", body=b"{}"),
        request("PUT /api/v1/kv/tenant:a/k HTTP/1.1", (f"X: {'a' * MAX_HEAD}",)),
        b"PUT /api/v1/kv/tenant:a/k HTTP/1.1\nHost: x\n",  # bare LF, never a CRLF CRLF
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\r\n\r\n",  # not HTTP at all
    ],
)
def test_anything_else_goes_to_aiohttp(buf: bytes) -> None:
    assert parse_head(buf, MAX_BODY) is TO_AIOHTTP


def test_a_head_longer_than_aiohttp_reads_goes_over_before_it_ends() -> None:
    assert parse_head(b"PUT /api/v1/kv/tenant:a/k HTTP/1.1\r\nX: " + b"a" * MAX_HEAD, MAX_BODY) is (
        TO_AIOHTTP
    )


def test_a_body_at_the_limit_or_none_stays_hot() -> None:
    assert head(request(body=b"x" * MAX_BODY)).end == len(request(body=b"x" * MAX_BODY))
    put_without_body = head(request(body=b""))
    assert put_without_body.body_start == put_without_body.end


@pytest.mark.parametrize("char", list("-._~:@!$*,=()'"))
def test_every_safe_character_stays_in_the_key_as_sent(char: str) -> None:
    assert head(request(f"PUT /api/v1/kv/tenant:a/k{char}1 HTTP/1.1")).key == f"tenant:a/k{char}1"
