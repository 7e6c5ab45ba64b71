"""Cluster, health and metrics routes (API.md §3, §3.3).

These answer operators, so they favour a prompt, partial answer over a
complete late one: each role is asked with a short timeout, and a role that
does not answer shows up as down (``up: false``) or as null fields instead of
failing the whole request. Role process states come from the node's
supervisor (the app's ``SUPERVISOR``, a blocking XML-RPC call run in an
executor); without one, the front reports itself and judges the other roles
by whether they answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from typing import Any, Final

from aiohttp import web

from concordance.config import ROLES, ConfigError, parse_address, validate_node_id
from concordance.errors import InvalidRequest, Timeout, Unavailable
from concordance.front import metrics as prom
from concordance.front.app_state import (
    CLIENTS,
    CONFIG,
    GATE,
    HUB,
    METRICS,
    PROBES,
    PROPOSER,
    STREAMS,
    SUPERVISOR,
    TIMERS,
)
from concordance.front.codec import parse_json
from concordance.front.kv import json_response
from concordance.front.validate import require_object
from concordance.protocol import wire

__all__ = [
    "add_member",
    "backup",
    "healthz",
    "leader",
    "members",
    "metrics",
    "readyz",
    "remove_member",
    "snapshot",
    "status",
]

log = logging.getLogger(__name__)

PROBE_TIMEOUT: Final = 1.0  # seconds a status probe of one role may take
ROLE_STATES_TIMEOUT: Final = 2.0
MEMBERSHIP_WAIT: Final = 2.0  # seconds a member change waits to show in the status
MEMBERSHIP_POLL: Final = 0.05  # seconds between two looks for the change in the status
HEAVY_TIMEOUT: Final = 60.0  # snapshot and backup
CHUNK: Final = 256 * 1024


async def _probe(coro: Any) -> Any:
    """The result of a role call, or None if the role did not answer."""
    try:
        return await coro
    except Exception as e:  # any failure of a probe means "down" here
        log.debug("probe failed: %s", e)
        return None


async def _role_states(app: web.Application) -> dict[str, dict[str, Any]] | None:
    loop = asyncio.get_running_loop()
    call = loop.run_in_executor(None, app[SUPERVISOR].role_states)
    try:
        states = await asyncio.wait_for(call, ROLE_STATES_TIMEOUT)
    except Exception as e:
        log.debug("no role states from the supervisor: %s", e)
        return None
    return states if isinstance(states, dict) else None


def _roles(
    states: dict[str, dict[str, Any]] | None, answered: dict[str, bool]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        state = states.get(role) if states is not None else None
        if isinstance(state, dict) and "up" in state:
            pid = state.get("pid")
            # a role that just answered is up, whatever an unreachable supervisor reported
            up = bool(state["up"]) or answered.get(role, False)
            out[role] = {"pid": pid if isinstance(pid, int) else None, "up": up}
        elif role == "front":
            out[role] = {"pid": os.getpid(), "up": True}
        else:  # unknown to the supervisor: judge by whether it answered just now
            out[role] = {"pid": None, "up": answered.get(role, False)}
    # the front that answers: supervisord knows only its keeper (procs/front_keeper.py)
    out["front"] = {"pid": os.getpid(), "up": True}
    return out


def _members(st: wire.StatusOk) -> list[dict[str, Any]]:
    return [
        {"id": m.node_id, "address": m.address, "voter": m.voter, "matchIndex": m.match}
        for m in st.members
    ]


async def status(request: web.Request) -> web.Response:
    app = request.app
    clients, cfg = app[CLIENTS], app[CONFIG]
    st, ss, states = await asyncio.gather(
        _probe(clients.consensus.status(PROBE_TIMEOUT)),
        _probe(clients.storage.status(PROBE_TIMEOUT)),
        _role_states(app),
    )
    answered = {"consensus": st is not None, "storage": ss is not None}
    body: dict[str, Any] = {
        "nodeId": cfg.node_id,
        "role": st.role if st else None,
        "term": st.term if st else None,
        "leaderId": st.leader_id if st else None,
        "commitIndex": st.commit if st else None,
        "appliedIndex": ss.applied_index if ss else (st.applied if st else None),
        "revision": ss.revision if ss else None,
        "members": _members(st) if st else [],
        "member": any(m.node_id == cfg.node_id for m in st.members) if st else None,
        "roles": _roles(states, answered),
    }
    return json_response(body)


async def members(request: web.Request) -> web.Response:
    st = await request.app[CLIENTS].consensus.status(PROBE_TIMEOUT * 2)
    return json_response({"members": _members(st)})


async def _object_body(request: web.Request, *, optional: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if optional and not raw.strip():
        return {}
    return require_object(parse_json(raw))


def _node_id(value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequest("id must be a string")
    try:
        return validate_node_id(value)
    except ConfigError as e:
        raise InvalidRequest(str(e)) from None


def _in_effect(op: str, node_id: str, address: str, st: wire.StatusOk) -> bool:
    """Whether ``op`` on ``node_id`` already shows in ``st`` (so asking again changes nothing).

    Raises:
        InvalidRequest: ``node_id`` is a member at another address (node ids are never reused).
    """
    member = next((m for m in st.members if m.node_id == node_id), None)
    if member is None:
        return op == "remove"
    if address and member.address and member.address != address:
        raise InvalidRequest(
            f"{node_id} is already a member at {member.address}; node ids are never reused"
        )
    return op == "add_learner" or (op == "add_voter" and member.voter)


async def _change_members(
    request: web.Request, op: str, node_id: str, address: str
) -> web.Response:
    """Propose a membership change and answer once it shows in this node's membership.

    Idempotent: a change already in effect is answered at once without a new
    proposal, so a joiner that lost an answer may simply ask again. On a
    follower the change is forwarded to the leader, which may refuse it (another
    change is still uncommitted) without telling us: if it has not shown here
    after ``MEMBERSHIP_WAIT``, the answer is ``504 timeout`` (it may still
    take effect; ask again or check ``GET /members``).
    """
    cfg, consensus = request.app[CONFIG], request.app[CLIENTS].consensus
    st = await consensus.status(PROBE_TIMEOUT * 2)
    if _in_effect(op, node_id, address, st):
        return json_response({"members": _members(st)})
    await consensus.conf_change(op, node_id, address, cfg.request_timeout_ms / 1000)
    timers = request.app[TIMERS]
    deadline = timers.monotonic() + MEMBERSHIP_WAIT
    while True:
        st = await consensus.status(PROBE_TIMEOUT * 2)
        if _in_effect(op, node_id, "", st):
            return json_response({"members": _members(st)})
        if timers.monotonic() >= deadline:
            raise Timeout(
                f"the change ({op} {node_id}) has not shown on {cfg.node_id} yet: the leader may"
                " have refused it (one membership change at a time); it may still take effect"
            )
        await timers.sleep(MEMBERSHIP_POLL)


async def add_member(request: web.Request) -> web.Response:
    """``{"id", "address", "voter"?}``: add as a learner, or as / promote to a voter."""
    body = await _object_body(request)
    unknown = body.keys() - {"id", "address", "voter"}
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    node_id = _node_id(body.get("id"))
    address = body.get("address")
    voter = body.get("voter", False)
    if not isinstance(address, str) or not isinstance(voter, bool):
        raise InvalidRequest("address must be a HOST:PORT string and voter a boolean")
    try:
        parse_address(address)
    except ConfigError as e:
        raise InvalidRequest(str(e)) from None
    cfg = request.app[CONFIG]
    problem = cfg.secrets.cluster_key_problem()
    if problem is not None:
        # Without its own key no peer link could open here (API.md v1.1 §1).
        raise InvalidRequest(
            f"{problem} on this node: a cluster of more than one member needs its own"
            " cluster key; restart every member with the same key first"
        )
    return await _change_members(request, "add_voter" if voter else "add_learner", node_id, address)


async def remove_member(request: web.Request) -> web.Response:
    return await _change_members(request, "remove", _node_id(request.match_info["id"]), "")


async def leader(request: web.Request) -> web.Response:
    body = await _object_body(request, optional=True)
    if body.keys() - {"to"}:
        raise InvalidRequest("the only field is 'to'")
    to = body.get("to") or ""
    if to:
        _node_id(to)
    cfg = request.app[CONFIG]
    await request.app[CLIENTS].consensus.transfer(to, cfg.request_timeout_ms / 1000)
    return json_response({})


async def snapshot(request: web.Request) -> web.Response:
    got = await request.app[CLIENTS].consensus.snapshot_now(HEAVY_TIMEOUT)
    return json_response({"index": got.index, "term": got.term, "bytes": got.bytes})


async def backup(request: web.Request) -> web.StreamResponse:
    """The whole state as a SQLite file, written by storage to a temporary file, then deleted."""
    cfg = request.app[CONFIG]
    path = os.path.join(os.path.realpath(cfg.data_dir), f".backup-{secrets.token_hex(8)}.db")
    loop = asyncio.get_running_loop()
    try:
        done = await request.app[CLIENTS].storage.backup(path, HEAVY_TIMEOUT)
        f = await loop.run_in_executor(None, open, done.path, "rb")
    finally:  # unlinked as soon as it is open: nothing is left behind, whatever happens next
        with contextlib.suppress(FileNotFoundError):
            await loop.run_in_executor(None, os.unlink, path)
    with f:
        size = os.fstat(f.fileno()).st_size
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{cfg.node_id}-{done.index}.db"',
            }
        )
        response.content_length = size
        await response.prepare(request)
        while chunk := await loop.run_in_executor(None, f.read, CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response


async def healthz(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """200 iff a leader is known and storage has applied up to consensus's commit index
    (computed at most about once a second: ``probe_cache``)."""
    app = request.app
    return json_response(await app[PROBES].ready.get(lambda: _readiness(app)))


async def _readiness(app: web.Application) -> dict[str, Any]:
    clients = app[CLIENTS]
    st = await _probe(clients.consensus.status(PROBE_TIMEOUT))
    if st is None:
        raise Unavailable("not ready: consensus is not answering")
    if not st.leader_id:
        raise Unavailable("not ready: no leader is known")
    applied = await _probe(clients.storage.wait_applied(st.commit, PROBE_TIMEOUT))
    if applied is None or applied < st.commit:
        raise Unavailable(f"not ready: storage has not applied up to {st.commit}")
    return {"ready": True, "leaderId": st.leader_id, "commitIndex": st.commit}


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text, computed at most about once a second (``probe_cache``)."""
    app = request.app
    text = await app[PROBES].metrics.get(lambda: _metrics_text(app))
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": prom.CONTENT_TYPE})


async def _metrics_text(app: web.Application) -> str:
    clients = app[CLIENTS]
    st, ss, links, states = await asyncio.gather(
        _probe(clients.consensus.status(PROBE_TIMEOUT)),
        _probe(clients.storage.status(PROBE_TIMEOUT)),
        _probe(clients.consensus.peer_links(PROBE_TIMEOUT)),
        _role_states(app),
    )
    fams = app[METRICS].families()

    def gauge(name: str, help: str, value: float | None, kind: str = "gauge") -> None:
        fam = prom.Family(name, kind, help)
        if value is not None:
            fam.add(value)
        fams.append(fam)

    gauge("concordance_raft_term", "Current Raft term.", st.term if st else None)
    gauge("concordance_raft_commit_index", "Raft commit index.", st.commit if st else None)
    gauge("concordance_raft_applied_index", "Raft applied index.", st.applied if st else None)
    gauge(
        "concordance_raft_is_leader",
        "1 if this node is the Raft leader.",
        (1 if st.role == "leader" else 0) if st else None,
    )
    gauge("concordance_storage_applied_index", "Storage applied index.",
          ss.applied_index if ss else None)  # fmt: skip
    gauge("concordance_revision", "Storage revision (last change).", ss.revision if ss else None)
    gauge("concordance_watchers", "Live watch subscriptions.", app[HUB].watchers)
    gauge("concordance_websockets", "Open WebSocket sessions (stream and raft).", len(app[STREAMS]))
    gauge("concordance_writes_pending", "Writes waiting for their result.", app[PROPOSER].pending)
    app[GATE].families(gauge)
    gauge(
        "concordance_raft_leader_changes_total",
        "Times this node's consensus saw a new leader (since the role started).",
        st.leader_changes if st else None,
        "counter",
    )
    failed = prom.Family(
        "concordance_proposals_failed_total",
        "counter",
        "Writes of this front answered unavailable (not applied) or timeout (outcome unknown).",
    )
    for reason, n in sorted(app[PROPOSER].failed.items()):
        failed.add(n, (("reason", reason),))
    fams.append(failed)
    fams.append(
        prom.latency_family(
            "concordance_fsync_duration_seconds",
            "Time of each Raft log write with fsync (raft.db), since consensus started.",
            (st.fsync_counts, st.fsync_total_us) if st else None,
        )
    )
    fams.append(
        prom.latency_family(
            "concordance_apply_duration_seconds",
            "Time storage took to apply each batch of committed entries to state.db.",
            (ss.apply_counts, ss.apply_total_us) if ss else None,
        )
    )
    dropped = prom.Family(
        "concordance_peer_frames_dropped_total",
        "counter",
        "Raft frames dropped from a peer's outgoing queue: full (oldest first) or stale.",
    )
    queued = prom.Family(
        "concordance_peer_queue_bytes", "gauge", "Bytes of Raft frames queued for a peer."
    )
    for link in links.peers if links else ():  # consensus owns them (PROTOCOL.md §6)
        dropped.add(link.dropped_full, (("peer", link.peer), ("reason", "full")))
        dropped.add(link.dropped_stale, (("peer", link.peer), ("reason", "stale")))
        queued.add(link.queued_bytes, (("peer", link.peer),))
    fams.extend((dropped, queued))
    gauge(
        "concordance_peer_frames_unroutable_total",
        "Raft frames dropped because no address or incoming connection was known for their peer.",
        links.unroutable if links else None,
        "counter",
    )
    gauge(
        "concordance_peer_connections_refused_total",
        "Incoming peer connections refused: TLS handshake, hello or cluster key.",
        links.refused if links else None,
        "counter",
    )
    fams.extend(_role_families(states))
    fams += [prom.build_info(), prom.database_sizes(app[CONFIG].data_dir)]  # build, disk
    return prom.render(fams) + prom.runtime_text()


def _role_families(states: dict[str, dict[str, Any]] | None) -> list[prom.Family]:
    up = prom.Family("concordance_role_up", "gauge", "1 if the role process is running.")
    restarts = prom.Family(
        "concordance_role_restarts_total", "counter", "Role restarts seen by the supervisor."
    )
    for role in ROLES:
        state = (states or {}).get(role)
        if not isinstance(state, dict):
            continue
        up.add(1 if state.get("up") else 0, (("role", role),))
        count = state.get("restarts")
        if isinstance(count, int) and not isinstance(count, bool):
            restarts.add(count, (("role", role),))
    return [f for f in (up, restarts) if f.samples]
