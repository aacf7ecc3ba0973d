"""WAL segment files: naming, creating, appending with fdatasync, and scanning with tail repair.

A segment is ``<seq>-<first index>.wal``: a 36-byte header (see :mod:`.codec`) followed by
frames, one per ``save``. ``seq`` orders segments (it only grows); ``first index`` is the
index of the first entry the segment was created for, so compaction can tell which whole
files lie behind a snapshot. Segments are created atomically (header written to a temp
file, fsynced, renamed, directory fsynced), so a segment that exists always has a valid
header; only the last frame of the last segment can be torn by a crash.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from lockcell.storage.codec import (
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Record,
    SegmentHeader,
    decode_batch,
    decode_segment_header,
    encode_segment_header,
    frame_marker,
    read_frame,
)
from lockcell.storage.errors import CodecError, StorageCorruptError
from lockcell.storage.failpoints import failpoint
from lockcell.storage.fsutil import TEMP_SUFFIX, fsync_directory, write_all

SEGMENT_SUFFIX = ".wal"
_SEGMENT_NAME = re.compile(r"(\d{8,})-(\d{20,})\.wal")


def segment_file_name(seq: int, first_index: int) -> str:
    """The file name of segment number ``seq`` created for entries from ``first_index``."""
    return f"{seq:08d}-{first_index:020d}{SEGMENT_SUFFIX}"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """``(seq, first_index)`` for a segment file name, ``None`` for any other name."""
    match = _SEGMENT_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True, slots=True)
class TornTail:
    """A damaged last frame found (and cut off) when the log was opened."""

    path: Path
    offset: int
    """Byte offset of the first bad byte range: the start of the torn frame."""
    length: int
    """Bytes dropped (up to the last non-zero byte; preallocated zeros are not counted)."""
    reason: str


@dataclass(frozen=True, slots=True)
class ScannedFrame:
    """One valid frame read back from a segment."""

    offset: int
    records: tuple[Record, ...]


@dataclass(frozen=True, slots=True)
class SegmentScan:
    """Everything read from one segment file."""

    path: Path
    header: SegmentHeader
    frames: tuple[ScannedFrame, ...]
    end: int
    """Where the valid data ends: the next frame is written here."""
    torn_tail: TornTail | None
    """Set when the last frame was damaged; the caller decides whether to truncate."""


def scan_segment(path: Path, *, tail_may_be_torn: bool) -> SegmentScan:
    """Read and check every frame of a segment.

    Trailing zero bytes (preallocated space) end the segment normally. A bad frame is a
    torn tail only if ``tail_may_be_torn`` (this is the newest segment) and no valid
    frame follows it anywhere in the file; otherwise it is corruption and
    :class:`StorageCorruptError` names the file and the offset of the bad frame.
    """
    data = path.read_bytes()
    try:
        header = decode_segment_header(data)
    except CodecError as err:
        raise StorageCorruptError(path, 0, f"bad segment header: {err}") from err
    parsed = parse_segment_name(path.name)
    if parsed is not None and parsed != (header.seq, header.first_index):
        raise StorageCorruptError(
            path,
            0,
            f"header says segment {header.seq} from index {header.first_index}, "
            "which does not match the file name",
        )
    frames: list[ScannedFrame] = []
    offset = SEGMENT_HEADER_SIZE
    data_end = _end_of_nonzero(data)  # zeros after this: preallocated, or never written
    torn: TornTail | None = None
    while offset < data_end:
        try:
            end = read_frame(data, offset, header.salt)
        except CodecError as err:
            if not tail_may_be_torn:
                raise StorageCorruptError(
                    path, offset, f"{err} (in a segment that is not the newest)"
                ) from err
            following = find_valid_frame(data, offset + 1, header.salt)
            if following is not None:
                raise StorageCorruptError(
                    path, offset, f"{err}; a valid frame follows at offset {following}"
                ) from err
            torn = TornTail(path=path, offset=offset, length=data_end - offset, reason=str(err))
            break
        try:
            records = decode_batch(data, offset + FRAME_HEADER_SIZE, end)
        except CodecError as err:
            raise StorageCorruptError(
                path, offset, f"frame checksum is valid but its records are not: {err}"
            ) from err
        frames.append(ScannedFrame(offset=offset, records=tuple(records)))
        offset = end
    return SegmentScan(path=path, header=header, frames=tuple(frames), end=offset, torn_tail=torn)


def find_valid_frame(buf: bytes, start: int, salt: int) -> int | None:
    """The offset of the first frame at or after ``start`` that validates, or ``None``.

    Used to tell a torn tail (nothing valid after the bad frame) from damage in the
    middle. Candidates are found with ``bytes.find`` on the segment's frame marker, so
    the scan runs at C speed and checksums are computed only where the marker appears.
    """
    marker = frame_marker(salt)
    position = max(start, 0)
    while True:
        position = buf.find(marker, position)
        if position < 0:
            return None
        try:
            read_frame(buf, position, salt)
        except CodecError:
            position += 1
        else:
            return position


class SegmentWriter:
    """The newest segment, open for appending frames durably.

    With ``preallocate`` > 0, file space is reserved ahead of the write offset in chunks of
    that many bytes, up to ``limit`` (the segment size), so most appends do not change the
    file size and their fdatasync has no metadata to flush. Reserved space reads as
    zeros, which the scanner treats as the end of the segment.
    """

    def __init__(
        self,
        path: Path,
        header: SegmentHeader,
        fd: int,
        offset: int,
        *,
        preallocate: int = 0,
        limit: int = 0,
    ) -> None:
        self.path = path
        self.header = header
        self._fd = fd
        self.offset = offset
        """Where the next frame goes (end of the valid data)."""
        self._preallocate = preallocate
        self._limit = limit
        self._allocated = os.fstat(fd).st_size

    @classmethod
    def create(
        cls,
        directory: Path,
        seq: int,
        first_index: int,
        *,
        preallocate: int = 0,
        limit: int = 0,
    ) -> SegmentWriter:
        """Create a new segment atomically; the directory entry is durable on return."""
        header = SegmentHeader(seq=seq, first_index=first_index, salt=_new_salt())
        path = directory / segment_file_name(seq, first_index)
        temp = path.with_name(path.name + TEMP_SUFFIX)
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            write_all(fd, encode_segment_header(header), 0)
            reserve = min(preallocate, limit) - SEGMENT_HEADER_SIZE
            if reserve > 0:
                _preallocate(fd, SEGMENT_HEADER_SIZE, reserve)
            os.fsync(fd)
            failpoint("segment.before_rename")
            os.replace(temp, path)
            fsync_directory(directory)
            failpoint("segment.after_create")
        except BaseException:
            os.close(fd)
            temp.unlink(missing_ok=True)
            raise
        return cls(path, header, fd, SEGMENT_HEADER_SIZE, preallocate=preallocate, limit=limit)

    @classmethod
    def reopen(
        cls,
        path: Path,
        header: SegmentHeader,
        end: int,
        *,
        cut_tail: bool,
        preallocate: int = 0,
        limit: int = 0,
    ) -> SegmentWriter:
        """Open an existing segment for appending at ``end``.

        With ``cut_tail`` (the scan found a torn frame there), everything after ``end`` is
        removed and the cut made durable before any new frame can land there.
        """
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            if cut_tail:
                failpoint("wal.before_truncate")
                os.ftruncate(fd, end)
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, header, fd, end, preallocate=preallocate, limit=limit)

    @property
    def fileno(self) -> int:
        """The segment's file descriptor (to sync what :meth:`append` left unsynced)."""
        return self._fd

    def append(self, frame: bytes, *, sync: bool = True) -> None:
        """Write one frame and fdatasync; durable when this returns. Without ``sync`` the
        frame is only written: the caller syncs :attr:`fileno` before relying on it."""
        end = self.offset + len(frame)
        if self._preallocate and end > self._allocated:
            target = max(end, min(self._allocated + self._preallocate, self._limit))
            if _preallocate(self._fd, self._allocated, target - self._allocated):
                self._allocated = os.fstat(self._fd).st_size
            else:
                self._preallocate = 0
        failpoint("wal.before_write")
        write_all(self._fd, frame, self.offset)
        failpoint("wal.after_write")
        if sync:
            os.fdatasync(self._fd)
            failpoint("wal.after_fsync")
        self.offset = end

    def close(self) -> None:
        """Close the file (idempotent); nothing is flushed that was not already."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


def _new_salt() -> int:
    """A random salt whose four bytes are all non-zero (it doubles as the frame marker)."""
    while True:
        salt = secrets.randbits(32)
        if all(salt.to_bytes(4, "little")):
            return salt


def _preallocate(fd: int, offset: int, length: int) -> bool:
    """Reserve blocks so appends do not change the file size (cheaper fdatasync)."""
    try:
        os.posix_fallocate(fd, offset, length)
    except OSError:  # unsupported here: appends just grow the file
        return False
    return True


def _end_of_nonzero(data: bytes) -> int:
    """One past the last non-zero byte of ``data`` (0 if all zero), without copying it all."""
    end = len(data)
    chunk = 1 << 16
    while end > 0:
        start = max(0, end - chunk)
        kept = len(data[start:end].rstrip(b"\x00"))
        if kept:
            return start + kept
        end = start
        chunk = min(chunk * 2, 1 << 22)
    return 0
