"""The client's retry rules against small in-process HTTP servers that answer as told.

Each server stands in for a node (or a proxy in front of one) and records what
reached it, so a test can say how often a write was sent and where.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from concordance import errors
from concordance.client import Client, EndpointsUnavailable, OutcomeUnknown

ENTRY = {"key": "tenant:t/k", "value": 1, "version": 1, "revision": 1, "createdAt": 0,
         "updatedAt": 0, "expiresAt": None}  # fmt: skip
UNAVAILABLE = {"error": {"code": "unavailable", "message": "no leader"}}
TIMEOUT = {"error": {"code": "timeout", "message": "deadline passed"}}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Server:
    """One HTTP server on a free port; ``calls`` lists the methods it received."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.calls: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Server:
        async def record(request: web.Request) -> web.StreamResponse:
            await request.read()
            self.calls.append(request.method)
            return await self.handler(request)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def refused_url() -> str:
    """A port nothing listens on (bound, then released: a connect is refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def answer(body: Any, status: int = 200, **headers: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(body, status=status, headers=headers)

    return handler


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_a_read_moves_on_from_a_refused_endpoint_and_remembers_who_answered() -> None:
    async def scenario() -> None:
        async with Server(answer(ENTRY)) as live:
            async with Client([refused_url(), live.url], retries=2) as c:
                assert (await c.get("tenant:t/k")).version == 1
                await c.put("tenant:t/k", 2)  # a write goes where the last answer came from
                assert c.transport.endpoints.preferred.url == live.url
            assert live.calls == ["GET", "PUT"]

    run(scenario())


def test_a_write_is_retried_on_503_unavailable_honouring_retry_after() -> None:
    async def scenario() -> None:
        async with Server(answer(UNAVAILABLE, 503, **{"Retry-After": "1"})) as busy, \
                Server(answer(ENTRY)) as live:  # fmt: skip
            async with Client([busy.url, live.url], retries=2) as c:
                entry = await c.put("tenant:t/k", 1)
            assert entry.key == "tenant:t/k"
            assert busy.calls == ["PUT"] and live.calls == ["PUT"]
            assert busy.url != c.transport.endpoints.preferred.url

    run(scenario())


def test_a_node_that_sent_retry_after_is_not_asked_again_before_then() -> None:
    async def scenario() -> None:
        busy_answer = answer(UNAVAILABLE, 503, **{"Retry-After": "5"})
        async with Server(busy_answer) as busy, Server(answer(ENTRY)) as live:
            async with Client([busy.url, live.url], retries=2) as c:
                await c.put("tenant:t/k", 1)
                for _ in range(4):  # reads take turns, but the busy node rests
                    await c.get("tenant:t/k")
                assert c.transport.endpoints.all[0].resting(time.monotonic())
            assert busy.calls == ["PUT"]
            assert live.calls == ["PUT"] + ["GET"] * 4

    run(scenario())


@pytest.mark.parametrize(
    "handler",
    [answer(TIMEOUT, 504), answer("Bad Gateway", 502), answer("", 503)],
    ids=["504-timeout", "proxy-502", "bodyless-503"],
)
def test_a_write_whose_outcome_is_unknown_is_sent_once(handler: Handler) -> None:
    async def scenario() -> None:
        async with Server(handler) as node, Server(answer(ENTRY)) as other:
            async with Client([node.url, other.url], retries=3) as c:
                with pytest.raises(OutcomeUnknown) as caught:
                    await c.put("tenant:t/k", 1)
            assert node.calls == ["PUT"] and other.calls == []
            assert isinstance(caught.value, errors.Timeout)  # handled like a server 504

    run(scenario())


def test_a_read_is_retried_after_a_proxy_502_and_a_504() -> None:
    async def scenario() -> None:
        async with Server(answer("Bad Gateway", 502)) as bad, \
                Server(answer(TIMEOUT, 504)) as slow, Server(answer(ENTRY)) as good:  # fmt: skip
            async with Client([bad.url, slow.url, good.url], retries=3) as c:
                for _ in range(3):  # reads start at the next endpoint in turn
                    assert (await c.get("tenant:t/k")).value == 1
            assert len(good.calls) == 3

    run(scenario())


def test_api_errors_are_raised_as_their_class_without_retry() -> None:
    async def scenario() -> None:
        conflict = {"error": {"code": "version_conflict", "message": "at 3", "current": ENTRY}}
        async with Server(answer(conflict, 409)) as node, Client(node.url, retries=3) as c:
            with pytest.raises(errors.VersionConflict) as caught:
                await c.put("tenant:t/k", 1, if_version=2)
            assert caught.value.extra["current"] == ENTRY
            assert node.calls == ["PUT"]

    run(scenario())


def test_every_endpoint_down_is_one_unavailable_error_naming_the_cause() -> None:
    async def scenario() -> None:
        async with Client([refused_url(), refused_url()], retries=1) as c:
            with pytest.raises(EndpointsUnavailable) as caught:
                await c.get("tenant:t/k")
        assert "connection refused" in str(caught.value)
        assert len(caught.value.attempts) == 2
        assert isinstance(caught.value, errors.Unavailable)

    run(scenario())
