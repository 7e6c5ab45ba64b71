"""Every route of the front, in one table (STYLE.md 14).

Route names matter: the auth middleware decides who may call a route by its
name (``healthz``/``readyz``/``metrics``/``openapi`` are public, ``raft`` needs the
cluster key, ``cluster_backup`` is closed to the agent key), and the metrics
middleware labels requests by the route's template, never by its values.
"""

from __future__ import annotations

from aiohttp import web

from concordance.front import cluster, kv, openapi, peers, restart, stream

__all__ = ["KEY_ROUTE", "setup_routes"]

KEY_ROUTE = r"/api/v1/kv/{key:[\s\S]+}"


def setup_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/healthz", cluster.healthz, name="healthz", allow_head=False)
    r.add_get("/readyz", cluster.readyz, name="readyz", allow_head=False)
    r.add_get("/metrics", cluster.metrics, name="metrics", allow_head=False)
    r.add_get("/raft", peers.raft_handler, name="raft", allow_head=False)
    r.add_get("/stream", stream.stream_handler, name="stream", allow_head=False)

    # [\s\S], not ".": the route regex has no DOTALL, so "." would not match a
    # percent-decoded newline and a key like tenant:x/a%0Ab would be answered
    # "no such route" (404) instead of 400 invalid_key by the key validator.
    key = r.add_resource(KEY_ROUTE, name="kv_key")
    key.add_route("GET", kv.get_key)
    key.add_route("PUT", kv.put_key)
    key.add_route("DELETE", kv.delete_key)
    keys = r.add_resource("/api/v1/kv", name="kv")
    keys.add_route("GET", kv.list_keys)
    keys.add_route("DELETE", kv.delete_prefix)
    r.add_post("/api/v1/batch", kv.batch, name="batch")
    r.add_get("/api/v1/changes", kv.changes, name="changes", allow_head=False)
    r.add_get("/api/v1/openapi.json", openapi.openapi_handler, name="openapi", allow_head=False)

    r.add_get("/api/v1/cluster/status", cluster.status, name="cluster_status", allow_head=False)
    members = r.add_resource("/api/v1/cluster/members", name="cluster_members")
    members.add_route("GET", cluster.members)
    members.add_route("POST", cluster.add_member)
    r.add_delete("/api/v1/cluster/members/{id}", cluster.remove_member, name="cluster_member")
    r.add_post("/api/v1/cluster/leader", cluster.leader, name="cluster_leader")
    r.add_post("/api/v1/cluster/snapshot", cluster.snapshot, name="cluster_snapshot")
    r.add_post(
        "/api/v1/cluster/roles/{role}/restart", restart.restart_role, name="cluster_role_restart"
    )
    r.add_get("/api/v1/cluster/backup", cluster.backup, name="cluster_backup", allow_head=False)
