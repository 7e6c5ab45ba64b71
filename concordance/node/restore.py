"""``concordance restore``: build a new node's data dir whose state is a backup.

A backup (``GET /api/v1/cluster/backup``) is a whole state.db: every entry,
the change history, and the Raft position it reflects (``applied_index``,
``applied_term`` in its ``meta`` row). A new cluster starts from it the way a
lagging follower catches up from a snapshot:

* ``state/state.db`` is a copy of the backup, so storage starts at its
  applied index and revision;
* ``raft/snapshots`` holds the backup as the snapshot at ``(index, term)``,
  with the *new* cluster's membership, so a member that joins later (or an
  empty ``--peers`` member) receives it in chunks;
* ``raft/raft.db`` starts with its log compacted at that snapshot: base
  ``(index, term)``, hard state ``term``/``commit = index``, no entries.

The new cluster's log continues at ``index + 1``; revisions continue from the
backup's. Its membership is this node alone (it elects itself at once), or
``--peers``. Nothing of the old cluster's membership is kept: node ids and
addresses are the new cluster's.

With ``--peers``, run the same command (same backup, same ``--peers``) on
every listed node, each with its own ``--id``/``--listen``/``--data``: every
voter then starts from the same snapshot. Do NOT start the other voters
empty: two empty voters form a majority of three and could elect a leader
with an empty log. To grow a restored single node instead, start the new
nodes empty with ``--join``: they enter as learners, receive the snapshot,
and are promoted (docs/OPERATIONS.md).

Runs offline, before the node is started; it refuses a data dir that already
holds state.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from concordance.config import ConfigError, parse_address, validate_node_id
from concordance.errors import RemoteProtocolError
from concordance.raft.entries import HardState, Membership, SnapshotMeta
from concordance.raft.snapshot_files import FileSnapshotStore
from concordance.raft.sqlite_store import SqliteRaftStore
from concordance.storage import snapshot

__all__ = ["Restored", "restore"]


@dataclass(frozen=True, slots=True)
class Restored:
    """What :func:`restore` built."""

    data_dir: Path
    index: int
    term: int
    membership: Membership


def restore(
    backup: str | Path,
    data_dir: str | Path,
    node_id: str,
    listen: str,
    peers: dict[str, str] | None = None,
) -> Restored:
    """Build ``data_dir`` for node ``node_id`` from ``backup``.

    Raises:
        ConfigError: bad arguments, a data dir that holds state, or a file that
            is not a backup.
    """
    validate_node_id(node_id)
    parse_address(listen)
    peers = dict(peers or {})
    if peers and node_id not in peers:
        raise ConfigError(f"--peers must include this node ({node_id})")
    data = Path(data_dir).resolve()
    raft_dir, state_dir = data / "raft", data / "state"
    for held in (raft_dir / "raft.db", state_dir / "state.db"):
        if held.exists():
            raise ConfigError(f"{data} already holds a node's state ({held}): use an empty dir")
    source = Path(backup)
    if not source.is_file():
        raise ConfigError(f"no backup file at {source}")
    try:
        index, term = snapshot.vet(source)
    except RemoteProtocolError as e:
        raise ConfigError(f"{source} is not a Concordance backup: {e}") from None
    if index > 0 and term < 1:
        raise ConfigError(f"{source}: applied index {index} with term {term} is inconsistent")

    addresses = peers or {node_id: listen}
    membership = Membership(tuple(addresses), (), tuple(addresses.items()))
    meta = SnapshotMeta(index, term, membership)

    for sub in ("logs", "raft", "state"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    snapshot.install(source, state_dir / "state.db")
    if index > 0:
        store_dir = raft_dir / "snapshots"
        snapshots = FileSnapshotStore(store_dir)
        try:
            staged = store_dir / "restore.tmp"
            shutil.copyfile(source, staged)
            snapshots.save_from_file(meta, staged)  # fsynced, renamed into place
        finally:
            snapshots.close()
    # raft.db last: once it exists the data dir counts as holding state.
    store = SqliteRaftStore(raft_dir / "raft.db")
    try:
        if index > 0:
            store.persist(HardState(term, None, index), [], meta)
        else:  # an empty backup: a brand-new cluster with this membership
            store.record_snapshot(meta)
    finally:
        store.close()
    return Restored(data, index, term, membership)
