"""Name validation and normalisation (§3 names, §4 path rules)."""

from __future__ import annotations

import pytest

from lockcell.statemachine import CellError, ErrorCode, normalize_path
from lockcell.statemachine.paths import MAX_PATH_BYTES, is_valid_component


def test_canonical_paths_pass_through() -> None:
    assert normalize_path("/ls/cell", "cell") == "/ls/cell"
    assert normalize_path("/ls/cell/a/b.c/D-_9", "cell") == "/ls/cell/a/b.c/D-_9"
    assert normalize_path("/ls/cell/...", "cell") == "/ls/cell/..."


def test_local_is_rewritten_to_the_cell_name() -> None:
    assert normalize_path("/ls/local", "cell") == "/ls/cell"
    assert normalize_path("/ls/local/x/y", "cell") == "/ls/cell/x/y"
    # Only the cell component is an alias; "local" deeper down is an ordinary name.
    assert normalize_path("/ls/cell/local", "cell") == "/ls/cell/local"


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "/ls",
        "/ls/",
        "ls/cell/a",
        "/xs/cell/a",
        "/ls/cell/",
        "/ls/cell//a",
        "/ls/cell/a/",
        "/ls/cell/./a",
        "/ls/cell/a/..",
        "/ls/cell/a b",
        "/ls/cell/ä",
        "/ls/cell/a:b",
        "/ls/cell/" + "x" * 256,
        "/ls/./a",
        "/ls/../a",
    ],
)
def test_malformed_paths_are_invalid_arguments(path: str) -> None:
    with pytest.raises(CellError) as caught:
        normalize_path(path, "cell")
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT


def test_component_of_255_characters_is_accepted() -> None:
    assert is_valid_component("x" * 255)
    assert not is_valid_component("x" * 256)
    assert not is_valid_component(".")
    assert not is_valid_component("..")


def _path_of_length(prefix: str, length: int) -> str:
    """``prefix`` extended by components of at most 200 characters to exactly ``length``."""
    path = prefix
    while len(path) < length:
        size = min(200, length - len(path) - 1)
        if size < 1:  # a single leftover byte cannot be a "/x" component: widen the last one
            path = path[:-1] + "pp"
            continue
        path += "/" + "p" * size
    assert len(path) == length
    return path


def test_total_length_limit_is_1024_bytes() -> None:
    path = _path_of_length("/ls/cell", MAX_PATH_BYTES)
    assert normalize_path(path, "cell") == path
    with pytest.raises(CellError) as caught:
        normalize_path(path + "q", "cell")
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT


def test_local_is_rewritten_before_the_length_check() -> None:
    as_local = _path_of_length("/ls/local", MAX_PATH_BYTES)
    assert normalize_path(as_local, "cell").startswith("/ls/cell/")
    # A longer cell name pushes the rewritten path over the limit.
    with pytest.raises(CellError) as caught:
        normalize_path(as_local, "longcellname")
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    # A shorter one pulls an over-long alias path under it.
    over_as_local = _path_of_length("/ls/local", MAX_PATH_BYTES + 2)
    assert len(normalize_path(over_as_local, "ab")) == MAX_PATH_BYTES - 1


def test_another_cell_is_not_found() -> None:
    with pytest.raises(CellError) as caught:
        normalize_path("/ls/other/a", "cell")
    assert caught.value.code is ErrorCode.NOT_FOUND
    with pytest.raises(CellError) as caught:
        normalize_path("/ls/other", "cell")
    assert caught.value.code is ErrorCode.NOT_FOUND


def test_malformed_other_cell_path_is_still_invalid() -> None:
    with pytest.raises(CellError) as caught:
        normalize_path("/ls/other/../a", "cell")
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
