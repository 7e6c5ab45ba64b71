"""An in-memory supervisor for the front's tests (``concordance.front.supervisor.Supervisor``).

Test support only: it supervises nothing. It holds the role states a test
sets, counts the calls (the probes' cache is judged by how often supervisord
is asked), and records restarts: a restart gives the role a new pid and one
more restart, as supervisord and the role's keeper would. ``reachable =
False`` plays a node without a supervisor (every call raises, as the real
one does when no supervisord answers on its socket).
"""

from __future__ import annotations

import itertools

from concordance.config import ROLES
from concordance.front.supervisor import RoleStates
from concordance.node.supervise import SupervisorUnavailable

__all__ = ["MemorySupervisor"]

FIRST_PID = 1000  # pids handed out from here, one per (re)start


class MemorySupervisor:
    """:class:`~concordance.front.supervisor.Supervisor` over states the test sets."""

    def __init__(
        self, states: RoleStates | None = None, *, incarnation: int = 0, reachable: bool = True
    ) -> None:
        self._pids = itertools.count(FIRST_PID)
        self.states: RoleStates = (
            states
            if states is not None
            else {r: {"pid": next(self._pids), "up": True, "restarts": 0} for r in ROLES}
        )
        self.starts = incarnation
        self.reachable = reachable
        self.refuse: str | None = None  # a reason to refuse restarts with, if set
        self.restarted: list[str] = []  # the roles restarted, in order
        self.state_calls = 0  # how often the role states were asked for

    def incarnation(self) -> int:
        return self.starts

    def role_states(self) -> RoleStates:
        self.state_calls += 1
        self._check()
        return {role: dict(state) for role, state in self.states.items()}

    def restart(self, role: str) -> int | None:
        self._check()
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
        if self.refuse is not None:
            raise RuntimeError(self.refuse)
        pid = next(self._pids)
        before = self.states.get(role, {})
        self.states[role] = {"pid": pid, "up": True, "restarts": before.get("restarts", 0) + 1}
        self.restarted.append(role)
        return pid

    def _check(self) -> None:
        if not self.reachable:
            raise SupervisorUnavailable("no supervisor in this test")
