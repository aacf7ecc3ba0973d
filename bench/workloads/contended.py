"""Contended lock: many clients queue on one lock; handovers/s and FIFO fairness."""

from __future__ import annotations

import asyncio
import statistics

from bench import procstat
from bench.clients import close_all, ensure_dir, make_clients
from bench.context import Context
from bench.loop import measured_loop
from bench.results import Result, plural

WAIT_MS = 60000
FAIR_TOLERANCE = 0.10


async def run(ctx: Context) -> list[Result]:
    """``clients`` clients cycle acquire (blocking) + release on one lock."""
    cell = await ctx.cell3()
    clients = ctx.config.clients
    api = await ctx.leader_api(cell)
    root = f"/ls/local/{ctx.unique('contended')}"
    await ensure_dir(api, root)
    workers = await make_clients(api, clients)
    holders = 0
    overlaps = 0
    last_generation = 0
    generation_errors = 0
    try:
        for worker in workers:
            await worker.open(f"{root}/one")

        async def handover(i: int) -> None:
            nonlocal holders, overlaps, last_generation, generation_errors
            worker = workers[i]
            generation = await worker.api.acquire(worker.session, worker.handles[0], WAIT_MS)
            holders += 1
            overlaps += holders > 1
            generation_errors += generation <= last_generation
            last_generation = max(last_generation, generation)
            await asyncio.sleep(0)  # hold for one turn of the event loop
            holders -= 1
            await worker.api.release(worker.session, worker.handles[0])

        stats, elections = await measured_loop(ctx, cell, clients, handover)
    finally:
        await close_all(workers)
    counts = stats.per_worker
    mean = statistics.fmean(counts)
    # ±10 % of the mean, but at least ±1: a window cuts every client's count to a whole round
    allowed = max(FAIR_TOLERANCE * mean, 1.0)
    fair = all(abs(c - mean) <= allowed for c in counts)
    exclusive = overlaps == 0 and generation_errors == 0
    notes = (f"FIFO {'ok' if fair else 'NOT fair'}: per-client {min(counts)}-{max(counts)} "
             f"(mean {mean:.1f}, allowed ±{allowed:.1f}); mutual exclusion "
             f"{'ok' if exclusive else 'VIOLATED'}; {procstat.note(stats.cpu)}")
    notes += stats.trouble(elections)
    return [Result(
        "contended, one lock (handovers)", plural(clients, "client"), stats.ops_per_s,
        stats.latency.p50_ms, stats.latency.p99_ms, stats.cpu.total(), "3 members",
        ok=stats.ops > 0 and fair and exclusive and stats.errors == 0, notes=notes,
        figures={"ops": stats.ops, "window_s": stats.window_s, "max_ms": stats.latency.max_ms,
                 "fifo_fair": fair, "fifo_tolerance": FAIR_TOLERANCE,
                 "per_client_counts": list(counts), "per_client_mean": round(mean, 2),
                 "overlaps": overlaps, "generation_errors": generation_errors,
                 "errors": stats.errors, "error_samples": list(stats.error_samples),
                 "harness_cpu_pct": stats.cpu.harness_pct, "elections": elections,
                 "machine_busy_pct": stats.cpu.machine_pct})]
