"""A short run of every fault kind against a real 3-member cell (part of `make test`).

Each scenario runs the register, lock and session workloads while one fault kind is
injected repeatedly, heals the cell, and checks linearizability, lost writes, lock safety
and session guarantees. Longer runs: `make chaos DURATION=… SEEDS=…` (tests/chaos/run.py).
"""

from __future__ import annotations

import os

import pytest

from .harness import FAULT_KINDS, run_scenario

DURATION = float(os.environ.get("LOCKCELL_CHAOS_SHORT_S", "5"))


@pytest.mark.parametrize("fault", FAULT_KINDS)
def test_fault_kind_short(fault: str, tmp_path) -> None:
    report = run_scenario(tmp_path, fault, seed=1, duration=DURATION,
                          keep_history=tmp_path / "histories")
    detail = "\n".join(report.problems) + f"\nfaults: {report.faults}\ncounts: {report.counts}"
    assert report.faults, f"no fault was injected\n{detail}"
    assert report.counts["register_ok"] > 20, detail
    assert report.counts["admissions_accepted"] > 0, detail
    assert report.ok, f"{report.verdicts}\n{detail}\nhistory: {report.history_file}"
