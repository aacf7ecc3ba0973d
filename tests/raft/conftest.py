"""Reports the throughput of the randomized Raft simulation at the end of the run."""

from __future__ import annotations

import pytest

_runs: list[tuple[int, float]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call":
        return
    props = dict(report.user_properties)
    if "sim_seeds" in props:
        _runs.append((int(props["sim_seeds"]), float(props["sim_seconds"])))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _runs:
        return
    seeds = sum(n for n, _ in _runs)
    cpu = sum(t for _, t in _runs)
    line = (f"raft simulation: {seeds} seeds in {cpu:.1f}s of test time "
            f"({seeds / cpu:.1f} seeds/s per worker)")
    terminalreporter.write_line(line)
