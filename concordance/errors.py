"""Every error Concordance raises on purpose.

::

    ConcordanceError (code, http_status)          API errors: API.md §3.4
    ├── InvalidKey              400 invalid_key
    ├── InvalidRequest          400 invalid_request
    ├── Unauthorized            401 unauthorized
    ├── Forbidden               403 forbidden
    ├── NotFound                404 not_found
    ├── VersionConflict         409 version_conflict   (.current, .index)
    ├── Compacted               410 compacted          (.oldest)
    ├── ValueTooLarge           413 value_too_large
    ├── RequestTooLarge         413 request_too_large
    ├── Unavailable             503 unavailable        (certainly not applied; Retry-After)
    │   ├── NotLeader           (.leader_id) no leader known, or this node cannot forward
    │   ├── LeadershipLost      the leader stepped down before the proposal was appended
    │   └── ProposalDropped     the core refused the proposal (.reason)
    ├── EncryptionUnavailable   503 encryption_unavailable
    └── Timeout                 504 timeout            (outcome unknown)

    IpcError                                       internal plumbing, never shown raw
    ├── RemoteProtocolError     a peer or role sent bytes we cannot decode
    └── IpcTimeout              no reply before the deadline

Handlers raise these; one middleware in the front turns them into
``{"error": {"code", "message", ...extra}}`` with the status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class ConcordanceError(Exception):
    """Base of every API error; ``code`` and ``http_status`` map to API.md §3.4."""

    code: ClassVar[str] = "internal"
    http_status: ClassVar[int] = 500

    def __init__(self, message: str = "", **extra: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code.replace("_", " ")
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        """The body of ``{"error": ...}``."""
        return {"code": self.code, "message": self.message, **self.extra}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> ConcordanceError:
        """The inverse of :meth:`to_dict`, for an error that crossed a process boundary.

        The one place that rebuilds errors (IPC replies, write results, the
        client's HTTP and WebSocket answers). An unknown or missing code gives
        ``Unavailable`` (as :func:`from_code`); a missing or non-str message
        gives the class's default one. Callers that must tell a malformed
        payload apart check it first.
        """
        message = data.get("message")
        extra = {k: v for k, v in data.items() if k != "code" and k != "message"}
        return from_code(data.get("code"), message if isinstance(message, str) else "", **extra)


class InvalidKey(ConcordanceError):
    code, http_status = "invalid_key", 400


class InvalidRequest(ConcordanceError):
    code, http_status = "invalid_request", 400


class Unauthorized(ConcordanceError):
    code, http_status = "unauthorized", 401


class Forbidden(ConcordanceError):
    code, http_status = "forbidden", 403


class NotFound(ConcordanceError):
    code, http_status = "not_found", 404


class VersionConflict(ConcordanceError):
    """CAS failed; ``extra`` carries ``current`` (entry or None) and, for batches, ``index``."""

    code, http_status = "version_conflict", 409


class Compacted(ConcordanceError):
    """History older than ``oldest`` was dropped."""

    code, http_status = "compacted", 410


class ValueTooLarge(ConcordanceError):
    code, http_status = "value_too_large", 413


class RequestTooLarge(ConcordanceError):
    code, http_status = "request_too_large", 413


class Unavailable(ConcordanceError):
    """The request was certainly not applied; safe to retry after ``retry_after`` seconds."""

    code, http_status = "unavailable", 503
    retry_after: ClassVar[int] = 1


class NotLeader(Unavailable):
    def __init__(self, leader_id: str | None = None, message: str = "") -> None:
        super().__init__(message or "no leader is known; retry shortly")
        self.leader_id = leader_id


class LeadershipLost(Unavailable):
    pass


class ProposalDropped(Unavailable):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class EncryptionUnavailable(ConcordanceError):
    code, http_status = "encryption_unavailable", 503


class Timeout(ConcordanceError):
    """The outcome is unknown: the write may or may not have been applied."""

    code, http_status = "timeout", 504


class IpcError(Exception):
    """A failure of the plumbing between roles."""


class RemoteProtocolError(IpcError):
    """A peer or a role sent something that does not decode."""


class IpcTimeout(IpcError):
    """No reply arrived before the request's deadline."""


class PeerGone(IpcError):
    """A server-side send found its peer not connected (``EHOSTUNREACH``)."""


BY_CODE: dict[str, type[ConcordanceError]] = {
    cls.code: cls
    for cls in (
        InvalidKey,
        InvalidRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        VersionConflict,
        Compacted,
        ValueTooLarge,
        RequestTooLarge,
        Unavailable,
        EncryptionUnavailable,
        Timeout,
    )
}


def from_code(code: Any, message: str = "", **extra: Any) -> ConcordanceError:
    """The error class of ``code`` (``Unavailable`` if unknown) built from message and extra."""
    cls = BY_CODE.get(code, Unavailable)
    return cls(message, **extra)
