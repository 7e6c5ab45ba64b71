"""The key-value HTTP routes against fake roles: success shapes and every error of API.md §3.4."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from concordance.front import writes
from concordance.front.app_state import PROPOSER
from concordance.protocol import wire
from concordance.protocol.commands import Command, Set
from concordance.testing.clock import ManualClock
from concordance.testing.poll import until
from tests.unit.front.fakes import AGENT, FULL, T0, Harness, harness, on_clock

K = "tenant:acme/settings/theme"


def run(tmp_path: Path, scenario: Callable[[Harness], Awaitable[None]], **cfg: Any) -> None:
    async def main() -> None:
        async with harness(tmp_path, **cfg) as h:
            await scenario(h)

    asyncio.run(main())


def entry(value: Any, version: int, revision: int, **over: Any) -> dict[str, Any]:
    return {
        "key": K,
        "value": value,
        "version": version,
        "revision": revision,
        "createdAt": T0,
        "updatedAt": T0,
        "expiresAt": None,
        **over,
    }


def test_put_get_and_key_percent_decoding(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert await h.put(K, {"mode": "dark"}) == (200, entry({"mode": "dark"}, 1, 1))
        assert await h.call("GET", f"/api/v1/kv/{K}") == (200, entry({"mode": "dark"}, 1, 1))
        encoded = "/api/v1/kv/tenant:acme%2Fsettings%2Ftheme"
        assert (await h.call("GET", encoded))[1]["key"] == K
        status, body = await h.call("GET", "/api/v1/kv/tenant:acme/none")
        assert (status, body["error"]["code"]) == (404, "not_found")

    run(tmp_path, scenario)


@pytest.mark.parametrize("value", [None, True, 0, -1.5, "ü€😀", [], {}, [1, {"a": [None]}]])
def test_every_json_value_round_trips(tmp_path: Path, value: Any) -> None:
    async def scenario(h: Harness) -> None:
        assert (await h.put(K, value))[1]["value"] == value
        assert (await h.call("GET", f"/api/v1/kv/{K}"))[1]["value"] == value

    run(tmp_path, scenario)


def test_local_reads_ask_storage_for_every_write_this_front_answered(tmp_path: Path) -> None:
    """A local read waits for storage to have applied what the latest ``results`` said
    (``applied``): a storage restarted behind a write this front answered (its last
    COMMIT lost with it) then holds the read until consensus has resent that write."""

    async def scenario(h: Harness) -> None:
        assert (await h.call("GET", f"/api/v1/kv/{K}"))[0] == 404  # nothing answered yet
        await h.put(K, 1)
        await h.put("tenant:acme/other", 2)
        assert (await h.call("GET", f"/api/v1/kv/{K}"))[1]["value"] == 1
        assert (await h.call("GET", "/api/v1/kv?prefix=tenant:acme/"))[0] == 200
        h.node.events.queue.put_nowait(wire.Results("n1", (), 9))  # storage applied 9
        await until(lambda: h.app[PROPOSER].read_floor == 9, "the results delivered")
        h.app[PROPOSER].deliver(wire.Results("n1", (), 5))  # an older one: the floor stays
        h.app[PROPOSER].deliver(wire.Results("n2", (), 20))  # another node's: not ours
        await h.call("GET", f"/api/v1/kv/{K}")
        assert h.node.storage.min_indexes == [0, 2, 2, 9]

    run(tmp_path, scenario)


def test_consistent_read_asks_for_a_read_index(tmp_path: Path) -> None:
    clock = ManualClock()

    async def scenario(h: Harness) -> None:
        await on_clock(clock, h.put(K, 1))
        status, body = await on_clock(clock, h.call("GET", f"/api/v1/kv/{K}?consistent=true"))
        assert status == 200 and body["value"] == 1
        assert h.node.knobs.read_index_calls == 1
        h.node.knobs.leader = None  # asked again while no leader is known, then 503
        status, body = await on_clock(clock, h.call("GET", f"/api/v1/kv/{K}?consistent=true"))
        assert status == 503 and body["error"]["code"] == "unavailable"
        assert h.node.knobs.read_index_calls > 2

    run(tmp_path, scenario, timers=clock)


def test_cas_conflict_bodies(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        assert (await h.put(K, "free", ifVersion=0))[0] == 200
        status, body = await h.put(K, "pro", ifVersion=0)
        assert status == 409 and body["error"]["code"] == "version_conflict"
        assert body["error"]["current"] == entry("free", 1, 1)
        assert (await h.put(K, "pro", ifVersion=1))[1]["version"] == 2
        status, body = await h.put("tenant:acme/none", "x", ifVersion=3)
        assert status == 409 and body["error"]["current"] is None

    run(tmp_path, scenario)


def test_delete_and_if_version(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.put(K, 1)
        status, body = await h.call("DELETE", f"/api/v1/kv/{K}?ifVersion=5")
        assert status == 409 and body["error"]["current"]["version"] == 1
        status, body = await h.call("DELETE", f"/api/v1/kv/{K}?ifVersion=1")
        assert (status, body) == (200, {"key": K, "deleted": True, "version": 1, "revision": 2})
        status, body = await h.call("DELETE", f"/api/v1/kv/{K}")
        assert (status, body["error"]["code"]) == (404, "not_found")

    run(tmp_path, scenario)


def test_list_paging_and_delete_prefix(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        keys = [f"tenant:acme/k/{n}" for n in ("b", "a", "é", "c")]
        for k in keys:
            await h.put(k, k)
        await h.put("tenant:other/k/a", 1)
        seen, cursor = [], None
        while True:
            q = "/api/v1/kv?prefix=tenant:acme/k/&limit=3" + (f"&cursor={cursor}" if cursor else "")
            status, page = await h.call("GET", q)
            assert status == 200 and page["revision"] == 5
            seen += [e["key"] for e in page["entries"]]
            if not (cursor := page["next"]):
                break
        assert seen == sorted(keys, key=str.encode)
        status, body = await h.call("DELETE", "/api/v1/kv?prefix=tenant:acme/k/")
        assert (status, body) == (200, {"deleted": 4, "revision": 6})
        assert (await h.call("GET", "/api/v1/kv?prefix=tenant:acme/"))[1]["entries"] == []
        assert len((await h.call("GET", "/api/v1/kv?prefix=tenant:other/"))[1]["entries"]) == 1

    run(tmp_path, scenario)


def test_batch_results_and_conflict_index(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        ops = [
            {"op": "check", "key": "tenant:a/x", "version": 0},
            {"op": "set", "key": "tenant:a/x", "value": 1},
            {"op": "set", "key": "tenant:a/y", "value": {"n": 2}, "ttlMs": 1000},
            {"op": "delete", "key": "tenant:a/x"},
        ]
        status, body = await h.call("POST", "/api/v1/batch", json={"ops": ops})
        assert status == 200, body
        results = body["results"]
        assert results[0] is None and results[1]["value"] == 1
        assert results[2]["value"] == {"n": 2} and results[2]["expiresAt"] == T0 + 1000
        assert results[3] == {"key": "tenant:a/x", "deleted": True, "version": 1, "revision": 1}
        failing = [
            {"op": "set", "key": "tenant:a/c", "value": 3},
            {"op": "check", "key": "tenant:a/y", "version": 7},
        ]
        status, body = await h.call("POST", "/api/v1/batch", json={"ops": failing})
        assert status == 409 and body["error"]["index"] == 1
        assert body["error"]["current"]["value"] == {"n": 2}
        assert (await h.call("GET", "/api/v1/kv/tenant:a/c"))[0] == 404
        too_many = [{"op": "delete", "key": "tenant:a/x"}] * 129
        for bad in ([], too_many):
            status, body = await h.call("POST", "/api/v1/batch", json={"ops": bad})
            assert (status, body["error"]["code"]) == (400, "invalid_request")
        at_limit = [{"op": "check", "key": "tenant:a/x", "version": 0}] * 128
        assert (await h.call("POST", "/api/v1/batch", json={"ops": at_limit}))[0] == 200

    run(tmp_path, scenario)


def test_ttl_rules_and_expiry(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        status, body = await h.put(K, "x", ttlMs=300)
        assert status == 200 and body["expiresAt"] == T0 + 300
        assert (await h.put(K, "y"))[1]["expiresAt"] is None  # a write clears the expiry
        await h.put(K, "z", expiresAt=T0 + 50)
        h.clock.now = T0 + 50  # expired at now: hidden before any expire is committed
        assert (await h.call("GET", f"/api/v1/kv/{K}"))[0] == 404
        assert (await h.call("GET", "/api/v1/kv?prefix=tenant:acme/"))[1]["entries"] == []
        for bad in ({"ttlMs": 0}, {"ttlMs": -5}, {"ttlMs": 10, "expiresAt": T0 + 99}):
            status, body = await h.put(K, 1, **bad)
            assert (status, body["error"]["code"]) == (400, "invalid_request"), bad

    run(tmp_path, scenario)


def test_value_size_limit_at_and_over(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        limit = 1024  # max_value_bytes in the harness
        at_limit = "x" * (limit - 2)  # JSON text: two quotes plus the characters
        assert (await h.put(K, at_limit))[0] == 200
        status, body = await h.put(K, at_limit + "x")
        assert (status, body["error"]["code"]) == (413, "value_too_large")
        multibyte = "é" * ((limit - 2) // 2 + 1)  # counts UTF-8 bytes, not characters
        assert (await h.put(K, multibyte))[0] == 413
        raw = b'{"value": "' + b"x" * (limit + 64 * 1024) + b'"}'
        status, body = await h.call("PUT", f"/api/v1/kv/{K}", data=raw)
        assert (status, body["error"]["code"]) == (413, "request_too_large")
        ops = [{"op": "set", "key": K, "value": at_limit + "x"}]
        status, body = await h.call("POST", "/api/v1/batch", json={"ops": ops})
        assert (status, body["error"]["code"]) == (413, "value_too_large")

    run(tmp_path, scenario)


def test_unavailable_is_503_with_retry_after(tmp_path: Path) -> None:
    """One ``unavailable`` answer (a leader hand-over) is asked again; a role that keeps
    answering it is a 503 with ``Retry-After``, before the request's deadline."""
    clock = ManualClock()

    async def scenario(h: Harness) -> None:
        h.node.knobs.unavailable = 1
        assert (await on_clock(clock, h.put(K, 1)))[0] == 200
        h.node.knobs.unavailable = 1_000_000  # no leader for good
        proposed = len(h.node.knobs.proposed)

        async def put() -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {FULL}"}
            async with h.client.put(f"/api/v1/kv/{K}", json={"value": 2}, headers=headers) as r:
                assert r.headers["Retry-After"] == "1"
                return r.status, await r.json()

        status, body = await on_clock(clock, put())
        assert (status, body["error"]["code"]) == (503, "unavailable")
        assert len(h.node.knobs.proposed) == proposed  # refused, never appended
        assert h.app[PROPOSER].pending == 0
        h.node.knobs.storage_down = True
        status, body = await on_clock(clock, h.call("GET", f"/api/v1/kv/{K}"))
        assert (status, body["error"]["code"]) == (503, "unavailable")

    run(tmp_path, scenario, timers=clock)


def test_unknown_outcome_waits_for_the_result(tmp_path: Path) -> None:
    clock = ManualClock()

    async def scenario(h: Harness) -> None:
        h.node.knobs.unknown = True  # propose "times out", but the entry is applied
        status, body = await on_clock(clock, h.put(K, 1))
        assert status == 200 and body["version"] == 1

    run(tmp_path, scenario, timers=clock)


def test_result_arriving_later_answers_the_write(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.node.knobs.hold = True
        pending = asyncio.ensure_future(h.put(K, 1))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not pending.done()
        h.node.release()
        assert (await pending)[0] == 200

    run(tmp_path, scenario)


def test_write_refused_by_the_leader_is_proposed_again_and_applied_once(tmp_path: Path) -> None:
    """A forwarded write the leader refused comes back from consensus as ``dropped``:
    certainly not applied, so the front proposes the same command again (a leader
    hand-over refuses for a moment); the client sees one success, applied once."""

    async def scenario(h: Harness) -> None:
        h.node.knobs.hold = True
        headers = {"Authorization": f"Bearer {FULL}"}

        async def put() -> tuple[int, Any]:
            async with h.client.put(f"/api/v1/kv/{K}", json={"value": 1}, headers=headers) as r:
                return r.status, await r.json()

        pending = asyncio.ensure_future(put())
        await until(lambda: bool(h.node.held))
        first = list(h.node.held)
        h.node.refuse_held()
        await until(lambda: bool(h.node.held))  # proposed again
        assert h.node.held == first  # the same command (same request id), not a new write
        h.node.knobs.hold = False
        h.node.release()
        status, body = await asyncio.wait_for(pending, 5)
        assert (status, body["version"], body["value"]) == (200, 1, 1)
        assert h.app[PROPOSER].pending == 0
        status, entry = await h.put(K, 2)  # the refused write was applied once only
        assert (status, entry["version"]) == (200, 2)

    run(tmp_path, scenario, request_timeout_ms=60_000)


def test_write_refused_for_too_long_is_503_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Refused for longer than ``REPROPOSE_WINDOW``: 503 + Retry-After now (certainly not
    applied), not 504 at the deadline (60 s here)."""
    monkeypatch.setattr(writes, "REPROPOSE_WINDOW", 0)

    async def scenario(h: Harness) -> None:
        h.node.knobs.hold = True
        headers = {"Authorization": f"Bearer {FULL}"}

        async def put() -> tuple[int, str | None, Any]:
            async with h.client.put(f"/api/v1/kv/{K}", json={"value": 1}, headers=headers) as r:
                return r.status, r.headers.get("Retry-After"), await r.json()

        pending = asyncio.ensure_future(put())
        await until(lambda: bool(h.node.held))
        h.node.refuse_held()
        status, retry_after, body = await asyncio.wait_for(pending, 5)
        assert (status, retry_after, body["error"]["code"]) == (503, "1", "unavailable")
        assert h.app[PROPOSER].pending == 0
        h.node.knobs.hold = False
        status, entry = await h.put(K, 2)  # the retry applies; the refused write never did
        assert (status, entry["version"], entry["value"]) == (200, 1, 2)

    run(tmp_path, scenario, request_timeout_ms=60_000)


def test_dropped_reports_that_are_not_ours_change_nothing(tmp_path: Path) -> None:
    """Only a waiting write of this node is failed: another origin's command with the
    same request id, an unknown id or undecodable bytes leave the write waiting."""

    async def scenario(h: Harness) -> None:
        h.node.knobs.hold = True
        pending = await h.put_later(K, 1)
        mine = Command.decode(h.node.held[0])
        assert h.node.dropped is not None
        h.node.dropped(
            wire.Dropped(
                (
                    Command("n2", mine.request_id, T0, mine.op).encode(),
                    Command("n1", mine.request_id + 1, T0, mine.op).encode(),
                    b"\xc1 not a command",
                )
            )
        )
        await h.settle()
        assert not pending.done()
        h.node.release()
        assert (await pending)[0] == 200

    run(tmp_path, scenario)


@pytest.mark.slow
def test_no_result_by_the_deadline_is_504(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        h.node.knobs.swallow = True
        status, body = await h.put(K, 1)
        assert (status, body["error"]["code"]) == (504, "timeout")
        assert (await h.call("DELETE", "/api/v1/kv?prefix=tenant:acme/"))[0] == 504

    run(tmp_path, scenario, request_timeout_ms=100)


def test_results_for_other_origins_and_ids_are_ignored(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        other = Command("n2", 7, T0, Set("tenant:a/o", b"1")).encode()
        h.node.apply(other)  # a result for n2 arrives on n1's events
        await h.settle()
        assert (await h.put(K, 1))[0] == 200

    run(tmp_path, scenario)


# -- auth -----------------------------------------------------------------------

AGENT_MATRIX = [
    ("GET", f"/api/v1/kv/{K}", 404),
    ("GET", "/api/v1/kv?prefix=tenant:acme/", 200),
    ("GET", "/api/v1/changes?prefix=tenant:acme/", 200),
    ("GET", "/api/v1/cluster/status", 200),
    ("GET", "/api/v1/cluster/members", 200),
    ("GET", "/api/v1/cluster/backup", 403),
    ("PUT", f"/api/v1/kv/{K}", 403),
    ("DELETE", f"/api/v1/kv/{K}", 403),
    ("DELETE", "/api/v1/kv?prefix=tenant:acme/", 403),
    ("POST", "/api/v1/batch", 403),
    ("POST", "/api/v1/cluster/members", 403),
    ("DELETE", "/api/v1/cluster/members/n2", 403),
    ("POST", "/api/v1/cluster/leader", 403),
    ("POST", "/api/v1/cluster/snapshot", 403),
]


def test_auth_matrix(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        for method, path, agent_status in AGENT_MATRIX:
            for key in (None, "wrong", FULL + "x"):
                status, body = await h.call(method, path, key=key)
                assert (status, body["error"]["code"]) == (401, "unauthorized"), (method, path)
            status, body = await h.call(method, path, key=AGENT)
            assert status == agent_status, (method, path, body)
            if status == 403:
                assert body["error"]["code"] == "forbidden"
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await h.call("GET", path, key=None))[0] == 200
        status, _ = await h.call("GET", f"/api/v1/kv/{K}", key=None,
                                 headers={"Authorization": f"Basic {FULL}"})  # fmt: skip
        assert status == 401

    run(tmp_path, scenario)


def test_insecure_without_keys_allows_everything(tmp_path: Path) -> None:
    from concordance.config import Secrets

    async def scenario(h: Harness) -> None:
        assert (await h.put(K, 1))[0] == 200
        assert (await h.call("GET", f"/api/v1/kv/{K}", key=None))[0] == 200
        assert (await h.call("DELETE", f"/api/v1/kv/{K}", key="anything"))[0] == 200

    run(tmp_path, scenario, insecure=True, secrets=Secrets())


# -- malformed input -------------------------------------------------------------

BAD_REQUESTS = [
    ("PUT", "/api/v1/kv/nottenant/x", {"value": 1}, 400, "invalid_key"),
    ("PUT", "/api/v1/kv/tenant:a", {"value": 1}, 400, "invalid_key"),
    ("PUT", "/api/v1/kv/tenant:a/", {"value": 1}, 400, "invalid_key"),
    ("PUT", "/api/v1/kv/tenant:a/x//y", {"value": 1}, 400, "invalid_key"),
    ("PUT", "/api/v1/kv/tenant:a/x%00", {"value": 1}, 400, "invalid_key"),
    # Regression: a newline in the key did not match the route ("no such route", 404).
    ("PUT", "/api/v1/kv/tenant:x/a%0Ab", {"value": 1}, 400, "invalid_key"),
    ("GET", "/api/v1/kv/tenant:x/a%0Ab", None, 400, "invalid_key"),
    ("DELETE", "/api/v1/kv/tenant:x/a%0Ab", None, 400, "invalid_key"),
    ("GET", "/api/v1/kv/tenant:x/%0A", None, 400, "invalid_key"),
    ("GET", "/api/v1/kv/tenant:x/a%0D%0Ab", None, 400, "invalid_key"),
    ("PUT", "/api/v1/kv/tenant:bad!/x", {"value": 1}, 400, "invalid_key"),
    ("PUT", "/api/v1/kv/tenant:a/x", {}, 400, "invalid_request"),
    ("PUT", "/api/v1/kv/tenant:a/x", {"value": 1, "extra": 2}, 400, "invalid_request"),
    ("PUT", "/api/v1/kv/tenant:a/x", {"value": 1, "ifVersion": "1"}, 400, "invalid_request"),
    ("PUT", "/api/v1/kv/tenant:a/x", {"value": 1, "ifVersion": -1}, 400, "invalid_request"),
    ("PUT", "/api/v1/kv/tenant:a/x", {"value": 1, "ifVersion": True}, 400, "invalid_request"),
    ("PUT", "/api/v1/kv/tenant:a/x", {"value": 1, "ifVersion": 1.0}, 400, "invalid_request"),
    ("PUT", "/api/v1/kv/tenant:a/x", {"value": 1, "expiresAt": "x"}, 400, "invalid_request"),
    ("PUT", "/api/v1/kv/tenant:a/x", {"value": 1, "ttlMs": 2**63}, 400, "invalid_request"),
    ("PUT", "/api/v1/kv/tenant:a/x", [1], 400, "invalid_request"),
    ("GET", "/api/v1/kv?prefix=tenant:a", None, 400, "invalid_key"),
    ("GET", "/api/v1/kv?prefix=", None, 400, "invalid_key"),
    ("GET", "/api/v1/kv", None, 400, "invalid_key"),
    ("GET", "/api/v1/kv?prefix=tenant:a/&limit=0", None, 400, "invalid_request"),
    ("GET", "/api/v1/kv?prefix=tenant:a/&limit=1001", None, 400, "invalid_request"),
    ("GET", "/api/v1/kv?prefix=tenant:a/&limit=x", None, 400, "invalid_request"),
    ("GET", "/api/v1/kv?prefix=tenant:a/&limit=1&limit=2", None, 400, "invalid_request"),
    ("GET", "/api/v1/kv?prefix=tenant:a/&cursor=!!", None, 400, "invalid_request"),
    ("GET", "/api/v1/kv/tenant:a/x?consistent=maybe", None, 400, "invalid_request"),
    ("GET", "/api/v1/changes?prefix=tenant:a/&since=-1", None, 400, "invalid_request"),
    ("GET", "/api/v1/changes?prefix=tenant:a/&since=1e3", None, 400, "invalid_request"),
    ("GET", "/api/v1/changes?prefix=tenant:a/&waitMs=60001", None, 400, "invalid_request"),
    ("GET", "/api/v1/changes?prefix=tenant:a/&limit=10001", None, 400, "invalid_request"),
    ("GET", "/api/v1/changes?prefix=tenant:a/&since=99999999999999999999", None, 400,
     "invalid_request"),
    ("DELETE", "/api/v1/kv?prefix=tenant:a", None, 400, "invalid_key"),
    ("DELETE", "/api/v1/kv/tenant:a/x?ifVersion=abc", None, 400, "invalid_request"),
    ("POST", "/api/v1/batch", {"ops": [{"op": "nope", "key": "tenant:a/x"}]}, 400,
     "invalid_request"),
    ("POST", "/api/v1/batch", {"ops": "x"}, 400, "invalid_request"),
    ("POST", "/api/v1/batch", {"ops": [], "more": 1}, 400, "invalid_request"),
    ("POST", "/api/v1/batch", {"ops": [1]}, 400, "invalid_request"),
    ("POST", "/api/v1/batch", {"ops": [{"op": "set", "key": "tenant:a/x"}]}, 400,
     "invalid_request"),
    ("POST", "/api/v1/batch", {"ops": [{"op": "set", "key": 5, "value": 1}]}, 400,
     "invalid_request"),
    ("POST", "/api/v1/batch", {"ops": [{"op": "set", "key": "bad", "value": 1}]}, 400,
     "invalid_key"),
    ("POST", "/api/v1/batch", {"ops": [{"op": "check", "key": "tenant:a/x"}]}, 400,
     "invalid_request"),
    ("POST", "/api/v1/batch", {"ops": [{"op": "delete", "key": "tenant:a/x", "v": 1}]}, 400,
     "invalid_request"),
    ("POST", "/api/v1/cluster/members", {"id": "n2"}, 400, "invalid_request"),
    ("POST", "/api/v1/cluster/members", {"id": "bad id", "address": "h:1"}, 400,
     "invalid_request"),
    ("POST", "/api/v1/cluster/members", {"id": "n2", "address": "nope"}, 400, "invalid_request"),
    ("POST", "/api/v1/cluster/leader", {"to": 5}, 400, "invalid_request"),
    ("POST", "/api/v1/cluster/leader", {"who": "n2"}, 400, "invalid_request"),
    ("PATCH", "/api/v1/kv/tenant:a/x", None, 405, "method_not_allowed"),
    ("GET", "/api/v1/nothing", None, 404, "not_found"),
]  # fmt: skip


def test_bad_input_gets_a_clear_4xx(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        for method, path, body, status, code in BAD_REQUESTS:
            got_status, got = await h.call(method, path, json=body)
            assert (got_status, got["error"]["code"]) == (status, code), (method, path, body, got)
        assert h.node.knobs.proposed == []

    run(tmp_path, scenario)


MALFORMED = [
    b"", b"{", b"\xff\xfe", b"null", b'"x"', b"[]", b'{"value": 1,}', b"1e999999",
    b'{"value": NaN}', b'{"value": Infinity}', b'{"value": 1e999}', b'{"value": "\\ud800"}',
    b"[" * 60_000, b'{"value": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"value": 1' + b"0" * 5000 + b"}", b'{"ops": [{"op": "set", "key": "tenant:a/x"}]}',
]  # fmt: skip


def test_malformed_bodies_are_400_never_5xx(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        for raw in MALFORMED:
            for method, path in (("PUT", f"/api/v1/kv/{K}"), ("POST", "/api/v1/batch")):
                status, body = await h.call(method, path, data=raw)
                assert status == 400, (raw[:40], method, status, body)
                assert body["error"]["code"] == "invalid_request"
        status, body = await h.call("POST", "/api/v1/cluster/members", data=b"{")
        assert status == 400

    run(tmp_path, scenario)


# -- changes ----------------------------------------------------------------------


def test_changes_since_and_compaction(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.put("tenant:a/x", 1)
        await h.put("tenant:b/x", 2)
        await h.put("tenant:a/credentials/k", {"secret": 1})
        status, body = await h.call("GET", "/api/v1/changes?prefix=tenant:a/&since=0")
        assert status == 200 and body["revision"] == 3
        assert [(c["key"], c["value"]) for c in body["changes"]] == [
            ("tenant:a/x", 1),
            ("tenant:a/credentials/k", {"secret": 1}),
        ]
        status, body = await h.call("GET", "/api/v1/changes?prefix=tenant:a/&since=1&limit=1")
        assert [c["revision"] for c in body["changes"]] == [3]
        for i in range(40):
            await h.put("tenant:a/x", i)
        status, body = await h.call("GET", "/api/v1/changes?prefix=tenant:a/&since=0")
        assert (status, body["error"]["code"]) == (410, "compacted")
        assert body["error"]["oldest"] > 1

    run(tmp_path, scenario, retention=16)


def test_long_poll_wakes_on_a_change_under_its_prefix(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.put("tenant:a/x", 1)
        poll = asyncio.ensure_future(
            h.call("GET", "/api/v1/changes?prefix=tenant:a/&since=1&waitMs=10000")
        )
        await h.settle()
        await h.put("tenant:b/x", 1)  # another tenant: no wake-up with changes
        await h.settle()
        assert not poll.done()
        await h.put("tenant:a/y", 2)
        status, body = await asyncio.wait_for(poll, 5)
        assert status == 200 and [c["key"] for c in body["changes"]] == ["tenant:a/y"]
        assert body["revision"] == 3

    run(tmp_path, scenario)


def test_long_poll_after_a_gap_rereads_storage(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.put("tenant:a/x", 1)
        await h.settle()
        poll = asyncio.ensure_future(
            h.call("GET", "/api/v1/changes?prefix=tenant:a/&since=1&waitMs=10000")
        )
        await h.settle()
        h.node.knobs.drop_batches = 1
        await h.put("tenant:a/y", 2)  # its batch is lost ...
        await h.put("tenant:b/z", 3)  # ... the next one reveals the gap
        status, body = await asyncio.wait_for(poll, 5)
        assert status == 200 and [c["key"] for c in body["changes"]] == ["tenant:a/y"]

    run(tmp_path, scenario)


@pytest.mark.slow
def test_long_poll_times_out_empty(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.put("tenant:a/x", 1)
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, body = await h.call("GET", "/api/v1/changes?prefix=tenant:a/&since=1&waitMs=200")
        assert (status, body) == (200, {"changes": [], "revision": 1})
        assert loop.time() - started >= 0.19

    run(tmp_path, scenario)


def test_existing_changes_answer_without_waiting(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.put("tenant:a/x", 1)
        status, body = await asyncio.wait_for(
            h.call("GET", "/api/v1/changes?prefix=tenant:a/&since=0&waitMs=60000"), 5
        )
        assert status == 200 and len(body["changes"]) == 1

    run(tmp_path, scenario)


def test_error_bodies_are_json(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        async with h.client.get("/api/v1/kv/tenant:a/x") as resp:
            assert resp.status == 401
            assert resp.headers["Content-Type"].startswith("application/json")
            assert set(json.loads(await resp.read())["error"]) == {"code", "message"}

    run(tmp_path, scenario)
