"""Exceptions raised by the storage layer."""

from __future__ import annotations

from pathlib import Path


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""


class CodecError(StorageError, ValueError):
    """Bytes that do not decode as a well-formed record, frame, header or snapshot."""


class StorageCorruptError(StorageError):
    """Durable data is damaged in a way that is not a torn tail; nothing was dropped.

    ``path`` and ``offset`` name the first bad byte range found. Recovery refuses to
    continue rather than silently discard acknowledged data: an operator must decide
    (restore the file, or wipe the member so it rejoins under a new id).
    """

    def __init__(self, path: Path, offset: int, reason: str) -> None:
        super().__init__(f"corrupt data in {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class StorageClosedError(StorageError):
    """The store was closed, or an earlier write failed and left it unusable."""


class DirectoryLockedError(StorageError):
    """Another process (or another store object) holds the storage directory."""


class IdentityError(StorageError):
    """The member identity file is unreadable, or cannot be minted safely."""
