"""``POST /api/v1/cluster/roles/{role}/restart``: restart one role of this node remotely.

Why in the front: operators without a shell on the machine still need the
planned restart that ``concordance ctl --data DIR restart ROLE`` gives them
locally. The front asks its own node's supervisord (``concordance.supervise``,
a blocking XML-RPC call run in an executor), so the restart is the same one
as the local command: SIGTERM, the role's graceful stop, a new process.

* ``storage`` and ``consensus``: stop then start, awaited; ``200`` with the new
  pid once supervisord reports the new process running. Requests meanwhile
  are held by this front, not failed.
* ``front``: the front cannot wait for its own restart, so it answers ``202``
  first, and only once the answer is written asks supervisord to send it
  SIGTERM; it stops gracefully and supervisord starts a new one
  (``autorestart``).

Auth is by route name in the auth middleware: the full key only (the agent
key is read-only, scoped keys reach the key-value API only).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from concordance.config import ROLES, NodeConfig
from concordance.errors import InvalidRequest, Unavailable
from concordance.front.appkeys import CONFIG
from concordance.front.kv import json_response

__all__ = ["Restarter", "restart_role", "supervisor_restarter"]

log = logging.getLogger(__name__)

FRONT_DELAY: Final = 0.1  # seconds between answering and asking for the front's own SIGTERM


class Restarter:
    """What the route needs from the supervisor (blocking calls; replaced in tests)."""

    def __init__(
        self,
        restart: Callable[[NodeConfig, str], int | None],
        terminate: Callable[[NodeConfig, str], None],
    ) -> None:
        self.restart = restart  # stop + start; the new pid
        self.terminate = terminate  # SIGTERM to the role; supervisord starts it again


def _restart(cfg: NodeConfig, role: str) -> int | None:
    from concordance.supervise import Control

    control = Control(cfg.data)
    control.restart(role)
    state = control.states().get(role)
    return state.pid if state is not None else None


def _terminate(cfg: NodeConfig, role: str) -> None:
    from concordance.supervise import Control

    Control(cfg.data).signal(role, "TERM")


supervisor_restarter = Restarter(_restart, _terminate)  # tests replace it


async def restart_role(request: web.Request) -> web.StreamResponse:
    role = request.match_info["role"]
    if role not in ROLES:
        raise InvalidRequest(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
    cfg = request.app[CONFIG]
    restarter = supervisor_restarter
    loop = asyncio.get_running_loop()
    log.info("restart of %s requested over the API", role)
    if role != "front":
        try:
            pid = await loop.run_in_executor(None, restarter.restart, cfg, role)
        except Exception as e:  # no supervisor, or it refused: nothing was restarted
            raise Unavailable(f"the supervisor could not restart {role}: {e}") from e
        return json_response({"role": role, "restarted": True, "pid": pid})
    response = json_response({"role": role, "restarted": False, "restarting": True})
    response.set_status(202)
    await response.prepare(request)
    await response.write_eof()  # answered before the front goes away
    loop.call_later(FRONT_DELAY, _terminate_soon, loop, restarter, cfg)
    return response


def _terminate_soon(loop: asyncio.AbstractEventLoop, restarter: Restarter, cfg: Any) -> None:
    future = loop.run_in_executor(None, restarter.terminate, cfg, "front")
    future.add_done_callback(_log_failure)


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("could not ask the supervisor to restart the front: %s", future.exception())
