"""Drive the operator's metrics through real planner passes over the operator tests' cell
model (tests/operator/op_cellsim.py): create a cell, scale it up (learners catch up, get
promoted) and down, plus a failed step, an invalid spec and a Kubernetes API error."""

from __future__ import annotations

import sys
from pathlib import Path

from lockcell_operator.metrics import OperatorMetrics
from lockcell_operator.planner import Done, Step, Wait, plan
from lockcell_operator.status import build_status

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
from op_cellsim import CellSim

NAMESPACE = "team-a"
NAME = "c"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _passes(metrics: OperatorMetrics, clock: FakeClock, sim: CellSim, limit: int,
            until: type = Done) -> Step:
    step: Step = Done()
    for i in range(limit):
        sim.tick()
        clock.now += 5.0
        obs = sim.observation()
        step = plan(obs)
        status = build_status(obs, step, generation=1, selector="x",
                              now="2026-01-01T00:00:00Z")
        failed = "the cell did not answer" if i == 0 and not isinstance(step, Done) else None
        metrics.record_pass(NAMESPACE, NAME, step, status, failed, 0.02,
                            desired=sim.desired)
        if failed is None:
            sim.apply(step)
        if isinstance(step, until):
            return step
    return step


def drive(metrics: OperatorMetrics, clock: FakeClock) -> None:
    """Passes enough to produce every series the operator dashboard reads."""
    sim = CellSim(desired=3)
    assert isinstance(_passes(metrics, clock, sim, 80), Done)
    sim.desired = 5
    assert isinstance(_passes(metrics, clock, sim, 120), Done)
    sim.desired = 3
    assert isinstance(_passes(metrics, clock, sim, 120), Done)
    sim.desired = 4  # and leave it waiting (for its new pod), so a wait is in progress
    assert isinstance(_passes(metrics, clock, sim, 40, until=Wait), Wait)
    metrics.record_failure(NAMESPACE, "broken", "invalid_spec", 0.001)
    metrics.record_failure(NAMESPACE, NAME, "kube_error", 0.5)


def driven_metrics() -> tuple[OperatorMetrics, FakeClock]:
    clock = FakeClock()
    metrics = OperatorMetrics(clock=clock)
    drive(metrics, clock)
    return metrics, clock
