"""Deliberately broken cores: the simulator must catch each of them."""

from __future__ import annotations

from concordance.raft import quorum
from concordance.raft.core import RaftCore
from concordance.raft.messages import Message, Propose, RequestVote, RequestVoteResponse


class CommitsPreviousTermByCounting(RaftCore):
    """Violates paper §5.4.2: commits any entry a majority holds, whatever its term."""

    def _maybe_commit(self) -> None:
        voters = self.membership.voters
        matches = [self.progress[v].match if v in self.progress else 0 for v in voters]
        index = quorum.quorum_index(matches)
        if index > self.log.commit:
            first_of_term = self.log.term_or_zero(self.log.commit) != self.term
            self.log.commit_to(index)
            self._needs_broadcast = True
            if first_of_term and self.log.term_or_zero(index) == self.term:
                self._reads.noop_committed(self.log.commit, voters)


class VotesForShorterLogs(RaftCore):
    """Violates paper §5.4.1: grants votes without the up-to-date check."""

    def _handle_vote(self, msg: RequestVote) -> None:
        if msg.pre_vote:
            granted = msg.term > self.term
        else:
            granted = self.vote == msg.src or (self.vote is None and self.leader_id is None)
        if granted and not msg.pre_vote:
            self.vote = msg.src
            self.election_elapsed = 0
        reply_term = msg.term if granted and msg.pre_vote else self.term
        self._send(RequestVoteResponse(reply_term, self.id, msg.src, granted, msg.pre_vote))


class ReadsWithoutHeartbeatRound(RaftCore):
    """Violates thesis §6.4: answers ReadIndex from the local commit index at once."""

    def _leader_read(self, ctx: bytes, requester: str) -> None:
        self._answer_read(ctx, requester, self.log.commit)


class RefusesWhatItAppended(RaftCore):
    """Breaks the ProposeRefused promise: the leader appends a forwarded proposal and
    still answers that it refused it, so the proposer would report a 503 for a write
    that is applied."""

    def _step_leader(self, msg: Message) -> None:
        super()._step_leader(msg)
        if isinstance(msg, Propose):
            self._refuse_proposal(msg, "planted")
