"""Result values of the workloads, latency summaries, and the machine-readable results file."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import BenchConfig


@dataclass(frozen=True)
class Latency:
    """Percentiles of a set of durations, in milliseconds."""

    count: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Latency:
        """Summarise durations given in seconds."""
        ordered = sorted(seconds)
        if not ordered:
            return cls(0, None, None, None)
        return cls(len(ordered), _ms(percentile(ordered, 50)), _ms(percentile(ordered, 99)),
                   _ms(ordered[-1]))


@dataclass(frozen=True)
class Result:
    """One row of the table: a workload at one size, with its figures."""

    workload: str
    size: str
    """Clients, sessions, files or replicas the row was measured with."""
    ops_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_pct: float | None = None
    cpu_of: str = ""
    """Whose CPU ``cpu_pct`` counts (in % of one core): e.g. ``3 members`` or ``leader``."""
    rss_mib: float | None = None
    rss_of: str = ""
    ok: bool = True
    """Whether the workload's own checks passed (no session lost, FIFO, every trial, ...)."""
    notes: str = ""
    figures: Mapping[str, Any] = field(default_factory=dict)
    """Everything else measured, for the JSON file."""
    group: str = ""
    """The name of the workload (``--only``) that produced the row."""


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence."""
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def failed(workload: str, size: str, error: BaseException) -> Result:
    """The row of a workload that raised."""
    message = f"{type(error).__name__}: {error}".replace("\n", " ")[:300]
    return Result(workload, size, ok=False, notes=f"FAILED {message}",
                  figures={"error": message})


def write_results(config: BenchConfig, results: Sequence[Result], seconds: float,
                  path: Path, merge: bool = False, order: Sequence[str] = ()) -> None:
    """Write the results file: machine, the run's parameters, every row with all its figures.

    With ``merge``, rows of workloads this run did not take are kept from the existing file
    (each row names the run it came from), so a full run can be made workload by workload.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    params = {k: (str(v) if isinstance(v, Path) else v)
              for k, v in dataclasses.asdict(config).items()}
    groups = sorted({r.group for r in results})
    run = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "duration_s": round(seconds, 1),
           "workloads": groups, "parameters": params}
    runs: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    if merge and path.exists():
        previous = json.loads(path.read_text())
        runs = list(previous.get("runs", []))
        rows = [r for r in previous.get("results", []) if r.get("group") not in groups]
    rows += [{**dataclasses.asdict(r), "run": len(runs)} for r in results]
    runs.append(run)
    rank = {name: i for i, name in enumerate(order)}
    rows.sort(key=lambda r: rank.get(str(r.get("group")), len(rank)))  # stable within a group
    document = {
        "date": run["date"],
        "machine": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "parameters": params,
        "duration_s": run["duration_s"],
        "ok": all(bool(r["ok"]) for r in rows),
        "runs": runs,
        "results": rows,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def load_results(path: Path) -> list[Result]:
    """The rows of a results file as values (to print the table of a merged file)."""
    names = {f.name for f in dataclasses.fields(Result)}
    return [Result(**{k: v for k, v in row.items() if k in names})
            for row in json.loads(path.read_text())["results"]]


def plural(count: int, noun: str) -> str:
    """``1 client``, ``64 clients``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def mib(n_bytes: int | float | None) -> float | None:
    """Bytes as MiB rounded to one decimal."""
    return None if n_bytes is None else round(n_bytes / 2**20, 1)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)
