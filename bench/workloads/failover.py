"""Leader failover: kill -9 the leader (or stop it with SIGTERM, as a rolling restart
does), time until the first write succeeds again."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import statistics
import time
from dataclasses import dataclass

from bench.api import TRANSPORT_ERRORS, Api, ApiError, encode
from bench.cells import BenchCell
from bench.clients import ensure_dir
from bench.context import Context
from bench.results import Result

ATTEMPT_TIMEOUT_S = 1.0
GIVE_UP_S = 60.0


@dataclass(frozen=True)
class Trial:
    """One failover: which member led, how long writes failed, what the writers saw."""

    killed: int
    new_leader: int | None
    seconds: float | None
    attempts: int
    failures: dict[str, int]


async def run(ctx: Context) -> list[Result]:
    """``failover_trials`` kills of the leader; the killed member restarts between trials."""
    return await _trials(ctx, signal.SIGKILL, "leader kill -9 → first write")


async def run_handover(ctx: Context) -> list[Result]:
    """``failover_trials`` SIGTERMs of the leader, which hands leadership over as it stops."""
    return await _trials(ctx, signal.SIGTERM, "leader SIGTERM → first write")


async def _trials(ctx: Context, sig: signal.Signals, label: str) -> list[Result]:
    cell = await ctx.cell3()
    root = f"/ls/local/{ctx.unique('failover')}"
    await ensure_dir(await ctx.leader_api(cell), root)
    trials = [await _trial(ctx, cell, root, n, sig)
              for n in range(ctx.config.failover_trials)]
    times = [t.seconds for t in trials if t.seconds is not None]
    failures: collections.Counter[str] = collections.Counter()
    for t in trials:
        failures.update(t.failures)
    ok = len(times) == len(trials) and bool(trials)
    median = statistics.median(times) if times else None
    worst = max(times) if times else None
    notes = (f"{len(times)}/{len(trials)} trials wrote again; median {_s(median)}, "
             f"max {_s(worst)}; during the gap: "
             + (", ".join(f"{k} x{v}" for k, v in failures.most_common(4)) or "no errors"))
    return [Result(
        label, f"{len(trials)} trials", None,
        None if median is None else round(median * 1000, 1), None, ok=ok, notes=notes,
        figures={"trials": len(trials), "succeeded": len(times),
                 "median_s": median, "max_s": worst,
                 "min_s": min(times) if times else None,
                 "seconds": [t.seconds for t in trials],
                 "killed_then_new_leader": [[t.killed, t.new_leader] for t in trials],
                 "failures_during_gap": dict(failures)})]


async def _trial(ctx: Context, cell: BenchCell, root: str, number: int,
                 sig: signal.Signals) -> Trial:
    await asyncio.to_thread(cell.wait_ready)
    leader = await asyncio.to_thread(cell.leader)
    api = ctx.api(leader)
    session = await api.create_session(60000)
    handle = await api.open(session, f"{root}/t{number}")
    data = encode(b"x" * 100)
    await api.put(session, handle, data)
    survivors = [m for m in cell.running() if m is not leader]
    failures: collections.Counter[str] = collections.Counter()
    attempts = 0

    async def writer(target: Api) -> float:
        nonlocal attempts
        while True:
            attempts += 1
            try:
                await target.put(session, handle, data, timeout=ATTEMPT_TIMEOUT_S)
                return time.perf_counter()
            except ApiError as exc:
                failures[f"{exc.status} {exc.code}"] += 1
            except TRANSPORT_ERRORS as exc:
                failures[type(exc).__name__] += 1
            await asyncio.sleep(0.01)

    killed_at = time.perf_counter()
    stopping: asyncio.Task[None] | None = None
    if sig is signal.SIGKILL:
        cell.kill(leader)
    else:
        # The signal is out before the first write leaves (no write can reach the leader
        # before it knows it is stopping); it hands over while the writers try.
        cell.signal_member(leader, sig)
        stopping = asyncio.create_task(asyncio.to_thread(cell.reap, leader))
    tasks = [asyncio.create_task(writer(ctx.api(m))) for m in survivors]
    done, pending = await asyncio.wait(tasks, timeout=GIVE_UP_S,
                                       return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if stopping is not None:
        await stopping
    seconds = min(t.result() for t in done) - killed_at if done else None
    new_leader = None
    with contextlib.suppress(RuntimeError, OSError):
        new_leader = (await asyncio.to_thread(cell.leader, 5.0)).index
    await asyncio.to_thread(cell.restart, leader)
    await asyncio.to_thread(cell.wait_ready)
    try:
        await (await ctx.leader_api(cell)).close_session(session)
    except (ApiError, *TRANSPORT_ERRORS):
        pass
    return Trial(leader.index, new_leader, seconds, attempts, dict(failures))


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"
