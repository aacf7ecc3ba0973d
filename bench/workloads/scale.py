"""Throughput with 5 and 7 replicas (more followers to replicate to on the same cores)."""

from __future__ import annotations

from bench.context import Context
from bench.results import Result
from bench.workloads import uncontended, writes


async def run(ctx: Context) -> list[Result]:
    """For each size in ``scale_sizes``: a fresh cell, the chosen workloads at ``clients``."""
    results = []
    for size in ctx.config.scale_sizes:
        cell = await ctx.start_cell(size)
        try:
            if "uncontended" in ctx.config.scale_workloads:
                results.append(await uncontended.measure(
                    ctx, cell, ctx.config.clients, f"uncontended lock cycle, {size} replicas"))
            if "writes" in ctx.config.scale_workloads:
                results.append(await writes.measure(
                    ctx, cell, ctx.config.clients, f"SetContents 100 B, {size} replicas"))
        finally:
            await ctx.stop_cell(cell)
    return results
