"""Helpers of the client tests: local cells on random free ports, freezing, the CLI."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from lockcell.cli.localcell import LocalCell, LocalMember, free_port_base

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
_rng = random.Random(os.getpid() ^ time.time_ns())


def pick_base(size: int) -> int:
    """A client port base whose client ports and peer ports (base + 100 + i) are all free."""
    return free_port_base([*range(size), *range(100, 100 + size)], _rng)


def start_cell(root: Path, *, size: int = 3, lease_ms: int = 12000, grace_ms: int = 45000,
               tick_ms: int = 100, attempts: int = 3) -> LocalCell:
    """Start a local cell (retrying on other ports if one was taken meanwhile)."""
    last: Exception | None = None
    for attempt in range(attempts):
        base = pick_base(size)
        cell = LocalCell(root / f"cell-{attempt}", size=size, client_base=base,
                         peer_base=base + 100, lease_ms=lease_ms, tick_ms=tick_ms,
                         extra_env={"LOCKCELL_GRACE_MS": str(grace_ms),
                                    "LOCKCELL_LOG_LEVEL": "WARNING"})
        try:
            cell.start(timeout=45)
            return cell
        except (TimeoutError, OSError) as exc:
            last = exc
            stop_cell(cell)
    raise RuntimeError(f"no cell after {attempts} attempts: {last}")


def live(cell: LocalCell) -> list[LocalMember]:
    """Members whose process runs."""
    return [m for m in cell.members if m.process is not None and m.process.poll() is None]


def freeze(cell: LocalCell) -> None:
    """SIGSTOP every member (the whole cell stops answering)."""
    for member in live(cell):
        cell.kill(member, signal.SIGSTOP)


def thaw(cell: LocalCell) -> None:
    """SIGCONT every member."""
    for member in live(cell):
        cell.kill(member, signal.SIGCONT)


def stop_cell(cell: LocalCell) -> None:
    """SIGCONT (in case a test froze it), then stop every member: SIGTERM, and SIGKILL
    after a few seconds (the data directories are thrown away)."""
    members = live(cell)
    for member in members:
        assert member.process is not None
        member.process.send_signal(signal.SIGCONT)
        member.process.terminate()
    deadline = time.monotonic() + 3.0
    for member in members:
        assert member.process is not None
        try:
            member.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            member.process.kill()
            member.process.wait()


def wait_for(predicate: Callable[[], T | None], timeout: float, message: str = "",
             interval: float = 0.05) -> T:
    """Poll until ``predicate()`` is truthy; returns it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message}")
        time.sleep(interval)


def new_leader(cell: LocalCell, old: LocalMember, timeout: float = 20.0) -> LocalMember:
    """Wait until a member other than ``old`` leads."""
    def other() -> LocalMember | None:
        try:
            leader = cell.leader()
        except RuntimeError:
            return None
        return leader if leader is not old else None
    return wait_for(other, timeout, "no new leader")


def cli_env(cell: LocalCell, **extra: str) -> dict[str, str]:
    """Environment for `lockcell` subprocesses talking to ``cell``."""
    env = dict(os.environ)
    env["LOCKCELL_ENDPOINTS"] = ",".join(cell.endpoints)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def lockcell_argv(*argv: str) -> list[str]:
    """The command line of `lockcell ARGV...`."""
    return [sys.executable, "-m", "lockcell.cli.main", *argv]


def cli(cell: LocalCell, *argv: str, timeout: float = 60, input_text: str | None = None,
        **env: str) -> subprocess.CompletedProcess[str]:
    """Run `lockcell ARGV...` against ``cell``."""
    return subprocess.run(lockcell_argv(*argv), text=True, capture_output=True,
                          timeout=timeout, env=cli_env(cell, **env), input=input_text)


def unique(prefix: str) -> str:
    """A fresh path under /ls/local."""
    return f"/ls/local/{prefix}-{_rng.randrange(1 << 30):x}"
