"""Leader-side bookkeeping of ReadIndex reads (thesis §6.4).

Rules:

* A read is only accepted once the leader has committed an entry of its own
  term (its no-op); before that it is *deferred*.
* A read's index is the commit index when it arrived. It may be answered once
  a heartbeat round that was sent *after* it arrived is acknowledged by a
  quorum: then no other leader can have committed anything newer.
* Reads arriving before the next batch of messages leaves share one round
  (``seal`` closes the open round when messages are handed to the driver);
  acknowledgements carry the round number, and a later heartbeat confirming
  a newer round confirms every older one too.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from concordance.raft import quorum


@dataclass(frozen=True, slots=True)
class PendingRead:
    seq: int
    ctx: bytes
    index: int
    requester: str  # the leader's own id for local reads


class ReadIndexQueue:
    """Pending reads of one leadership, confirmed by heartbeat rounds."""

    def __init__(self) -> None:
        self.latest_round = 0
        self._open_round: int | None = None
        self._pending: deque[PendingRead] = deque()
        self._deferred: list[tuple[bytes, str]] = []
        self._acks: dict[str, int] = {}

    def defer(self, ctx: bytes, requester: str) -> None:
        """Hold a read until the leader's no-op commits."""
        self._deferred.append((ctx, requester))

    def take_deferred(self) -> list[tuple[bytes, str]]:
        deferred, self._deferred = self._deferred, []
        return deferred

    def add(self, ctx: bytes, requester: str, index: int) -> int | None:
        """Queue a read at ``index``; returns a new round number when a
        heartbeat round must be broadcast for it, None if it joins the open one."""
        new_round = None
        if self._open_round is None:
            self.latest_round += 1
            self._open_round = new_round = self.latest_round
        self._pending.append(PendingRead(self._open_round, ctx, index, requester))
        return new_round

    def seal(self) -> None:
        """The open round's messages are leaving: later reads need a new round."""
        self._open_round = None

    def ack(self, node: str, round_: int) -> None:
        self._acks[node] = max(self._acks.get(node, 0), round_)

    def confirmed(self, voters: Iterable[str], self_id: str) -> list[PendingRead]:
        """Pop every read whose round a quorum of ``voters`` has acknowledged."""
        acks = [self.latest_round if v == self_id else self._acks.get(v, 0) for v in voters]
        done = quorum.quorum_index(acks)
        out = []
        while self._pending and self._pending[0].seq <= done:
            out.append(self._pending.popleft())
        return out

    def abort(self) -> list[tuple[bytes, str]]:
        """Leadership ended: drop everything, returning (ctx, requester) of each read."""
        aborted = [(r.ctx, r.requester) for r in self._pending] + self._deferred
        self._pending.clear()
        self._deferred = []
        self._acks = {}
        self._open_round = None
        return aborted


Answer = Callable[[bytes, str, int], None]
"""``(ctx, requester, index)``: a read may be served at ``index``; 0 means aborted."""


class LeaderReads:
    """The ReadIndex protocol of one node across its leaderships."""

    def __init__(self, node_id: str, answer: Answer, broadcast: Callable[[int], None]) -> None:
        self._id = node_id
        self._answer = answer
        self._broadcast = broadcast  # a heartbeat round carrying this round number
        self.queue = ReadIndexQueue()

    @property
    def latest_round(self) -> int:
        return self.queue.latest_round

    def request(
        self, ctx: bytes, requester: str, commit: int, noop_committed: bool, voters: Sequence[str]
    ) -> None:
        """A read asked of the leader, whose commit index is ``commit``."""
        if not noop_committed:
            self.queue.defer(ctx, requester)  # thesis §6.4 step 1: wait for the no-op
            return
        if len(voters) <= 1 and self._id in voters:
            self._answer(ctx, requester, commit)  # no one else can have a newer commit
            return
        new_round = self.queue.add(ctx, requester, commit)
        if new_round is not None:
            self._broadcast(new_round)

    def noop_committed(self, commit: int, voters: Sequence[str]) -> None:
        """The leader's first entry of its term committed: serve the deferred reads."""
        for ctx, requester in self.queue.take_deferred():
            self.request(ctx, requester, commit, True, voters)

    def acknowledged(self, node: str, round_: int, voters: Sequence[str]) -> None:
        """``node`` answered the heartbeat round ``round_``: answer what a quorum confirmed."""
        self.queue.ack(node, round_)
        for read in self.queue.confirmed(voters, self._id):
            self._answer(read.ctx, read.requester, read.index)

    def seal(self) -> None:
        self.queue.seal()

    def abort(self) -> None:
        """Leadership ended. Local reads are answered 0; remote askers time out (a
        stale-term answer would be ignored anyway)."""
        for ctx, requester in self.queue.abort():
            if requester == self._id:
                self._answer(ctx, requester, 0)
