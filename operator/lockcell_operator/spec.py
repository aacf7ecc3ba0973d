"""The Cell resource's spec as frozen values, with the CRD's defaults applied again in code."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from .model import ReclaimPolicy

GROUP = "lockcell.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Cell"
PLURAL = "cells"

MIN_REPLICAS = 1
MAX_REPLICAS = 9

# Defaults; they match crds/cell.yaml (a test checks), and are applied here too because
# an API server without the CRD's structural defaults (or an older object) may omit them.
DEFAULT_REPLICAS = 3
DEFAULT_STORAGE_SIZE = "1Gi"
DEFAULT_RECLAIM_POLICY: ReclaimPolicy = "Retain"
DEFAULT_LEASE_SECONDS = 12
DEFAULT_GRACE_SECONDS = 45
DEFAULT_MAX_LOCK_DELAY_SECONDS = 60
DEFAULT_MONITOR_INTERVAL = "30s"


class SpecError(ValueError):
    """The Cell's spec cannot be turned into a cell (the CRD schema should have refused it)."""


@dataclass(frozen=True)
class StorageSpec:
    size: str = DEFAULT_STORAGE_SIZE
    storage_class_name: str | None = None
    reclaim_policy: ReclaimPolicy = DEFAULT_RECLAIM_POLICY


@dataclass(frozen=True)
class ServiceMonitorSpec:
    enabled: bool = False
    interval: str = DEFAULT_MONITOR_INTERVAL
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CellSpec:
    replicas: int = DEFAULT_REPLICAS
    image: str | None = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    storage: StorageSpec = field(default_factory=StorageSpec)
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    max_lock_delay_seconds: int = DEFAULT_MAX_LOCK_DELAY_SECONDS
    affinity: Mapping[str, Any] | None = None
    tolerations: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    service_monitor: ServiceMonitorSpec = field(default_factory=ServiceMonitorSpec)


@dataclass(frozen=True)
class CellRef:
    """Identity of one Cell object: what owned objects point back to."""

    name: str
    namespace: str
    uid: str = ""
    generation: int = 0


def _section(spec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"spec.{key} must be an object")
    return value


def _int(section: Mapping[str, Any], key: str, default: int, lo: int, hi: int, path: str) -> int:
    value = section.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}.{key} must be an integer")
    if not lo <= value <= hi:
        raise SpecError(f"{path}.{key} must be between {lo} and {hi}")
    return value


def parse_spec(spec: Mapping[str, Any]) -> CellSpec:
    """Turn `Cell.spec` into a CellSpec; raises SpecError on what the schema should refuse."""
    replicas = _int(spec, "replicas", DEFAULT_REPLICAS, MIN_REPLICAS, MAX_REPLICAS, "spec")
    image = spec.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise SpecError("spec.image must be a non-empty string")
    storage = _section(spec, "storage")
    reclaim = storage.get("reclaimPolicy", DEFAULT_RECLAIM_POLICY)
    if reclaim not in ("Retain", "Delete"):
        raise SpecError("spec.storage.reclaimPolicy must be Retain or Delete")
    size = storage.get("size", DEFAULT_STORAGE_SIZE)
    if not isinstance(size, str | int) or isinstance(size, bool):
        raise SpecError("spec.storage.size must be a quantity")
    sc = storage.get("storageClassName")
    if sc is not None and not isinstance(sc, str):
        raise SpecError("spec.storage.storageClassName must be a string")
    session = _section(spec, "session")
    locks = _section(spec, "locks")
    monitoring = _section(spec, "monitoring")
    sm = monitoring.get("serviceMonitor")
    sm = {} if sm is None else sm
    if not isinstance(sm, Mapping):
        raise SpecError("spec.monitoring.serviceMonitor must be an object")
    tolerations = spec.get("tolerations")
    tolerations = [] if tolerations is None else tolerations
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        raise SpecError("spec.tolerations must be a list of objects")
    affinity = spec.get("affinity")
    if affinity is not None and not isinstance(affinity, Mapping):
        raise SpecError("spec.affinity must be an object")
    resources = spec.get("resources")
    resources = {} if resources is None else resources
    if not isinstance(resources, Mapping):
        raise SpecError("spec.resources must be an object")
    node_selector = spec.get("nodeSelector")
    node_selector = {} if node_selector is None else node_selector
    if not isinstance(node_selector, Mapping):
        raise SpecError("spec.nodeSelector must be an object")
    return CellSpec(
        replicas=replicas,
        image=image,
        resources=dict(resources),
        storage=StorageSpec(
            size=str(size),
            storage_class_name=sc,
            reclaim_policy=cast(ReclaimPolicy, reclaim),
        ),
        lease_seconds=_int(session, "leaseSeconds", DEFAULT_LEASE_SECONDS, 1, 60, "spec.session"),
        grace_seconds=_int(session, "graceSeconds", DEFAULT_GRACE_SECONDS, 0, 600, "spec.session"),
        max_lock_delay_seconds=_int(
            locks, "maxLockDelaySeconds", DEFAULT_MAX_LOCK_DELAY_SECONDS, 0, 60, "spec.locks"
        ),
        affinity=dict(affinity) if affinity is not None else None,
        tolerations=tuple(dict(t) for t in tolerations),
        node_selector={str(k): str(v) for k, v in node_selector.items()},
        service_monitor=ServiceMonitorSpec(
            enabled=bool(sm.get("enabled", False)),
            interval=str(sm.get("interval", DEFAULT_MONITOR_INTERVAL)),
            labels={str(k): str(v) for k, v in (sm.get("labels") or {}).items()},
        ),
    )
