"""FileRaftStorage basics: round trips, suffix replacement, hard state, rollover, reopen."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lockcell.raft.types import Entry, EntryKind, HardState
from lockcell.storage.errors import DirectoryLockedError, StorageClosedError
from lockcell.storage.store import (
    DEFAULT_SEGMENT_SIZE,
    FileRaftStorage,
    RaftStorage,
    RestoredState,
    UnsyncedWrites,
)

from .helpers import entries, payload, segment_files


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "raft"


def reload(directory: Path, segment_size: int = DEFAULT_SEGMENT_SIZE) -> RestoredState:
    with FileRaftStorage(directory, segment_size=segment_size) as store:
        return store.load()


def test_fresh_store_is_empty(directory: Path) -> None:
    store = FileRaftStorage(directory)
    restored = store.load()
    assert restored == RestoredState(HardState(), restored.snapshot, ())
    assert restored.snapshot.empty
    assert store.recovery_report.clean
    store.close()


def test_satisfies_the_protocol(directory: Path) -> None:
    store: RaftStorage = FileRaftStorage(directory)
    store.close()


def test_round_trip_across_reopen(directory: Path) -> None:
    written = entries(1, 50, term=1) + entries(51, 30, term=2)
    written[10] = Entry(1, 11, EntryKind.CONF_CHANGE, b"0:n4")
    with FileRaftStorage(directory) as store:
        store.save(HardState(term=1, vote="n1", commit=0), written[:50])
        store.save(HardState(term=2, vote="n2", commit=40), written[50:])
    restored = reload(directory)
    assert restored.entries == tuple(written)
    assert restored.hard_state == HardState(term=2, vote="n2", commit=40)


def test_empty_save_writes_nothing(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        store.save(None, [])
    assert segment_files(directory) == []


def test_conflicting_suffix_is_replaced(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        store.save(HardState(1, "a", 3), entries(1, 10, term=1))
        store.save(HardState(2, "b", 3), entries(6, 2, term=2))
        assert store.last_index == 7
        assert store.term(5) == 1 and store.term(6) == 2 and store.term(8) is None
        store.save(None, entries(8, 1, term=2))
    restored = reload(directory)
    assert restored.entries == tuple(entries(1, 5, 1) + entries(6, 3, 2))


def test_suffix_replacement_reaching_back_into_an_older_segment(directory: Path) -> None:
    with FileRaftStorage(directory, segment_size=512) as store:
        for first in range(1, 61, 4):
            store.save(HardState(1, None, 0), entries(first, 4, term=1, size=40))
        assert len(segment_files(directory)) > 4
        store.save(HardState(3, "c", 0), entries(5, 3, term=3))
    restored = reload(directory, segment_size=512)
    assert restored.entries == tuple(entries(1, 4, 1, size=40) + entries(5, 3, 3))


def test_replacing_the_whole_log(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        store.save(None, entries(1, 5, term=1))
        store.save(None, entries(1, 2, term=2))
    assert reload(directory).entries == tuple(entries(1, 2, term=2))


def test_hard_state_latest_wins(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        store.save(HardState(1, "a", 0), [])
        store.save(HardState(2, None, 0), entries(1, 3, term=2))
        store.save(None, entries(4, 1, term=2))  # no hard state: keep the last one
        store.save(HardState(2, "b", 4), [])
        assert store.hard_state == HardState(2, "b", 4)
    assert reload(directory).hard_state == HardState(2, "b", 4)


def test_hard_state_only_store(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        store.save(HardState(5, "x", 0), [])
    restored = reload(directory)
    assert restored.hard_state == HardState(5, "x", 0)
    assert restored.entries == ()


def test_segment_rollover_and_names(directory: Path) -> None:
    with FileRaftStorage(directory, segment_size=1024) as store:
        for first in range(1, 201, 5):
            store.save(HardState(1, "a", first), entries(first, 5, term=1, size=50))
        paths = store.segment_paths
    assert len(paths) > 5
    assert paths == tuple(segment_files(directory))
    firsts = [int(p.stem.split("-")[1]) for p in paths]
    assert firsts == sorted(firsts) and firsts[0] == 1
    for path in paths[:-1]:  # no segment grows past the limit (batches are small)
        assert path.stat().st_size <= 1024
    restored = reload(directory, segment_size=1024)
    assert [e.index for e in restored.entries] == list(range(1, 201))
    assert restored.hard_state.commit == 196


def test_hard_state_survives_when_its_segment_is_compacted(directory: Path) -> None:
    """Every new segment starts with the current hard state."""
    from .helpers import snapshot

    with FileRaftStorage(directory, segment_size=600) as store:
        store.save(HardState(7, "v", 0), entries(1, 5, term=7, size=60))
        for first in range(6, 80, 5):
            store.save(None, entries(first, 5, term=7, size=60))
        store.save_snapshot(snapshot(70, 7))
        assert all(int(p.stem.split("-")[1]) > 1 for p in store.segment_paths)
    restored = reload(directory, segment_size=600)
    assert restored.hard_state == HardState(7, "v", 0)
    assert [e.index for e in restored.entries] == list(range(71, 81))


def test_batch_larger_than_a_segment_goes_in_one_frame(directory: Path) -> None:
    with FileRaftStorage(directory, segment_size=256) as store:
        store.save(None, entries(1, 2, term=1, size=10))
        store.save(None, entries(3, 20, term=1, size=100))
        store.save(None, entries(23, 1, term=1, size=10))
        assert len(store.segment_paths) == 3
    assert len(reload(directory, segment_size=256).entries) == 23


def test_invalid_input_is_rejected_without_touching_the_disk(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        store.save(HardState(1, None, 0), entries(1, 3, term=1))
        before = {p: p.read_bytes() for p in segment_files(directory)}
        with pytest.raises(ValueError, match="gap"):
            store.save(None, entries(5, 1, term=1))
        with pytest.raises(ValueError, match="contiguous"):
            store.save(None, [Entry(1, 4), Entry(1, 6)])
        with pytest.raises(ValueError, match="positive"):
            store.save(None, [Entry(1, 0)])
        with pytest.raises(ValueError):
            store.save(HardState(term=-1), [])
        assert {p: p.read_bytes() for p in segment_files(directory)} == before
        store.save(None, entries(4, 1, term=1))  # still usable
    assert len(reload(directory).entries) == 4


def test_directory_is_locked_while_open(directory: Path) -> None:
    store = FileRaftStorage(directory)
    with pytest.raises(DirectoryLockedError):
        FileRaftStorage(directory)
    store.close()
    FileRaftStorage(directory).close()


def test_closed_store_refuses_calls(directory: Path) -> None:
    store = FileRaftStorage(directory)
    store.close()
    store.close()
    with pytest.raises(StorageClosedError):
        store.save(HardState(1), [])
    with pytest.raises(StorageClosedError):
        store.load()


def test_failed_fsync_makes_the_store_unusable(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileRaftStorage(directory)
    store.save(HardState(1, None, 0), entries(1, 2, term=1))

    def failing_fdatasync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing_fdatasync)
    with pytest.raises(OSError):
        store.save(None, entries(3, 1, term=1))
    monkeypatch.undo()
    with pytest.raises(StorageClosedError, match="failed write"):
        store.save(None, entries(3, 1, term=1))
    store.close()
    # The unacknowledged batch may or may not be there; what was acknowledged is.
    assert reload(directory).entries[:2] == tuple(entries(1, 2, term=1))


def test_load_after_saves_rereads_the_disk(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        assert store.load().entries == ()
        store.save(HardState(1, "a", 1), entries(1, 3, term=1))
        restored = store.load()
        assert restored.entries == tuple(entries(1, 3, term=1))
        assert restored.hard_state == HardState(1, "a", 1)


def test_large_entries_and_many_batches(directory: Path) -> None:
    big = [Entry(1, 1, data=os.urandom(300_000)), Entry(1, 2, data=b"")]
    with FileRaftStorage(directory, segment_size=100_000) as store:
        store.save(None, big)
        for index in range(3, 300):
            store.save(HardState(1, None, index), [Entry(1, index, data=payload(index, 1))])
    restored = reload(directory, segment_size=100_000)
    assert restored.entries[:2] == tuple(big)
    assert [e.data for e in restored.entries[2:]] == [payload(i, 1) for i in range(3, 300)]


def test_preallocation_off_gives_the_same_log(directory: Path) -> None:
    with FileRaftStorage(directory, preallocate=False) as store:
        store.save(HardState(1, None, 0), entries(1, 10, term=1))
    size = segment_files(directory)[0].stat().st_size
    assert size < 4096
    with FileRaftStorage(directory, preallocate=True) as store:
        assert store.load().entries == tuple(entries(1, 10, term=1))
        store.save(None, entries(11, 1, term=1))
    assert len(reload(directory).entries) == 11


def test_group_commit_one_write_and_one_fdatasync_per_save(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileRaftStorage(directory)
    store.save(HardState(1, "a", 0), entries(1, 1, term=1))  # creates the segment
    calls: list[str] = []
    real_pwrite, real_fdatasync, real_fsync = os.pwrite, os.fdatasync, os.fsync

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        calls.append("pwrite")
        return real_pwrite(fd, data, offset)

    def fdatasync(fd: int) -> None:
        calls.append("fdatasync")
        real_fdatasync(fd)

    def fsync(fd: int) -> None:
        calls.append("fsync")
        real_fsync(fd)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", fsync)
    store.save(HardState(1, "a", 1), entries(2, 512, term=1, size=100))
    assert calls == ["pwrite", "fdatasync"]
    calls.clear()
    store.save(HardState(2, "b", 1), [])
    assert calls == ["pwrite", "fdatasync"]
    monkeypatch.undo()
    store.close()


def test_write_leaves_the_sync_to_the_caller_until_a_segment_starts(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileRaftStorage(directory, segment_size=64 * 1024)
    assert isinstance(store, UnsyncedWrites)
    assert store.write(HardState(1, "a", 0), entries(1, 1, term=1)) is None  # new segment
    calls: list[str] = []
    real_pwrite, real_fdatasync = os.pwrite, os.fdatasync
    monkeypatch.setattr(os, "pwrite",
                        lambda fd, data, at: calls.append("pwrite") or real_pwrite(fd, data, at))
    monkeypatch.setattr(os, "fdatasync",
                        lambda fd: calls.append("fdatasync") or real_fdatasync(fd))
    fd = store.write(HardState(1, "a", 1), entries(2, 10, term=1, size=100))
    assert calls == ["pwrite"] and fd is not None
    with pytest.raises(RuntimeError, match="not been synced"):
        store.write(None, entries(12, 1, term=1))
    os.fdatasync(fd)
    store.synced()
    monkeypatch.undo()
    last = 11
    while len(segment_files(directory)) == 1:  # fill the segment: the next write syncs
        fd = store.write(None, entries(last + 1, 50, term=1, size=500))
        last += 50
        if fd is not None:
            os.fdatasync(fd)
            store.synced()
    store.close()
    restored = reload(directory, segment_size=64 * 1024)
    assert [e.index for e in restored.entries] == list(range(1, last + 1))
    assert restored.hard_state == HardState(1, "a", 1)
