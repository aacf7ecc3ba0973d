"""Prometheus metrics of the operator (``lockcell_operator_*``), in a private registry.

The kopf handlers report every reconcile pass (:meth:`OperatorMetrics.record_pass`,
:meth:`OperatorMetrics.record_failure`); :func:`start_metrics_server` serves ``/metrics``
on the operator's event loop (started by the startup handler, port from
``LOCKCELL_OPERATOR_METRICS_PORT``). Labels: the Cell's namespace (``cell_namespace``, since
``namespace`` is the operator pod's own target label) and name, results, step kinds and wait
reasons - a handful of values each.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from .planner import Done, Step, Wait, step_kind

log = logging.getLogger(__name__)

ENV_METRICS_PORT = "LOCKCELL_OPERATOR_METRICS_PORT"
DEFAULT_METRICS_PORT = 8081

# Results of a pass: `done` (nothing to change), `acted` (one step carried out), `waiting`
# (a Wait step), `step_failed` (the cell refused or did not answer the step), `invalid_spec`,
# `kube_error` (the Kubernetes API failed; kopf retries).
RESULTS = ("done", "acted", "waiting", "step_failed", "invalid_spec", "kube_error")
PHASES = ("Creating", "Running", "Scaling", "Degraded", "Failed")

_WAIT_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)


@dataclass
class _Waiting:
    reason: str
    since: float


class OperatorMetrics:
    """The operator's metrics; ``clock`` is monotonic seconds (tests inject one)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        self.clock = clock
        r = self.registry = CollectorRegistry()
        cell = ["cell_namespace", "cell"]
        self.reconciles = Counter("lockcell_operator_reconciles_total",
                                  "Reconcile passes by result", [*cell, "result"], registry=r)
        self.reconcile_seconds = Histogram("lockcell_operator_reconcile_seconds",
                                           "Duration of one reconcile pass",
                                           buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5,
                                                    5, 10, 30), registry=r)
        self.steps = Counter("lockcell_operator_membership_steps_total",
                             "Steps carried out (AddLearner, Promote, RemoveMember, "
                             "TransferLeader and the StatefulSet and volume steps around "
                             "them) by kind and result (ok, failed)",
                             [*cell, "kind", "result"], registry=r)
        self.waits = Counter("lockcell_operator_waits_total",
                             "Reconcile passes that waited, by reason", [*cell, "reason"],
                             registry=r)
        self.wait_duration = Histogram("lockcell_operator_wait_duration_seconds",
                                       "How long a finished wait lasted, by reason "
                                       "(LearnerCatchingUp: time spent waiting for a learner "
                                       "to catch up)", ["reason"], buckets=_WAIT_BUCKETS,
                                       registry=r)
        self.waiting = Gauge("lockcell_operator_waiting_seconds",
                             "How long the cell has been waiting so far, by reason (absent "
                             "while not waiting)", [*cell, "reason"], registry=r)
        self.phase = Gauge("lockcell_operator_cell_phase", "1 for the cell's current phase",
                           [*cell, "phase"], registry=r)
        self.replicas = Gauge("lockcell_operator_cell_replicas",
                              "Replicas of a cell: desired (spec), ready, voters, learners",
                              [*cell, "kind"], registry=r)
        self.cells = Gauge("lockcell_operator_cells", "Cells this operator reconciles",
                           registry=r)
        self._waiting: dict[tuple[str, str], _Waiting] = {}
        self._known: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ recording

    def record_pass(self, namespace: str, name: str, step: Step, status: Mapping[str, Any],
                    step_error: str | None = None, seconds: float | None = None,
                    desired: int | None = None) -> str:
        """Count one finished pass (its step, the status it wrote); returns its result."""
        key = (namespace, name)
        self._touch(key)
        if step_error is not None:
            result = "step_failed"
        elif isinstance(step, Wait):
            result = "waiting"
        elif isinstance(step, Done):
            result = "done"
        else:
            result = "acted"
        self.reconciles.labels(namespace, name, result).inc()
        if seconds is not None:
            self.reconcile_seconds.observe(seconds)
        if not isinstance(step, (Wait, Done)):
            self.steps.labels(namespace, name, step_kind(step),
                              "failed" if step_error is not None else "ok").inc()
        self._track_wait(key, step.reason if isinstance(step, Wait) else None)
        self._set_status(key, status, desired)
        return result

    def record_failure(self, namespace: str, name: str, result: str,
                       seconds: float | None = None) -> None:
        """Count a pass that ended before a step (``invalid_spec``, ``kube_error``)."""
        key = (namespace, name)
        self._touch(key)
        self.reconciles.labels(namespace, name, result).inc()
        if seconds is not None:
            self.reconcile_seconds.observe(seconds)
        if result == "invalid_spec":
            self._track_wait(key, None)
            self._set_phase(key, "Failed")

    def forget(self, namespace: str, name: str) -> None:
        """The Cell is gone: drop its series (a finished wait still counts as one)."""
        key = (namespace, name)
        self._track_wait(key, None)
        for metric in (self.reconciles, self.steps, self.waits, self.waiting, self.phase,
                       self.replicas):
            _remove_cell(metric, key)
        self._known.discard(key)
        self.cells.set(len(self._known))

    def refresh(self) -> None:
        """Bring the running-wait gauges up to now (called on scrape)."""
        now = self.clock()
        for (namespace, name), waiting in self._waiting.items():
            self.waiting.labels(namespace, name, waiting.reason).set(now - waiting.since)

    def render(self) -> tuple[bytes, str]:
        """The exposition text."""
        self.refresh()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # ------------------------------------------------------------------ internals

    def _touch(self, key: tuple[str, str]) -> None:
        if key not in self._known:
            self._known.add(key)
            self.cells.set(len(self._known))

    def _track_wait(self, key: tuple[str, str], reason: str | None) -> None:
        now = self.clock()
        current = self._waiting.get(key)
        if current is not None and current.reason != reason:
            self.wait_duration.labels(current.reason).observe(now - current.since)
            _remove_labels(self.waiting, (*key, current.reason))
            del self._waiting[key]
            current = None
        if reason is None:
            return
        self.waits.labels(*key, reason).inc()
        if current is None:
            current = self._waiting[key] = _Waiting(reason, now)
        self.waiting.labels(*key, reason).set(now - current.since)

    def _set_phase(self, key: tuple[str, str], phase: str) -> None:
        for known in PHASES:
            self.phase.labels(*key, known).set(1 if known == phase else 0)
        if phase not in PHASES:
            self.phase.labels(*key, phase).set(1)

    def _set_status(self, key: tuple[str, str], status: Mapping[str, Any],
                    desired: int | None) -> None:
        phase = status.get("phase")
        if isinstance(phase, str):
            self._set_phase(key, phase)
        members = [m for m in status.get("members") or [] if isinstance(m, Mapping)]
        values = {
            "ready": status.get("readyReplicas"),
            "desired": desired,
            "voters": sum(1 for m in members if m.get("role") == "voter"),
            "learners": sum(1 for m in members if m.get("role") == "learner"),
        }
        for kind, value in values.items():
            if isinstance(value, int):
                self.replicas.labels(*key, kind).set(value)


def _remove_labels(metric: Gauge | Counter, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


def _remove_cell(metric: Gauge | Counter, key: tuple[str, str]) -> None:
    # prometheus_client has no "remove by prefix": walk the children it has.
    for labels in list(metric._metrics):
        if tuple(labels[:2]) == key:
            _remove_labels(metric, tuple(labels))


METRICS = OperatorMetrics()
"""The operator process's metrics (what the handlers record and the server serves)."""


async def start_metrics_server(port: int, host: str = "0.0.0.0",
                               metrics: OperatorMetrics = METRICS) -> web.AppRunner:
    """Serve ``GET /metrics`` on the running loop; the caller cleans the runner up."""

    async def handle(_: web.Request) -> web.Response:
        body, content_type = metrics.render()
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("operator metrics on http://%s:%d/metrics", host, port)
    return runner
