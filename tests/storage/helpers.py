"""Shared helpers for the storage tests: deterministic entries and store inspection."""

from __future__ import annotations

import hashlib
from pathlib import Path

from lockcell.raft.types import ConfState, Entry, EntryKind, Snapshot, SnapshotMeta


def payload(index: int, term: int, size: int | None = None) -> bytes:
    """Deterministic entry data for (index, term); varied lengths by default."""
    seed = hashlib.blake2b(f"{index}/{term}".encode(), digest_size=16).digest()
    length = size if size is not None else 1 + (index * 31 + term) % 180
    return (seed * (length // 16 + 1))[:length]


def entries(first: int, count: int, term: int, size: int | None = None) -> list[Entry]:
    """``count`` entries from ``first`` in ``term`` with :func:`payload` data."""
    return [
        Entry(term, i, EntryKind.NORMAL, payload(i, term, size))
        for i in range(first, first + count)
    ]


def snapshot(
    index: int, term: int, data: bytes = b"", voters: tuple[str, ...] = ("a", "b")
) -> Snapshot:
    """A snapshot at (index, term) with a small configuration."""
    conf = ConfState(voters=frozenset(voters), learners=frozenset({"l1"}))
    return Snapshot(
        SnapshotMeta(index=index, term=term, conf=conf), data or f"state@{index}".encode()
    )


def segment_files(directory: Path) -> list[Path]:
    """WAL segment files of a store directory, oldest first."""
    return sorted(directory.glob("*.wal"))
