"""100-byte SetContents: each client writes its own keys round robin through open handles."""

from __future__ import annotations

import os

from bench import procstat
from bench.api import encode
from bench.cells import BenchCell
from bench.clients import all_or_none, close_all, ensure_dir, make_clients
from bench.context import Context
from bench.loop import measured_loop
from bench.results import Result, plural


async def run(ctx: Context) -> list[Result]:
    """``clients`` clients on the 3-replica cell."""
    return [await measure(ctx, await ctx.cell3(), ctx.config.clients)]


async def measure(ctx: Context, cell: BenchCell, clients: int,
                  label: str = "SetContents 100 B") -> Result:
    """One closed loop of writes; handles are opened before and reused."""
    keys = ctx.config.write_keys
    data = encode(os.urandom(ctx.config.write_bytes))
    api = await ctx.leader_api(cell)
    root = f"/ls/local/{ctx.unique('writes')}"
    await ensure_dir(api, root)
    workers = await make_clients(api, clients)
    turn = [0] * clients
    try:
        async def open_keys(i: int) -> None:
            await ensure_dir(api, f"{root}/c{i}")
            for k in range(keys):
                await workers[i].open(f"{root}/c{i}/k{k}")

        await all_or_none(open_keys(i) for i in range(clients))

        async def put(i: int) -> None:
            worker = workers[i]
            handle = worker.handles[turn[i] % keys]
            turn[i] += 1
            await worker.api.put(worker.session, handle, data)

        stats, elections = await measured_loop(ctx, cell, clients, put)
    finally:
        await close_all(workers)
    notes = f"{keys} keys per client; {procstat.note(stats.cpu)}"
    notes += stats.trouble(elections)
    return Result(
        label, plural(clients, "client"), stats.ops_per_s, stats.latency.p50_ms,
        stats.latency.p99_ms, stats.cpu.total(), f"{cell.size} members",
        ok=stats.ops > 0 and stats.errors == 0, notes=notes,
        figures={"replicas": cell.size, "ops": stats.ops, "window_s": stats.window_s,
                 "keys_per_client": keys, "value_bytes": ctx.config.write_bytes,
                 "max_ms": stats.latency.max_ms, "errors": stats.errors,
                 "error_samples": list(stats.error_samples),
                 "server_cpu_pct_by_pid": dict(stats.cpu.per_pid),
                 "harness_cpu_pct": stats.cpu.harness_pct, "elections": elections,
                 "machine_busy_pct": stats.cpu.machine_pct})

