"""Restart of a follower holding many files and a long log: kill -9, restart, time to ready."""

from __future__ import annotations

import asyncio
import functools
import os
import time

from bench import procstat
from bench.api import TRANSPORT_ERRORS, ApiError, encode
from bench.clients import Client, all_or_none, close_all, ensure_dir, make_clients, retried
from bench.context import Context
from bench.results import Result, mib
from bench.workloads.files import populate

READY_TIMEOUT_S = 900.0
POLL_S = 0.05


async def run(ctx: Context) -> list[Result]:
    """Kill -9 a follower, commit writes it misses, restart it, wait for /readyz and catch-up."""
    config = ctx.config
    cell = await ctx.cell3()
    populated = ""
    if ctx.files_created < config.files:
        made = await populate(ctx, cell, config.files - ctx.files_created)
        populated = f"populated {made.files} files first ({made.seconds:.0f} s); "
    await asyncio.to_thread(cell.wait_ready)
    follower = await asyncio.to_thread(cell.follower)
    cell.kill(follower)
    api = await ctx.leader_api(cell)
    root = f"/ls/local/{ctx.unique('restart')}"
    await ensure_dir(api, root)
    writers = await make_clients(api, 16)
    data = encode(os.urandom(100))
    for i, writer in enumerate(writers):
        await writer.open(f"{root}/k{i}")
    each = config.restart_writes // len(writers)
    await all_or_none(_write(w, data, each) for w in writers)
    await close_all(writers)
    leader_view = await api.cluster()
    target = int(leader_view["commit_index"])
    disk = await asyncio.to_thread(cell.data_bytes, follower)
    member_api = ctx.api(follower)
    started = time.perf_counter()
    await asyncio.to_thread(cell.restart, follower)
    serving_s: float | None = None
    ready_s: float | None = None
    while time.perf_counter() - started < READY_TIMEOUT_S:
        try:
            status = await member_api.status("/readyz")
            if serving_s is None:
                serving_s = time.perf_counter() - started
            if status == 200:
                ready_s = time.perf_counter() - started
                break
        except TRANSPORT_ERRORS:
            pass
        await asyncio.sleep(POLL_S)
    applied = 0
    try:
        applied = int((await member_api.cluster())["applied_index"])
    except (ApiError, *TRANSPORT_ERRORS, KeyError, ValueError):
        pass
    caught_up = applied >= target
    rss = procstat.rss_bytes(cell.pid(follower))
    ok = ready_s is not None and caught_up
    notes = (f"{populated}{ctx.files_created} files, {config.restart_writes} writes missed; "
             f"serving after {_s(serving_s)}, ready after {_s(ready_s)}; applied {applied} "
             f"of {target} committed before restart ({'caught up' if caught_up else 'BEHIND'}); "
             f"data dir {mib(disk)} MiB")
    return [Result(
        "follower restart → ready", f"{ctx.files_created} files", None,
        None if ready_s is None else round(ready_s * 1000, 1), None, None, "", mib(rss),
        "restarted follower", ok=ok, notes=notes,
        figures={"files": ctx.files_created, "missed_writes": config.restart_writes,
                 "serving_s": serving_s, "ready_s": ready_s, "applied_index": applied,
                 "commit_index_before_restart": target, "caught_up": caught_up,
                 "data_dir_mib": mib(disk), "rss_mib": mib(rss)})]


async def _write(writer: Client, data: str, count: int) -> None:
    for _ in range(count):
        await retried(functools.partial(writer.api.put, writer.session, writer.handles[0], data))


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"
