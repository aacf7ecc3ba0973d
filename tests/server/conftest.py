"""Fixtures of the end-to-end server tests: one real local cell per module.

A module may set ``CELL_OPTIONS = {...}`` (keyword arguments of :func:`kit.start_cell`).
The cell is always stopped in the fixture's finalizer (stopped processes are resumed
first), so no member process outlives its module.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from lockcell.cli.localcell import LocalCell

from .kit import Api, serving_leader, start_cell, stop_cell


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Under ``pytest -n N tests/server``: hand out whole modules (one cell each) to workers.

    Tests of one module share its cell; distributing them test by test would start that
    cell once per worker. This hook is only seen when tests/server is the run's argument.
    """
    from xdist.scheduler import LoadScopeScheduling

    return LoadScopeScheduling(config, log)


@pytest.fixture(scope="module")
def cell(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCell]:
    """A running 3-member cell shared by the tests of one module."""
    options = dict(getattr(request.module, "CELL_OPTIONS", {}))
    name = request.module.__name__.rsplit(".", 1)[-1]
    started = start_cell(tmp_path_factory.mktemp(name), **options)
    try:
        yield started
    finally:
        stop_cell(started)


@pytest.fixture
def leader_api(cell: LocalCell) -> Api:
    """A client of the member that currently leads."""
    return Api(serving_leader(cell).url)
