"""Durable file-system primitives: fsync of directories and atomic file replacement."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from lockcell.storage.failpoints import failpoint

TEMP_SUFFIX = ".tmp"
"""Suffix of files being written before an atomic rename; leftovers are garbage."""


def fsync_directory(directory: Path) -> None:
    """Make creations, renames and deletions in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview, offset: int) -> int:
    """``pwrite`` all of ``data`` at ``offset`` (looping over short writes); return the end."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(f"pwrite wrote {written} bytes")
        offset += written
        view = view[written:]
    return offset


def _no_failpoint(name: str) -> None:
    """Failpoints off (the default of :func:`atomic_write`)."""


def atomic_write(path: Path, data: bytes, *, sync_directory: bool = True,
                 failpoints: str | None = None) -> None:
    """Replace ``path`` with ``data`` atomically: temp file, fsync, rename, fsync directory.

    After a crash the file holds either its old content or ``data``, never a mix. With
    ``sync_directory=False`` the caller must fsync the directory itself before relying on
    the rename (useful to cover several renames with one directory fsync). ``failpoints``
    names a family of crash failpoints (``<family>.before_write``, ``.before_fsync``,
    ``.before_rename``, ``.before_dir_fsync``, ``.after_dir_fsync``; see
    :mod:`lockcell.storage.failpoints`) to pass between the steps.
    """
    temp = path.with_name(path.name + TEMP_SUFFIX)
    write_synced(temp, (data,), failpoints=failpoints)
    replace_synced(temp, path, sync_directory=sync_directory, failpoints=failpoints)


def write_synced(path: Path, chunks: Iterable[bytes | memoryview], *,
                 failpoints: str | None = None) -> None:
    """Write ``chunks`` one after another into a fresh ``path`` and fsync it (first half
    of :func:`atomic_write`; the file is removed again if anything fails)."""
    step = _no_failpoint if failpoints is None else failpoint
    prefix = f"{failpoints}."
    step(prefix + "before_write")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        offset = 0
        for chunk in chunks:
            offset = write_all(fd, chunk, offset)
        step(prefix + "before_fsync")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def replace_synced(temp: Path, path: Path, *, sync_directory: bool = True,
                   failpoints: str | None = None) -> None:
    """Rename a file written by :func:`write_synced` over ``path`` and, unless told not to,
    fsync the directory (second half of :func:`atomic_write`)."""
    step = _no_failpoint if failpoints is None else failpoint
    prefix = f"{failpoints}."
    step(prefix + "before_rename")
    os.replace(temp, path)
    if sync_directory:
        step(prefix + "before_dir_fsync")
        fsync_directory(path.parent)
        step(prefix + "after_dir_fsync")


def ensure_directory(directory: Path) -> bool:
    """Create ``directory`` (and parents) durably if missing; return whether it was created."""
    if directory.is_dir():
        return False
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise
        fsync_directory(path.parent)
    return True
