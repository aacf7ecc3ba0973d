"""What every workload shares: parameters, one HTTP client session, and the 3-replica cell."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import aiohttp

from bench.api import Api
from bench.cells import BenchCell
from bench.config import BenchConfig
from lockcell.cli.localcell import LocalMember


class Context:
    """Shared state of one benchmark run; the 3-replica cell starts when first asked for."""

    def __init__(self, config: BenchConfig, http: aiohttp.ClientSession, root: Path) -> None:
        self.config = config
        self.http = http
        self.root = root
        self._cell3: BenchCell | None = None
        self._ids = itertools.count()
        self.files_created = 0
        """Files the ``files`` workload left in the 3-replica cell (``restart`` needs them)."""

    async def cell3(self) -> BenchCell:
        """The shared 3-replica cell, started on first use."""
        if self._cell3 is None:
            self._cell3 = await self.start_cell(3)
        return self._cell3

    async def start_cell(self, size: int) -> BenchCell:
        """A new cell of ``size`` replicas (the caller stops it)."""
        return await asyncio.to_thread(BenchCell.start, self.root, size)

    async def stop_cell(self, cell: BenchCell) -> None:
        """Stop a cell and remove its data; its logs go next to the results file."""
        logs = self.config.out.parent / "logs" / cell.root.name
        await asyncio.to_thread(cell.stop, logs)

    def api(self, member: LocalMember) -> Api:
        """A client of one member."""
        return Api(self.http, member.url)

    async def leader_api(self, cell: BenchCell) -> Api:
        """A client of the current leader (clients talk to the leader, as the library does)."""
        return self.api(await asyncio.to_thread(cell.leader))

    def unique(self, prefix: str) -> str:
        """A name no other workload of this run uses."""
        return f"{prefix}{next(self._ids)}"

    async def close(self) -> None:
        """Stop the shared cell."""
        if self._cell3 is not None:
            await self.stop_cell(self._cell3)
            self._cell3 = None
