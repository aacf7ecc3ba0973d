"""Runs the chosen workloads against local cells and collects their rows."""

from __future__ import annotations

import asyncio
import dataclasses
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from bench import cells
from bench.config import BenchConfig
from bench.context import Context
from bench.results import Result, failed
from bench.table import render
from bench.workloads import Workload


def raise_file_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit (10,000 long polls)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def run_workloads(config: BenchConfig, workloads: Sequence[Workload],
                        verbose: bool = True) -> list[Result]:
    """Run ``workloads`` in order; a workload that raises gives one failed row."""
    results: list[Result] = []
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
    with tempfile.TemporaryDirectory(prefix="lockcell-bench-") as root:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            ctx = Context(config, http, Path(root))
            try:
                for workload in workloads:
                    began = time.perf_counter()
                    _say(verbose, f"-- {workload.name}: {workload.summary}")
                    try:
                        rows = await workload.run(ctx)
                    except Exception as exc:
                        traceback.print_exc(file=sys.stderr)
                        rows = [failed(workload.name, "-", exc)]
                    results.extend(dataclasses.replace(r, group=workload.name) for r in rows)
                    _say(verbose, render(rows).split("\n", 2)[-1]
                         + f"\n   ({time.perf_counter() - began:.1f} s)")
            finally:
                await ctx.close()
    return results


def _say(verbose: bool, text: str) -> None:
    if verbose:
        print(text, file=sys.stderr, flush=True)


def run(config: BenchConfig, workloads: Sequence[Workload], verbose: bool = True
        ) -> list[Result]:
    """Run the workloads on uvloop (as the servers do), with a raised file limit."""
    raise_file_limit()
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(run_workloads(config, workloads, verbose))
        return uvloop.run(run_workloads(config, workloads, verbose))
    finally:
        signal.signal(signal.SIGTERM, previous)
        cells.stop_all()  # members run in sessions of their own: never leave them behind


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
