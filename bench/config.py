"""Benchmark parameters: full-run defaults, quick-run defaults and command-line overrides."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields, replace
from pathlib import Path

RESULTS_FILE = Path(__file__).resolve().parent / "results" / "latest.json"


@dataclass(frozen=True)
class BenchConfig:
    """Every knob of a benchmark run (one frozen value, recorded in the results file)."""

    quick: bool = False
    warmup_s: float = 2.0
    """Warm-up before each closed-loop measurement window."""
    window_s: float = 10.0
    """Length of each closed-loop measurement window."""
    clients: int = 64
    """Clients of the many-client uncontended, contended and write workloads."""
    write_keys: int = 100
    """Keys (files) per client in the write workload, written round robin."""
    write_bytes: int = 100
    keepalive_sessions: int = 1000
    keepalive_lease_ms: int = 10000
    keepalive_window_s: float = 20.0
    longpoll_sessions: int = 10000
    longpoll_seconds: float = 300.0
    longpoll_lease_ms: int = 12000
    """Lease of the long-poll sessions (the cell default); the leader holds a poll 3/4 of it."""
    longpoll_ramp_per_s: float = 0.0
    """Sessions created per second while ramping up (0: as fast as 64 creators go)."""
    failover_trials: int = 20
    scale_sizes: tuple[int, ...] = (5, 7)
    scale_workloads: tuple[str, ...] = ("uncontended", "writes")
    files: int = 1_000_000
    file_dirs: int = 16
    file_clients: int = 64
    files_per_session: int = 2000
    """Files a creating client opens under one session before it closes it and starts anew."""
    restart_writes: int = 5000
    """Writes committed while the restarted follower is down (it must catch up on them)."""
    out: Path = RESULTS_FILE

    @classmethod
    def quick_defaults(cls) -> BenchConfig:
        """The short run: every workload, about a minute and a half on a 2-core machine."""
        return cls(quick=True, warmup_s=0.5, window_s=2.0, write_keys=20, keepalive_window_s=3.0,
                   longpoll_sessions=1000, longpoll_seconds=20.0, failover_trials=3,
                   scale_sizes=(5,), scale_workloads=("writes",), files=10_000,
                   restart_writes=500)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags that override single parameters of the chosen defaults."""
    parser.add_argument("--quick", action="store_true",
                        help="run every workload briefly (about 90 s)")
    parser.add_argument("--warmup", dest="warmup_s", type=float)
    parser.add_argument("--window", dest="window_s", type=float,
                        help="seconds of each closed-loop measurement window")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--write-keys", type=int, help="keys per client of the write workload")
    parser.add_argument("--keepalive-sessions", type=int)
    parser.add_argument("--keepalive-seconds", dest="keepalive_window_s", type=float)
    parser.add_argument("--longpoll-sessions", type=int)
    parser.add_argument("--longpoll-seconds", type=float)
    parser.add_argument("--longpoll-lease-ms", type=int)
    parser.add_argument("--longpoll-ramp", dest="longpoll_ramp_per_s", type=float,
                        help="sessions created per second (default: as fast as possible)")
    parser.add_argument("--failover-trials", type=int)
    parser.add_argument("--scale-sizes", type=_ints, help="e.g. 5,7")
    parser.add_argument("--scale-workloads", type=_names, help="uncontended,writes")
    parser.add_argument("--files", type=int)
    parser.add_argument("--file-dirs", type=int)
    parser.add_argument("--file-clients", type=int)
    parser.add_argument("--restart-writes", type=int)
    parser.add_argument("--out", type=Path, help=f"results file (default {RESULTS_FILE})")


def from_arguments(args: argparse.Namespace) -> BenchConfig:
    """The defaults (full or quick) with every flag given on the command line applied."""
    base = BenchConfig.quick_defaults() if args.quick else BenchConfig()
    given = {f.name: getattr(args, f.name) for f in fields(BenchConfig)
             if f.name != "quick" and getattr(args, f.name, None) is not None}
    return replace(base, **given)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


def _names(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = set(names) - {"uncontended", "writes"}
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scale workloads: {sorted(unknown)}")
    return names
