"""Validation and normalisation of lockcell names (``/ls/<cell>/a/b``)."""

from __future__ import annotations

import re

from .errors import CellError, ErrorCode

MAX_PATH_BYTES = 1024
"""Longest accepted name, in UTF-8 bytes, measured after ``/ls/local`` is rewritten."""

LOCAL_CELL = "local"
"""The cell alias that always means the cell receiving the request."""

_COMPONENT = re.compile(r"[A-Za-z0-9._-]{1,255}")


def is_valid_component(component: str) -> bool:
    """Whether ``component`` is a legal name component (``.`` and ``..`` are not)."""
    return (
        _COMPONENT.fullmatch(component) is not None and component != "." and component != ".."
    )


def root_path(cell_name: str) -> str:
    """The name of the cell's root directory, ``/ls/<cell>``."""
    return f"/ls/{cell_name}"


def normalize_path(path: str, cell_name: str) -> str:
    """Return the canonical form of ``path`` for the cell ``cell_name``.

    ``/ls/local`` is rewritten to ``/ls/<cell_name>`` before the length check. Raises
    :class:`CellError` ``invalid_argument`` for a malformed name and ``not_found`` for a
    well-formed name in another cell.
    """
    if not isinstance(path, str):
        raise CellError(ErrorCode.INVALID_ARGUMENT, "path must be a string")
    if len(path) > 4 * MAX_PATH_BYTES:
        raise CellError(ErrorCode.INVALID_ARGUMENT, "path is longer than 1024 bytes")
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "" or parts[1] != "ls":
        raise CellError(ErrorCode.INVALID_ARGUMENT, f"path {path!r} does not start with /ls/<cell>")
    if parts[2] == LOCAL_CELL:
        parts[2] = cell_name
    for component in parts[2:]:
        if not is_valid_component(component):
            raise CellError(
                ErrorCode.INVALID_ARGUMENT,
                f"path {path!r} has an invalid component {component!r}",
            )
    canonical = "/".join(parts)
    if len(canonical.encode()) > MAX_PATH_BYTES:
        raise CellError(ErrorCode.INVALID_ARGUMENT, "path is longer than 1024 bytes")
    if parts[2] != cell_name:
        raise CellError(ErrorCode.NOT_FOUND, f"cell {parts[2]!r} is not this cell")
    return canonical


def parent_and_name(path: str) -> tuple[str, str]:
    """Split a canonical non-root path into its parent's path and its last component."""
    parent, _, name = path.rpartition("/")
    return parent, name
