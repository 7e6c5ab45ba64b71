"""Commit notices held back for a moment: the leader's commit broadcast, off the write's path.

When a leader commits, the core sends every up-to-date follower an empty
``AppendEntries`` that carries only the new commit index (``reply=False``: a
commit notice, ``raft/replication.py``). Sent at once, it wakes each
follower's consensus and then its storage (a Ready and an apply per
follower) at the very moment the leader's storage applies the entry and its
front answers the client: on a machine whose cores the nodes share, that
work competes with the write's answer (docs/PERFORMANCE.md, 9 December).

So the driver hands notices here instead of to the peer links. A notice
waits ``NOTICE_DELAY`` at most; any later ``AppendEntries`` to the same
peer replaces it (it carries the leader's commit index as of its sending,
never lower), so under steady writes the commit rides the next append and
notices are never sent. Delaying or dropping a message is within the driver
contract (``concordance.raft``: the transport may drop, delay or reorder);
what a delay costs is a follower learning a commit up to ``NOTICE_DELAY``
later when writes are sparse (its local reads and watchers; a linearizable
read through a follower still waits for the leader's heartbeat round, which
carries the commit too).
"""

from __future__ import annotations

from collections.abc import Callable

from concordance.clock import Clock, Timer
from concordance.raft.messages import AppendEntries, Message

__all__ = ["NOTICE_DELAY", "CommitNotices", "is_commit_notice"]

NOTICE_DELAY = 0.005  # seconds a commit notice waits for an append to carry it


def is_commit_notice(msg: Message) -> bool:
    """An empty append that asks for no answer: it only carries the commit index."""
    return type(msg) is AppendEntries and not msg.entries and not msg.reply


class CommitNotices:
    """Holds the latest commit notice per peer until ``NOTICE_DELAY`` passes or an append
    to that peer supersedes it; ``send`` gets what is due (the driver's peer links)."""

    __slots__ = ("_clock", "_held", "_send", "_timer")

    def __init__(self, clock: Clock, send: Callable[[list[Message]], None]) -> None:
        self._clock = clock
        self._send = send
        self._held: dict[str, Message] = {}
        self._timer: Timer | None = None

    def filter(self, messages: tuple[Message, ...]) -> list[Message]:
        """What of ``messages`` goes now: notices are held, and an append drops the
        notice held for its peer (it carries a commit index at least as high)."""
        out: list[Message] = []
        held = self._held
        for msg in messages:
            if is_commit_notice(msg):
                held[msg.dst] = msg
                if self._timer is None:
                    self._timer = self._clock.call_later(NOTICE_DELAY, self._due)
                continue
            if held and type(msg) is AppendEntries:
                held.pop(msg.dst, None)
            out.append(msg)
        return out

    @property
    def held(self) -> int:
        return len(self._held)

    def _due(self) -> None:
        self._timer = None
        if self._held:
            due = list(self._held.values())
            self._held.clear()
            self._send(due)

    def flush(self) -> None:
        """Send what is held now (a planned stop: followers learn the last commit)."""
        if self._timer is not None:
            self._timer.cancel()
        self._due()
