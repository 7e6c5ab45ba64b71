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

The names below are re-exported lazily (PEP 562), so the ``concordance``
command, which imports the light modules (``failures``, ``types``) to build
its parser, loads aiohttp only when a command talks to a node: ``concordance
node`` starts a node about 0.15 s of CPU sooner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from concordance import errors as errors
from concordance import lazy
from concordance.client import ops as ops

if TYPE_CHECKING:
    from concordance.client.client import Client as Client
    from concordance.client.client import settings_from_env as settings_from_env
    from concordance.client.endpoints import DEFAULT_ENDPOINT as DEFAULT_ENDPOINT
    from concordance.client.failures import ClientConfigError as ClientConfigError
    from concordance.client.failures import EndpointsUnavailable as EndpointsUnavailable
    from concordance.client.failures import OutcomeUnknown as OutcomeUnknown
    from concordance.client.scope import Scope as Scope
    from concordance.client.scopes import SCOPES as SCOPES
    from concordance.client.scopes import namespace as namespace
    from concordance.client.scopes import scope_ids as scope_ids
    from concordance.client.sync import SyncClient as SyncClient
    from concordance.client.sync import SyncScope as SyncScope
    from concordance.client.sync import SyncWatch as SyncWatch
    from concordance.client.types import BatchResult as BatchResult
    from concordance.client.types import Change as Change
    from concordance.client.types import ChangesPage as ChangesPage
    from concordance.client.types import Deleted as Deleted
    from concordance.client.types import Entry as Entry
    from concordance.client.types import Health as Health
    from concordance.client.types import Member as Member
    from concordance.client.types import Page as Page
    from concordance.client.types import PrefixDeleted as PrefixDeleted
    from concordance.client.types import RoleState as RoleState
    from concordance.client.types import SnapshotInfo as SnapshotInfo
    from concordance.client.types import Status as Status
    from concordance.client.watch import Watch as Watch

# name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "DEFAULT_ENDPOINT": "endpoints",
    "Client": "client",
    "settings_from_env": "client",
    "ClientConfigError": "failures",
    "EndpointsUnavailable": "failures",
    "OutcomeUnknown": "failures",
    "Scope": "scope",
    "SCOPES": "scopes",
    "namespace": "scopes",
    "scope_ids": "scopes",
    "SyncClient": "sync",
    "SyncScope": "sync",
    "SyncWatch": "sync",
    "BatchResult": "types",
    "Change": "types",
    "ChangesPage": "types",
    "Deleted": "types",
    "Entry": "types",
    "Health": "types",
    "Member": "types",
    "Page": "types",
    "PrefixDeleted": "types",
    "RoleState": "types",
    "SnapshotInfo": "types",
    "Status": "types",
    "Watch": "watch",
}

__all__ = sorted([*_EXPORTS, "errors", "ops"])


__getattr__ = lazy.exports(__name__, _EXPORTS)
