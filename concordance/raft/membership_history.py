"""Which cluster configuration is in force at each log position.

Rules (single-server changes, thesis §4.1):

* A CONFIG entry takes effect as soon as it is in a node's log, committed or
  not; so the current configuration is the last one in the log, and a log
  truncated by a new leader takes its configurations with it.
* The history is a *base* (the configuration at the snapshot, or at the last
  compacted change) plus every CONFIG entry after it, in index order. The
  base must stay exact because a snapshot records ``membership_at(index)``.
* A leader proposes a change only when the previous one is committed, so at
  most one change is ever uncommitted (the 2015 raft-dev fix).
* A removed peer keeps receiving the log until its removal commits, so that it
  learns it is out; a removed leader steps down once its removal commits.
"""

from __future__ import annotations

from collections.abc import Sequence

from concordance.errors import ProposalDropped
from concordance.raft.entries import ConfChange, Entry, EntryKind, Membership, SnapshotMeta
from concordance.raft.stores import LogStore


class MembershipHistory:
    """The base configuration plus the CONFIG entries of the log after it."""

    __slots__ = ("_base", "_base_index", "_changes")

    def __init__(
        self, base: Membership, base_index: int, changes: Sequence[tuple[int, Membership]] = ()
    ) -> None:
        self._base = base
        self._base_index = base_index
        self._changes = list(changes)

    @classmethod
    def load(cls, store: LogStore, snapshot: SnapshotMeta | None) -> MembershipHistory:
        """Rebuild the history at start-up from the snapshot and the durable log."""
        base = snapshot.index if snapshot else 0
        changes = [
            (e.index, Membership.decode(e.data)) for e in store.config_entries() if e.index > base
        ]
        return cls(snapshot.membership if snapshot else Membership(), base, changes)

    # ------------------------------------------------------------------ queries
    @property
    def current(self) -> Membership:
        """The configuration of the last CONFIG entry in the log (or the base)."""
        return self._changes[-1][1] if self._changes else self._base

    def at(self, index: int) -> Membership:
        """The configuration in force at log position ``index``."""
        current = self._base
        for at, members in self._changes:
            if at > index:
                break
            current = members
        return current

    def pending(self, commit: int) -> bool:
        """True while the latest change is not yet committed."""
        return bool(self._changes) and self._changes[-1][0] > commit

    def commits_between(self, old_commit: int, new_commit: int) -> bool:
        """True if moving the commit index from ``old_commit`` to ``new_commit``
        commits the latest change."""
        return bool(self._changes) and old_commit < self._changes[-1][0] <= new_commit

    def tracked(self, self_id: str, commit: int) -> set[str]:
        """Nodes a leader replicates to: the current members, plus members of the
        committed configuration (a peer being removed still gets the entry
        removing it), plus the leader itself."""
        return set(self.current.members) | set(self.at(commit).members) | {self_id}

    def removal_committed(self, node_id: str, commit: int) -> bool:
        """True once a change removing ``node_id`` is the latest and is committed."""
        removed = not self.current.contains(node_id)
        return removed and bool(self._changes) and self._changes[-1][0] <= commit

    def next_config(self, change: ConfChange, commit: int) -> Membership:
        """The configuration a leader may append for ``change``.

        Raises ProposalDropped while another change is uncommitted, or if the
        change does not apply (e.g. adding a member twice).
        """
        if self.pending(commit):
            raise ProposalDropped("another membership change is still uncommitted")
        try:
            return change.apply_to(self.current)
        except ValueError as e:
            raise ProposalDropped(str(e)) from e

    # ------------------------------------------------------------------ updates
    def appended(self, entries: Sequence[Entry]) -> bool:
        """A leader appended ``entries``; returns True if one was a CONFIG entry."""
        found = False
        for entry in entries:
            if entry.kind is EntryKind.CONFIG:
                self._changes.append((entry.index, Membership.decode(entry.data)))
                found = True
        return found

    def rewritten(self, entries: Sequence[Entry], last_new: int, log_last: int) -> None:
        """AppendEntries put ``entries`` in the log (the last at ``last_new``), whose
        last index is now ``log_last``: configurations the message carried replace
        whatever stood at those indexes, and those past a truncated end are gone."""
        first = entries[0].index
        carried = [
            (e.index, Membership.decode(e.data)) for e in entries if e.kind is EntryKind.CONFIG
        ]
        before = [(i, m) for i, m in self._changes if i < first]
        after = [(i, m) for i, m in self._changes if last_new < i <= log_last]
        self._changes = before + carried + after

    def restored(self, meta: SnapshotMeta) -> None:
        """A snapshot replaced the whole log: its membership is the new base."""
        self._base, self._base_index = meta.membership, meta.index
        self._changes = []

    def compacted(self, index: int) -> None:
        """The store dropped entries <= ``index``: fold older changes into the base."""
        keep: list[tuple[int, Membership]] = []
        for at, members in self._changes:
            if at <= index:
                self._base, self._base_index = members, at
            else:
                keep.append((at, members))
        self._changes = keep
