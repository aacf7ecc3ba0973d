"""The workloads by name, in the order a full run takes them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bench.context import Context
from bench.results import Result
from bench.workloads import (
    contended,
    failover,
    files,
    keepalive,
    longpoll,
    micro,
    restart,
    scale,
    uncontended,
    writes,
)


@dataclass(frozen=True)
class Workload:
    """A named workload and the function that runs it."""

    name: str
    run: Callable[[Context], Awaitable[list[Result]]]
    summary: str


WORKLOADS: tuple[Workload, ...] = (
    Workload("raft", micro.run_raft, "Raft core in memory, no I/O"),
    Workload("storage", micro.run_storage, "WAL appends with fsync vs sqlite3"),
    Workload("wakeup", micro.run_wakeup, "one process waking another: 2 CPUs vs 1 CPU"),
    Workload("uncontended", uncontended.run, "lock cycle, own lock, 1 and 64 clients"),
    Workload("contended", contended.run, "64 clients on one lock: handovers/s, FIFO"),
    Workload("writes", writes.run, "100-byte SetContents, 64 clients x 100 keys"),
    Workload("keepalive", keepalive.run, "1000 sessions x 1 KeepAlive/s, server CPU"),
    Workload("longpoll", longpoll.run, "10,000 sessions on long-poll KeepAlive"),
    Workload("failover", failover.run, "leader kill -9 -> first write, 20 trials"),
    Workload("handover", failover.run_handover, "leader SIGTERM -> first write, 20 trials"),
    Workload("files", files.run, "1 million small files: time, RSS"),
    Workload("restart", restart.run, "follower restart with the files and a long log"),
    Workload("scale", scale.run, "throughput with 5 and 7 replicas"),
)

BY_NAME = {w.name: w for w in WORKLOADS}


def select(names: str | None) -> list[Workload]:
    """The workloads named (comma-separated) in run order; all of them when ``names`` is empty."""
    if not names:
        return list(WORKLOADS)
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    unknown = wanted - BY_NAME.keys()
    if unknown:
        raise ValueError(f"unknown workloads {sorted(unknown)}; choose from {sorted(BY_NAME)}")
    return [w for w in WORKLOADS if w.name in wanted]
