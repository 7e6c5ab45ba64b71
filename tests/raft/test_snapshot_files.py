"""FileSnapshotStore: saving, chunked reads and receives, restart, crash leftovers, retain."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from concordance.raft.entries import Membership, SnapshotMeta
from concordance.raft.snapshot_files import FileSnapshotStore

MEMBERS = Membership(("n1", "n2", "n3"), ("n4",), (("n1", "10.0.0.1:4100"),))


def meta(index: int, term: int = 1) -> SnapshotMeta:
    return SnapshotMeta(index, term, MEMBERS)


def blob(index: int, size: int = 10_000) -> bytes:
    """Distinct, non-repeating bytes per snapshot, so offsets and mix-ups show."""
    return bytes((i * 7 + index) % 251 for i in range(size))


@pytest.fixture
def snapdir(tmp_path: Path) -> Path:
    return tmp_path / "snapshots"


@pytest.fixture
def store(snapdir: Path) -> Iterator[FileSnapshotStore]:
    s = FileSnapshotStore(snapdir)
    try:
        yield s
    finally:
        s.close()


def save(store: FileSnapshotStore, tmp_path: Path, m: SnapshotMeta, data: bytes) -> Path:
    src = tmp_path / f"produced-{m.index}.tmp"
    src.write_bytes(data)
    return store.save_from_file(m, src)


def receive(store: FileSnapshotStore, m: SnapshotMeta, data: bytes, chunk: int = 3000) -> None:
    for offset in range(0, len(data), chunk):
        store.write_chunk(m, offset, data[offset : offset + chunk])


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# -- save and read -------------------------------------------------------------------
def test_empty_directory_has_no_snapshot(store: FileSnapshotStore, snapdir: Path) -> None:
    assert store.latest() is None
    assert snapdir.is_dir()


def test_save_from_file_takes_ownership(
    store: FileSnapshotStore, snapdir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "produced.tmp"
    src.write_bytes(blob(7))
    path = store.save_from_file(meta(7, 2), src)
    assert not src.exists()
    assert path == store.path(meta(7, 2)) == snapdir / f"{7:020d}-{2:020d}.snap"
    assert path.read_bytes() == blob(7)
    assert store.latest() == meta(7, 2)
    assert names(snapdir) == [f"{7:020d}-{2:020d}.meta", f"{7:020d}-{2:020d}.snap"]


def test_save_from_another_filesystem_copies(
    store: FileSnapshotStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename across filesystems fails with EXDEV; the store copies instead."""
    src = tmp_path / "elsewhere.tmp"
    src.write_bytes(blob(3))
    real_replace = os.replace

    def replace(a: os.PathLike[str], b: os.PathLike[str]) -> None:
        if Path(a) == src:
            raise OSError(errno.EXDEV, "cross-device link")
        real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)  # the module calls os.replace
    path = store.save_from_file(meta(3), src)
    assert path.read_bytes() == blob(3)
    assert not src.exists()
    assert store.latest() == meta(3)
    assert not [n for n in names(path.parent) if n.endswith(".partial")]


def test_size_and_read_chunks(store: FileSnapshotStore, tmp_path: Path) -> None:
    data = blob(5)
    save(store, tmp_path, meta(5), data)
    assert store.size(meta(5)) == len(data)
    chunks = [store.read_chunk(meta(5), off, 4096) for off in range(0, len(data), 4096)]
    assert [len(c) for c in chunks] == [4096, 4096, len(data) - 8192]
    assert b"".join(chunks) == data
    assert store.read_chunk(meta(5), 1234, 10) == data[1234:1244]
    assert store.read_chunk(meta(5), len(data), 10) == b""
    with pytest.raises(ValueError):
        store.read_chunk(meta(5), -1, 10)
    with pytest.raises(FileNotFoundError):
        store.read_chunk(meta(6), 0, 10)


def test_saving_the_same_snapshot_again_replaces_it(
    store: FileSnapshotStore, snapdir: Path, tmp_path: Path
) -> None:
    save(store, tmp_path, meta(4), blob(4, 100))
    save(store, tmp_path, meta(4), blob(4, 300))
    assert store.size(meta(4)) == 300
    assert FileSnapshotStore(snapdir).latest() == meta(4)


def test_latest_is_the_highest_index_whatever_the_save_order(
    store: FileSnapshotStore, tmp_path: Path
) -> None:
    save(store, tmp_path, meta(20, 3), blob(20))
    save(store, tmp_path, meta(10, 2), blob(10))
    assert store.latest() == meta(20, 3)
    save(store, tmp_path, meta(20, 4), blob(21))
    assert store.latest() == meta(20, 4)


# -- receiving chunks ---------------------------------------------------------------
def test_receive_in_order_then_finish(store: FileSnapshotStore, tmp_path: Path) -> None:
    save(store, tmp_path, meta(5), blob(5))
    data = blob(9, 10_001)
    receive(store, meta(9, 2), data)
    assert store.next_offset(meta(9, 2)) == len(data)
    assert store.latest() == meta(5)  # not before finish()
    path = store.finish(meta(9, 2))
    assert path.read_bytes() == data
    assert store.latest() == meta(9, 2)
    assert store.next_offset(meta(9, 2)) == 0


def test_empty_snapshot_can_be_received(store: FileSnapshotStore) -> None:
    store.write_chunk(meta(1), 0, b"")
    store.finish(meta(1))
    assert store.size(meta(1)) == 0
    assert store.latest() == meta(1)


def test_out_of_order_chunks_are_rejected(store: FileSnapshotStore) -> None:
    data = blob(9)
    with pytest.raises(ValueError, match="expected 0"):
        store.write_chunk(meta(9), 100, data[100:200])  # nothing started yet
    store.write_chunk(meta(9), 0, data[:100])
    with pytest.raises(ValueError, match="expected 100"):
        store.write_chunk(meta(9), 200, data[200:300])  # a gap
    with pytest.raises(ValueError, match="expected 100"):
        store.write_chunk(meta(9), 50, data[50:100])  # a repeat
    store.write_chunk(meta(9), 100, data[100:])  # the right offset still works
    store.finish(meta(9))
    assert store.read_chunk(meta(9), 0, len(data)) == data


def test_offset_zero_starts_afresh(store: FileSnapshotStore, snapdir: Path) -> None:
    store.write_chunk(meta(9), 0, b"stale bytes from a first attempt")
    store.write_chunk(meta(12, 3), 0, b"a newer leader's snapshot")  # abandons index 9
    assert store.next_offset(meta(9)) == 0
    with pytest.raises(ValueError):
        store.finish(meta(9))
    store.write_chunk(meta(12, 3), 0, b"fresh")
    store.write_chunk(meta(12, 3), 5, b"!")
    store.finish(meta(12, 3))
    assert store.read_chunk(meta(12, 3), 0, 100) == b"fresh!"
    assert not [n for n in names(snapdir) if n.endswith(".partial")]


def test_finish_without_receiving_is_rejected(store: FileSnapshotStore) -> None:
    with pytest.raises(ValueError, match="not being received"):
        store.finish(meta(3))
    assert store.latest() is None


# -- restart -------------------------------------------------------------------------
def test_latest_survives_a_restart_with_its_membership(
    store: FileSnapshotStore, snapdir: Path, tmp_path: Path
) -> None:
    save(store, tmp_path, meta(5), blob(5))
    receive(store, meta(8, 2), blob(8))
    store.finish(meta(8, 2))
    store.close()
    reopened = FileSnapshotStore(snapdir)
    latest = reopened.latest()
    assert latest == meta(8, 2)
    assert latest is not None and latest.membership.address_of("n1") == "10.0.0.1:4100"
    assert reopened.read_chunk(meta(8, 2), 0, 20_000) == blob(8)


def test_partial_receive_is_not_a_snapshot_after_a_crash(
    store: FileSnapshotStore, snapdir: Path, tmp_path: Path
) -> None:
    save(store, tmp_path, meta(5), blob(5))
    receive(store, meta(9), blob(9))  # the process dies before finish()
    reopened = FileSnapshotStore(snapdir)
    assert reopened.latest() == meta(5)
    with pytest.raises(ValueError):
        reopened.write_chunk(meta(9), 3000, b"x")  # cannot resume across a restart


def test_crash_leftovers_are_ignored(snapdir: Path, tmp_path: Path) -> None:
    store = FileSnapshotStore(snapdir)
    save(store, tmp_path, meta(5), blob(5))
    stem = f"{9:020d}-{1:020d}"
    (snapdir / f"{stem}.snap").write_bytes(blob(9))  # renamed, died before the sidecar
    (snapdir / f"{stem}.meta.partial").write_bytes(b'{"index": 9')  # torn sidecar
    stem = f"{11:020d}-{1:020d}"
    (snapdir / f"{stem}.meta").write_bytes(b"{not json")  # corrupt sidecar
    (snapdir / f"{stem}.snap").write_bytes(b"x")
    stem = f"{12:020d}-{1:020d}"
    (snapdir / f"{stem}.meta").write_bytes(  # sidecar whose bytes are short
        b'{"index": 12, "term": 1, "size": 99, "membership": {"v": [], "l": [], "a": {}}}'
    )
    (snapdir / f"{stem}.snap").write_bytes(b"short")
    (snapdir / f"{13:020d}-{1:020d}.meta").write_bytes(  # sidecar without bytes
        b'{"index": 13, "term": 1, "size": 0, "membership": {"v": [], "l": [], "a": {}}}'
    )
    assert FileSnapshotStore(snapdir).latest() == meta(5)


# -- retain ------------------------------------------------------------------------
def test_retain_keeps_the_newest_and_deletes_leftovers(snapdir: Path, tmp_path: Path) -> None:
    store = FileSnapshotStore(snapdir)
    for index in (3, 6, 9, 12):
        save(store, tmp_path, meta(index), blob(index, 500))
    (snapdir / f"{15:020d}-{1:020d}.snap.partial").write_bytes(b"from before a crash")
    (snapdir / f"{16:020d}-{1:020d}.snap").write_bytes(b"no sidecar")
    (snapdir / "README").write_text("not ours")
    receive(store, meta(20, 2), blob(20, 100))  # in progress: must survive
    store.retain(2)
    kept = [f"{i:020d}-{1:020d}.{ext}" for i in (9, 12) for ext in ("meta", "snap")]
    assert names(snapdir) == sorted([*kept, "README", f"{20:020d}-{2:020d}.snap.partial"])
    assert store.latest() == meta(12)
    store.write_chunk(meta(20, 2), 100, b"more")
    store.finish(meta(20, 2))
    store.retain(1)
    assert names(snapdir) == sorted(
        ["README", f"{20:020d}-{2:020d}.meta", f"{20:020d}-{2:020d}.snap"]
    )
    assert FileSnapshotStore(snapdir).latest() == meta(20, 2)


def test_retain_must_keep_one(store: FileSnapshotStore, tmp_path: Path) -> None:
    save(store, tmp_path, meta(3), blob(3))
    with pytest.raises(ValueError):
        store.retain(0)
    assert store.latest() == meta(3)
