"""Snapshots: atomic install, compaction, log replacement, retention and crash windows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lockcell.raft.types import HardState, Snapshot
from lockcell.storage.errors import StorageCorruptError
from lockcell.storage.snapshots import STAGED_SUFFIX
from lockcell.storage.store import DEFAULT_SEGMENT_SIZE, FileRaftStorage, RestoredState
from lockcell.storage.wal import SegmentWriter

from .helpers import entries, segment_files, snapshot


class Crash(Exception):
    """Raised by a fault injector to stop a store mid-operation."""


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "raft"


def reload(
    directory: Path, segment_size: int = DEFAULT_SEGMENT_SIZE
) -> tuple[RestoredState, FileRaftStorage]:
    store = FileRaftStorage(directory, segment_size=segment_size)
    restored = store.load()
    store.close()
    return restored, store


def fill(store: FileRaftStorage, last: int, term: int = 1, batch: int = 5) -> None:
    for first in range(store.last_index + 1, last + 1, batch):
        count = min(batch, last + 1 - first)
        store.save(HardState(term, "a", first - 1), entries(first, count, term, size=60))


def snapshot_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.snap"))


def test_local_snapshot_compacts_whole_segments(directory: Path) -> None:
    with FileRaftStorage(directory, segment_size=700) as store:
        fill(store, 100)
        before = segment_files(directory)
        store.save_snapshot(snapshot(63, 1, b"image-63"))
        after = segment_files(directory)
        assert set(after) < set(before)
        assert store.first_index == 64 and store.term(63) == 1 and store.term(62) is None
        # every deleted segment held only entries <= 63; the oldest kept one reaches 64
        assert int(after[0].stem.split("-")[1]) <= 64
    restored, _ = reload(directory, segment_size=700)
    assert restored.snapshot == snapshot(63, 1, b"image-63")
    assert restored.entries == tuple(
        e for first in range(61, 101, 5) for e in entries(first, 5, 1, size=60) if e.index > 63
    )
    assert restored.hard_state == HardState(1, "a", 95)


def test_snapshot_covering_the_whole_log(directory: Path) -> None:
    with FileRaftStorage(directory, segment_size=700) as store:
        fill(store, 40)
        store.save_snapshot(snapshot(40, 1))
        assert len(store.segment_paths) == 1  # the newest always stays (hard state)
        fill(store, 45)
    restored, _ = reload(directory, segment_size=700)
    assert [e.index for e in restored.entries] == [41, 42, 43, 44, 45]


def test_save_snapshot_checks_the_log(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        fill(store, 10, term=2)
        with pytest.raises(ValueError, match="beyond"):
            store.save_snapshot(snapshot(11, 2))
        with pytest.raises(ValueError, match="term"):
            store.save_snapshot(snapshot(5, 1))
        store.save_snapshot(snapshot(8, 2))
        store.save_snapshot(snapshot(6, 2))  # older than the stored one: ignored
        assert store.snapshot_meta.index == 8
    assert snapshot_files(directory) == ["snapshot-00000000000000000008-00000000000000000002.snap"]


def test_retention_keeps_the_newest_snapshots(directory: Path) -> None:
    with FileRaftStorage(directory, keep_snapshots=2) as store:
        fill(store, 50)
        for index in (10, 20, 30, 40):
            store.save_snapshot(snapshot(index, 1))
    names = snapshot_files(directory)
    assert [int(n.split("-")[1]) for n in names] == [30, 40]
    assert not list(directory.glob("*.tmp"))


def test_leader_snapshot_replaces_a_divergent_log(directory: Path) -> None:
    with FileRaftStorage(directory, segment_size=700) as store:
        fill(store, 60, term=1)
        # the leader's log has term 3 at index 50: ours (term 1) is not a prefix of it
        store.save(HardState(3, "l", 50), entries(51, 3, term=3), snapshot(50, 3, b"leader"))
        assert store.last_index == 53 and store.term(50) == 3
        assert len(store.segment_paths) == 1
    restored, _ = reload(directory, segment_size=700)
    assert restored.snapshot == snapshot(50, 3, b"leader")
    assert restored.entries == tuple(entries(51, 3, term=3))
    assert restored.hard_state == HardState(3, "l", 50)


def test_leader_snapshot_beyond_the_log(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        fill(store, 20)
        store.save(HardState(4, None, 500), [], snapshot(500, 4))
        store.save(None, entries(501, 2, term=4))
    restored, _ = reload(directory)
    assert restored.snapshot.meta.index == 500
    assert [e.index for e in restored.entries] == [501, 502]


def test_leader_snapshot_matching_the_log_keeps_the_suffix(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        fill(store, 20, term=2)
        store.save(HardState(2, None, 15), [], snapshot(15, 2))
        assert store.last_index == 20
    restored, _ = reload(directory)
    assert restored.snapshot.meta.index == 15
    assert [e.index for e in restored.entries] == [16, 17, 18, 19, 20]
    with FileRaftStorage(directory) as store:
        # entries at or below the snapshot are skipped; a later one replaces the suffix
        store.save(None, entries(14, 4, term=2), snapshot(16, 2))
        assert store.last_index == 17


def test_stale_leader_snapshot_is_ignored(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        fill(store, 20)
        store.save_snapshot(snapshot(15, 1, b"mine"))
        store.save(None, entries(10, 12, term=1), snapshot(12, 9, b"stale"))
        assert store.snapshot_meta.index == 15 and store.last_index == 21
    restored, _ = reload(directory)
    assert restored.snapshot.data == b"mine"
    assert [e.index for e in restored.entries] == list(range(16, 22))


# ----------------------------------------------------------------------------- crash windows


def test_crash_after_snapshot_file_before_log_reset(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileRaftStorage(directory)
    fill(store, 30, term=1)

    def crash(*args: object, **kwargs: object) -> None:
        raise Crash

    monkeypatch.setattr(SegmentWriter, "create", crash)
    with pytest.raises(Crash):
        store.save(HardState(5, "l", 25), entries(26, 2, term=5), snapshot(25, 5))
    store.close()
    monkeypatch.undo()
    with FileRaftStorage(directory) as reopened:
        report = reopened.recovery_report
        assert report.discarded_log is not None and "term 1 at index 25" in report.discarded_log
        restored = reopened.load()
        assert restored.snapshot.meta.index == 25 and restored.entries == ()
        assert restored.hard_state == HardState(1, "a", 25)  # the new one was never acked
        reopened.save(HardState(5, "l", 25), entries(26, 2, term=5))
    restored, again = reload(directory)
    assert again.recovery_report.clean
    assert restored.entries == tuple(entries(26, 2, term=5))


def test_crash_after_log_reset_before_old_segments_are_deleted(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileRaftStorage(directory, segment_size=600)
    fill(store, 40, term=1)
    old_segments = segment_files(directory)

    def crash(self: FileRaftStorage) -> None:
        raise Crash

    monkeypatch.setattr(FileRaftStorage, "_drop_segments_before_last", crash)
    with pytest.raises(Crash):
        store.save(HardState(2, None, 80), [], snapshot(80, 2))
    store.close()
    monkeypatch.undo()
    assert set(old_segments) < set(segment_files(directory))
    restored, reopened = reload(directory, segment_size=600)
    assert restored.snapshot.meta.index == 80 and restored.entries == ()
    assert restored.hard_state == HardState(2, None, 80)
    assert set(reopened.recovery_report.removed_files) == set(old_segments)
    assert not set(old_segments) & set(segment_files(directory))


def test_partial_compaction_is_harmless(directory: Path, tmp_path: Path) -> None:
    with FileRaftStorage(directory, segment_size=500) as store:
        fill(store, 80)
        saved = tmp_path / "saved"
        shutil.copytree(directory, saved)
        store.save_snapshot(snapshot(70, 1))
        deleted = sorted(
            set(p.name for p in segment_files(saved))
            - set(p.name for p in segment_files(directory))
        )
    assert len(deleted) >= 3
    # deletion runs oldest first: a crash leaves a later part of the deleted run behind
    for name in deleted[len(deleted) // 2 :]:
        shutil.copy(saved / name, directory / name)
    restored, _ = reload(directory, segment_size=500)
    assert [e.index for e in restored.entries] == list(range(71, 81))


def test_damaged_newest_snapshot_falls_back_when_the_log_covers_it(directory: Path) -> None:
    with FileRaftStorage(directory, segment_size=100_000) as store:
        fill(store, 40)
        store.save_snapshot(snapshot(10, 1, b"old"))
        store.save_snapshot(snapshot(20, 1, b"new"))  # no segment is wholly behind 20
    newest = directory / "snapshot-00000000000000000020-00000000000000000001.snap"
    raw = bytearray(newest.read_bytes())
    raw[30] ^= 0x10
    newest.write_bytes(bytes(raw))
    with FileRaftStorage(directory, segment_size=100_000) as store:
        report = store.recovery_report
        assert [d.path for d in report.damaged_snapshots] == [newest]
        assert not report.clean
        restored = store.load()
    assert restored.snapshot.data == b"old"
    assert [e.index for e in restored.entries] == list(range(11, 41))
    assert (directory / (newest.name + ".corrupt")).exists()


def test_damaged_snapshot_without_log_behind_it_is_an_error(directory: Path) -> None:
    with FileRaftStorage(directory, segment_size=500) as store:
        fill(store, 60)
        store.save_snapshot(snapshot(55, 1))
    only = next(directory.glob("*.snap"))
    only.write_bytes(only.read_bytes()[:-1])
    with pytest.raises(StorageCorruptError, match="newest usable snapshot ends at index 0"):
        FileRaftStorage(directory, segment_size=500)


def test_snapshot_entries_and_hard_state_in_one_call(directory: Path) -> None:
    image = Snapshot(snapshot(9, 2).meta, b"x" * 100_000)
    with FileRaftStorage(directory) as store:
        store.save(HardState(2, "v", 9), entries(10, 4, term=2), image)
    restored, _ = reload(directory)
    assert restored == RestoredState(HardState(2, "v", 9), image, tuple(entries(10, 4, term=2)))


def test_unencodable_snapshot_is_rejected_before_any_write(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        fill(store, 10)
        bad = snapshot(5, 1, voters=("x" * 70_000,))
        with pytest.raises(ValueError):
            store.save_snapshot(bad)
        with pytest.raises(ValueError):
            store.save(None, [], snapshot(50, 2, voters=("y" * 70_000,)))
        assert snapshot_files(directory) == []
        store.save_snapshot(snapshot(5, 1))  # still usable


def test_a_staged_snapshot_is_invisible_until_installed(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        fill(store, 40)
        snap = snapshot(30, 1, data=b"staged image")
        store.stage_snapshot(snap)
        assert snapshot_files(directory) == []
        assert [p.name for p in directory.glob("*" + STAGED_SUFFIX)]
        store.save_snapshot(snap, staged=True)
        assert not list(directory.glob("*" + STAGED_SUFFIX))
    restored, _ = reload(directory)
    assert restored.snapshot == snap
    assert [e.index for e in restored.entries] == list(range(31, 41))


def test_a_staged_snapshot_older_than_the_stored_one_is_dropped(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        fill(store, 40)
        store.save_snapshot(snapshot(35, 1))
        old = snapshot(30, 1, data=b"late")
        store.stage_snapshot(old)
        store.save_snapshot(old, staged=True)
        assert not list(directory.glob("*" + STAGED_SUFFIX))
    assert reload(directory)[0].snapshot.meta.index == 35


def test_a_staged_snapshot_left_by_a_crash_is_removed_at_start(directory: Path) -> None:
    with FileRaftStorage(directory) as store:
        fill(store, 40)
        store.stage_snapshot(snapshot(30, 1))
    restored, _ = reload(directory)
    assert restored.snapshot.empty and len(restored.entries) == 40
    assert not list(directory.glob("*" + STAGED_SUFFIX))
