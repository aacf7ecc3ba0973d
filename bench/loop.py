"""A closed-loop load runner: workers repeat one operation; a window after a warm-up counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench import health, procstat
from bench.cells import BenchCell
from bench.context import Context
from bench.results import Latency

Operation = Callable[[int], Awaitable[None]]
"""One operation of worker ``i``."""

STOP_GRACE_S = 30.0


@dataclass(frozen=True)
class LoopStats:
    """What a closed loop measured inside its window."""

    ops: int
    window_s: float
    latency: Latency
    errors: int
    error_samples: tuple[str, ...]
    per_worker: tuple[int, ...]
    cpu: procstat.CpuUse
    stuck_workers: int

    @property
    def ops_per_s(self) -> float:
        """Completed operations per second of window."""
        return round(self.ops / self.window_s, 1)

    def trouble(self, elections: float) -> str:
        """The notes' tail: elections during the run and errors, if any."""
        notes = ""
        if elections:
            notes += f"; {elections:.0f} ELECTIONS"
        if self.errors:
            notes += f"; {self.errors} errors, e.g. {self.error_samples[0]}"
        return notes


async def closed_loop(workers: int, warmup_s: float, window_s: float, op: Operation,
                      pids: list[int]) -> LoopStats:
    """Run ``workers`` loops of ``op``; count ops that complete inside the window.

    Latency is the wall time of each counted op as its worker saw it; CPU is measured over
    the window for ``pids`` and for this process.
    """
    start = time.perf_counter() + warmup_s
    end = start + window_s
    latencies: list[float] = []
    per_worker = [0] * workers
    errors: list[str] = []
    stop = False

    async def worker(i: int) -> None:
        while not stop:
            began = time.perf_counter()
            try:
                await op(i)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                if start <= time.perf_counter() <= end:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(0.05)
                continue
            done = time.perf_counter()
            if start <= done <= end:
                latencies.append(done - began)
                per_worker[i] += 1

    tasks = [asyncio.create_task(worker(i)) for i in range(workers)]
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    before = procstat.snapshot(pids)
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    after = procstat.snapshot(pids)
    stop = True
    _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return LoopStats(len(latencies), window_s, Latency.of(latencies), len(errors),
                     tuple(errors[:3]), tuple(per_worker), procstat.between(before, after),
                     len(pending))


async def measured_loop(ctx: Context, cell: BenchCell, workers: int,
                        op: Operation) -> tuple[LoopStats, float]:
    """:func:`closed_loop` on ``cell`` with the configured warm-up and window, and how many
    elections the cell went through meanwhile."""
    before = await health.read(ctx, cell)
    stats = await closed_loop(workers, ctx.config.warmup_s, ctx.config.window_s, op,
                              cell.pids())
    changes = (await health.read(ctx, cell)).since(before)
    return stats, changes["elections"]
