"""Many small files created through the API; the time it takes and the replicas' RSS."""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import health, procstat
from bench.cells import BenchCell
from bench.clients import Client, all_or_none, ensure_dir, retried
from bench.context import Context
from bench.results import Latency, Result, mib

PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True)
class Population:
    """How a cell was filled with files."""

    files: int
    seconds: float
    latency: Latency
    cpu: procstat.CpuUse

    @property
    def rate(self) -> float:
        """Files created per second."""
        return round(self.files / max(self.seconds, 1e-9), 1)


async def run(ctx: Context) -> list[Result]:
    """Create ``files`` files under ``file_dirs`` directories of the 3-replica cell."""
    cell = await ctx.cell3()
    leader = await asyncio.to_thread(cell.leader)
    follower = await asyncio.to_thread(cell.follower)
    rss_before = {"leader": procstat.rss_bytes(cell.pid(leader)),
                  "follower": procstat.rss_bytes(cell.pid(follower))}
    health_before = await health.read(ctx, cell)
    made = await populate(ctx, cell, ctx.config.files)
    await asyncio.to_thread(cell.wait_ready)
    leader = await asyncio.to_thread(cell.leader)
    follower = await asyncio.to_thread(cell.follower)
    leader_rss = procstat.rss_bytes(cell.pid(leader))
    follower_rss = procstat.rss_bytes(cell.pid(follower))
    disk = await asyncio.to_thread(cell.data_bytes, follower)
    snapshot = await asyncio.to_thread(cell.snapshot_bytes, follower)
    changes = (await health.read(ctx, cell)).since(health_before)
    per_file = (leader_rss - rss_before["leader"]) / max(made.files, 1)
    notes = (f"{made.files} files in {made.seconds:.0f} s; follower RSS {mib(follower_rss)} "
             f"MiB; before: leader {mib(rss_before['leader'])}, follower "
             f"{mib(rss_before['follower'])} MiB (~{per_file:.0f} B/file on the leader); "
             f"data dir {mib(disk)} MiB; {procstat.note(made.cpu)}; "
             f"{changes['snapshots']:.0f} snapshots on 3 members (mean "
             f"{changes['snapshot_mean_s']} s, {changes['snapshots_over_1s']:.0f} over 1 s, "
             f"last {mib(snapshot)} MiB)")
    if changes["elections"]:
        notes += f"; {changes['elections']:.0f} ELECTIONS during the run"
    return [Result(
        "create files (Open+create)", f"{made.files} files", made.rate, made.latency.p50_ms,
        made.latency.p99_ms, made.cpu.total(), f"{cell.size} members", mib(leader_rss),
        "leader", ok=made.files == ctx.config.files, notes=notes,
        figures={"files": made.files, "directories": ctx.config.file_dirs,
                 "clients": ctx.config.file_clients, "seconds": round(made.seconds, 1),
                 "files_per_s": made.rate, "leader_rss_mib": mib(leader_rss),
                 "follower_rss_mib": mib(follower_rss),
                 "leader_rss_before_mib": mib(rss_before["leader"]),
                 "follower_rss_before_mib": mib(rss_before["follower"]),
                 "leader_bytes_per_file": round(per_file), "data_dir_mib": mib(disk),
                 "snapshot_mib": mib(snapshot),
                 "max_ms": made.latency.max_ms, "harness_cpu_pct": made.cpu.harness_pct,
                 "machine_busy_pct": made.cpu.machine_pct, **changes})]


async def populate(ctx: Context, cell: BenchCell, count: int) -> Population:
    """Create ``count`` permanent files with many clients; sessions are closed at the end."""
    config = ctx.config
    api = await ctx.leader_api(cell)
    root = f"/ls/local/{ctx.unique('files')}"
    for d in range(config.file_dirs):
        await ensure_dir(api, f"{root}/d{d}")
    next_index = 0
    latencies: list[float] = []
    pids = cell.pids()
    before = procstat.snapshot(pids)
    began = time.perf_counter()

    async def creator() -> None:
        nonlocal next_index
        client: Client | None = None
        opened = 0
        try:
            while next_index < count:
                i = next_index
                next_index += 1
                if client is None or opened >= config.files_per_session:
                    if client is not None:
                        await client.close()
                    client = await Client.create(api)
                    opened = 0
                sent = time.perf_counter()
                # the handle is not kept: closing the session closes it
                path = f"{root}/d{i % config.file_dirs}/f{i}"
                await retried(functools.partial(api.open, client.session, path))
                latencies.append(time.perf_counter() - sent)
                ctx.files_created += 1
                opened += 1
        finally:
            if client is not None:
                await client.close()

    progress = asyncio.create_task(_progress(lambda: len(latencies), count, began))
    try:
        await all_or_none(creator() for _ in range(config.file_clients))
    finally:
        progress.cancel()
    seconds = time.perf_counter() - began
    cpu = procstat.between(before, procstat.snapshot(pids))
    return Population(len(latencies), seconds, Latency.of(latencies), cpu)


async def _progress(done: Callable[[], int], total: int, began: float) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY_S)
        n = done()
        elapsed = time.perf_counter() - began
        print(f"  files: {n}/{total} in {elapsed:.0f} s ({n / elapsed:.0f}/s)",
              file=sys.stderr, flush=True)
