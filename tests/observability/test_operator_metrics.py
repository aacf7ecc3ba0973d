"""The operator's metrics: what a pass records, waits and their durations, forgetting a
deleted Cell, and the /metrics server the startup handler starts."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lockcell_operator.metrics import ENV_METRICS_PORT, OperatorMetrics, start_metrics_server
from lockcell_operator.planner import AddLearner, Done, Promote, Wait

from .conftest import free_port_base
from .opdrive import FakeClock, driven_metrics


def samples(metrics: OperatorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(metrics: OperatorMetrics, name: str, **labels: str) -> float:
    return sum(v for (n, got), v in samples(metrics).items()
               if n == name and all(dict(got).get(k) == w for k, w in labels.items()))


STATUS = {"phase": "Scaling", "readyReplicas": 3,
          "members": [{"role": "voter"}] * 3 + [{"role": "learner"}]}


def test_a_pass_counts_its_result_and_its_step() -> None:
    m = OperatorMetrics(clock=FakeClock())
    assert m.record_pass("ns", "c", AddLearner("c-3", "id", "p", "u"), STATUS) == "acted"
    assert m.record_pass("ns", "c", Promote("id"), STATUS, step_error="refused") == "step_failed"
    assert m.record_pass("ns", "c", Done(), STATUS, seconds=0.2, desired=4) == "done"
    assert get(m, "lockcell_operator_reconciles_total", result="acted") == 1
    assert get(m, "lockcell_operator_reconciles_total", result="step_failed") == 1
    assert get(m, "lockcell_operator_membership_steps_total", kind="AddLearner",
               result="ok") == 1
    assert get(m, "lockcell_operator_membership_steps_total", kind="Promote",
               result="failed") == 1
    assert get(m, "lockcell_operator_reconcile_seconds_count") == 1
    assert get(m, "lockcell_operator_cell_phase", phase="Scaling") == 1
    assert get(m, "lockcell_operator_cell_phase", phase="Running") == 0
    assert get(m, "lockcell_operator_cell_replicas", kind="learners") == 1
    assert get(m, "lockcell_operator_cell_replicas", kind="desired") == 4
    assert get(m, "lockcell_operator_cells") == 1


def test_waits_are_timed_from_first_to_last_pass() -> None:
    clock = FakeClock()
    m = OperatorMetrics(clock=clock)
    catching_up = Wait("LearnerCatchingUp", "c-3 is 400 entries behind")
    for _ in range(4):
        m.record_pass("ns", "c", catching_up, STATUS)
        clock.now += 5
    assert get(m, "lockcell_operator_waiting_seconds", reason="LearnerCatchingUp") == 20
    assert get(m, "lockcell_operator_waits_total", reason="LearnerCatchingUp") == 4
    assert get(m, "lockcell_operator_wait_duration_seconds_count") == 0
    m.record_pass("ns", "c", Promote("id"), STATUS)
    assert get(m, "lockcell_operator_wait_duration_seconds_count",
               reason="LearnerCatchingUp") == 1
    assert get(m, "lockcell_operator_wait_duration_seconds_sum",
               reason="LearnerCatchingUp") == 20
    assert not [k for k in samples(m) if k[0] == "lockcell_operator_waiting_seconds"]
    # A different reason ends the first wait and starts another.
    m.record_pass("ns", "c", Wait("JointConsensus", "joint"), STATUS)
    clock.now += 3
    m.record_pass("ns", "c", Wait("NoLeader", "no leader"), STATUS)
    assert get(m, "lockcell_operator_wait_duration_seconds_sum", reason="JointConsensus") == 3
    assert get(m, "lockcell_operator_waiting_seconds", reason="NoLeader") == 0


def test_failures_and_forgetting_a_deleted_cell() -> None:
    clock = FakeClock()
    m = OperatorMetrics(clock=clock)
    m.record_pass("ns", "c", Wait("NoLeader", "x"), STATUS)
    m.record_pass("other", "d", Done(), STATUS)
    m.record_failure("ns", "c", "kube_error", 0.1)
    m.record_failure("ns", "c", "invalid_spec")
    assert get(m, "lockcell_operator_reconciles_total", cell="c", result="kube_error") == 1
    assert get(m, "lockcell_operator_cell_phase", cell="c", phase="Failed") == 1
    assert get(m, "lockcell_operator_wait_duration_seconds_count", reason="NoLeader") == 1
    m.forget("ns", "c")
    left = {dict(labels).get("cell") for (_, labels) in samples(m)} - {None}
    assert left == {"d"}
    assert get(m, "lockcell_operator_cells") == 1


def test_planner_passes_produce_every_kind_of_series() -> None:
    metrics, _ = driven_metrics()
    names = {name for name, _ in samples(metrics)}
    for wanted in ("lockcell_operator_reconciles_total",
                   "lockcell_operator_reconcile_seconds_bucket",
                   "lockcell_operator_membership_steps_total",
                   "lockcell_operator_waits_total",
                   "lockcell_operator_wait_duration_seconds_bucket",
                   "lockcell_operator_cell_phase", "lockcell_operator_cell_replicas",
                   "lockcell_operator_cells"):
        assert wanted in names, wanted
    for kind in ("Bootstrap", "AddLearner", "Promote", "RemoveMember", "ScaleStatefulSet"):
        assert get(metrics, "lockcell_operator_membership_steps_total", kind=kind) >= 1, kind
    assert get(metrics, "lockcell_operator_wait_duration_seconds_count",
               reason="LearnerCatchingUp") >= 1


def test_metrics_server_serves_the_registry() -> None:
    metrics = OperatorMetrics(clock=FakeClock())
    metrics.record_pass("ns", "c", Done(), STATUS)
    port = free_port_base(1)

    async def run() -> str:
        runner = await start_metrics_server(port, "127.0.0.1", metrics)
        try:
            loop = asyncio.get_running_loop()

            def fetch() -> str:
                url = f"http://127.0.0.1:{port}/metrics"
                with urllib.request.urlopen(url, timeout=10) as response:
                    assert response.headers["Content-Type"].startswith("text/plain")
                    return str(response.read().decode())

            return await loop.run_in_executor(None, fetch)
        finally:
            await runner.cleanup()

    text = asyncio.run(run())
    assert 'lockcell_operator_reconciles_total{cell="c",cell_namespace="ns",result="done"} 1.0' \
        in text
    assert "_created" not in text


@pytest.mark.parametrize(("raw", "port"), [(None, 8081), ("", 8081), ("9100", 9100),
                                           ("0", 0), ("nonsense", 8081), ("70000", 0)])
def test_metrics_port_from_the_environment(monkeypatch: pytest.MonkeyPatch, raw: str | None,
                                           port: int) -> None:
    # Imported here, not at the top: importing the handlers registers kopf's timer with the
    # interval in the environment, which tests/operator's conftest sets at its collection.
    from lockcell_operator import handlers

    if raw is None:
        monkeypatch.delenv(ENV_METRICS_PORT, raising=False)
    else:
        monkeypatch.setenv(ENV_METRICS_PORT, raw)
    assert handlers.metrics_port() == port
