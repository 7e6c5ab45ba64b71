"""What the front needs from its node's supervisor, as one Protocol, and the real one.

Why one object: the front used to reach supervisord three ways (a file's line
count for its incarnation, a lazily imported module for the role states, a
replaceable module global for restarts). Now ``procs/front.py`` builds one
:class:`Supervisord` at start and passes it to whoever needs it (``make_app``,
``ipc_clients.connect``); tests pass ``concordance.testing.supervisor.MemorySupervisor``.

Every call blocks (XML-RPC over supervisord's Unix socket, small file reads):
the front runs them in an executor.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from concordance.node import supervise

__all__ = ["RoleStates", "Supervisor", "Supervisord"]

# ``{"front": {"pid": int | None, "up": bool, "restarts": int}, ...}``, one per role
RoleStates = dict[str, dict[str, Any]]


class Supervisor(Protocol):
    """The front's view of its node's supervisor (blocking calls)."""

    def incarnation(self) -> int:
        """How many fronts started in this data dir, this one included: it names this
        front to the other roles (``front.{n}``, PROTOCOL.md §1) and only grows."""
        ...

    def role_states(self) -> RoleStates:
        """Each role's serving pid, whether it runs, and how often it restarted.

        Raises:
            Exception: no supervisor answers (the caller judges roles by their answers).
        """
        ...

    def restart(self, role: str) -> int | None:
        """Restart ``role`` (a planned restart through its keeper when it runs); the pid
        of the process serving it afterwards.

        Raises:
            Exception: no supervisor answers, or it refused: nothing was restarted.
        """
        ...


class Supervisord:
    """:class:`Supervisor` over the node's supervisord (``concordance.node.supervise``)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = data_dir

    def incarnation(self) -> int:
        return supervise.starts(self.data_dir, "front")

    def role_states(self) -> RoleStates:
        return supervise.role_states(self.data_dir)

    def restart(self, role: str) -> int | None:
        control = supervise.Control(self.data_dir)
        control.restart(role)
        kept = supervise.serving(self.data_dir, role)  # the process its keeper runs now
        if kept is not None:
            return kept
        state = control.states().get(role)
        return state.pid if state is not None else None
