"""The OpenAPI document: served without a key, valid OpenAPI 3.1, and in step with the routes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp import web

from concordance.front import openapi
from concordance.front.routes import setup_routes
from tests.unit.front.fakes import harness


def served(tmp_path: Path) -> Any:
    async def main() -> Any:
        async with harness(tmp_path) as h:
            status, body = await h.call("GET", "/api/v1/openapi.json", key=None)
            assert status == 200
            return body

    return asyncio.run(main())


def test_served_without_a_key_and_equal_to_the_built_document(tmp_path: Path) -> None:
    body = served(tmp_path)
    app = web.Application()
    setup_routes(app)
    assert body == json.loads(json.dumps(openapi.build(app.router)))
    assert body["openapi"] == "3.1.0"
    assert "/api/v1/kv/{key}" in body["paths"]
    assert set(body["paths"]["/api/v1/kv/{key}"]) == {"get", "put", "delete"}


def test_every_route_is_described() -> None:
    app = web.Application()
    setup_routes(app)
    doc = openapi.build(app.router)
    routed = {
        (r.name, r.method)
        for r in app.router.routes()
        if r.name not in openapi.UNDESCRIBED and r.method != "HEAD"
    }
    described = {
        tuple(op["operationId"].rsplit("_", 1)) for p in doc["paths"].values() for op in p.values()
    }
    assert {(n, m.lower()) for n, m in routed} == described


def test_a_route_without_a_description_fails_the_build() -> None:
    app = web.Application()
    setup_routes(app)

    async def extra(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/api/v1/new", extra, name="new_route")
    with pytest.raises(LookupError, match="new_route"):
        openapi.build(app.router)


def test_the_document_is_valid_openapi_3_1(tmp_path: Path) -> None:
    schema = schemathesis.openapi.from_dict(served(tmp_path))
    ops = [op for op in schema.get_all_operations()]
    assert len(ops) >= 15
    for result in ops:
        result.ok()  # raises if an operation cannot be parsed
