"""Schemathesis against a real node, from the node's own ``/api/v1/openapi.json``.

What must hold for every generated request (valid and invalid ones):

* no 5xx (``not_a_server_error``);
* the status, content type and body are those the document describes;
* data the schema forbids is refused with a 4xx (``negative_data_rejection``);
* a write answered with an error changed nothing: the keys it named (the
  key, a batch's keys, a prefix's listing) read the same before and after.

``make test`` runs ``FUZZ_EXAMPLES`` (default 25) examples per operation;
``make fuzz`` runs many more. The cluster-changing routes (members, leader,
snapshot, backup) are left out: a fuzzer that removes the node from its own
cluster tests nothing more. ``waitMs`` is capped at 50 ms so long-polls do
not eat the time budget (its bounds are still checked in negative cases).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from concordance.front import openapi
from tests.integration.helpers import API_KEY, Node, short_tmpdir

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("fuzz")]  # one node, one worker

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
SKIPPED = (
    "cluster_members_post",
    "cluster_member_delete",
    "cluster_leader_post",
    "cluster_snapshot_post",
    "cluster_backup_get",
    # restarts the fuzzed node's own roles; test_role_restart_route and
    # test_restart_under_load cover it
    "cluster_role_restart_post",
)
WRITES = frozenset({"PUT", "DELETE", "POST"})
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def _full_document() -> dict[str, Any]:
    from aiohttp import web

    from concordance.front.routes import setup_routes

    app = web.Application()
    setup_routes(app)
    return openapi.build(app.router)


def _document() -> dict[str, Any]:
    doc = _full_document()
    for path in list(doc["paths"]):
        ops = doc["paths"][path]
        for method in list(ops):
            if ops[method]["operationId"] in SKIPPED:
                del ops[method]
        if not ops:
            del doc["paths"][path]
    return doc


schema = schemathesis.openapi.from_dict(_document())
# The key is sent by the test (AUTH), not fuzzed: a case without it would still be
# authorized. Unknown query parameters are ignored by the API (like most HTTP APIs; only
# body fields are strict), so they are not generated as invalid data.
schema.config.generation.update(
    max_examples=EXAMPLES,
    deterministic=True,
    database="none",
    with_security_parameters=False,
    allow_extra_parameters=False,
)


@pytest.fixture(scope="module")
def fuzz_node() -> Iterator[Node]:
    root = short_tmpdir()
    node = Node("n1", data=root / "n1")
    try:
        node.start()
        served = node.request("GET", "/api/v1/openapi.json", auth=None)
        assert served.status == 200
        # the fuzzed document is the served one, less the SKIPPED operations
        assert served.json() == json.loads(json.dumps(_full_document()))
        yield node
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


def _keys_named(case: Any) -> list[str]:
    """The keys a write names, when they are well-formed enough to read back."""
    keys: list[str] = []
    if case.path_parameters and isinstance(case.path_parameters.get("key"), str):
        keys.append(case.path_parameters["key"])
    body = case.body if isinstance(case.body, dict) else None
    ops = body.get("ops") if body is not None else None
    if isinstance(ops, list):
        keys += [op["key"] for op in ops if isinstance(op, dict) and isinstance(op.get("key"), str)]
    return keys


def _read(node: Node, path: str) -> tuple[int, Any]:
    resp = node.request("GET", path)
    try:
        return resp.status, resp.json()
    except ValueError:
        return resp.status, resp.body


def _visible(snapshot: tuple[int, Any], now_ms: int) -> tuple[int, Any]:
    """A read as it would be at ``now_ms``: an entry that expired since counts as absent."""
    status, body = snapshot
    if status == 200 and isinstance(body, dict):
        if "entries" in body:
            entries = [e for e in body["entries"] if not _expired(e, now_ms)]
            return status, [(e["key"], e["version"]) for e in entries]
        if _expired(body, now_ms):
            return 404, None
        return status, (body.get("value"), body.get("version"))
    return status, None


def _expired(entry: dict[str, Any], now_ms: int) -> bool:
    expires = entry.get("expiresAt")
    return isinstance(expires, int) and expires <= now_ms


def _state(node: Node, case: Any) -> list[tuple[int, Any]]:
    """What a write named by ``case`` could have changed, read with the full key."""
    reads = []
    for key in _keys_named(case):
        reads.append(_read(node, f"/api/v1/kv/{urllib.parse.quote(key, safe='')}"))
    query = case.query if isinstance(case.query, dict) else {}
    prefix = query.get("prefix")
    if case.method == "DELETE" and case.path == "/api/v1/kv" and isinstance(prefix, str):
        reads.append(_read(node, f"/api/v1/kv?prefix={urllib.parse.quote(prefix)}&limit=1000"))
    return reads


@schema.parametrize()
@settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=EXAMPLES)
def test_http_api_fuzz(case: Any, fuzz_node: Node) -> None:
    wait = case.query.get("waitMs") if isinstance(case.query, dict) else None
    if isinstance(wait, int) or (isinstance(wait, str) and wait.isdigit()):
        case.query["waitMs"] = min(int(wait), 50)  # also a digit string: the API parses it
    write = case.method in WRITES
    before = _state(fuzz_node, case) if write else []
    response = case.call(base_url=fuzz_node.url, headers=AUTH, timeout=30)
    case.validate_response(response, checks=CHECKS)
    if write and response.status_code >= 400:
        now = time.time_ns() // 1_000_000
        after = _state(fuzz_node, case)
        assert [_visible(s, now) for s in after] == [_visible(s, now) for s in before], (
            f"{case.method} {case.path} answered {response.status_code} "
            f"{json.dumps(response.json())[:300]} but changed data"
        )
