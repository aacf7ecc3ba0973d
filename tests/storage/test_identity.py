"""Member identity: minted once per data directory, read back, never reused."""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest

from lockcell.storage.errors import IdentityError
from lockcell.storage.identity import IDENTITY_FILE, open_member_identity


def test_minted_on_first_open_then_read_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "data" / "member"
    member_id, created = open_member_identity(data_dir, "lockcell-0")
    assert created
    assert re.fullmatch(r"lockcell-0-[0-9a-f]{8}", member_id)
    assert (data_dir / IDENTITY_FILE).is_file()
    assert open_member_identity(data_dir, "lockcell-0") == (member_id, False)
    # the hint only matters when minting
    assert open_member_identity(data_dir, "other-host") == (member_id, False)


def test_wiped_directory_gets_a_new_id(tmp_path: Path) -> None:
    data_dir = tmp_path / "member"
    seen = set()
    for _ in range(5):
        member_id, created = open_member_identity(data_dir, "pod")
        assert created and member_id not in seen
        seen.add(member_id)
        shutil.rmtree(data_dir)


def test_injected_rng_is_deterministic(tmp_path: Path) -> None:
    first, _ = open_member_identity(tmp_path / "a", "n", random.Random(7))
    second, _ = open_member_identity(tmp_path / "b", "n", random.Random(7))
    assert first == second == f"n-{random.Random(7).getrandbits(32):08x}"


def test_empty_existing_directory_is_fine(tmp_path: Path) -> None:
    (tmp_path / "lost+found").mkdir()
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / (IDENTITY_FILE + ".tmp")).write_text("half written by a crash")
    member_id, created = open_member_identity(tmp_path, "host.example")
    assert created and member_id.startswith("host.example-")
    assert not (tmp_path / (IDENTITY_FILE + ".tmp")).exists()


def test_state_without_identity_is_refused(tmp_path: Path) -> None:
    (tmp_path / "raft").mkdir()
    with pytest.raises(IdentityError, match="refusing"):
        open_member_identity(tmp_path, "pod")


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage\n", b"lockcell-member-id v1\npod-0000000g\n00000000\n", b"\xff\xfe"],
)
def test_damaged_identity_is_refused(tmp_path: Path, content: bytes) -> None:
    open_member_identity(tmp_path, "pod")
    (tmp_path / IDENTITY_FILE).write_bytes(content)
    with pytest.raises(IdentityError):
        open_member_identity(tmp_path, "pod")


def test_bit_flip_in_identity_is_detected(tmp_path: Path) -> None:
    member_id, _ = open_member_identity(tmp_path, "pod")
    path = tmp_path / IDENTITY_FILE
    raw = bytearray(path.read_bytes())
    position = raw.index(member_id[-1].encode(), len("lockcell-member-id v1\npod-"))
    raw[position] = ord("0") if raw[position] != ord("0") else ord("1")
    path.write_bytes(bytes(raw))
    with pytest.raises(IdentityError, match="damaged"):
        open_member_identity(tmp_path, "pod")


@pytest.mark.parametrize("hint", ["", "-pod", "pod/1", "pod\n", "p" * 201, "pöd"])
def test_bad_name_hints_are_rejected(tmp_path: Path, hint: str) -> None:
    with pytest.raises(ValueError):
        open_member_identity(tmp_path, hint)
