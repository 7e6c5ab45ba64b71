"""A pure, deterministic Raft core and the contract for driving it.

The core (:class:`concordance.raft.core.RaftCore`) performs no I/O: it has no
clock, no randomness of its own, no sockets and no files. It reads the durable
log through a :class:`~concordance.raft.stores.LogStore`, and everything else
goes in and out as values. A single-node cluster is simply a cluster of one.

Inputs (call from one task; never concurrently):

* ``tick()`` -- one unit of logical time. Elections and heartbeats are counted
  in ticks (``RaftConfig.election_ticks``, ``heartbeat_ticks``).
* ``step(msg)`` -- a message from a peer, already decoded.
* ``propose(data)`` / ``propose_batch(datas)`` -- new commands. A follower
  forwards them to its leader; with no leader they raise ``NotLeader``; a
  leader refuses with ``ProposalDropped`` during a leadership transfer or when
  too much is uncommitted. A forwarded proposal that its receiver does not
  append (the leader refuses it; the receiver is not, or no longer, the
  leader; it arrives at a stale term) comes back in ``Ready.dropped``: it was
  certainly not appended, so its caller may fail it now (safe to retry).
  Otherwise the caller learns the outcome only from the applied entry
  (commands carry their own origin and request id) or by timing out, as
  for a forward the network lost.
* ``read_index(ctx)`` -- ask for a linearizable read index (ReadIndex, thesis
  §6.4); the answer comes back as a ``ReadState(ctx, index)``, index 0 meaning
  "leadership not confirmed: fail the read".
* ``propose_conf_change``, ``transfer_leadership``, ``campaign``.
* ``snapshot_taken(index)`` -- the state machine wrote a snapshot file at
  ``index`` (``applied`` >= it >= the log's base); the leader sends it to
  followers that need one.
* ``base_meta(index)`` then ``compacted(index)`` -- the state machine holds
  everything up to ``index`` durably: the driver records ``base_meta(index)``
  as the log's base, drops the entries up to it, and says so. No snapshot is
  involved.

Outputs: ``has_ready()`` and ``ready()`` return a :class:`Ready`. The driver
MUST handle each Ready completely and in this order before calling
``advance(ready)`` and before asking for the next one:

1. **Persist**, as one durable write (one fsync): snapshot chunks to the
   snapshot store (``snapshot_chunks``, in order; the last one has
   ``done=True``), then ``store.persist(hard_state, entries, snapshot)``: the
   snapshot metadata (which resets the log unless the log holds its last
   entry), the entries (an entry at index i replaces every entry >= i), and
   the hard state (term, vote, commit). Nothing in this Ready may be sent
   before this write is durable -- a vote, a term or an acknowledgement that
   was sent and then lost in a crash breaks Election Safety -- with one
   exception: ``messages_first`` (set only on a leader whose term and vote
   this Ready does not change: its appends and heartbeats) may be sent
   before or while persisting (thesis §10.2.1), since the leader counts its
   own log towards a commit only after ``advance``. A Ready whose hard state
   changed in ``commit`` alone (``commit_only``) needs no fsync: the driver
   may write it later, without syncing, or not at all (the commit index is
   re-learned from the leader); ``must_sync`` says whether an fsync is due.
2. **Send** ``messages_after`` (all of ``messages`` that did not go first).
   The transport may drop, delay, duplicate or reorder them; Raft tolerates
   all of that.
3. **Apply**: if ``snapshot`` is set, restore the state machine from it
   first; then apply ``committed`` entries in index order. Only NORMAL entries
   carry state-machine commands; NOOP and CONFIG entries just advance the
   applied index. Committed entries are always durable locally before their
   Ready (``committed`` never reaches into this Ready's ``entries``), so unless
   ``snapshot`` is set the driver may apply them first, before or while
   persisting (the consensus driver does: a write's answer then does not wait
   for the fsync of entries proposed after it). Each is
   handed out exactly once per process lifetime (after a restart, the driver
   resumes from the state machine's own durable applied index). Deliver
   ``read_states``: a read may be served once the state machine has applied
   at least ``index``. Report ``dropped`` to the proposers (volatile, like
   read states: nothing to persist, and losing the report only means the
   proposer times out). If ``snapshot_wanted`` is set, have the state machine
   write a snapshot file at an index >= it (its applied index will do) and
   report it with ``snapshot_taken``; the request is not repeated while the
   follower waits, but the core asks again at the follower's next probe, so a
   lost request costs a heartbeat interval. "Certainly not appended" assumes the transport
   delivers each ``Propose`` at most once: a duplicated one may be appended
   once and refused once. The real transport (ZeroMQ, WebSocket) never
   duplicates; a transport that does must ignore ``dropped``.
4. **Advance**: ``advance(ready)``.

``step``, ``tick`` and ``propose`` may be called between ``ready()`` and
``advance()``; their effects appear in the next Ready. But the core *reads*
the store synchronously (terms, entries), so while another thread writes to
that store the core must not be called unless the store allows concurrent
reads; ``SqliteRaftStore`` does not. The consensus driver therefore queues
inputs while a write runs and feeds them all to the core afterwards: the
group commit falls out of this, as everything proposed during one fsync is
written by the next.

Compaction: the driver must never compact the store beyond what the state
machine holds durably (with the state machine in another process: the index
it reported after an fsync), nor beyond ``applied``. Compacting copies
nothing: a full snapshot is made only on ``snapshot_wanted`` (a follower or a
new member behind the log's base), so the cost of compaction is the entries
dropped, not the size of the state.

Restart: build a new core from the store's ``initial_state()`` (hard state and
the log's base, a compaction point or an installed snapshot); ``applied``
defaults to the base index, so committed entries after it are handed out again
(the state machine skips those it holds). The base need not have a snapshot
file: :attr:`RaftCore.snapshot` is only sent when the snapshot store holds it.
Node ids are never reused.

Theory of operation and the rules each module keeps are at the top of
``core.py``, ``log.py``, ``progress.py`` and the collaborators ``core.py``
names. Tests: ``tests/raft/test_paper.py`` (one per claim of the paper) and
``tests/raft/testdata/*.txt`` (scenarios with the Readys they produce, run by
``tests/raft/test_datadriven.py``; ``REWRITE=1`` regenerates them).
"""

from __future__ import annotations

from concordance.raft.config import RaftConfig
from concordance.raft.core import RaftCore
from concordance.raft.entries import (
    ConfChange,
    ConfChangeOp,
    Entry,
    EntryKind,
    HardState,
    Membership,
    SnapshotMeta,
)
from concordance.raft.ready import ReadState, Ready, Role, SnapshotChunk, SoftState

__all__ = [
    "ConfChange",
    "ConfChangeOp",
    "Entry",
    "EntryKind",
    "HardState",
    "Membership",
    "RaftConfig",
    "RaftCore",
    "ReadState",
    "Ready",
    "Role",
    "SnapshotChunk",
    "SnapshotMeta",
    "SoftState",
]
