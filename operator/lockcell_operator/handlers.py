"""kopf handlers: thin wiring of create/resume/update/timer/delete onto `reconcile`."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import kopf

from . import builders as b
from .cellapi import CellClient
from .kube import ClientKubeApi, KubeError
from .metrics import DEFAULT_METRICS_PORT, ENV_METRICS_PORT, METRICS, start_metrics_server
from .planner import Done, Step, Wait, describe, step_kind
from .reconcile import Context, cleanup, dns_resolver, reconcile_once, utc_now
from .spec import GROUP, PLURAL, VERSION, CellRef, SpecError, parse_spec

log = logging.getLogger(__name__)

# Seconds between reconcile passes of one Cell (each pass takes at most one step).
INTERVAL = float(os.environ.get("LOCKCELL_OPERATOR_INTERVAL", "5"))
FINALIZER = "lockcell.io/finalizer"
ENV_CELL_IMAGE = "LOCKCELL_OPERATOR_CELL_IMAGE"
ENV_CLUSTER_DOMAIN = "LOCKCELL_OPERATOR_CLUSTER_DOMAIN"

# Wait reasons worth a Warning event (the others are Normal).
WARNING_REASONS = frozenset({"NoLeader", "QuorumAtRisk", "NoTransferTarget", "UnexpectedState"})


def context_from_environment() -> Context:
    domain = os.environ.get(ENV_CLUSTER_DOMAIN) or b.DEFAULT_CLUSTER_DOMAIN
    return Context(
        kube=ClientKubeApi.from_environment(),
        cells=CellClient(),
        resolver=dns_resolver(domain),
        cluster_domain=domain,
        default_image=os.environ.get(ENV_CELL_IMAGE) or None,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="lockcell.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="lockcell.io", key="last-handled-configuration"
    )
    # Handler log lines stay logs; the operator posts its own Events (see _post_event).
    settings.posting.level = logging.WARNING
    if "ctx" not in memo:
        memo["ctx"] = context_from_environment()
    port = metrics_port()
    if port and "metrics_server" not in memo:
        try:
            memo["metrics_server"] = await start_metrics_server(port)
        except OSError as exc:  # metrics are worth a warning, not a dead operator
            log.warning("cannot serve metrics on port %d: %s", port, exc)


def metrics_port() -> int:
    """Port of the operator's /metrics (LOCKCELL_OPERATOR_METRICS_PORT; 0: off)."""
    raw = os.environ.get(ENV_METRICS_PORT, "").strip()
    if not raw:
        return DEFAULT_METRICS_PORT
    try:
        port = int(raw)
    except ValueError:
        log.warning("%s=%r is not a port; using %d", ENV_METRICS_PORT, raw,
                    DEFAULT_METRICS_PORT)
        return DEFAULT_METRICS_PORT
    return port if 0 < port < 65536 else 0


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    ctx = memo.get("ctx")
    if isinstance(ctx, Context):
        await ctx.cells.close()
    server = memo.get("metrics_server")
    if server is not None:
        await server.cleanup()
        memo["metrics_server"] = None


def _ctx(memo: kopf.Memo) -> Context:
    ctx = memo.get("ctx")
    if not isinstance(ctx, Context):
        raise kopf.PermanentError("the operator context is missing (startup did not run)")
    return ctx


def _lock(memo: kopf.Memo) -> asyncio.Lock:
    # The per-object memo is a shallow copy of the operator's: one lock per Cell, so the
    # timer and the change handlers never run two passes of the same Cell at once.
    lock = memo.get("lock")
    if not isinstance(lock, asyncio.Lock):
        lock = asyncio.Lock()
        memo["lock"] = lock
    return lock


def _ref(body: kopf.Body) -> CellRef:
    meta = body.get("metadata") or {}
    return CellRef(
        name=str(meta["name"]),
        namespace=str(meta["namespace"]),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
    )


def event_for(step: Step, previous_status: Mapping[str, Any] | None) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event to post for this step, None to stay quiet.

    Every action is announced; a Wait only when its reason differs from the last pass's
    (as recorded in the Progressing condition), so a long wait is said once, not every pass.
    """
    if isinstance(step, Done):
        prev = _progressing(previous_status)
        if prev is not None and prev.get("status") == "True":
            return "Normal", "Reconciled", describe(step)
        return None
    if isinstance(step, Wait):
        prev = _progressing(previous_status)
        if prev is not None and prev.get("reason") == step.reason:
            return None
        kind = "Warning" if step.reason in WARNING_REASONS else "Normal"
        return kind, step.reason, step.message
    return "Normal", step_kind(step), describe(step)


def _progressing(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    for cond in (status or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Progressing":
            return cond
    return None


async def _pass(
    body: kopf.Body, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo
) -> None:
    if (body.get("metadata") or {}).get("deletionTimestamp"):
        return
    ctx = _ctx(memo)
    ref = _ref(body)
    previous = dict(status) if status else {}
    started = time.monotonic()
    try:
        cell_spec = parse_spec(spec)
        async with _lock(memo):
            result = await reconcile_once(ctx, ref, cell_spec, previous)
    except SpecError as exc:
        METRICS.record_failure(ref.namespace, ref.name, "invalid_spec",
                               time.monotonic() - started)
        patch["status"] = {
            "observedGeneration": ref.generation,
            "phase": "Failed",
            "conditions": [
                {"type": "Progressing", "status": "False", "reason": "InvalidSpec",
                 "message": str(exc), "lastTransitionTime": utc_now(),
                 "observedGeneration": ref.generation},
            ],
        }
        prev = _progressing(previous)
        if prev is None or prev.get("reason") != "InvalidSpec":
            kopf.event(body, type="Warning", reason="InvalidSpec", message=str(exc))
        return
    except KubeError as exc:
        METRICS.record_failure(ref.namespace, ref.name, "kube_error", time.monotonic() - started)
        raise kopf.TemporaryError(f"Kubernetes API: {exc}", delay=INTERVAL) from exc
    METRICS.record_pass(ref.namespace, ref.name, result.step, result.status, result.step_error,
                        time.monotonic() - started, desired=cell_spec.replicas)
    patch["status"] = result.status
    if result.step_error is not None:
        kopf.event(body, type="Warning", reason="StepFailed", message=result.step_error)
        return
    event = event_for(result.step, previous)
    if event is not None:
        kind, reason, message = event
        kopf.event(body, type=kind, reason=reason, message=message)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
async def on_change(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    await _pass(body, spec, status, patch, memo)


@kopf.timer(GROUP, VERSION, PLURAL, interval=INTERVAL, initial_delay=INTERVAL)
async def on_timer(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    await _pass(body, spec, status, patch, memo)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def on_delete(body: kopf.Body, spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> None:
    ctx = _ctx(memo)
    ref = _ref(body)
    try:
        cell_spec = parse_spec(spec)
    except SpecError:
        cell_spec = parse_spec({})
    async with _lock(memo):
        try:
            deleted = await cleanup(ctx, ref, cell_spec)
        except KubeError as exc:
            raise kopf.TemporaryError(f"cleanup: {exc}", delay=INTERVAL) from exc
    METRICS.forget(ref.namespace, ref.name)
    log.info("Cell %s/%s deleted; removed %s", ref.namespace, ref.name, ", ".join(deleted))
