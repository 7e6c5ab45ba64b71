"""``--join HOST:PORT``: a new node asks a running cluster to add it, then waits to be added.

Why the front: joining is an HTTP call to another node's API, and the front
owns every connection to the outside world (and an HTTP client). No IPC is
added: the front learns everything it needs from consensus's ``status``.

Theory of operation:

* The task runs only on a node started with ``--join`` whose consensus
  reports a *fresh* state: no membership (:func:`is_fresh`). A node that
  holds cluster state (it was added before, or removed, or restored) never
  asks again: ``--join`` is ignored then.
* It POSTs ``{"id", "address"}`` to ``http://HOST:PORT/api/v1/cluster/members``
  (``https://`` on a TLS node, with the peer context of ``concordance.security.tls``)
  with the cluster key (``CONCORDANCE_CLUSTER_KEY``). Any
  member will do: a follower forwards the change to its leader. The route is
  idempotent (asking to add a node that is already a member answers 200), so
  asking again after a lost answer is safe.
* Success is a 200 whose ``members`` list this node. Until this node
  receives the membership through the log its consensus knows no peer
  address; it answers its leader's first messages on the connection the
  leader dialled (PROTOCOL.md §6), so nothing needs to be handed over here.
* Every failure (the member is down, no leader yet, another membership change
  in progress, a 504) is retried with backoff. After a success the task keeps
  watching until consensus reports this node in its own membership, and asks
  again if that takes more than ``REASK`` seconds (the leader that appended
  the change may have lost it before it committed).
* The leader promotes the learner to voter once it has caught up
  (``concordance.consensus.promotion``); nothing more is needed from here.
"""

from __future__ import annotations

import logging
import ssl as ssl_
from typing import Any

import aiohttp

from concordance.clock import SYSTEM_CLOCK, Clock
from concordance.config import NodeConfig
from concordance.front.clients import ConsensusClient
from concordance.protocol import wire

__all__ = ["JoinOutcome", "is_fresh", "join_cluster"]

log = logging.getLogger(__name__)

BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
REQUEST_TIMEOUT = 15.0  # the member may wait for its leader and for the change to show
STATUS_TIMEOUT = 2.0
REASK = 10.0  # seconds to wait for the membership to arrive after a success before asking again
POLL = 0.2


class JoinOutcome:
    """How the join task ended (for logs and tests)."""

    ALREADY_MEMBER = "already a member"
    HOLDS_STATE = "the data dir holds cluster state"
    JOINED = "joined"


def is_fresh(st: wire.StatusOk) -> bool:
    """A node that knows no membership yet: it may ask to be added.

    Not "nothing committed": a joiner that receives the log from index 1 knows
    no membership until the entry that adds it arrives (a cluster's first
    membership is its bootstrap record, not a log entry). A cluster's
    membership is never empty, so a node that was a member, or was removed,
    or was restored, always knows one.
    """
    return not st.members


def _is_member(node_id: str, st: wire.StatusOk) -> bool:
    return any(m.node_id == node_id for m in st.members)


async def join_cluster(
    cfg: NodeConfig,
    consensus: ConsensusClient,
    http: aiohttp.ClientSession,
    *,
    backoff_max: float = BACKOFF_MAX,
    reask: float = REASK,
    ssl: ssl_.SSLContext | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> str:
    """Ask ``cfg.join`` to add this node until it is a member; returns a :class:`JoinOutcome`.

    ``clock`` times the backoff and the re-asks (the HTTP asks themselves are real I/O,
    bounded by the session's timeouts)."""
    assert cfg.join is not None
    url = f"{'https' if ssl is not None else 'http'}://{cfg.join}/api/v1/cluster/members"
    body = {"id": cfg.node_id, "address": cfg.address}
    key = cfg.secrets.peer_key
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    delay = BACKOFF_MIN
    asked_at: float | None = None  # when the last successful ask was answered
    while True:
        st = await _status(consensus)
        if st is not None:
            if _is_member(cfg.node_id, st):
                if asked_at is None:
                    return JoinOutcome.ALREADY_MEMBER
                log.info("%s is now a member (%s)", cfg.node_id, st.role)
                return JoinOutcome.JOINED
            if not is_fresh(st):
                log.warning(
                    "%s: --join %s ignored: the data dir holds cluster state and this node"
                    " is not a member (was it removed? node ids are never reused)",
                    cfg.node_id,
                    cfg.join,
                )
                return JoinOutcome.HOLDS_STATE
        if asked_at is not None and clock.monotonic() - asked_at < reask:
            await clock.sleep(POLL)  # added: wait for the leader's first entries
            continue
        if st is not None:  # consensus answered: this node is fresh
            members = await _ask(http, url, headers, body, ssl)
            if members is not None and cfg.node_id in members:
                log.info("%s asked %s to add it; members: %s", cfg.node_id, cfg.join, members)
                asked_at = clock.monotonic()
                delay = BACKOFF_MIN
                continue
        await clock.sleep(delay)
        delay = min(delay * 2, backoff_max)


async def _status(consensus: ConsensusClient) -> wire.StatusOk | None:
    try:
        return await consensus.status(STATUS_TIMEOUT)
    except Exception as e:  # consensus not up yet: try again later
        log.debug("join: no status from consensus: %s", e)
        return None


async def _ask(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    body: dict[str, str],
    ssl: ssl_.SSLContext | None = None,
) -> dict[str, str] | None:
    """POST the join request; the members it answers with (id -> address), or None."""
    try:
        async with http.post(
            url,
            json=body,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ssl=ssl if ssl is not None else True,
        ) as resp:
            answer: Any = await resp.json(content_type=None)
            if resp.status != 200:
                error = answer.get("error", {}) if isinstance(answer, dict) else {}
                log.info(
                    "join through %s refused (%d %s: %s); retrying",
                    url,
                    resp.status,
                    error.get("code"),
                    error.get("message"),
                )
                return None
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
        log.info("join through %s failed (%s); retrying", url, str(e) or type(e).__name__)
        return None
    members = answer.get("members") if isinstance(answer, dict) else None
    if not isinstance(members, list):
        log.warning("join through %s: unexpected answer %.200r", url, answer)
        return None
    found: dict[str, str] = {}
    for m in members:
        if (
            isinstance(m, dict)
            and isinstance(m.get("id"), str)
            and isinstance(m.get("address"), str)
        ):
            found[m["id"]] = m["address"]
    return found
