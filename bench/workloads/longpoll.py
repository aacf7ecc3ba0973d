"""Many sessions kept alive by long-poll KeepAlives: none may expire; leader CPU and RSS."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from bench import health, procstat
from bench.api import TRANSPORT_ERRORS, ApiError, last_seq
from bench.clients import retried
from bench.context import Context
from bench.observer import Observer
from bench.results import Result, mib
from bench.sessions import close_sessions, final_check

CREATE_CONCURRENCY = 64


async def run(ctx: Context) -> list[Result]:
    """``longpoll_sessions`` sessions, each always holding one long poll, for the run."""
    config = ctx.config
    cell = await ctx.cell3()
    leader = await asyncio.to_thread(cell.leader)
    leader_pid = cell.pid(leader)
    api = ctx.api(leader)
    count = config.longpoll_sessions
    lease_ms = config.longpoll_lease_ms
    rss_before = procstat.rss_bytes(leader_pid)
    health_before = await health.read(ctx, cell)
    sessions: list[str] = []
    renewals = 0
    lost: set[str] = set()
    errors: list[str] = []
    margins: list[float] = []
    stop = asyncio.Event()

    async def keeper(session: str) -> None:
        nonlocal renewals
        target = api
        ack = 0
        while not stop.is_set():
            sent = time.monotonic()
            try:
                answer = await target.keepalive(session, wait_ms=lease_ms,
                                                timeout=lease_ms / 1000 + 30, ack=ack)
                ack = last_seq(answer, ack)
            except ApiError as exc:
                errors.append(str(exc)[:200])
                if exc.status in (404, 410):
                    lost.add(session)
                    return
                target = target.follow(exc)  # a new leader: go there, as the library does
                await asyncio.sleep(0.1)
                continue
            except TRANSPORT_ERRORS as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(0.1)
                continue
            renewals += 1
            # how much of the granted validity was left when the answer arrived
            margins.append(sent + int(answer["valid_ms"]) / 1000 - time.monotonic())

    keepers: list[asyncio.Task[None]] = []
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)
    create_failures: list[str] = []

    async def create(number: int) -> None:
        if config.longpoll_ramp_per_s > 0:
            await asyncio.sleep(number / config.longpoll_ramp_per_s)
        async with gate:
            try:
                session = await retried(lambda: api.create_session(lease_ms))
            except (ApiError, *TRANSPORT_ERRORS) as exc:
                create_failures.append(f"{type(exc).__name__}: {exc}"[:200])
                return
        if not stop.is_set():
            sessions.append(session)
            keepers.append(asyncio.create_task(keeper(session)))

    observer = Observer(api)
    observer.start()
    began = time.perf_counter()
    creators = [asyncio.create_task(create(n)) for n in range(count)]
    try:
        await asyncio.gather(*creators)
        create_s = time.perf_counter() - began
        await asyncio.sleep(min(2.0, config.longpoll_seconds / 4))  # every first poll is held
        renewals_at_start = renewals
        before = procstat.snapshot([leader_pid])
        measure_s = max(0.0, config.longpoll_seconds - min(2.0, config.longpoll_seconds / 4))
        await asyncio.sleep(measure_s)
        cpu = procstat.between(before, procstat.snapshot([leader_pid]))
        window_renewals = renewals - renewals_at_start
        rss_end = procstat.rss_bytes(leader_pid)
        rss_peak = procstat.peak_rss_bytes(leader_pid)
    finally:
        stop.set()
        for task in creators:
            task.cancel()
        await asyncio.gather(*creators, return_exceptions=True)
        seen = await observer.stop()
        for task in keepers:
            task.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
    dead_at_end = await final_check(api, [s for s in sessions if s not in lost])
    changes = (await health.read(ctx, cell)).since(health_before)
    expired = changes["sessions_expired"]
    began = time.perf_counter()
    await close_sessions(api, sessions)
    close_s = time.perf_counter() - began
    lost_total = len(lost) + dead_at_end
    ok = not create_failures and lost_total == 0 and expired == 0 and renewals > 0
    min_margin = min(margins) if margins else None
    notes = (f"{config.longpoll_seconds:.0f} s, lease {lease_ms} ms: "
             f"{len(sessions)} created ({len(create_failures)} failed), lost {lost_total}, "
             f"expired {expired:.0f}, errors {len(errors)}; "
             f"least validity left {_fmt(min_margin)} s; created in {create_s:.1f} s"
             f"{_ramp(config.longpoll_ramp_per_s)}; "
             f"RSS {mib(rss_before)} MiB before, peak {mib(rss_peak)} MiB; "
             f"{procstat.note(cpu)}; {seen.note()}")
    if changes["elections"]:
        notes += f"; {changes['elections']:.0f} ELECTIONS during the run"
    return [Result(
        "KeepAlive long poll (renewals)", f"{count} sessions",
        round(window_renewals / max(measure_s, 1e-9), 1), None, None,
        cpu.total(), "leader", mib(rss_end), "leader", ok=ok, notes=notes,
        figures={"sessions": count, "seconds": config.longpoll_seconds, "lease_ms": lease_ms,
                 "ramp_per_s": config.longpoll_ramp_per_s,
                 "renewals": renewals, "renewals_per_s": round(
                     window_renewals / max(measure_s, 1e-9), 1),
                 "lost": lost_total, "expired_by_server": expired, "errors": len(errors),
                 "elections": changes["elections"],
                 "error_samples": errors[:3], "created": len(sessions),
                 "create_failures": len(create_failures),
                 "create_failure_samples": create_failures[:3], "least_validity_left_s": min_margin,
                 "create_sessions_s": round(create_s, 2), "close_sessions_s": round(close_s, 2),
                 "leader_rss_before_mib": mib(rss_before), "leader_rss_mib": mib(rss_end),
                 "leader_rss_peak_mib": mib(rss_peak), "harness_cpu_pct": cpu.harness_pct,
                 "machine_busy_pct": cpu.machine_pct, "observed": dataclasses.asdict(seen)})]


def _ramp(per_s: float) -> str:
    return f" (ramp {per_s:.0f}/s)" if per_s > 0 else ""


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


