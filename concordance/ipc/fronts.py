"""The fronts a role (consensus, storage) has heard from, and which is current.

Why not one fixed ``front`` ROUTING_ID: a front hand-over runs two front
processes for a moment (the old one drains while its successor serves). Each
connects as ``front.{n}``, ``n`` its incarnation, which only grows; replies go
to whoever asked, pushes that belong to one front go to the
newest, pushes every front must see (``dropped``, ``stopping``) go to all
(PROTOCOL.md §1).
"""

from __future__ import annotations

__all__ = ["PREFIX", "Fronts", "incarnation_of", "routing_id"]

PREFIX = b"front."


def routing_id(incarnation: int) -> bytes:
    """The ROUTING_ID of the front process with this incarnation."""
    return PREFIX + str(incarnation).encode()


def incarnation_of(peer: bytes) -> int | None:
    """The incarnation in a front's ROUTING_ID; None for any other peer."""
    if not peer.startswith(PREFIX):
        return None
    digits = peer[len(PREFIX) :]
    return int(digits) if digits.isdigit() else None


class Fronts:
    """Front peers seen by one server socket. ``note`` is on the hot path of every
    received message, so a repeat of the last front costs one comparison."""

    def __init__(self) -> None:
        self._known: dict[bytes, int] = {}
        self._last: bytes | None = None
        self.current: bytes | None = None  # the newest front

    def note(self, peer: bytes) -> None:
        """Remember ``peer`` if it is a front (called for every message received)."""
        if peer == self._last or peer in self._known:
            return
        n = incarnation_of(peer)
        if n is None:
            return
        self._known[peer] = n
        self._last = peer
        self._pick()

    def forget(self, peer: bytes) -> None:
        """``peer`` is gone (a send found it unreachable)."""
        if self._known.pop(peer, None) is not None:
            if self._last == peer:
                self._last = None
            self._pick()

    def all(self) -> tuple[bytes, ...]:
        """Every front still thought connected, newest first."""
        return tuple(sorted(self._known, key=self._known.__getitem__, reverse=True))

    def _pick(self) -> None:
        self.current = max(self._known, key=self._known.__getitem__) if self._known else None
