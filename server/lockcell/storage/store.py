"""The durable Raft store: log, hard state and snapshots behind one ``RaftStorage`` interface.

On-disk layout of the store directory (nothing else is written there)::

    LOCK                                    flock held while a store object is open
    00000007-00000000000000120001.wal       WAL segments: <seq>-<first index>.wal
    snapshot-<index>-<term>.snap            the newest snapshots (two by default)
    *.tmp                                   in-flight atomic writes (removed on open)
    *.snap.corrupt                          damaged snapshots set aside on open

Each ``save`` appends ONE frame (reset marker, hard state, entries) to the newest segment
and fdatasyncs once. Hard state is interleaved in the WAL, latest wins; every new segment
starts with the current hard state, so compaction can delete old segments freely. An
entry whose index is at or below the last one replaces that suffix *logically*: replay
applies frames in order and the later entry wins, so nothing is rewritten in place.

When a snapshot replaces the log (the log does not hold the snapshot's index and term),
the snapshot file is installed first, then a new segment starting with a ``LogReset``
marker is written and fsynced, and only then are the old segments deleted. If a crash
interrupts this, replay still finds a consistent state: a log that disagrees with the
newest snapshot is discarded on open (and a reset marker written then).
"""

from __future__ import annotations

import bisect
import contextlib
import fcntl
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from lockcell.raft.types import Entry, HardState, Snapshot, SnapshotMeta
from lockcell.storage.codec import (
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    LogReset,
    encode_batch,
    encode_frame,
    encode_snapshot,
)
from lockcell.storage.errors import (
    DirectoryLockedError,
    StorageClosedError,
    StorageCorruptError,
)
from lockcell.storage.failpoints import failpoint
from lockcell.storage.fsutil import TEMP_SUFFIX, ensure_directory, fsync_directory
from lockcell.storage.snapshots import (
    DamagedSnapshot,
    install_staged_snapshot,
    load_newest_snapshot,
    prune_snapshots,
    stage_snapshot,
    staged_snapshot_path,
    write_snapshot,
)
from lockcell.storage.wal import (
    SegmentScan,
    SegmentWriter,
    TornTail,
    parse_segment_name,
    scan_segment,
)

logger = logging.getLogger(__name__)

DEFAULT_SEGMENT_SIZE = 64 * 1024 * 1024
"""A new segment is started once the current one would grow past this many bytes."""

PREALLOCATE_CHUNK = 4 * 1024 * 1024
"""With preallocation on, segment space is reserved this many bytes at a time."""

LOCK_FILE = "LOCK"


@dataclass(frozen=True, slots=True)
class RestoredState:
    """What a restarted member finds on disk."""

    hard_state: HardState
    snapshot: Snapshot
    """``Snapshot()`` (index 0) when none was ever saved."""
    entries: tuple[Entry, ...]
    """Contiguous, starting at ``snapshot.meta.index + 1``."""


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What opening the store found and repaired. Everything here was also logged."""

    torn_tails: tuple[TornTail, ...] = ()
    """Damaged last frames that were cut off (file, byte offset, bytes dropped, reason)."""
    damaged_snapshots: tuple[DamagedSnapshot, ...] = ()
    """Snapshot files that failed their checks and were renamed to ``*.corrupt``."""
    discarded_log: str | None = None
    """Why the log was dropped in favour of the newest snapshot, if it was."""
    removed_files: tuple[Path, ...] = ()
    """Leftover temp files and segments made obsolete by a log reset."""

    @property
    def clean(self) -> bool:
        """Whether nothing was damaged (removing leftovers of a clean protocol is normal)."""
        return not self.torn_tails and not self.damaged_snapshots and self.discarded_log is None


class RaftStorage(Protocol):
    """Durable storage for one Raft member, as the node's driver loop uses it."""

    def load(self) -> RestoredState:
        """Return what is on disk (called once at startup)."""
        ...

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        """Append entries (an entry whose index <= the last stored index replaces that
        suffix: Raft followers truncate conflicting tails), record hard_state, install
        snapshot if given; ONE fsync for the whole call (group commit). Returns only when
        durable."""
        ...

    def stage_snapshot(self, snapshot: Snapshot) -> None:
        """Write a locally created snapshot to a staging file and fsync it, without
        installing it. Touches nothing :meth:`save` uses, so it may run on another thread
        while :meth:`save` runs; :meth:`save_snapshot` with ``staged=True`` installs it."""
        ...

    def save_snapshot(self, snapshot: Snapshot, *, staged: bool = False) -> None:
        """Persist a locally created snapshot atomically (temp file, fsync, rename, fsync
        dir) and compact: segments wholly at or below the snapshot index may be deleted.
        With ``staged``, the file written by :meth:`stage_snapshot` is installed."""
        ...

    def close(self) -> None:
        """Release files and the directory lock."""
        ...


@runtime_checkable
class UnsyncedWrites(Protocol):
    """A store whose writes can leave their fdatasync to the caller (see
    :meth:`FileRaftStorage.write`), so that a leader's loop never waits for the disk."""

    def write(self, hard_state: HardState | None, entries: Sequence[Entry]) -> int | None:
        """Write without syncing; the descriptor to sync, or ``None`` if durable already."""
        ...

    def synced(self) -> None:
        """The descriptor :meth:`write` returned was synced."""
        ...


@dataclass(slots=True)
class _Segment:
    """Bookkeeping for one segment file."""

    seq: int
    first_index: int
    path: Path
    min_entry_index: int | None
    """Lowest entry index written to it: a later entry at i supersedes all earlier >= i."""


@dataclass(slots=True)
class _Replayed:
    """The logical log that replaying every segment's frames produces."""

    hard_state: HardState
    entries: list[Entry]
    start: int | None
    """Index of ``entries[0]`` (or where the next entry must go if empty); ``None`` when
    the segments never held an entry or reset marker."""
    origin: tuple[Path, int] | None
    """File and frame offset that fixed ``start`` (for error messages)."""
    last_reset_segment: int
    """Position (in seq order) of the newest segment holding a reset marker, or -1."""
    min_entry_index: list[int | None]


@dataclass(frozen=True, slots=True)
class _Recovered:
    replayed: _Replayed
    snapshot: Snapshot
    entries: list[Entry]
    """Entries after the snapshot, contiguous from ``snapshot.meta.index + 1``."""
    discard_reason: str | None
    """Set when the on-disk log must be replaced by a reset marker."""


class FileRaftStorage:
    """:class:`RaftStorage` on a directory of WAL segments and snapshot files.

    Opening the store recovers it: leftover temp files are removed, a torn last frame is
    cut off (see :attr:`recovery_report`), and damage that is not a torn tail raises
    :class:`StorageCorruptError`. One object per directory (an ``flock`` enforces it);
    not thread-safe: call it from one thread at a time. After a failed write (an
    ``OSError`` from write or fsync) the object refuses further use; reopen it.

    ``segment_size`` bounds segment files (a single larger batch still goes in one);
    ``keep_snapshots`` is how many snapshot files are retained (the log is compacted
    behind the newest); ``preallocate`` reserves each segment's space up front, which
    makes every fdatasync cheaper on most file systems.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        keep_snapshots: int = 2,
        preallocate: bool = True,
    ) -> None:
        if segment_size < SEGMENT_HEADER_SIZE + FRAME_HEADER_SIZE + 1:
            raise ValueError(f"segment_size {segment_size} is too small")
        if keep_snapshots < 1:
            raise ValueError("keep_snapshots must be at least 1")
        self.directory = Path(directory)
        self._segment_size = segment_size
        self._keep_snapshots = keep_snapshots
        self._preallocate = min(segment_size, PREALLOCATE_CHUNK) if preallocate else 0
        self._closed = False
        self._failed: BaseException | None = None
        self._unsynced = False
        """A :meth:`write` left its frame unsynced; no other write until :meth:`synced`."""
        self._writer: SegmentWriter | None = None
        self._segments: list[_Segment] = []
        self._hard_state = HardState()
        self._snapshot_meta = SnapshotMeta()
        self._last_index = 0
        self._run_starts: list[int] = []
        self._run_terms: list[int] = []
        self._restored: RestoredState | None = None
        ensure_directory(self.directory)
        self._lock_fd = _lock_directory(self.directory)
        try:
            self.recovery_report = self._open()
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ public API

    @property
    def hard_state(self) -> HardState:
        """The durable hard state."""
        return self._hard_state

    @property
    def snapshot_meta(self) -> SnapshotMeta:
        """Metadata of the newest durable snapshot (index 0 when none)."""
        return self._snapshot_meta

    @property
    def first_index(self) -> int:
        """Index of the first entry after the snapshot (``last_index + 1`` when empty)."""
        return self._snapshot_meta.index + 1

    @property
    def last_index(self) -> int:
        """Index of the last stored entry (the snapshot index when the log is empty)."""
        return self._last_index

    @property
    def segment_paths(self) -> tuple[Path, ...]:
        """Current segment files, oldest first."""
        return tuple(segment.path for segment in self._segments)

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index`` (or of the snapshot at its index), else ``None``."""
        if index == self._snapshot_meta.index:
            return self._snapshot_meta.term
        if index < self._snapshot_meta.index or index > self._last_index:
            return None
        return self._run_terms[bisect.bisect_right(self._run_starts, index) - 1]

    def load(self) -> RestoredState:
        """What is on disk. The first call returns what opening found; later calls reread."""
        self._check_usable()
        restored, self._restored = self._restored, None
        if restored is not None:
            return restored
        recovered = self._recover(self._scan_segments(self._list_segments()))
        return RestoredState(
            hard_state=recovered.replayed.hard_state,
            snapshot=recovered.snapshot,
            entries=tuple(recovered.entries),
        )

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        snapshot: Snapshot | None = None,
    ) -> None:
        """Make ``snapshot``, ``hard_state`` and ``entries`` durable, in that order.

        Entries at or below the (new) snapshot index are skipped; the rest must be
        contiguous and start at most one past the last stored index. A snapshot not newer
        than the stored one is ignored. A newer one whose (index, term) the log holds
        compacts the log behind it; otherwise it replaces the whole log. Without a
        snapshot the call costs one ``fdatasync`` (plus a directory fsync when a new
        segment is started); installing a snapshot adds the snapshot file's own fsyncs.
        Raises ``ValueError`` (before touching the disk) on invalid input.
        """
        self._save(hard_state, entries, snapshot, sync=True)

    def write(self, hard_state: HardState | None, entries: Sequence[Entry]) -> int | None:
        """:meth:`save` without a snapshot and without waiting for the disk.

        The frame is written but not synced, unless it started a new segment (synced with
        its directory, as :meth:`save` does). Returns the file descriptor the caller must
        ``fdatasync`` and then report with :meth:`synced` before it counts the batch as
        durable, or ``None`` when it already is. No other write may start before then.
        """
        if self._unsynced:
            raise RuntimeError("the previous write has not been synced yet")
        return self._save(hard_state, entries, None, sync=False)

    def synced(self) -> None:
        """The descriptor :meth:`write` returned has been synced: its batch is durable."""
        self._unsynced = False
        failpoint("wal.after_fsync")

    def _save(self, hard_state: HardState | None, entries: Sequence[Entry],
              snapshot: Snapshot | None, *, sync: bool) -> int | None:
        self._check_usable()
        self._restored = None
        new_snapshot: Snapshot | None = None
        reset: LogReset | None = None
        last = self._last_index
        floor = self._snapshot_meta.index
        if snapshot is not None and snapshot.meta.index > floor:
            new_snapshot = snapshot
            floor = snapshot.meta.index
            if self.term(floor) != snapshot.meta.term:
                reset = LogReset(index=floor, term=snapshot.meta.term)
                last = floor
        _check_contiguous(entries)
        entries = _skip_compacted(entries, floor)
        if entries and entries[0].index > last + 1:
            raise ValueError(
                f"entry {entries[0].index} would leave a gap after the last entry {last}"
            )
        payload = encode_batch(hard_state, entries)
        image = encode_snapshot(new_snapshot) if new_snapshot is not None else b""
        unsynced: int | None = None
        try:
            if new_snapshot is not None:
                self._install_snapshot_file(new_snapshot, image)
                if reset is None:
                    self._compact(new_snapshot.meta)
            if payload or reset is not None:
                unsynced = self._append(payload, hard_state, entries, reset, sync=sync)
            if reset is not None:
                self._drop_segments_before_last()
        except BaseException as err:
            self._failed = err
            raise
        self._unsynced = unsynced is not None
        return unsynced

    def stage_snapshot(self, snapshot: Snapshot) -> None:
        """Write and fsync ``snapshot`` under its staging name (see :class:`RaftStorage`)."""
        stage_snapshot(self.directory, snapshot)

    def save_snapshot(self, snapshot: Snapshot, *, staged: bool = False) -> None:
        """Persist a locally created snapshot and compact the log behind it.

        The snapshot must describe an entry the log holds (same index and term);
        otherwise ``ValueError``. A snapshot not newer than the stored one is ignored
        (and its staging file, if ``staged``, deleted).
        """
        self._check_usable()
        self._restored = None
        meta = snapshot.meta
        if meta.index <= self._snapshot_meta.index:
            if staged:
                staged_snapshot_path(self.directory, snapshot).unlink(missing_ok=True)
            return
        if meta.index > self._last_index:
            raise ValueError(
                f"snapshot at index {meta.index} is beyond the last log entry {self._last_index}"
            )
        if self.term(meta.index) != meta.term:
            raise ValueError(
                f"snapshot at index {meta.index} has term {meta.term} but the log holds "
                f"term {self.term(meta.index)} there"
            )
        image = b"" if staged else encode_snapshot(snapshot)  # a bad one fails before writing
        try:
            if staged:
                install_staged_snapshot(self.directory, snapshot)
                self._after_snapshot_file(meta)
            else:
                self._install_snapshot_file(snapshot, image)
            self._compact(meta)
        except BaseException as err:
            self._failed = err
            raise

    def close(self) -> None:
        """Close files and release the directory lock (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._restored = None
        self._release()

    def __enter__(self) -> FileRaftStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageClosedError(f"store {self.directory} is closed")
        if self._failed is not None:
            raise StorageClosedError(
                f"store {self.directory} is unusable after a failed write "
                f"({self._failed!r}); reopen it to recover"
            )

    def _append(
        self,
        payload: bytes,
        hard_state: HardState | None,
        entries: Sequence[Entry],
        reset: LogReset | None,
        *,
        sync: bool,
    ) -> int | None:
        """Write one frame (starting a new segment if needed) and fdatasync it, unless
        ``sync`` is false and the frame goes to the current segment: then return the
        descriptor that still needs its fdatasync."""
        writer = self._writer
        needs_new = (
            reset is not None
            or writer is None
            or (
                writer.offset > SEGMENT_HEADER_SIZE
                and writer.offset + FRAME_HEADER_SIZE + len(payload) > self._segment_size
            )
        )
        if needs_new:
            prefix = b""
            if reset is not None:
                prefix = encode_batch(None, (), reset)
            if hard_state is None:
                prefix += encode_batch(self._hard_state, ())
            payload = prefix + payload
            if reset is not None:
                first = reset.index + 1
            else:
                first = entries[0].index if entries else self._last_index + 1
            writer = self._start_segment(first)
            sync = True
        assert writer is not None
        writer.append(encode_frame(payload, writer.header.salt), sync=sync)
        if hard_state is not None:
            self._hard_state = hard_state
        if reset is not None:
            self._forget_log_after_reset(reset)
        if entries:
            self._record_entries(entries)
            segment = self._segments[-1]
            first = entries[0].index
            if segment.min_entry_index is None or first < segment.min_entry_index:
                segment.min_entry_index = first
        return None if sync else writer.fileno

    def _start_segment(self, first_index: int) -> SegmentWriter:
        seq = self._segments[-1].seq + 1 if self._segments else 1
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        writer = SegmentWriter.create(
            self.directory,
            seq,
            first_index,
            preallocate=self._preallocate,
            limit=self._segment_size,
        )
        self._writer = writer
        self._segments.append(_Segment(seq, first_index, writer.path, None))
        return writer

    def _forget_log_after_reset(self, reset: LogReset) -> None:
        """The log is now empty after (reset.index, reset.term)."""
        self._last_index = reset.index
        self._run_starts.clear()
        self._run_terms.clear()

    def _record_entries(self, entries: Sequence[Entry]) -> None:
        """Track the terms of appended entries (replacing any suffix they overwrite)."""
        first = entries[0].index
        starts, terms = self._run_starts, self._run_terms
        if first <= self._last_index:
            cut = bisect.bisect_left(starts, first)
            del starts[cut:], terms[cut:]
        for entry in entries:
            if not terms or terms[-1] != entry.term:
                starts.append(entry.index)
                terms.append(entry.term)
        self._last_index = entries[-1].index

    def _install_snapshot_file(self, snapshot: Snapshot, image: bytes) -> None:
        write_snapshot(self.directory, snapshot, image)
        self._after_snapshot_file(snapshot.meta)

    def _after_snapshot_file(self, meta: SnapshotMeta) -> None:
        self._snapshot_meta = meta
        if prune_snapshots(self.directory, self._keep_snapshots):
            fsync_directory(self.directory)

    def _compact(self, meta: SnapshotMeta) -> None:
        """Forget entries up to ``meta.index`` and delete segments wholly behind it."""
        index = meta.index
        if index >= self._last_index:
            self._run_starts.clear()
            self._run_terms.clear()
            self._last_index = index
        else:
            keep = bisect.bisect_right(self._run_starts, index + 1) - 1
            del self._run_starts[:keep], self._run_terms[:keep]
            self._run_starts[0] = index + 1
        self._delete_segments(_segments_behind(self._segments, index))

    def _drop_segments_before_last(self) -> None:
        """After a reset marker is durable, older segments are garbage."""
        self._delete_segments(self._segments[:-1])

    def _delete_segments(self, doomed: Sequence[_Segment]) -> None:
        """Delete the oldest ``len(doomed)`` segments, durably."""
        if doomed:
            failpoint("segment.before_delete")
            for segment in doomed:
                segment.path.unlink(missing_ok=True)
                failpoint("segment.after_delete")
            del self._segments[: len(doomed)]
            fsync_directory(self.directory)

    def _release(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._lock_fd >= 0:
            fd, self._lock_fd = self._lock_fd, -1
            os.close(fd)  # releases the flock

    # ------------------------------------------------------------------ opening

    def _list_segments(self) -> list[tuple[int, int, Path]]:
        found: list[tuple[int, int, Path]] = []
        for path in self.directory.iterdir():
            parsed = parse_segment_name(path.name)
            if parsed is not None:
                found.append((parsed[0], parsed[1], path))
        found.sort()
        return found

    def _scan_segments(self, listed: list[tuple[int, int, Path]]) -> list[SegmentScan]:
        last = len(listed) - 1
        return [
            scan_segment(path, tail_may_be_torn=position == last)
            for position, (_seq, _first, path) in enumerate(listed)
        ]

    def _open(self) -> RecoveryReport:
        removed: list[Path] = []
        for path in sorted(self.directory.iterdir()):
            if path.name.endswith(TEMP_SUFFIX):
                path.unlink()
                removed.append(path)
                logger.info("removed leftover temp file %s", path)
        if removed:
            fsync_directory(self.directory)
        snapshot, damaged = load_newest_snapshot(self.directory)
        listed = self._list_segments()
        scans = self._scan_segments(listed)
        recovered = self._recover(scans, snapshot=snapshot, damaged=damaged)
        replayed = recovered.replayed
        # Everything checked out: now repair. First cut off a torn tail.
        torn_tails: list[TornTail] = []
        for scan in scans:
            if scan.torn_tail is not None:
                tail = scan.torn_tail
                torn_tails.append(tail)
                logger.warning(
                    "WAL %s: torn or corrupt tail at byte offset %d (%d bytes) cut off: %s",
                    tail.path,
                    tail.offset,
                    tail.length,
                    tail.reason,
                )
        for position, (seq, first, path) in enumerate(listed):
            if position < replayed.last_reset_segment:
                path.unlink()
                removed.append(path)
                logger.info("removed %s: superseded by a later log reset", path)
            else:
                self._segments.append(
                    _Segment(seq, first, path, replayed.min_entry_index[position])
                )
        if replayed.last_reset_segment > 0:
            fsync_directory(self.directory)
        if scans:
            tail_scan = scans[-1]
            self._writer = SegmentWriter.reopen(
                tail_scan.path,
                tail_scan.header,
                tail_scan.end,
                cut_tail=tail_scan.torn_tail is not None,
                preallocate=self._preallocate,
                limit=self._segment_size,
            )
        self._hard_state = replayed.hard_state
        self._snapshot_meta = recovered.snapshot.meta
        self._last_index = recovered.snapshot.meta.index
        self._run_starts, self._run_terms = [], []
        if recovered.entries:
            self._record_entries(recovered.entries)
        entries = recovered.entries
        if recovered.discard_reason is not None:
            logger.warning("%s: %s", self.directory, recovered.discard_reason)
            meta = recovered.snapshot.meta
            self._append(b"", None, (), LogReset(index=meta.index, term=meta.term),
                         sync=True)
            self._drop_segments_before_last()
            entries = []
        self._restored = RestoredState(
            hard_state=self._hard_state, snapshot=recovered.snapshot, entries=tuple(entries)
        )
        return RecoveryReport(
            torn_tails=tuple(torn_tails),
            damaged_snapshots=tuple(damaged),
            discarded_log=recovered.discard_reason,
            removed_files=tuple(removed),
        )

    def _recover(
        self,
        scans: list[SegmentScan],
        *,
        snapshot: Snapshot | None = None,
        damaged: Sequence[DamagedSnapshot] = (),
    ) -> _Recovered:
        """Replay the segments and reconcile the log with the newest snapshot (no I/O
        besides reading the snapshot when not given)."""
        if snapshot is None:
            snapshot, damaged = load_newest_snapshot(self.directory)
        replayed = _replay(scans)
        index, term = snapshot.meta.index, snapshot.meta.term
        entries = replayed.entries
        start = replayed.start
        if start is None:
            return _Recovered(replayed, snapshot, [], None)
        last = start + len(entries) - 1
        if start > index + 1:
            path, offset = replayed.origin or (self.directory, 0)
            note = ""
            if damaged:
                note = " (damaged snapshots set aside: "
                note += ", ".join(d.path.name for d in damaged) + ")"
            raise StorageCorruptError(
                path,
                offset,
                f"the log starts at index {start} but the newest usable snapshot "
                f"ends at index {index}{note}",
            )
        if last < index:
            reason = (
                f"log ends at index {last}, behind the snapshot at index {index}; "
                "log discarded in favour of the snapshot"
            )
            return _Recovered(replayed, snapshot, [], reason)
        if start <= index and entries[index - start].term != term:
            reason = (
                f"log holds term {entries[index - start].term} at index {index} but the "
                f"snapshot there has term {term}; log discarded in favour of the snapshot"
            )
            return _Recovered(replayed, snapshot, [], reason)
        return _Recovered(replayed, snapshot, entries[index + 1 - start :], None)


def _replay(scans: Sequence[SegmentScan]) -> _Replayed:
    """Apply every record in order: later hard states win, later entries replace suffixes."""
    hard_state = HardState()
    entries: list[Entry] = []
    start: int | None = None
    origin: tuple[Path, int] | None = None
    last_reset = -1
    minima: list[int | None] = []
    for position, scan in enumerate(scans):
        minimum: int | None = None
        for frame in scan.frames:
            for record in frame.records:
                if isinstance(record, Entry):
                    index = record.index
                    if minimum is None or index < minimum:
                        minimum = index
                    if start is None:
                        start, origin = index, (scan.path, frame.offset)
                        entries.append(record)
                        continue
                    following = start + len(entries)
                    if index == following:
                        entries.append(record)
                    elif index > following:
                        raise StorageCorruptError(
                            scan.path,
                            frame.offset,
                            f"entry {index} leaves a gap after entry {following - 1}",
                        )
                    elif index >= start:
                        del entries[index - start :]
                        entries.append(record)
                    else:
                        entries.clear()
                        entries.append(record)
                        start, origin = index, (scan.path, frame.offset)
                elif isinstance(record, HardState):
                    hard_state = record
                else:
                    entries.clear()
                    start, origin = record.index + 1, (scan.path, frame.offset)
                    last_reset = position
        minima.append(minimum)
    return _Replayed(
        hard_state=hard_state,
        entries=entries,
        start=start,
        origin=origin,
        last_reset_segment=last_reset,
        min_entry_index=minima,
    )


def _segments_behind(segments: Sequence[_Segment], index: int) -> list[_Segment]:
    """The oldest segments whose surviving entries all lie at or below ``index``.

    Entry ``i`` in a later segment supersedes every earlier entry ``>= i``, so segment
    ``k`` is wholly behind ``index`` when some later segment holds an entry
    ``<= index + 1``. The newest segment is always kept (it holds the latest hard state).
    """
    doomed_count = 0
    lowest_later: int | None = None
    for position in range(len(segments) - 1, 0, -1):
        minimum = segments[position].min_entry_index
        if minimum is not None and (lowest_later is None or minimum < lowest_later):
            lowest_later = minimum
        if lowest_later is not None and lowest_later <= index + 1:
            doomed_count = position
            break
    return list(segments[:doomed_count])


def _skip_compacted(entries: Sequence[Entry], floor: int) -> Sequence[Entry]:
    """Drop leading entries already covered by the snapshot at ``floor``."""
    if not entries or entries[0].index > floor:
        return entries
    skip = floor + 1 - entries[0].index
    return entries[skip:]


def _check_contiguous(entries: Sequence[Entry]) -> None:
    if not entries:
        return
    expected = entries[0].index
    if expected < 1:
        raise ValueError(f"entry index {expected} is not positive")
    for entry in entries:
        if entry.index != expected:
            raise ValueError(f"entries are not contiguous: expected {expected}, got {entry.index}")
        expected += 1


def _lock_directory(directory: Path) -> int:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as err:
        os.close(fd)
        raise DirectoryLockedError(f"{directory} is already open in another store") from err
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd
