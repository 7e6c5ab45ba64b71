"""``POST /api/v1/cluster/roles/{role}/restart``: restart one role of this node remotely.

Why in the front: operators without a shell on the machine still need the
planned restart that ``concordance ctl --data DIR restart ROLE`` gives them
locally. The front asks its own node's supervisord (the app's ``SUPERVISOR``,
``front/supervisor.py``: a blocking XML-RPC call run in an executor), so the
restart is the same one as the local command: SIGTERM, the role's graceful
stop, a new process.

* ``storage`` and ``consensus``: through the role's keeper
  (``procs/role_keeper.py``): the successor imports, the old process stops,
  the successor goes on; ``200`` with its pid then. Requests meanwhile are
  held by this front, not failed.
* ``front``: a hand-over (``Control.hand_over_front``): the front keeper
  starts a new front on the same listening socket and, once it serves, stops
  this one, which finishes this request (and every other in flight) before it
  exits; ``200`` with the new front's pid once the old one stopped accepting.

Auth is by route name in the auth middleware: the full key only (the agent
key is read-only, scoped keys reach the key-value API only).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from concordance.config import ROLES
from concordance.errors import InvalidRequest, Unavailable
from concordance.front.app_state import SUPERVISOR
from concordance.front.kv import json_response

__all__ = ["restart_role"]

log = logging.getLogger(__name__)


async def restart_role(request: web.Request) -> web.StreamResponse:
    role = request.match_info["role"]
    if role not in ROLES:
        raise InvalidRequest(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    supervisor = request.app[SUPERVISOR]
    loop = asyncio.get_running_loop()
    log.info("restart of %s requested over the API", role)
    try:
        pid = await loop.run_in_executor(None, supervisor.restart, role)
    except Exception as e:  # no supervisor, or it refused: nothing was restarted
        raise Unavailable(f"the supervisor could not restart {role}: {e}") from e
    return json_response({"role": role, "restarted": True, "pid": pid})
