"""Uncontended lock cycle: each client acquires and releases its own lock (1 cycle = 1 op)."""

from __future__ import annotations

from bench import procstat
from bench.cells import BenchCell
from bench.clients import close_all, ensure_dir, make_clients
from bench.context import Context
from bench.loop import measured_loop
from bench.results import Result, plural


async def run(ctx: Context) -> list[Result]:
    """With 1 and with ``clients`` clients on the 3-replica cell."""
    cell = await ctx.cell3()
    return [await measure(ctx, cell, 1), await measure(ctx, cell, ctx.config.clients)]


async def measure(ctx: Context, cell: BenchCell, clients: int,
                  label: str = "uncontended lock cycle") -> Result:
    """One closed loop of lock cycles with ``clients`` clients."""
    api = await ctx.leader_api(cell)
    root = f"/ls/local/{ctx.unique('uncontended')}"
    await ensure_dir(api, root)
    workers = await make_clients(api, clients)
    try:
        for i, worker in enumerate(workers):
            await worker.open(f"{root}/lock{i}")

        async def cycle(i: int) -> None:
            worker = workers[i]
            await worker.api.acquire(worker.session, worker.handles[0])
            await worker.api.release(worker.session, worker.handles[0])

        stats, elections = await measured_loop(ctx, cell, clients, cycle)
    finally:
        await close_all(workers)
    notes = procstat.note(stats.cpu)
    notes += stats.trouble(elections)
    return Result(
        label, plural(clients, "client"), stats.ops_per_s, stats.latency.p50_ms,
        stats.latency.p99_ms, stats.cpu.total(), f"{cell.size} members", ok=stats.ops > 0
        and stats.errors == 0, notes=notes,
        figures={"replicas": cell.size, "ops": stats.ops, "window_s": stats.window_s,
                 "max_ms": stats.latency.max_ms, "errors": stats.errors,
                 "error_samples": list(stats.error_samples),
                 "per_client_min_max": [min(stats.per_worker), max(stats.per_worker)],
                 "server_cpu_pct_by_pid": dict(stats.cpu.per_pid),
                 "harness_cpu_pct": stats.cpu.harness_pct, "elections": elections,
                 "machine_busy_pct": stats.cpu.machine_pct})
