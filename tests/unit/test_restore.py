"""``concordance restore``: a data dir built from a backup opens as a node at the backup's index."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

import pytest

from concordance.config import ConfigError
from concordance.consensus.disk import RaftDisk
from concordance.node.restore import restore
from concordance.raft.config import RaftConfig
from concordance.raft.core import RaftCore
from concordance.raft.entries import Membership
from concordance.raft.snapshot_files import FileSnapshotStore
from concordance.raft.sqlite_store import SqliteRaftStore
from concordance.storage import snapshot
from concordance.storage.fsm import StateMachine
from tests.unit.test_storage_snapshot import entries, history


def backup_file(tmp_path: Path, n: int = 20) -> tuple[Path, StateMachine]:
    sm = StateMachine(tmp_path / "live.db")
    sm.apply(entries(history(n), 1, term=4))
    path = tmp_path / "backup.db"
    sm.snapshot_to(path)
    return path, sm


def test_restore_builds_state_snapshot_and_a_compacted_log(tmp_path: Path) -> None:
    backup, source = backup_file(tmp_path)
    index = source.applied_index
    data = tmp_path / "new"
    done = restore(backup, data, "m1", "127.0.0.1:4200")
    assert (done.index, done.term) == (index, 4)
    assert done.membership == Membership(("m1",), (), (("m1", "127.0.0.1:4200"),))

    restored = StateMachine(data / "state" / "state.db")
    assert restored.digest() == source.digest()
    assert (restored.applied_index, restored.revision) == (index, source.revision)

    latest = FileSnapshotStore(data / "raft" / "snapshots").latest()
    assert latest is not None and (latest.index, latest.term) == (index, 4)
    assert latest.membership == done.membership
    assert snapshot.vet(data / "raft" / "snapshots" / f"{index:020d}-{4:020d}.snap") == (index, 4)

    with SqliteRaftStore(data / "raft" / "raft.db") as store:
        hard, snap = store.initial_state()
        assert snap == latest
        assert (hard.term, hard.commit, hard.vote) == (4, index, None)
        assert (store.first_index(), store.last_index(), store.term(index)) == (
            index + 1,
            index,
            4,
        )


def test_a_core_on_the_restored_disk_starts_at_the_backup_and_leads_alone(tmp_path: Path) -> None:
    backup, source = backup_file(tmp_path)
    data = tmp_path / "new"
    restore(backup, data, "m1", "127.0.0.1:4200")

    async def main() -> None:
        disk = await RaftDisk.open(data / "raft", lambda: Membership(("other",)))
        try:
            assert not disk.bootstrapped  # the restored state wins over a boot membership
            core = RaftCore(
                "m1", disk.view, disk.initial_hard_state, disk.initial_snapshot,
                RaftConfig(), random.Random(1), snapshots=disk.snapshots,
            )  # fmt: skip
            assert core.log.commit == core.log.applied == source.applied_index
            assert core.membership.voters == ("m1",)
            core.campaign()
            assert core.role.value == "leader" and core.term == 5
            assert core.log.last_index() == source.applied_index + 1  # the new leader's no-op
        finally:
            await disk.close()

    asyncio.run(main())


def test_restore_with_peers_records_every_voter(tmp_path: Path) -> None:
    backup, _ = backup_file(tmp_path)
    peers = {"m1": "10.0.0.1:4100", "m2": "10.0.0.2:4100", "m3": "10.0.0.3:4100"}
    done = restore(backup, tmp_path / "n2", "m2", "10.0.0.2:4100", peers)
    assert done.membership.voters == ("m1", "m2", "m3")
    assert dict(done.membership.addresses) == peers
    with pytest.raises(ConfigError, match="must include this node"):
        restore(backup, tmp_path / "n4", "m4", "10.0.0.4:4100", peers)


def test_restore_refuses_a_used_data_dir_and_files_that_are_not_backups(tmp_path: Path) -> None:
    backup, _ = backup_file(tmp_path)
    data = tmp_path / "new"
    restore(backup, data, "m1", "127.0.0.1:4200")
    with pytest.raises(ConfigError, match="already holds"):
        restore(backup, data, "m1", "127.0.0.1:4200")
    junk = tmp_path / "junk.db"
    sqlite3.connect(junk).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(ConfigError, match="not a Concordance backup"):
        restore(junk, tmp_path / "other", "m1", "127.0.0.1:4200")
    with pytest.raises(ConfigError, match="no backup file"):
        restore(tmp_path / "missing.db", tmp_path / "other", "m1", "127.0.0.1:4200")
    assert not (tmp_path / "other" / "raft").exists()


def test_an_empty_backup_gives_a_fresh_cluster_of_the_new_members(tmp_path: Path) -> None:
    sm = StateMachine(tmp_path / "empty.db")
    sm.snapshot_to(tmp_path / "empty-backup.db")
    done = restore(tmp_path / "empty-backup.db", tmp_path / "new", "m1", "127.0.0.1:4200")
    assert (done.index, done.term) == (0, 0)
    with SqliteRaftStore(tmp_path / "new" / "raft" / "raft.db") as store:
        _, snap = store.initial_state()
        assert snap is not None and snap.index == 0 and snap.membership.voters == ("m1",)
