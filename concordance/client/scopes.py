"""ACP scopes (API.md §5): a scope name and its ids resolve to one key namespace.

Why a first-class object: the gateway serves ``config/*`` calls relative to a
scope, and building ``tenant:{t}/user:{u}/preferences/{path}`` by hand at
every call site is where a wrong id or a missing slash slips in.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from concordance import errors

__all__ = ["SCOPES", "namespace", "scope_ids"]

SCOPES: Mapping[str, str] = {
    "user": "tenant:{tenant}/user:{user}/preferences",
    "tenant": "tenant:{tenant}/settings",
    "session": "tenant:{tenant}/sessions/{session}",
    "project": "tenant:{tenant}/projects/{project}",
    "device": "tenant:{tenant}/user:{user}/devices/{device}",
    "credentials": "tenant:{tenant}/credentials",
    "automations": "tenant:{tenant}/automations",
    "skills": "tenant:{tenant}/skills",
    "integrations": "tenant:{tenant}/integrations",
    "audit": "tenant:{tenant}/audit",
}
_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,256}")


def scope_ids(scope: str) -> list[str]:
    """The ids a scope needs, ``tenant`` first: ``scope_ids("device")`` ->
    ``["tenant", "user", "device"]``."""
    try:
        template = SCOPES[scope]
    except KeyError:
        raise errors.InvalidRequest(
            f"unknown scope {scope!r} (one of {', '.join(SCOPES)})"
        ) from None
    return re.findall(r"\{(\w+)\}", template)


def namespace(scope: str, tenant_id: str, **ids: str) -> str:
    """Resolve an ACP scope to its namespace: ``namespace("user", "acme", user="u1")`` ->
    ``tenant:acme/user:u1/preferences``. An id may not hold ``/`` (it would leave the
    namespace); a missing or extra id is ``InvalidRequest``."""
    needed = scope_ids(scope)
    given = {"tenant": tenant_id, **ids}
    missing = [n for n in needed if not given.get(n)]
    if missing:
        raise errors.InvalidRequest(f"scope {scope!r} needs {', '.join(map(repr, missing))}")
    extra = sorted(set(given) - set(needed))
    if extra:
        raise errors.InvalidRequest(f"scope {scope!r} takes no {', '.join(map(repr, extra))}")
    for name in needed:
        if not _ID.fullmatch(given[name]):
            raise errors.InvalidRequest(f"{name} id {given[name]!r} is not a valid id")
    return SCOPES[scope].format(**given)
