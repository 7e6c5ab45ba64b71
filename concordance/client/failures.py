"""Errors that only a client can raise: the server never says these, the network does.

Why they subclass the API errors: a caller that already handles ``Timeout``
(outcome unknown) or ``Unavailable`` (certainly not applied) handles these the
same way without knowing the client adds them.
"""

from __future__ import annotations

from concordance import errors

__all__ = ["ClientConfigError", "EndpointsUnavailable", "OutcomeUnknown"]


class OutcomeUnknown(errors.Timeout):
    """A write was sent and no trustworthy answer came back (a 504, a connection reset
    after sending, a proxy's body-less 502): it may or may not have been applied.

    The client never re-sends such a write: read the key to learn what happened."""

    def __init__(self, message: str, endpoint: str | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint


class EndpointsUnavailable(errors.Unavailable):
    """No endpoint answered (refused, down, or 503 on every try): nothing was applied."""

    def __init__(self, message: str, attempts: list[str] | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts or []


class ClientConfigError(ValueError):
    """Bad client settings (an endpoint that does not parse, a missing certificate file)."""
