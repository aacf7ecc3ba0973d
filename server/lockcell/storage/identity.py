"""The member's Raft id: minted once when its data directory is created, then read back."""

from __future__ import annotations

import logging
import random
import re
import secrets
import zlib
from pathlib import Path

from lockcell.raft.types import NodeId
from lockcell.storage.errors import IdentityError
from lockcell.storage.fsutil import TEMP_SUFFIX, atomic_write, ensure_directory

logger = logging.getLogger(__name__)

IDENTITY_FILE = "member-id"
"""Name of the identity file inside the data directory."""

_HEADER = "lockcell-member-id v1"
_NAME_HINT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_MEMBER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}-[0-9a-f]{8}")
_IGNORED_ENTRIES = frozenset({"lost+found", IDENTITY_FILE + TEMP_SUFFIX})


def open_member_identity(
    data_dir: Path, name_hint: str, rng: random.Random | None = None
) -> tuple[NodeId, bool]:
    """Return ``(member id, created_now)`` for the member owning ``data_dir``.

    The first call on a missing or empty directory mints ``<name_hint>-<8 hex digits>``
    (from ``secrets``, or from ``rng`` when given, for deterministic tests), stores it
    atomically and returns ``created_now=True``; later calls read it back. A wiped
    directory therefore gets a fresh id: ids are never reused.

    Call this before anything else writes into ``data_dir``: if the directory already
    holds other files but no identity, the state belongs to a member whose id is lost,
    and minting a new id over it would be unsafe, so :class:`IdentityError` is raised
    (wipe the directory to rejoin as a new member). ``lost+found`` and dot-files are
    ignored. ``name_hint`` (a pod or host name) must match ``[A-Za-z0-9][A-Za-z0-9._-]*``,
    at most 200 characters.
    """
    if not _NAME_HINT.fullmatch(name_hint):
        raise ValueError(
            f"name hint {name_hint!r} must be 1-200 characters of [A-Za-z0-9._-], "
            "starting with a letter or digit"
        )
    ensure_directory(data_dir)
    path = data_dir / IDENTITY_FILE
    if path.exists():
        return _read_identity(path), False
    leftovers = sorted(
        entry.name
        for entry in data_dir.iterdir()
        if entry.name not in _IGNORED_ENTRIES and not entry.name.startswith(".")
    )
    if leftovers:
        raise IdentityError(
            f"{data_dir} holds {', '.join(leftovers[:5])}{' ...' if len(leftovers) > 5 else ''} "
            f"but no {IDENTITY_FILE}: refusing to mint a new member id over existing state; "
            "wipe the directory to rejoin as a new member"
        )
    suffix = f"{rng.getrandbits(32):08x}" if rng is not None else secrets.token_hex(4)
    member_id = f"{name_hint}-{suffix}"
    atomic_write(path, _encode_identity(member_id))
    logger.info("minted member id %s in %s", member_id, data_dir)
    return member_id, True


def _encode_identity(member_id: str) -> bytes:
    raw = member_id.encode()
    return f"{_HEADER}\n{member_id}\n{zlib.crc32(raw):08x}\n".encode()


def _read_identity(path: Path) -> NodeId:
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError as err:
        raise IdentityError(f"{path} is not valid UTF-8") from err
    lines = text.split("\n")
    if len(lines) != 4 or lines[0] != _HEADER or lines[3] != "":
        raise IdentityError(f"{path} is not a lockcell member id file")
    member_id, checksum = lines[1], lines[2]
    if f"{zlib.crc32(member_id.encode()):08x}" != checksum or not _MEMBER_ID.fullmatch(member_id):
        raise IdentityError(f"{path} is damaged (checksum or format mismatch)")
    return member_id
