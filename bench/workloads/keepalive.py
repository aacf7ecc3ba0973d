"""Many sessions, each renewed by one non-blocking KeepAlive per second (phases spread)."""

from __future__ import annotations

import asyncio
import time

from bench import health, procstat
from bench.api import TRANSPORT_ERRORS, ApiError, last_seq
from bench.clients import bounded
from bench.context import Context
from bench.results import Latency, Result
from bench.sessions import close_sessions, final_check

INTERVAL_S = 1.0


async def run(ctx: Context) -> list[Result]:
    """``keepalive_sessions`` sessions x 1 KeepAlive/s; no session may be lost."""
    config = ctx.config
    cell = await ctx.cell3()
    api = await ctx.leader_api(cell)
    count = config.keepalive_sessions
    health_before = await health.read(ctx, cell)
    began = time.perf_counter()
    sessions = await bounded(64, [lambda: api.create_session(config.keepalive_lease_ms)
                                  for _ in range(count)])
    create_s = time.perf_counter() - began
    base = time.perf_counter()
    start = base + config.warmup_s
    end = start + config.keepalive_window_s
    latencies: list[float] = []
    late = 0
    lost: set[int] = set()
    errors: list[str] = []
    stop = asyncio.Event()

    async def keeper(i: int) -> None:
        nonlocal late
        k = 0
        ack = 0
        while not stop.is_set():
            due = base + INTERVAL_S * (i / count + k)
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if stop.is_set():
                return
            sent = time.perf_counter()
            try:
                ack = last_seq(await api.keepalive(sessions[i], wait_ms=0, timeout=10, ack=ack),
                               ack)
            except ApiError as exc:
                errors.append(str(exc)[:200])
                if exc.status in (404, 410):
                    lost.add(i)
                    return
            except TRANSPORT_ERRORS as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            done = time.perf_counter()
            if start <= done <= end:
                latencies.append(done - sent)
                late += done - due > INTERVAL_S
            k += 1

    tasks = [asyncio.create_task(keeper(i)) for i in range(count)]
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    pids = cell.pids()
    before = procstat.snapshot(pids)
    await asyncio.sleep(max(0.0, end - time.perf_counter()))
    cpu = procstat.between(before, procstat.snapshot(pids))
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    dead_at_end = await final_check(api, [s for i, s in enumerate(sessions) if i not in lost])
    changes = (await health.read(ctx, cell)).since(health_before)
    expired = changes["sessions_expired"]
    await close_sessions(api, sessions)
    latency = Latency.of(latencies)
    lost_total = len(lost) + dead_at_end
    rate = round(latency.count / config.keepalive_window_s, 1)
    ok = lost_total == 0 and expired == 0 and latency.count > 0
    notes = (f"target {count / INTERVAL_S:.0f}/s; lost {lost_total}, expired {expired:.0f}, "
             f"late {late}, errors {len(errors)}; lease {config.keepalive_lease_ms} ms; "
             f"{procstat.note(cpu)}")
    if changes["elections"]:
        notes += f"; {changes['elections']:.0f} ELECTIONS during the run"
    return [Result(
        "KeepAlive 1/s per session", f"{count} sessions", rate, latency.p50_ms,
        latency.p99_ms, cpu.total(), f"{cell.size} members", ok=ok, notes=notes,
        figures={"sessions": count, "window_s": config.keepalive_window_s,
                 "lease_ms": config.keepalive_lease_ms, "keepalives": latency.count,
                 "target_per_s": count / INTERVAL_S, "late": late, "lost": lost_total,
                 "expired_by_server": expired, "errors": len(errors),
                 "elections": changes["elections"],
                 "error_samples": errors[:3], "max_ms": latency.max_ms,
                 "create_sessions_s": round(create_s, 2),
                 "server_cpu_pct_by_pid": dict(cpu.per_pid), "harness_cpu_pct": cpu.harness_pct,
                 "machine_busy_pct": cpu.machine_pct})]

