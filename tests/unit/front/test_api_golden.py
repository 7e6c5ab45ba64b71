"""Golden bytes of the API's JSON: every shape that storage's payloads become in the front.

The front renders entries, change events, write results, list pages and
conflict errors from what storage sends over IPC. Those payloads may change
shape between roles (PROTOCOL.md §3); the JSON a client reads must not, byte
for byte. ``testdata/api_golden.json`` was written before the payloads became
typed records (``python -m tests.unit.front.test_api_golden`` pins only cases
the file lacks); an existing entry is never rewritten to make a test pass.

The scenario runs the real front on the fake roles (a real ``StateMachine``
behind the real wire codec), at a fixed clock, so every byte is deterministic.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from concordance.protocol.commands import Command, Expire
from tests.unit.front.fakes import FULL, T0, Harness, harness

GOLDEN = Path(__file__).parent.parent / "testdata" / "api_golden.json"

A = "tenant:acme/settings/theme"
B = "tenant:acme/settings/lang"
C = "tenant:acme/settings/zone"
SECRET = "tenant:acme/credentials/db"
UNICODE = "tenant:acme/settings/日本語"

# (name, method, path, JSON body or None), run in order on one fresh node.
HTTP: list[tuple[str, str, str, Any]] = [
    ("put A", "PUT", f"/api/v1/kv/{A}", {"value": {"mode": "dark", "n": [1, 2.5, None]}}),
    ("put A again", "PUT", f"/api/v1/kv/{A}", {"value": "light", "ifVersion": 1}),
    ("put A conflict", "PUT", f"/api/v1/kv/{A}", {"value": "x", "ifVersion": 1}),
    ("put new conflict", "PUT", f"/api/v1/kv/{C}", {"value": 1, "ifVersion": 3}),
    ("put B ttl", "PUT", f"/api/v1/kv/{B}", {"value": "fr", "ttlMs": 60000}),
    ("put B expiresAt", "PUT", f"/api/v1/kv/{B}", {"value": "de", "expiresAt": 1764230500000}),
    ("put unicode", "PUT", f"/api/v1/kv/{UNICODE}", {"value": "ü€😀\u2028"}),
    ("put secret", "PUT", f"/api/v1/kv/{SECRET}", {"value": {"password": "s3cret"}}),
    ("get A", "GET", f"/api/v1/kv/{A}", None),
    ("get A consistent", "GET", f"/api/v1/kv/{A}?consistent=true", None),
    ("get B", "GET", f"/api/v1/kv/{B}", None),
    ("get secret", "GET", f"/api/v1/kv/{SECRET}", None),
    ("get missing", "GET", "/api/v1/kv/tenant:acme/none", None),
    ("list", "GET", "/api/v1/kv?prefix=tenant:acme/", None),
    ("list page 1", "GET", "/api/v1/kv?prefix=tenant:acme/settings/&limit=2", None),
    ("list empty", "GET", "/api/v1/kv?prefix=tenant:other/", None),
    ("delete A conflict", "DELETE", f"/api/v1/kv/{A}?ifVersion=9", None),
    ("delete A", "DELETE", f"/api/v1/kv/{A}?ifVersion=2", None),
    ("delete A missing", "DELETE", f"/api/v1/kv/{A}", None),
    (
        "batch",
        "POST",
        "/api/v1/batch",
        {
            "ops": [
                {"op": "set", "key": A, "value": [1]},
                {"op": "check", "key": A, "version": 3},
                {"op": "check", "key": C, "version": 0},
                {"op": "set", "key": C, "value": None, "ttlMs": 1000},
                {"op": "delete", "key": C},
                {"op": "set", "key": SECRET, "value": "rotated"},
            ]
        },
    ),
    (
        "batch conflict",
        "POST",
        "/api/v1/batch",
        {"ops": [{"op": "set", "key": C, "value": 1}, {"op": "check", "key": A, "version": 1}]},
    ),
    (
        "batch not found",
        "POST",
        "/api/v1/batch",
        {"ops": [{"op": "set", "key": B, "value": 1}, {"op": "delete", "key": C}]},
    ),
    ("put D ttl", "PUT", "/api/v1/kv/tenant:acme/d", {"value": 4, "expiresAt": 1764230400001}),
    ("delete prefix none", "DELETE", "/api/v1/kv?prefix=tenant:other/", None),
    ("delete prefix", "DELETE", "/api/v1/kv?prefix=tenant:acme/settings/", None),
    ("changes", "GET", "/api/v1/changes?prefix=tenant:acme/&since=0", None),
    ("changes page", "GET", "/api/v1/changes?prefix=tenant:acme/&since=2&limit=3", None),
    ("changes long-poll idle", "GET", "/api/v1/changes?prefix=tenant:idle/&since=0&waitMs=1", None),
]

# (name, JSON-RPC method, params) on /stream after a watch on tenant:acme/ from revision 0.
STREAM: list[tuple[str, str, Any]] = [
    ("kv/set", "kv/set", {"key": A, "value": {"ws": True}}),
    ("kv/set conflict", "kv/set", {"key": A, "value": 0, "ifVersion": 0}),
    ("kv/get", "kv/get", {"key": A}),
    ("kv/get secret", "kv/get", {"key": SECRET}),
    ("kv/get missing", "kv/get", {"key": C}),
    ("kv/list", "kv/list", {"prefix": "tenant:acme/", "limit": 1}),
    ("kv/delete", "kv/delete", {"key": A}),
    ("kv/delete missing", "kv/delete", {"key": A}),
]


async def _http(h: Harness, out: dict[str, str]) -> None:
    for name, method, path, body in HTTP:
        if name == "delete prefix none":  # the TTL reaper's expiry of D, as storage proposes it
            expire = Command("n1", 1, T0 + 5, Expire("tenant:acme/d", 1, T0 + 1))
            h.node.apply(expire.encode())
            await h.settle()
        kwargs = {} if body is None else {"json": body}
        headers = {"Authorization": f"Bearer {FULL}"}
        async with h.client.request(method, path, headers=headers, **kwargs) as resp:
            out[f"http/{name}"] = f"{resp.status} {(await resp.read()).decode()}"


async def _stream(h: Harness, out: dict[str, str]) -> None:
    ws = await h.client.ws_connect("/stream", headers={"Authorization": f"Bearer {FULL}"})
    try:
        frames: list[str] = []

        async def reply(request_id: int) -> str:
            while True:
                msg = await asyncio.wait_for(ws.receive(), 5)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                if json.loads(msg.data).get("id") == request_id:
                    return str(msg.data)
                frames.append(str(msg.data))

        sub = {"jsonrpc": "2.0", "id": 1, "method": "watch/subscribe"}
        await ws.send_str(json.dumps({**sub, "params": {"prefix": "tenant:acme/"}}))
        await reply(1)  # its revision depends on the HTTP part: pinned there
        for i, (name, method, params) in enumerate(STREAM, start=2):
            await ws.send_str(
                json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
            )
            out[f"stream/{name}"] = await reply(i)
        await ws.send_str(
            json.dumps({**sub, "id": 99, "params": {"key": SECRET, "sinceRevision": 0}})
        )
        await reply(99)
        # Two live notifications (kv/set, kv/delete on A), then the key watch's replay.
        while sum('"watch/change"' in f for f in frames) < 3:
            msg = await asyncio.wait_for(ws.receive(), 5)
            frames.append(str(msg.data))
        for i, frame in enumerate(frames):
            out[f"stream/notification {i}"] = frame
    finally:
        await ws.close()


async def _run(tmp_path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    async with harness(tmp_path) as h:
        await _http(h, out)
        await _stream(h, out)
    return out


def capture(tmp_path: Path) -> dict[str, str]:
    return asyncio.run(_run(tmp_path))


def test_api_json_is_byte_for_byte_unchanged(tmp_path: Path) -> None:
    got = capture(tmp_path)
    golden = json.loads(GOLDEN.read_text())
    assert set(golden) <= set(got)
    for name, text in golden.items():
        assert got[name] == text, name


if __name__ == "__main__":  # pin the cases the file lacks; never rewrite one it has
    import tempfile

    with tempfile.TemporaryDirectory(prefix="cc-golden-") as tmp:
        captured = capture(Path(tmp))
    pinned = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    for case, text in captured.items():
        pinned.setdefault(case, text)
    GOLDEN.write_text(json.dumps(pinned, indent=0, sort_keys=True, ensure_ascii=False) + "\n")
