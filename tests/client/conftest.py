"""Fixtures of the client tests: a module-wide cell and fresh cells for destructive tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lockcell.cli.localcell import LocalCell

from .support import start_cell, stop_cell


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCell]:
    """A 3-member cell shared by the tests of one module (tests must not break it)."""
    started = start_cell(tmp_path_factory.mktemp("cell"))
    try:
        yield started
    finally:
        stop_cell(started)


@pytest.fixture
def make_cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LocalCell]]:
    """Start fresh cells (stopped, and thawed first, when the test ends)."""
    cells: list[LocalCell] = []

    def make(**options: Any) -> LocalCell:
        started = start_cell(tmp_path_factory.mktemp("fresh"), **options)
        cells.append(started)
        return started

    try:
        yield make
    finally:
        for each in cells:
            stop_cell(each)
