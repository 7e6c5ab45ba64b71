"""Typed results of the client: one dataclass per shape of API.md, built from its JSON.

Why dataclasses and not dicts: the gateway type-checks against these, and a
renamed field then fails in mypy rather than at run time. Every class keeps
the JSON it was built from reachable through :meth:`to_json`, so a caller that
needs to pass an answer on unchanged can.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = [
    "BatchResult",
    "Change",
    "ChangesPage",
    "Deleted",
    "Entry",
    "Health",
    "Member",
    "Page",
    "PrefixDeleted",
    "RoleState",
    "SnapshotInfo",
    "Status",
]

ChangeType = Literal["set", "delete", "expire"]


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


@dataclass(frozen=True)
class _Json:
    def to_json(self) -> dict[str, Any]:
        """The API's JSON shape (camelCase fields) of this result."""
        return {_camel(k): _plain(v) for k, v in asdict(self).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class Entry(_Json):
    """A stored key (API.md §2)."""

    key: str
    value: Any
    version: int
    revision: int
    created_at: int
    updated_at: int
    expires_at: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(
            key=data["key"],
            value=data.get("value"),
            version=data["version"],
            revision=data["revision"],
            created_at=data.get("createdAt", 0),
            updated_at=data.get("updatedAt", 0),
            expires_at=data.get("expiresAt"),
        )


@dataclass(frozen=True)
class Deleted(_Json):
    """The answer to a delete: the tombstone keeps the deleted entry's version."""

    key: str
    deleted: bool
    version: int
    revision: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Deleted:
        return cls(data["key"], bool(data["deleted"]), data["version"], data["revision"])


@dataclass(frozen=True)
class PrefixDeleted(_Json):
    deleted: int
    revision: int


@dataclass(frozen=True)
class Page(_Json):
    """One page of a list; ``next`` is the cursor of the following page, or None."""

    entries: list[Entry]
    next: str | None
    revision: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Page:
        entries = [Entry.from_json(e) for e in data["entries"]]
        return cls(entries, data.get("next"), data["revision"])


@dataclass(frozen=True)
class Change(_Json):
    """One change event (API.md §3.2); ``value`` is None unless ``type`` is ``set``."""

    type: ChangeType
    key: str
    version: int
    revision: int
    timestamp: int
    value: Any = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        return cls(
            type=data["type"],
            key=data["key"],
            version=data["version"],
            revision=data["revision"],
            timestamp=data.get("timestamp", 0),
            value=data.get("value"),
        )


@dataclass(frozen=True)
class ChangesPage(_Json):
    """Changes after ``since``; ``revision`` is where the answer is complete: the next ``since``."""

    changes: list[Change]
    revision: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChangesPage:
        return cls([Change.from_json(c) for c in data["changes"]], data["revision"])


@dataclass(frozen=True)
class BatchResult(_Json):
    """One item per op, in order: Entry for ``set``, Deleted for ``delete``, Entry or None
    for ``check``."""

    results: list[Entry | Deleted | None]
    revision: int


@dataclass(frozen=True)
class Member(_Json):
    id: str
    address: str
    voter: bool
    match_index: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Member:
        return cls(data["id"], data["address"], bool(data["voter"]), data.get("matchIndex"))


@dataclass(frozen=True)
class RoleState(_Json):
    pid: int | None
    up: bool


@dataclass(frozen=True)
class Status(_Json):
    """One node's view of the cluster (API.md §3.3)."""

    node_id: str
    role: str
    term: int
    leader_id: str | None
    commit_index: int
    applied_index: int
    revision: int
    members: list[Member] = field(default_factory=list)
    roles: dict[str, RoleState] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Status:
        roles = {
            name: RoleState(state.get("pid"), bool(state.get("up")))
            for name, state in (data.get("roles") or {}).items()
        }
        return cls(
            node_id=data["nodeId"],
            role=data["role"],
            term=data["term"],
            leader_id=data.get("leaderId"),
            commit_index=data["commitIndex"],
            applied_index=data["appliedIndex"],
            revision=data["revision"],
            members=[Member.from_json(m) for m in data.get("members", [])],
            roles=roles,
        )


@dataclass(frozen=True)
class SnapshotInfo(_Json):
    index: int
    term: int
    bytes: int


@dataclass(frozen=True)
class Health(_Json):
    """One endpoint's ``/healthz`` and ``/readyz`` answers, or why there was none."""

    endpoint: str
    healthy: bool
    ready: bool
    error: str | None = None
