"""The in-process micro benchmarks: the Raft core without I/O, and the write-ahead log."""

from __future__ import annotations

import asyncio

from bench import raft_bench, storage_bench
from bench.context import Context
from bench.results import Result


async def run_raft(ctx: Context) -> list[Result]:
    """Commits/s of a 3-member in-memory Raft cluster at a few proposal batch sizes."""
    seconds = 0.3 if ctx.config.quick else 3.0
    rows = []
    for batch in (1, 16, 256):
        row = await asyncio.to_thread(raft_bench.run, batch=batch, seconds=seconds)
        rows.append(Result("Raft core in memory (commits)", f"batch {batch}",
                           float(row["committed_per_s"]), figures=row))
    return rows


async def run_storage(ctx: Context) -> list[Result]:
    """Durable appends of 100-byte entries: lockcell's WAL and sqlite3, by batch size."""
    duration = 0.1 if ctx.config.quick else 2.0
    rows = await asyncio.to_thread(storage_bench.run, ctx.config.quick, duration=duration)
    loads = {(r["backend"], r["batch_size"]): r for r in rows if r["op"] == "load"}
    results = []
    for row in rows:
        if row["op"] != "append":
            continue
        load = loads.get((row["backend"], row["batch_size"]), {})
        results.append(Result(
            f"WAL append fsync ({row['backend']})", f"batch {row['batch_size']}",
            _num(row["entries_per_s"]), _num(row["p50_ms"]), _num(row["p99_ms"]),
            notes=f"{row['appends_per_s']} fsyncs/s; reload {load.get('entries_per_s', '-')} "
                  "entries/s", figures={**row, "load": load}))
    return results


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
