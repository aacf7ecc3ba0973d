"""Opening a damaged store: torn tails are cut and reported, other damage raises."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lockcell.raft.types import Entry, HardState
from lockcell.storage.codec import FRAME_HEADER_SIZE, SEGMENT_HEADER_SIZE
from lockcell.storage.errors import StorageCorruptError
from lockcell.storage.store import FileRaftStorage
from lockcell.storage.wal import scan_segment

from .helpers import entries, segment_files


def build(directory: Path, batches: int = 6, segment_size: int = 1 << 20) -> list[list[Entry]]:
    """One frame per batch of 3 entries (the first also carries a hard state)."""
    written: list[list[Entry]] = []
    with FileRaftStorage(directory, segment_size=segment_size) as store:
        for number in range(batches):
            batch = entries(number * 3 + 1, 3, term=1, size=40)
            store.save(HardState(1, "a", number * 3), batch)
            written.append(batch)
    return written


def frame_offsets(path: Path) -> list[int]:
    return [frame.offset for frame in scan_segment(path, tail_may_be_torn=True).frames]


def flat(batches: list[list[Entry]]) -> tuple[Entry, ...]:
    return tuple(e for batch in batches for e in batch)


def flip(path: Path, offset: int, mask: int = 0x04) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= mask
    path.write_bytes(bytes(raw))


def nonzero_length(path: Path) -> int:
    return len(path.read_bytes().rstrip(b"\x00"))


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "raft"


def test_every_truncation_of_the_last_frame_is_a_torn_tail(directory: Path) -> None:
    written = build(directory)
    segment = segment_files(directory)[0]
    pristine = segment.read_bytes()
    last = frame_offsets(segment)[-1]
    end = nonzero_length(segment)
    for cut in range(last + 1, end):
        segment.write_bytes(pristine[:cut])
        damaged = len(pristine[:cut].rstrip(b"\x00")) - last  # trailing zeros look unwritten
        with FileRaftStorage(directory) as store:
            tails = store.recovery_report.torn_tails
            assert [(t.path, t.offset, t.length) for t in tails] == (
                [(segment, last, damaged)] if damaged > 0 else []
            )
            assert store.load().entries == flat(written[:-1])
        if damaged > 0:
            assert segment.stat().st_size == last
    segment.write_bytes(pristine[:last])  # cut exactly at a frame boundary: nothing torn
    with FileRaftStorage(directory) as store:
        assert store.recovery_report.clean
        assert store.load().entries == flat(written[:-1])


def test_torn_tail_is_logged_with_file_and_offset(
    directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build(directory)
    segment = segment_files(directory)[0]
    last = frame_offsets(segment)[-1]
    segment.write_bytes(segment.read_bytes()[: last + 20])
    with caplog.at_level(logging.WARNING, logger="lockcell.storage"):
        FileRaftStorage(directory).close()
    (message,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(segment) in message and f"byte offset {last}" in message


@pytest.mark.parametrize("where", ["marker", "crc", "length", "payload", "last byte"])
def test_bit_flip_in_the_last_frame_is_cut_off(directory: Path, where: str) -> None:
    written = build(directory)
    segment = segment_files(directory)[0]
    last = frame_offsets(segment)[-1]
    position = {
        "marker": last,
        "crc": last + 5,
        "length": last + 9,
        "payload": last + FRAME_HEADER_SIZE + 7,
        "last byte": nonzero_length(segment) - 1,
    }[where]
    flip(segment, position)
    with FileRaftStorage(directory) as store:
        (tail,) = store.recovery_report.torn_tails
        assert (tail.path, tail.offset) == (segment, last)
        assert store.load().entries == flat(written[:-1])
        store.save(None, entries(16, 1, term=2))
    with FileRaftStorage(directory) as store:
        assert store.recovery_report.clean
        assert store.load().entries == flat(written[:-1]) + tuple(entries(16, 1, term=2))


@pytest.mark.parametrize("where", ["payload", "length", "crc", "marker"])
def test_bit_flip_in_the_middle_raises(directory: Path, where: str) -> None:
    build(directory)
    segment = segment_files(directory)[0]
    victim = frame_offsets(segment)[2]
    offsets = {"marker": 2, "crc": 5, "length": 8, "payload": FRAME_HEADER_SIZE + 20}
    position = victim + offsets[where]
    flip(segment, position, mask=0x40)
    damaged = segment.read_bytes()
    with pytest.raises(StorageCorruptError) as caught:
        FileRaftStorage(directory)
    assert caught.value.path == segment and caught.value.offset == victim
    assert str(segment) in str(caught.value) and f"offset {victim}" in str(caught.value)
    assert segment.read_bytes() == damaged  # nothing was dropped or repaired


def test_damaged_last_frame_of_an_older_segment_raises(directory: Path) -> None:
    build(directory, batches=12, segment_size=400)
    segments = segment_files(directory)
    assert len(segments) >= 3
    older = segments[-2]
    victim = frame_offsets(older)[-1]
    flip(older, victim + FRAME_HEADER_SIZE + 3)
    with pytest.raises(StorageCorruptError, match="not the newest") as caught:
        FileRaftStorage(directory, segment_size=400)
    assert (caught.value.path, caught.value.offset) == (older, victim)


def test_truncated_older_segment_raises(directory: Path) -> None:
    build(directory, batches=12, segment_size=400)
    older = segment_files(directory)[0]
    older.write_bytes(older.read_bytes()[: frame_offsets(older)[-1] + 10])
    with pytest.raises(StorageCorruptError):
        FileRaftStorage(directory, segment_size=400)


def test_missing_middle_segment_is_a_gap(directory: Path) -> None:
    build(directory, batches=12, segment_size=400)
    segment_files(directory)[1].unlink()
    with pytest.raises(StorageCorruptError, match="gap"):
        FileRaftStorage(directory, segment_size=400)


def test_damaged_segment_header_raises(directory: Path) -> None:
    build(directory)
    segment = segment_files(directory)[0]
    flip(segment, 20)
    with pytest.raises(StorageCorruptError, match="header") as caught:
        FileRaftStorage(directory)
    assert caught.value.offset == 0


def test_zero_tail_is_not_damage(directory: Path) -> None:
    written = build(directory)
    segment = segment_files(directory)[0]
    with segment.open("ab") as handle:
        handle.write(bytes(10_000))
    with FileRaftStorage(directory) as store:
        assert store.recovery_report.clean
        assert store.load().entries == flat(written)


def test_garbage_tail_is_cut_off(directory: Path) -> None:
    written = build(directory)
    segment = segment_files(directory)[0]
    end = nonzero_length(segment)
    raw = bytearray(segment.read_bytes())
    raw[end : end + 64] = bytes(range(7, 71))
    segment.write_bytes(bytes(raw))
    with FileRaftStorage(directory) as store:
        (tail,) = store.recovery_report.torn_tails
        assert tail.offset == end and tail.length == 64
        assert store.load().entries == flat(written)


def test_leftover_temp_files_are_removed(directory: Path) -> None:
    build(directory)
    junk = [
        directory / "00000009-00000000000000000099.wal.tmp",
        directory / "snapshot-00000000000000000005-00000000000000000001.snap.tmp",
    ]
    for path in junk:
        path.write_bytes(b"half written")
    with FileRaftStorage(directory) as store:
        assert sorted(store.recovery_report.removed_files) == sorted(junk)
        assert store.recovery_report.clean
    assert not any(path.exists() for path in junk)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_byte_change_is_cut_or_refused(data: st.DataObject) -> None:
    """A changed byte in the last frame is a torn tail; anywhere earlier it is an error."""
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp) / "raft"
        written = build(directory, batches=5)
        segment = segment_files(directory)[0]
        offsets = frame_offsets(segment)
        end = nonzero_length(segment)
        position = data.draw(st.integers(min_value=SEGMENT_HEADER_SIZE, max_value=end - 1))
        value = data.draw(st.integers(min_value=0, max_value=255))
        raw = bytearray(segment.read_bytes())
        if raw[position] == value:
            value ^= 0xFF
        raw[position] = value
        segment.write_bytes(bytes(raw))
        victim = max(offset for offset in offsets if offset <= position)
        if victim == offsets[-1]:
            with FileRaftStorage(directory) as store:
                assert [t.offset for t in store.recovery_report.torn_tails] == [victim]
                assert store.load().entries == flat(written[:-1])
        else:
            with pytest.raises(StorageCorruptError) as caught:
                FileRaftStorage(directory)
            assert (caught.value.path, caught.value.offset) == (segment, victim)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.binary(min_size=1, max_size=600))
def test_arbitrary_tail_garbage_never_costs_acknowledged_data(garbage: bytes) -> None:
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp) / "raft"
        written = build(directory, batches=3)
        segment = segment_files(directory)[0]
        raw = segment.read_bytes()
        end = nonzero_length(segment)
        segment.write_bytes(raw[:end] + garbage)
        with FileRaftStorage(directory) as store:
            assert store.load().entries == flat(written)
            tails = store.recovery_report.torn_tails
            assert len(tails) == (0 if garbage.strip(b"\x00") == b"" else 1)
