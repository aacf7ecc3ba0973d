"""The micro benchmarks: the Raft core without I/O, the write-ahead log, and the machine's
wake-up cost."""

from __future__ import annotations

import asyncio

from bench import raft_bench, storage_bench, wakeup_bench
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


async def run_wakeup(ctx: Context) -> list[Result]:
    """One process waking another and back: on two CPUs, on one CPU, and where the
    scheduler puts them (the cost every hop of a request pays on this machine)."""
    round_trips = 2_000 if ctx.config.quick else 20_000
    rows = await asyncio.to_thread(wakeup_bench.run, round_trips)
    results = []
    for row in rows:
        if "skipped" in row:
            results.append(Result("Wake-up round trip (2 processes)", row["placement"],
                                  notes=f"skipped: {row['skipped']}", figures=row))
            continue
        results.append(Result(
            "Wake-up round trip (2 processes)", row["placement"], row["round_trips_per_s"],
            row["p50_us"] / 1000, row["p99_us"] / 1000,
            notes=f"CPU per round trip: caller {row['caller_cpu_us']} us, "
                  f"echo {row['echo_cpu_us']} us", figures=row))
    return results


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None
