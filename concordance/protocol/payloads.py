"""The typed records storage sends the front: entries, change events, write outcomes.

Why records and not the API's JSON shapes: storage owns rows, the front owns
the API. Storage used to build camelCase dicts and the front guessed a write
result's kind from the keys present; now each kind is its own frozen class,
and only the front (``front/codec.Renderer``) turns one into API JSON.

Rules (PROTOCOL.md §3.7):

* ``value`` is always the stored JSON text as ``bytes`` (sealed for sensitive
  keys): storage never parses a value, the front opens and decodes it.
* On the wire each record is a positional msgpack array led by its tag in
  ``TAGS`` (``wire`` builds the codec from the type hints), so a union field
  (a write result, a batch item) decodes to the right class with no guessing.
  Tags are never reused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from concordance.errors import ConcordanceError, VersionConflict
from concordance.protocol.codec import maker

__all__ = [
    "TAGS",
    "BatchDone",
    "BatchItem",
    "Change",
    "Deleted",
    "Entry",
    "Expired",
    "Outcome",
    "PrefixDeleted",
    "Rejected",
    "WriteResult",
    "new_change",
    "new_entry",
    "new_outcome",
]


@dataclass(frozen=True, slots=True)
class Entry:
    """A live key (API.md §2); ``value`` is its stored JSON text."""

    key: str
    value: bytes
    version: int
    revision: int
    created_at: int
    updated_at: int
    expires_at: int | None


@dataclass(frozen=True, slots=True)
class Change:
    """One change event (API.md §3.2); ``value`` is set for ``type == "set"`` only."""

    type: str  # "set", "delete" or "expire"
    key: str
    value: bytes | None
    version: int
    revision: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class Deleted:
    """A delete's result: the tombstone keeps the deleted entry's version."""

    key: str
    version: int
    revision: int


@dataclass(frozen=True, slots=True)
class Expired:
    """The result of the TTL reaper's conditional ``expire`` (never shown to clients)."""

    key: str
    version: int
    revision: int


@dataclass(frozen=True, slots=True)
class PrefixDeleted:
    """A delete-prefix's result: how many keys went, at which revision."""

    deleted: int
    revision: int


BatchItem: TypeAlias = Entry | Deleted | None  # set, delete, check (None: absent)


@dataclass(frozen=True, slots=True)
class BatchDone:
    """An applied batch: one item per op, in order, all at ``revision``."""

    results: tuple[BatchItem, ...]
    revision: int


WriteResult: TypeAlias = Entry | Deleted | Expired | PrefixDeleted | BatchDone


@dataclass(frozen=True, slots=True)
class Rejected:
    """A command that applied nothing: the error its writer gets.

    The FSM rejects with three codes only: ``version_conflict`` (which always
    carries ``current``, an entry or None, and ``index`` in a batch),
    ``not_found`` (``index`` in a batch) and ``invalid_request``.
    """

    code: str
    message: str
    current: Entry | None = None  # meaningful for version_conflict only
    index: int | None = None  # the failing op of a batch

    @classmethod
    def of(cls, error: ConcordanceError) -> Rejected:
        """The record of an FSM error.

        Raises:
            TypeError: the error carries a field this record cannot (a local bug).
        """
        extra = error.extra
        if extra.keys() - {"current", "index"} or (
            ("current" in extra) != isinstance(error, VersionConflict)
        ):
            raise TypeError(f"an FSM error cannot carry {sorted(extra)} ({error.code})")
        return cls(error.code, error.message, extra.get("current"), extra.get("index"))

    def to_exception(self) -> ConcordanceError:
        """The error to raise in the front; extra in the API's order (current, index)."""
        extra: dict[str, Any] = {}
        if self.code == VersionConflict.code:
            extra["current"] = self.current
        if self.index is not None:
            extra["index"] = self.index
        return ConcordanceError.from_dict({"code": self.code, "message": self.message, **extra})


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one write, for the front that proposed it (topic ``r``)."""

    request_id: int
    result: WriteResult | Rejected | None  # None: a lone ``check`` of an absent key


# Positional constructors for storage's hot path (every field, in order): they set the
# slots directly, about twice as fast as a frozen dataclass's __init__ (codec.maker).
new_entry: Callable[[str, bytes, int, int, int, int, int | None], Entry] = maker(Entry)
new_change: Callable[[str, str, bytes | None, int, int, int], Change] = maker(Change)
new_outcome: Callable[[int, WriteResult | Rejected | None], Outcome] = maker(Outcome)

# Wire tags (PROTOCOL.md §3.7): never reuse one.
TAGS: dict[type, int] = {
    Entry: 1,
    Change: 2,
    Deleted: 3,
    Expired: 4,
    PrefixDeleted: 5,
    BatchDone: 6,
    Rejected: 7,
    Outcome: 8,
}
