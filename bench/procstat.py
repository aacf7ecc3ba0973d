"""CPU time and resident memory of processes, read from /proc (Linux)."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        text = stat.read()
    fields = text[text.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` now (VmRSS)."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """Largest resident set size ``pid`` has had (VmHWM)."""
    return _status_kib(pid, "VmHWM") * 1024


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent neither idle nor waiting for I/O (/proc/stat)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _TICKS


def load_average() -> float:
    """The machine's one-minute load average."""
    return os.getloadavg()[0]


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds of some processes, of this process and of the machine at one moment."""

    at: float
    servers: Mapping[int, float]
    harness: float
    machine: float


@dataclass(frozen=True)
class CpuUse:
    """CPU use between two snapshots, in % of one core (a 2-core machine tops out at 200)."""

    seconds: float
    per_pid: Mapping[int, float]
    harness_pct: float
    machine_pct: float
    """The whole machine's busy time: anything above servers + harness is someone else."""

    def total(self, pids: list[int] | None = None) -> float:
        """Summed % over ``pids`` (default: every measured process)."""
        chosen = self.per_pid if pids is None else {p: self.per_pid[p] for p in pids}
        return round(sum(chosen.values()), 1)


def snapshot(pids: list[int]) -> CpuSnapshot:
    """CPU seconds of ``pids`` (a process that is gone counts as 0) and of this process."""
    servers: dict[int, float] = {}
    for pid in pids:
        try:
            servers[pid] = cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            servers[pid] = 0.0
    return CpuSnapshot(time.perf_counter(), servers, cpu_seconds(os.getpid()),
                       machine_busy_seconds())


def between(a: CpuSnapshot, b: CpuSnapshot) -> CpuUse:
    """CPU % of each process from snapshot ``a`` to ``b``."""
    span = max(b.at - a.at, 1e-9)
    per_pid = {pid: round(100.0 * (b.servers.get(pid, 0.0) - used) / span, 1)
               for pid, used in a.servers.items()}
    return CpuUse(span, per_pid, round(100.0 * (b.harness - a.harness) / span, 1),
                  round(100.0 * (b.machine - a.machine) / span, 1))


def note(use: CpuUse) -> str:
    """``harness 25 %, machine 160 % busy`` (to judge how loaded the machine was)."""
    return f"harness {use.harness_pct:.0f} %, machine {use.machine_pct:.0f} % busy"
