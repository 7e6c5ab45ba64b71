"""Python client of Concordance (API.md §5): async :class:`Client`, blocking :class:`SyncClient`.

::

    async with Client("n1:4100,n2:4100,n3:4100", api_key) as c:
        await c.put("tenant:acme/settings/plan", "pro", if_version=0)
        prefs = c.scope("user", tenant="acme", user="u1")
        await prefs.set("theme", "dark")
        async for change in prefs.watch():
            ...

Reads are spread over the endpoints and retried anywhere; a write is retried
only when it was certainly not applied, and raises :class:`OutcomeUnknown`
otherwise. Every server error is the :mod:`concordance.errors` class of its
code. docs/CLIENT.md is the reference.
"""

from __future__ import annotations

from concordance import errors
from concordance.client import ops
from concordance.client.client import DEFAULT_ENDPOINT, Client, settings_from_env
from concordance.client.failures import ClientConfigError, EndpointsUnavailable, OutcomeUnknown
from concordance.client.scope import Scope
from concordance.client.scopes import SCOPES, namespace, scope_ids
from concordance.client.sync import SyncClient, SyncScope, SyncWatch
from concordance.client.types import (
    BatchResult,
    Change,
    ChangesPage,
    Deleted,
    Entry,
    Health,
    Member,
    Page,
    PrefixDeleted,
    RoleState,
    SnapshotInfo,
    Status,
)
from concordance.client.watch import Watch

__all__ = [
    "DEFAULT_ENDPOINT",
    "SCOPES",
    "BatchResult",
    "Change",
    "ChangesPage",
    "Client",
    "ClientConfigError",
    "Deleted",
    "EndpointsUnavailable",
    "Entry",
    "Health",
    "Member",
    "OutcomeUnknown",
    "Page",
    "PrefixDeleted",
    "RoleState",
    "Scope",
    "SnapshotInfo",
    "Status",
    "SyncClient",
    "SyncScope",
    "SyncWatch",
    "Watch",
    "errors",
    "namespace",
    "ops",
    "scope_ids",
    "settings_from_env",
]
