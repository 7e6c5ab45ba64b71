"""Scoped keys through the front: 403 outside the grants, filtered lists, feeds and watches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from concordance.security.access import hash_secret
from tests.unit.front.fakes import FULL, Harness, harness

RW = "acme-readwrite-secret"  # tenant:acme/ readwrite, no credentials
RO = "acme-read-secret"  # tenant:acme/settings/ read
CRED = "acme-credentials-secret"  # tenant:acme/ readwrite with credentials


def write_keys(path: Path) -> Path:
    keys = [
        {"id": "acme-rw", "sha256": hash_secret(RW),
         "grants": [{"prefix": "tenant:acme/", "access": "readwrite"}]},
        {"id": "acme-ro", "sha256": hash_secret(RO),
         "grants": [{"prefix": "tenant:acme/settings/", "access": "read"}]},
        {"id": "acme-cred", "sha256": hash_secret(CRED),
         "grants": [{"prefix": "tenant:acme/", "access": "readwrite", "credentials": True}]},
    ]  # fmt: skip
    file = path / "keys.json"
    file.write_text(json.dumps({"keys": keys}))
    return file


def run(tmp_path: Path, scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        async with harness(tmp_path, keys_file=str(write_keys(tmp_path))) as h:
            for key, value in (
                ("tenant:acme/settings/theme", "dark"),
                ("tenant:acme/credentials/github", "tok"),
                ("tenant:other/settings/theme", "light"),
            ):
                assert (await h.put(key, value))[0] == 200
            await scenario(h)

    asyncio.run(main())


def code(reply: tuple[int, Any]) -> tuple[int, str]:
    status, body = reply
    return status, body["error"]["code"] if status >= 400 else "ok"


def test_http_outside_the_grants_is_forbidden_and_changes_nothing(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        proposed = len(h.node.knobs.proposed)
        forbidden = [
            ("GET", "/api/v1/kv/tenant:other/settings/theme", None),
            ("GET", "/api/v1/kv/tenant:acme/credentials/github", None),
            ("PUT", "/api/v1/kv/tenant:other/x", {"value": 1}),
            ("PUT", "/api/v1/kv/tenant:acme/credentials/x", {"value": 1}),
            ("DELETE", "/api/v1/kv/tenant:acme/credentials/github", None),
            ("DELETE", "/api/v1/kv?prefix=tenant:acme/", None),  # would reach credentials
            ("GET", "/api/v1/kv?prefix=tenant:other/", None),
            ("GET", "/api/v1/kv?prefix=tenant:acme/credentials/", None),
            ("GET", "/api/v1/changes?prefix=tenant:other/", None),
            ("POST", "/api/v1/batch", {"ops": [
                {"op": "set", "key": "tenant:acme/a", "value": 1},
                {"op": "set", "key": "tenant:other/a", "value": 1}]}),
            ("POST", "/api/v1/batch", {"ops": [
                {"op": "check", "key": "tenant:acme/credentials/github", "version": 1}]}),
            ("GET", "/api/v1/cluster/status", None),
            ("GET", "/api/v1/cluster/backup", None),
            ("POST", "/api/v1/cluster/snapshot", None),
        ]  # fmt: skip
        for method, path, body in forbidden:
            got = await h.call(method, path, key=RW, json=body)
            assert code(got) == (403, "forbidden"), (method, path, got)
        assert len(h.node.knobs.proposed) == proposed  # nothing was proposed
        assert code(await h.call("GET", "/api/v1/kv/tenant:acme/x", key="nope")) == (
            401,
            "unauthorized",
        )
        # inside the grants
        assert code(await h.put("tenant:acme/settings/theme", "x")) == (200, "ok")
        assert (
            code(await h.call("PUT", "/api/v1/kv/tenant:acme/a", key=RW, json={"value": 1}))[0]
            == 200
        )
        assert (await h.call("DELETE", "/api/v1/kv?prefix=tenant:acme/settings/", key=RW))[0] == 200

    run(tmp_path, scenario)


def test_read_only_grant(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        status, body = await h.call("GET", "/api/v1/kv/tenant:acme/settings/theme", key=RO)
        assert status == 200 and body["value"] == "dark"
        put = await h.call(
            "PUT", "/api/v1/kv/tenant:acme/settings/theme", key=RO, json={"value": 1}
        )
        assert code(put) == (403, "forbidden")
        assert code(await h.call("GET", "/api/v1/kv?prefix=tenant:acme/", key=RO)) == (
            403,
            "forbidden",
        )

    run(tmp_path, scenario)


def test_read_grant_cannot_append_to_the_log_with_a_batch_of_checks(tmp_path: Path) -> None:
    """A batch is one Raft entry even when it only checks: a read grant is refused."""

    async def scenario(h: Harness) -> None:
        proposed = len(h.node.knobs.proposed)
        checks = {"ops": [{"op": "check", "key": "tenant:acme/settings/theme", "version": 1}]}
        got = await h.call("POST", "/api/v1/batch", key=RO, json=checks)
        assert code(got) == (403, "forbidden")
        assert len(h.node.knobs.proposed) == proposed
        # the same batch with a readwrite grant on that key goes through
        assert code(await h.call("POST", "/api/v1/batch", key=RW, json=checks)) == (200, "ok")
        assert len(h.node.knobs.proposed) == proposed + 1

    run(tmp_path, scenario)


def test_lists_and_change_feeds_hide_credentials_without_a_grant(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        status, page = await h.call("GET", "/api/v1/kv?prefix=tenant:acme/", key=RW)
        assert status == 200
        assert [e["key"] for e in page["entries"]] == ["tenant:acme/settings/theme"]
        status, feed = await h.call("GET", "/api/v1/changes?prefix=tenant:acme/&since=0", key=RW)
        assert status == 200
        assert [c["key"] for c in feed["changes"]] == ["tenant:acme/settings/theme"]
        status, page = await h.call("GET", "/api/v1/kv?prefix=tenant:acme/", key=CRED)
        assert [e["key"] for e in page["entries"]] == [
            "tenant:acme/credentials/github",
            "tenant:acme/settings/theme",
        ]
        assert page["entries"][0]["value"] == "tok"  # decrypted for a key granted credentials

    run(tmp_path, scenario)


async def _rpc(ws: aiohttp.ClientWebSocketResponse, rid: int, method: str, params: Any) -> Any:
    await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}))
    while True:
        msg = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        if msg.get("id") == rid:
            return msg


def test_stream_methods_and_watches_obey_the_grants(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        ws = await h.client.ws_connect("/stream", headers={"Authorization": f"Bearer {RW}"})
        calls = [
            ("kv/get", {"key": "tenant:other/settings/theme"}),
            ("kv/get", {"key": "tenant:acme/credentials/github"}),
            ("kv/set", {"key": "tenant:acme/credentials/x", "value": 1}),
            ("kv/delete", {"key": "tenant:other/settings/theme"}),
            ("kv/list", {"prefix": "tenant:other/"}),
            ("watch/subscribe", {"prefix": "tenant:other/"}),
            ("watch/subscribe", {"key": "tenant:acme/credentials/github"}),
        ]
        for i, (method, params) in enumerate(calls):
            reply = await _rpc(ws, i, method, params)
            assert reply["error"]["code"] == 403, (method, reply)
            assert reply["error"]["data"]["code"] == "forbidden"
        listed = await _rpc(ws, 100, "kv/list", {"prefix": "tenant:acme/"})
        assert [e["key"] for e in listed["result"]["entries"]] == ["tenant:acme/settings/theme"]
        sub = await _rpc(ws, 101, "watch/subscribe", {"prefix": "tenant:acme/", "sinceRevision": 0})
        assert "result" in sub
        # a credentials write by the full key, then a visible one: only the latter arrives
        assert (await h.put("tenant:acme/credentials/github", "tok2"))[0] == 200
        assert (await h.put("tenant:acme/settings/lang", "en"))[0] == 200
        seen: list[str] = []
        while "tenant:acme/settings/lang" not in seen:
            note = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
            assert note["method"] == "watch/change"
            seen += [e["key"] for e in note["params"]["events"]]
        assert seen == ["tenant:acme/settings/theme", "tenant:acme/settings/lang"]
        await ws.close()

    run(tmp_path, scenario)


def test_full_key_is_unchanged(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        status, page = await h.call("GET", "/api/v1/kv?prefix=tenant:acme/", key=FULL)
        assert status == 200 and len(page["entries"]) == 2

    run(tmp_path, scenario)
