"""Snapshot files: atomic install, newest-valid lookup, quarantine of damaged ones, retention."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lockcell.raft.types import Snapshot
from lockcell.storage.codec import decode_snapshot, encode_snapshot, snapshot_file_chunks
from lockcell.storage.errors import CodecError
from lockcell.storage.fsutil import (
    TEMP_SUFFIX,
    atomic_write,
    fsync_directory,
    replace_synced,
    write_synced,
)

logger = logging.getLogger(__name__)

SNAPSHOT_SUFFIX = ".snap"
CORRUPT_SUFFIX = ".corrupt"
STAGED_SUFFIX = ".staged" + TEMP_SUFFIX
"""A snapshot written and fsynced but not yet installed (garbage after a restart)."""
_SNAPSHOT_NAME = re.compile(r"snapshot-(\d{20,})-(\d{20,})\.snap")


def snapshot_file_name(index: int, term: int) -> str:
    """The file name of the snapshot at (index, term)."""
    return f"snapshot-{index:020d}-{term:020d}{SNAPSHOT_SUFFIX}"


def parse_snapshot_name(name: str) -> tuple[int, int] | None:
    """``(index, term)`` for a snapshot file name, ``None`` for any other name."""
    match = _SNAPSHOT_NAME.fullmatch(name)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A snapshot file found in the directory (not yet read)."""

    index: int
    term: int
    path: Path


@dataclass(frozen=True, slots=True)
class DamagedSnapshot:
    """A snapshot file that failed its checks and was set aside as ``*.corrupt``."""

    path: Path
    reason: str


def list_snapshots(directory: Path) -> list[SnapshotFile]:
    """Snapshot files in ``directory``, newest (highest index) first."""
    found: list[SnapshotFile] = []
    for path in directory.iterdir():
        parsed = parse_snapshot_name(path.name)
        if parsed is not None:
            found.append(SnapshotFile(index=parsed[0], term=parsed[1], path=path))
    found.sort(key=lambda f: (f.index, f.term), reverse=True)
    return found


def write_snapshot(directory: Path, snapshot: Snapshot, image: bytes | None = None) -> Path:
    """Install ``snapshot`` atomically (temp file, fsync, rename, directory fsync).

    ``image`` is ``encode_snapshot(snapshot)`` when the caller already encoded it.
    """
    path = directory / snapshot_file_name(snapshot.meta.index, snapshot.meta.term)
    atomic_write(path, encode_snapshot(snapshot) if image is None else image,
                 failpoints="snapshot")
    return path


def staged_snapshot_path(directory: Path, snapshot: Snapshot) -> Path:
    """Where :func:`stage_snapshot` writes ``snapshot``."""
    return directory / (snapshot_file_name(snapshot.meta.index, snapshot.meta.term)
                        + STAGED_SUFFIX)


def stage_snapshot(directory: Path, snapshot: Snapshot) -> Path:
    """Write ``snapshot`` under its staging name and fsync it; nothing reads it until
    :func:`install_staged_snapshot`. Touches no other file, so it may run on any thread."""
    path = staged_snapshot_path(directory, snapshot)
    write_synced(path, snapshot_file_chunks(snapshot), failpoints="snapshot")
    return path


def install_staged_snapshot(directory: Path, snapshot: Snapshot) -> Path:
    """Rename a staged snapshot to its real name and fsync the directory."""
    path = directory / snapshot_file_name(snapshot.meta.index, snapshot.meta.term)
    replace_synced(staged_snapshot_path(directory, snapshot), path, failpoints="snapshot")
    return path


def read_snapshot(path: Path) -> Snapshot:
    """Read and check one snapshot file; raises :class:`CodecError` if it is damaged."""
    snapshot = decode_snapshot(path.read_bytes())
    parsed = parse_snapshot_name(path.name)
    if parsed is not None and parsed != (snapshot.meta.index, snapshot.meta.term):
        raise CodecError(
            f"file holds the snapshot at index {snapshot.meta.index} term "
            f"{snapshot.meta.term}, which does not match its name"
        )
    return snapshot


def load_newest_snapshot(directory: Path) -> tuple[Snapshot, list[DamagedSnapshot]]:
    """The newest snapshot that passes its checks (``Snapshot()`` when none).

    Damaged files are renamed to ``*.corrupt`` (kept for inspection, never read again),
    logged as warnings and returned so the caller can report them. Whether an older
    snapshot is good enough is the caller's decision: the log must reach back to it.
    """
    damaged: list[DamagedSnapshot] = []
    for found in list_snapshots(directory):
        try:
            snapshot = read_snapshot(found.path)
        except CodecError as err:
            quarantine = found.path.with_name(found.path.name + CORRUPT_SUFFIX)
            logger.warning(
                "snapshot %s is damaged (%s); set aside as %s", found.path, err, quarantine.name
            )
            os.replace(found.path, quarantine)
            fsync_directory(directory)
            damaged.append(DamagedSnapshot(path=found.path, reason=str(err)))
            continue
        return snapshot, damaged
    return Snapshot(), damaged


def prune_snapshots(directory: Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest snapshot files; the caller fsyncs the directory."""
    removed: list[Path] = []
    for found in list_snapshots(directory)[max(keep, 1) :]:
        found.path.unlink(missing_ok=True)
        removed.append(found.path)
    return removed
