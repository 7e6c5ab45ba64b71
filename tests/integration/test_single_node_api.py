"""API.md against one real node: every route, status and error code."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.integration.helpers import AGENT_KEY, API_KEY, Node, wait_for

_tenants = itertools.count()


def tenant() -> str:
    return f"tenant:t{next(_tenants)}-{uuid.uuid4().hex[:6]}"


def error_code(resp: Any) -> str:
    return str(resp.json()["error"]["code"])


def test_put_get_entry_shape(node: Node) -> None:
    key = f"{tenant()}/user:u1/preferences/theme"
    put = node.put(key, {"mode": "dark"})
    assert put.status == 200, put.body
    entry = put.json()
    assert entry["key"] == key and entry["value"] == {"mode": "dark"}
    assert entry["version"] == 1 and entry["expiresAt"] is None
    assert entry["createdAt"] == entry["updatedAt"] > 1_700_000_000_000
    got = node.get(key)
    assert got.status == 200 and got.json() == entry
    again = node.put(key, "light").json()
    assert again["version"] == 2 and again["revision"] > entry["revision"]
    assert again["createdAt"] == entry["createdAt"]


def test_every_json_value_round_trips(node: Node) -> None:
    base = tenant()
    values: list[Any] = [None, True, 0, -1.5, "ü€😀", [], {}, [1, {"a": [None]}]]
    for i, value in enumerate(values):
        key = f"{base}/v/{i}"
        assert node.put(key, value).status == 200
        assert node.get(key).json()["value"] == value


def test_get_absent_is_404(node: Node) -> None:
    resp = node.get(f"{tenant()}/nothing")
    assert resp.status == 404 and error_code(resp) == "not_found"


def test_consistent_read_sees_the_write(node: Node) -> None:
    key = f"{tenant()}/c"
    node.put(key, 1)
    node.put(key, 2)
    resp = node.get(key, consistent="true")
    assert resp.status == 200 and resp.json()["value"] == 2


def test_cas(node: Node) -> None:
    key = f"{tenant()}/settings/plan"
    assert node.put(key, "free", ifVersion=0).status == 200
    conflict = node.put(key, "pro", ifVersion=0)
    assert conflict.status == 409 and error_code(conflict) == "version_conflict"
    assert conflict.json()["error"]["current"]["value"] == "free"
    assert node.put(key, "pro", ifVersion=1).json()["version"] == 2
    stale = node.put(key, "x", ifVersion=1)
    assert stale.status == 409
    absent = node.put(f"{tenant()}/none", "x", ifVersion=3)
    assert absent.status == 409 and absent.json()["error"]["current"] is None


def test_delete_keeps_version_and_recreate_continues(node: Node) -> None:
    key = f"{tenant()}/d"
    node.put(key, 1)
    node.put(key, 2)
    deleted = node.request("DELETE", f"/api/v1/kv/{key}")
    assert deleted.status == 200
    body = deleted.json()
    assert body["deleted"] is True and body["version"] == 2 and body["key"] == key
    assert node.get(key).status == 404
    again = node.request("DELETE", f"/api/v1/kv/{key}")
    assert again.status == 404 and error_code(again) == "not_found"
    assert node.put(key, 3).json()["version"] == 3


def test_delete_if_version(node: Node) -> None:
    key = f"{tenant()}/d"
    node.put(key, 1)
    wrong = node.request("DELETE", f"/api/v1/kv/{key}?ifVersion=5")
    assert wrong.status == 409
    assert node.request("DELETE", f"/api/v1/kv/{key}?ifVersion=1").status == 200


def test_list_order_paging_and_revision(node: Node) -> None:
    base = tenant()
    keys = [f"{base}/k/{name}" for name in ["b", "a", "é", "c", "Z", "a0"]]
    for k in keys:
        node.put(k, k)
    seen: list[str] = []
    cursor = None
    while True:
        q = f"/api/v1/kv?prefix={base}/k/&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = node.request("GET", q).json()
        assert len(page["entries"]) <= 2 and page["revision"] >= 1
        seen += [e["key"] for e in page["entries"]]
        cursor = page["next"]
        if not cursor:
            break
    assert seen == sorted(keys, key=lambda k: k.encode())


def test_pages_of_large_values_end_before_the_limit_and_page_on(node: Node) -> None:
    """A list or change page ends once it holds 4 MiB of keys and values (SECURITY.md
    section 1), whatever ``limit`` allows: 6 values of almost 1 MiB come as pages of
    4, with ``next`` (lists) or a ``revision`` at their last event (changes)."""
    base = tenant()
    big = "x" * ((1 << 20) - 8)  # its JSON text just under the 1 MiB value limit
    for i in range(6):
        assert node.put(f"{base}/big/{i}", big).status == 200
    first = node.request("GET", f"/api/v1/kv?prefix={base}/big/&limit=100").json()
    assert len(first["entries"]) == 4 and first["next"]
    rest = node.request(
        "GET", f"/api/v1/kv?prefix={base}/big/&limit=100&cursor={first['next']}"
    ).json()
    assert [e["key"] for e in first["entries"] + rest["entries"]] == [
        f"{base}/big/{i}" for i in range(6)
    ] and rest["next"] is None
    feed = node.request("GET", f"/api/v1/changes?prefix={base}/big/&since=0").json()
    assert len(feed["changes"]) == 4 and feed["revision"] == feed["changes"][-1]["revision"]
    more = node.request(
        "GET", f"/api/v1/changes?prefix={base}/big/&since={feed['revision']}"
    ).json()
    assert [c["key"] for c in feed["changes"] + more["changes"]] == [
        f"{base}/big/{i}" for i in range(6)
    ]


def test_delete_prefix_is_atomic(node: Node) -> None:
    base = tenant()
    for i in range(5):
        node.put(f"{base}/p/{i}", i)
    node.put(f"{base}/other", 1)
    resp = node.request("DELETE", f"/api/v1/kv?prefix={base}/p/")
    assert resp.status == 200 and resp.json()["deleted"] == 5
    changes = node.request("GET", f"/api/v1/changes?prefix={base}/p/&since=0").json()
    deletes = [c for c in changes["changes"] if c["type"] == "delete"]
    assert len(deletes) == 5 and len({c["revision"] for c in deletes}) == 1
    assert node.get(f"{base}/other").status == 200


def test_batch(node: Node) -> None:
    base = tenant()
    ops = [
        {"op": "check", "key": f"{base}/a", "version": 0},
        {"op": "set", "key": f"{base}/a", "value": 1},
        {"op": "set", "key": f"{base}/b", "value": 2, "ttlMs": 60000},
    ]
    resp = node.request("POST", "/api/v1/batch", {"ops": ops})
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["results"][0] is None
    assert body["results"][1]["revision"] == body["results"][2]["revision"] == body["revision"]
    failing = [{"op": "set", "key": f"{base}/c", "value": 3},
               {"op": "check", "key": f"{base}/a", "version": 7}]  # fmt: skip
    conflict = node.request("POST", "/api/v1/batch", {"ops": failing})
    assert conflict.status == 409 and conflict.json()["error"]["index"] == 1
    assert node.get(f"{base}/c").status == 404
    for bad in ([], [{"op": "set", "key": f"{base}/x", "value": 1}] * 129):
        r = node.request("POST", "/api/v1/batch", {"ops": bad})
        assert r.status == 400 and error_code(r) == "invalid_request"


def test_ttl_hides_then_expires_with_event(node: Node) -> None:
    key = f"{tenant()}/sessions/s1"
    put = node.put(key, "x", ttlMs=300).json()
    assert put["expiresAt"] is not None
    wait_for(lambda: node.get(key).status == 404, 10, "entry hidden after expiry")

    def expired_event() -> Any:
        prefix = key.rsplit("/", 1)[0] + "/"
        changes = node.request("GET", f"/api/v1/changes?prefix={prefix}&since=0").json()
        return [c for c in changes["changes"] if c["type"] == "expire"]

    events = wait_for(expired_event, 15, "expire event")
    assert events[0]["key"] == key and "value" not in events[0]


def test_write_without_ttl_clears_expiry(node: Node) -> None:
    key = f"{tenant()}/s"
    node.put(key, 1, ttlMs=60000)
    assert node.put(key, 2).json()["expiresAt"] is None


def test_ttl_rules(node: Node) -> None:
    key = f"{tenant()}/s"
    for body in ({"value": 1, "ttlMs": 0}, {"value": 1, "ttlMs": -5},
                 {"value": 1, "ttlMs": 10, "expiresAt": 99999999999999}):  # fmt: skip
        resp = node.request("PUT", f"/api/v1/kv/{key}", body)
        assert resp.status == 400 and error_code(resp) == "invalid_request"


def test_changes_since_and_long_poll(node: Node) -> None:
    base = tenant()
    first = node.put(f"{base}/a", 1).json()["revision"]
    node.put(f"{base}/b", 2)
    resp = node.request("GET", f"/api/v1/changes?prefix={base}/&since={first - 1}").json()
    assert [c["key"] for c in resp["changes"]] == [f"{base}/a", f"{base}/b"]
    assert resp["changes"][0]["value"] == 1 and resp["changes"][0]["type"] == "set"
    since = resp["revision"]

    started = time.monotonic()
    empty = node.request("GET", f"/api/v1/changes?prefix={base}/&since={since}&waitMs=300").json()
    assert empty["changes"] == [] and time.monotonic() - started >= 0.25

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(
            node.request, "GET", f"/api/v1/changes?prefix={base}/&since={since}&waitMs=10000"
        )
        time.sleep(0.3)
        node.put(f"{base}/c", 3)
        woke = waiting.result(timeout=10).json()
    assert [c["key"] for c in woke["changes"]] == [f"{base}/c"]


def test_concurrent_cas_each_version_won_once(node: Node) -> None:
    key = f"{tenant()}/counter"
    node.put(key, 0)

    def writer(worker: int) -> list[int]:
        won = []
        for _ in range(15):
            current = node.get(key).json()
            resp = node.put(key, worker, ifVersion=current["version"])
            if resp.status == 200:
                won.append(resp.json()["version"])
            else:
                assert resp.status == 409, resp.body
        return won

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(writer, range(6)))
    versions = sorted(v for won in results for v in won)
    assert versions == list(range(2, 2 + len(versions))), "a version was won twice or skipped"
    assert node.get(key).json()["version"] == 1 + len(versions)


def test_auth(node: Node) -> None:
    key = f"{tenant()}/a"
    assert node.request("GET", f"/api/v1/kv/{key}", auth=None).status == 401
    assert error_code(node.request("GET", f"/api/v1/kv/{key}", auth="wrong")) == "unauthorized"
    node.put(key, 1)
    assert node.request("GET", f"/api/v1/kv/{key}", auth=AGENT_KEY).status == 200
    assert node.request("GET", f"/api/v1/kv?prefix={key}", auth=AGENT_KEY).status == 200
    forbidden = node.request("PUT", f"/api/v1/kv/{key}", {"value": 2}, auth=AGENT_KEY)
    assert forbidden.status == 403 and error_code(forbidden) == "forbidden"
    assert node.request("DELETE", f"/api/v1/kv/{key}", auth=AGENT_KEY).status == 403
    assert node.request("GET", "/api/v1/cluster/backup", auth=AGENT_KEY).status == 403
    assert node.request("GET", "/api/v1/cluster/status", auth=AGENT_KEY).status == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert node.request("GET", path, auth=None).status == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("PUT", "/api/v1/kv/nottenant/x", {"value": 1}, 400, "invalid_key"),
        ("PUT", "/api/v1/kv/tenant:a", {"value": 1}, 400, "invalid_key"),
        ("PUT", "/api/v1/kv/tenant:a/", {"value": 1}, 400, "invalid_key"),
        ("PUT", "/api/v1/kv/tenant:a/x//y", {"value": 1}, 400, "invalid_key"),
        ("PUT", "/api/v1/kv/tenant:a/../b", {"value": 1}, 400, "invalid_key"),
        ("PUT", "/api/v1/kv/tenant:a/x%00", {"value": 1}, 400, "invalid_key"),
        ("PUT", "/api/v1/kv/tenant:bad!/x", {"value": 1}, 400, "invalid_key"),
        ("PUT", "/api/v1/kv/tenant:a/x", {}, 400, "invalid_request"),
        ("PUT", "/api/v1/kv/tenant:a/x", {"value": 1, "extra": 2}, 400, "invalid_request"),
        ("PUT", "/api/v1/kv/tenant:a/x", {"value": 1, "ifVersion": "1"}, 400, "invalid_request"),
        ("PUT", "/api/v1/kv/tenant:a/x", {"value": 1, "ifVersion": -1}, 400, "invalid_request"),
        ("PUT", "/api/v1/kv/tenant:a/x", [1], 400, "invalid_request"),
        ("GET", "/api/v1/kv?prefix=tenant:a", None, 400, "invalid_key"),
        ("GET", "/api/v1/kv?prefix=", None, 400, "invalid_key"),
        ("GET", "/api/v1/kv?prefix=tenant:a/&limit=0", None, 400, "invalid_request"),
        ("GET", "/api/v1/kv?prefix=tenant:a/&limit=1001", None, 400, "invalid_request"),
        ("GET", "/api/v1/kv?prefix=tenant:a/&limit=x", None, 400, "invalid_request"),
        ("GET", "/api/v1/changes?prefix=tenant:a/&since=-1", None, 400, "invalid_request"),
        ("GET", "/api/v1/changes?prefix=tenant:a/&waitMs=60001", None, 400, "invalid_request"),
        ("GET", "/api/v1/changes?prefix=tenant:a/&limit=10001", None, 400, "invalid_request"),
        ("DELETE", "/api/v1/kv?prefix=tenant:a", None, 400, "invalid_key"),
        ("DELETE", "/api/v1/kv/tenant:a/x?ifVersion=abc", None, 400, "invalid_request"),
        (
            "POST",
            "/api/v1/batch",
            {"ops": [{"op": "nope", "key": "tenant:a/x"}]},
            400,
            "invalid_request",
        ),
        ("POST", "/api/v1/batch", {"ops": "x"}, 400, "invalid_request"),
    ],
)
def test_bad_input_gets_a_clear_4xx(
    node: Node, method: str, path: str, body: Any, status: int, code: str
) -> None:
    resp = node.request(method, path, body)
    assert resp.status == status, resp.body
    assert error_code(resp) == code


def test_malformed_bodies_never_5xx(node: Node) -> None:
    for raw in (b"{", b"\xff\xfe", b"null", b'"x"', b"[]", b'{"value": 1,}', b"1e999999"):
        resp = node.request("PUT", "/api/v1/kv/tenant:a/m", raw=raw)
        assert resp.status == 400, (raw, resp.status, resp.body)
        resp = node.request("POST", "/api/v1/batch", raw=raw)
        assert resp.status == 400, (raw, resp.status, resp.body)


def test_size_limits(node: Node) -> None:
    key = f"{tenant()}/big"
    limit = 1 << 20
    at_limit = "x" * (limit - 2)  # its JSON encoding is exactly the limit
    assert node.put(key, at_limit).status == 200
    over = node.put(key, at_limit + "x")
    assert over.status == 413 and error_code(over) == "value_too_large"
    huge = node.request(
        "PUT", f"/api/v1/kv/{key}", raw=b'{"value": "' + b"x" * (limit + 70000) + b'"}'
    )
    assert huge.status == 413 and error_code(huge) == "request_too_large"


def test_credentials_are_encrypted_and_readable(node: Node) -> None:
    key = f"{tenant()}/credentials/github"
    secret = {"token": "ghp_plaintext_marker_5e1c"}
    assert node.put(key, secret).status == 200
    assert node.get(key).json()["value"] == secret


def test_cluster_status_and_members(node: Node) -> None:
    status = node.request("GET", "/api/v1/cluster/status").json()
    assert status["nodeId"] == "n1" and status["role"] == "leader" and status["leaderId"] == "n1"
    assert status["commitIndex"] >= status["appliedIndex"] - 0 >= 1
    assert status["members"][0]["id"] == "n1" and status["members"][0]["voter"] is True
    for role in ("front", "consensus", "storage"):
        assert status["roles"][role]["up"] is True and status["roles"][role]["pid"] > 0
    members = node.request("GET", "/api/v1/cluster/members").json()["members"]
    assert [m["id"] for m in members] == ["n1"]


def test_snapshot_and_backup(node: Node) -> None:
    node.put(f"{tenant()}/x", 1)
    snap = node.request("POST", "/api/v1/cluster/snapshot")
    assert snap.status == 200, snap.body
    assert snap.json()["index"] >= 1 and snap.json()["bytes"] > 0
    backup = node.request("GET", "/api/v1/cluster/backup")
    assert backup.status == 200 and backup.body[:16] == b"SQLite format 3\x00"


def test_metrics_text(node: Node) -> None:
    text = node.request("GET", "/metrics", auth=None).body.decode()
    assert "# TYPE" in text and "raft" in text
    assert API_KEY not in text


def test_readyz_and_healthz(node: Node) -> None:
    assert node.request("GET", "/healthz", auth=None).status == 200
    assert node.request("GET", "/readyz", auth=None).status == 200
    body = node.request("GET", "/healthz", auth=None).body
    json.loads(body or b"{}")


def test_change_retention_is_configurable_and_older_history_is_410(root: Any) -> None:
    """API.md §3.2: the history keeps the last N revisions (configurable); asking
    for older is ``410 compacted`` with ``oldest``."""
    with Node("n1", data=root / "n1", extra_env={"CONCORDANCE_CHANGE_RETENTION": "32"}) as n:
        base = tenant()
        for i in range(48):
            assert n.put(f"{base}/k{i % 4}", i).status == 200
        old = n.request("GET", f"/api/v1/changes?prefix={base}/&since=0")
        assert old.status == 410 and error_code(old) == "compacted"
        oldest = old.json()["error"]["oldest"]
        assert 0 < oldest <= 48 - 32
        recent = n.request("GET", f"/api/v1/changes?prefix={base}/&since={48 - 32}").json()
        assert [c["value"] for c in recent["changes"]] == list(range(48 - 32, 48))
