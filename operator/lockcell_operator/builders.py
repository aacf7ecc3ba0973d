"""Pure builders: a Cell's spec → the Kubernetes manifests the operator owns."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from .model import pod_name, quorum
from .spec import API_VERSION, KIND, CellRef, CellSpec

Manifest = dict[str, Any]

CLIENT_PORT = 7001
PEER_PORT = 7101
DATA_MOUNT = "/var/lib/lockcell"
# A subdirectory, so that a filesystem's own entries (lost+found) never make it look used.
DATA_DIR = f"{DATA_MOUNT}/data"
DATA_VOLUME = "data"
CONTAINER_NAME = "lockcell"
RUN_AS_USER = 10001
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
DEFAULT_RESOURCES: Mapping[str, Any] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "512Mi"},
}

ADMIN_TOKEN_KEY = "token"
PEER_SECRET_KEY = "secret"

HASH_ANNOTATION = "lockcell.io/spec-hash"
CONFIG_HASH_ANNOTATION = "lockcell.io/config-hash"
SERVICE_ROLE_LABEL = "lockcell.io/service"
MANAGED_BY = "lockcell-operator"

# --- The environment `lockcell serve` reads (the server must accept every one of these). -----
ENV_CELL_NAME = "LOCKCELL_CELL_NAME"  # the cell's name: paths are /ls/<cell>/...
ENV_NAME_HINT = "LOCKCELL_NAME_HINT"  # pod name; the server mints its member id from it
ENV_DATA_DIR = "LOCKCELL_DATA_DIR"  # where the member's id, hard state, log, snapshots live
ENV_CLIENT_LISTEN = "LOCKCELL_CLIENT_LISTEN"  # host:port of the client HTTP API
ENV_PEER_LISTEN = "LOCKCELL_PEER_LISTEN"  # host:port of the peer transport
ENV_ADVERTISE_CLIENT_URL = "LOCKCELL_ADVERTISE_CLIENT_URL"  # members[].url in /v1/cluster
ENV_ADVERTISE_PEER_URL = "LOCKCELL_ADVERTISE_PEER_URL"  # members[].peer_url in /v1/cluster
ENV_BOOTSTRAP = "LOCKCELL_BOOTSTRAP"  # "true": with an empty data dir, start a new 1-voter cell
ENV_ADMIN_TOKEN = "LOCKCELL_ADMIN_TOKEN"  # bearer token for the membership routes
ENV_PEER_SECRET = "LOCKCELL_PEER_SECRET"  # shared secret peers authenticate each other with
ENV_LEASE_MS = "LOCKCELL_LEASE_MS"  # default session lease
ENV_GRACE_MS = "LOCKCELL_GRACE_MS"  # grace period announced to clients (grace_ms)
ENV_MAX_LOCK_DELAY_MS = "LOCKCELL_MAX_LOCK_DELAY_MS"  # clamp for a handle's lock_delay_ms

SERVER_ENV_VARS: tuple[str, ...] = (
    ENV_CELL_NAME,
    ENV_NAME_HINT,
    ENV_DATA_DIR,
    ENV_CLIENT_LISTEN,
    ENV_PEER_LISTEN,
    ENV_ADVERTISE_CLIENT_URL,
    ENV_ADVERTISE_PEER_URL,
    ENV_BOOTSTRAP,
    ENV_ADMIN_TOKEN,
    ENV_PEER_SECRET,
    ENV_LEASE_MS,
    ENV_GRACE_MS,
    ENV_MAX_LOCK_DELAY_MS,
)
SERVER_COMMAND: tuple[str, ...] = ("lockcell", "serve")


# --- Names -----------------------------------------------------------------------------------
def statefulset_name(cell: str) -> str:
    return cell


def peer_service_name(cell: str) -> str:
    return f"{cell}-peers"


def client_service_name(cell: str) -> str:
    return cell


def config_map_name(cell: str) -> str:
    return f"{cell}-config"


def admin_secret_name(cell: str) -> str:
    return f"{cell}-admin"


def peer_secret_name(cell: str) -> str:
    return f"{cell}-peer"


def pdb_name(cell: str) -> str:
    return cell


def service_monitor_name(cell: str) -> str:
    return cell


def pvc_name(pod: str) -> str:
    """The PVC the StatefulSet's volumeClaimTemplate gives `pod`."""
    return f"{DATA_VOLUME}-{pod}"


def pod_of_pvc(pvc: str) -> str | None:
    prefix = f"{DATA_VOLUME}-"
    return pvc[len(prefix):] if pvc.startswith(prefix) else None


# --- Labels, ownership -----------------------------------------------------------------------
def selector_labels(cell: str) -> dict[str, str]:
    """Labels that select exactly this cell's pods (immutable StatefulSet selector)."""
    return {"app.kubernetes.io/name": "lockcell", "app.kubernetes.io/instance": cell}


def selector_string(cell: str) -> str:
    """The selector in the string form the scale subresource wants (status.selector)."""
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(cell).items()))


def common_labels(cell: str) -> dict[str, str]:
    return {
        **selector_labels(cell),
        "app.kubernetes.io/component": "cell",
        "app.kubernetes.io/part-of": "lockcell",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }


def owner_reference(ref: CellRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(ref: CellRef, name: str, **extra_labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ref.namespace,
        "labels": {**common_labels(ref.name), **extra_labels},
        "ownerReferences": [owner_reference(ref)],
    }


def content_hash(value: Any) -> str:
    """A short stable digest of a JSON value (detects drift without comparing defaulted fields)."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def with_hash(manifest: Manifest, hashed: Any) -> Manifest:
    """Stamp `manifest` with the digest of `hashed` (the part the operator keeps in shape)."""
    meta = manifest.setdefault("metadata", {})
    meta.setdefault("annotations", {})[HASH_ANNOTATION] = content_hash(hashed)
    return manifest


# --- URLs ------------------------------------------------------------------------------------
def pod_dns_name(ref: CellRef, pod: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> str:
    """A pod's stable DNS name in the headless peer Service."""
    return f"{pod}.{peer_service_name(ref.name)}.{ref.namespace}.svc.{cluster_domain}"


def advertised_urls(
    ref: CellRef, pod: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
) -> tuple[str, str]:
    """(client URL, peer URL) the pod advertises; identical to what its env makes it say."""
    host = pod_dns_name(ref, pod, cluster_domain)
    return f"http://{host}:{CLIENT_PORT}", f"http://{host}:{PEER_PORT}"


def client_endpoint(ref: CellRef, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN) -> str:
    """The client Service's URL (what LOCKCELL_ENDPOINTS should hold for a client)."""
    name = client_service_name(ref.name)
    return f"http://{name}.{ref.namespace}.svc.{cluster_domain}:{CLIENT_PORT}"


# --- ConfigMap, Secrets ----------------------------------------------------------------------
def config_data(ref: CellRef, spec: CellSpec) -> dict[str, str]:
    """The cell-wide settings, as the LOCKCELL_* variables the pods read through envFrom."""
    return {
        ENV_CELL_NAME: ref.name,
        ENV_DATA_DIR: DATA_DIR,
        ENV_CLIENT_LISTEN: f"0.0.0.0:{CLIENT_PORT}",
        ENV_PEER_LISTEN: f"0.0.0.0:{PEER_PORT}",
        ENV_LEASE_MS: str(spec.lease_seconds * 1000),
        ENV_GRACE_MS: str(spec.grace_seconds * 1000),
        ENV_MAX_LOCK_DELAY_MS: str(spec.max_lock_delay_seconds * 1000),
    }


def build_config_map(ref: CellRef, spec: CellSpec) -> Manifest:
    data = config_data(ref, spec)
    manifest: Manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(ref, config_map_name(ref.name)),
        "data": data,
    }
    return with_hash(manifest, data)


SecretKind = Literal["admin", "peer"]


def build_secret(ref: CellRef, kind: SecretKind, token: str) -> Manifest:
    """The admin or peer Secret; `token` is generated once by the caller and never replaced."""
    if not token:
        raise ValueError("an empty token would leave the cell open")
    name, key = (
        (admin_secret_name(ref.name), ADMIN_TOKEN_KEY)
        if kind == "admin"
        else (peer_secret_name(ref.name), PEER_SECRET_KEY)
    )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(ref, name),
        "type": "Opaque",
        "data": {key: base64.b64encode(token.encode()).decode()},
    }


def secret_value(secret: Mapping[str, Any], key: str) -> str | None:
    """Read one key of a Secret object (data is base64; stringData is accepted as well)."""
    data = secret.get("data") or {}
    if key in data and isinstance(data[key], str):
        try:
            return base64.b64decode(data[key], validate=True).decode()
        except ValueError:
            return None
    string_data = secret.get("stringData") or {}
    value = string_data.get(key)
    return value if isinstance(value, str) else None


# --- Services, PDB, ServiceMonitor -----------------------------------------------------------
def build_peer_service(ref: CellRef) -> Manifest:
    """Headless Service: stable DNS names for the pods, also before they are ready."""
    spec = {
        "clusterIP": "None",
        "publishNotReadyAddresses": True,
        "selector": selector_labels(ref.name),
        "ports": [
            {"name": "client", "port": CLIENT_PORT, "targetPort": "client", "protocol": "TCP"},
            {"name": "peer", "port": PEER_PORT, "targetPort": "peer", "protocol": "TCP"},
        ],
    }
    manifest: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ref, peer_service_name(ref.name), **{SERVICE_ROLE_LABEL: "peers"}),
        "spec": spec,
    }
    return with_hash(manifest, spec)


def build_client_service(ref: CellRef) -> Manifest:
    """The Service clients use (LOCKCELL_ENDPOINTS); only ready members receive traffic."""
    spec = {
        "type": "ClusterIP",
        "selector": selector_labels(ref.name),
        "ports": [
            {"name": "client", "port": CLIENT_PORT, "targetPort": "client", "protocol": "TCP"},
        ],
    }
    manifest: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ref, client_service_name(ref.name), **{SERVICE_ROLE_LABEL: "client"}),
        "spec": spec,
    }
    return with_hash(manifest, spec)


def pdb_max_unavailable(voters: int) -> int:
    """How many pods may be evicted without losing quorum: n - quorum(n) = (n-1)//2.

    A 1- or 2-voter cell cannot lose any member and keep quorum, so it gets 0: node drains
    wait until someone scales the cell or moves the pod by hand; that is the price of never
    losing quorum on purpose.
    """
    if voters < 1:
        return 0
    return voters - quorum(voters)


def build_pdb(ref: CellRef, voters: int) -> Manifest:
    """PodDisruptionBudget sized by the current number of voters (not the desired one)."""
    spec = {
        "maxUnavailable": pdb_max_unavailable(voters),
        "selector": {"matchLabels": selector_labels(ref.name)},
    }
    manifest: Manifest = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(ref, pdb_name(ref.name)),
        "spec": spec,
    }
    return with_hash(manifest, spec)


# Every series of a cell carries `cell` (the Cell's name; the dashboards' cell variable) and
# `instance` = the pod's name, besides the `namespace` and `pod` the Prometheus operator adds.
METRICS_RELABELINGS: list[dict[str, Any]] = [
    {"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
     "targetLabel": "cell"},
    {"sourceLabels": ["__meta_kubernetes_pod_name"], "targetLabel": "instance"},
]


def build_service_monitor(ref: CellRef, spec: CellSpec) -> Manifest | None:
    """A Prometheus-operator ServiceMonitor for the client Service, when enabled."""
    sm = spec.service_monitor
    if not sm.enabled:
        return None
    body = {
        "selector": {
            "matchLabels": {**selector_labels(ref.name), SERVICE_ROLE_LABEL: "client"},
        },
        "endpoints": [{"port": "client", "path": "/metrics", "interval": sm.interval,
                       "relabelings": METRICS_RELABELINGS}],
    }
    meta = _metadata(ref, service_monitor_name(ref.name))
    meta["labels"] = {**dict(sm.labels), **meta["labels"]}
    manifest: Manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": body,
    }
    return with_hash(manifest, {"spec": body, "labels": meta["labels"]})


# --- StatefulSet -----------------------------------------------------------------------------
def default_affinity(cell: str) -> dict[str, Any]:
    """Prefer one member per node: a node's loss then costs the cell one voter at most."""
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": selector_labels(cell)},
                    },
                }
            ]
        }
    }


def _server_env(ref: CellRef, bootstrap: bool, cluster_domain: str) -> list[dict[str, Any]]:
    host = f"$({ENV_NAME_HINT}).{peer_service_name(ref.name)}.{ref.namespace}.svc.{cluster_domain}"
    return [
        {"name": ENV_NAME_HINT, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": ENV_ADVERTISE_CLIENT_URL, "value": f"http://{host}:{CLIENT_PORT}"},
        {"name": ENV_ADVERTISE_PEER_URL, "value": f"http://{host}:{PEER_PORT}"},
        {"name": ENV_BOOTSTRAP, "value": "true" if bootstrap else "false"},
        {
            "name": ENV_ADMIN_TOKEN,
            "valueFrom": {
                "secretKeyRef": {"name": admin_secret_name(ref.name), "key": ADMIN_TOKEN_KEY}
            },
        },
        {
            "name": ENV_PEER_SECRET,
            "valueFrom": {
                "secretKeyRef": {"name": peer_secret_name(ref.name), "key": PEER_SECRET_KEY}
            },
        },
    ]


def build_pod_template(
    ref: CellRef,
    spec: CellSpec,
    *,
    image: str,
    bootstrap: bool,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> dict[str, Any]:
    """The StatefulSet's pod template (one template: per-pod values come from the pod name)."""
    probe_port = "client"
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": list(SERVER_COMMAND),
        "ports": [
            {"name": "client", "containerPort": CLIENT_PORT, "protocol": "TCP"},
            {"name": "peer", "containerPort": PEER_PORT, "protocol": "TCP"},
        ],
        "envFrom": [{"configMapRef": {"name": config_map_name(ref.name)}}],
        "env": _server_env(ref, bootstrap, cluster_domain),
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": probe_port},
            "periodSeconds": 2,
            "failureThreshold": 90,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": probe_port},
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 6,
        },
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": probe_port},
            "periodSeconds": 5,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "resources": dict(spec.resources) if spec.resources else dict(DEFAULT_RESOURCES),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": DATA_VOLUME, "mountPath": DATA_MOUNT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod_spec: dict[str, Any] = {
        # The server needs no Kubernetes API access.
        "automountServiceAccountToken": False,
        # Service links would inject *_PORT variables, e.g. LOCKCELL_PORT for a Service named
        # "lockcell", into the LOCKCELL_* namespace the server reads.
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "affinity": dict(spec.affinity) if spec.affinity is not None
        else default_affinity(ref.name),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    return {
        "metadata": {
            "labels": common_labels(ref.name),
            "annotations": {
                CONFIG_HASH_ANNOTATION: content_hash(config_data(ref, spec)),
            },
        },
        "spec": pod_spec,
    }


def build_statefulset(
    ref: CellRef,
    spec: CellSpec,
    *,
    replicas: int,
    image: str,
    bootstrap: bool,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> Manifest:
    """The cell's StatefulSet.

    `replicas` is the planner's, never `spec.replicas` directly: membership moves one pod at a
    time. `bootstrap` is true only while a brand-new cell's pod 0 has not yet formed it.
    """
    template = build_pod_template(
        ref, spec, image=image, bootstrap=bootstrap, cluster_domain=cluster_domain
    )
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spec.storage.size}},
    }
    if spec.storage.storage_class_name:
        claim_spec["storageClassName"] = spec.storage.storage_class_name
    manifest: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _metadata(ref, statefulset_name(ref.name)),
        "spec": {
            "replicas": replicas,
            "serviceName": peer_service_name(ref.name),
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(ref.name)},
            "updateStrategy": {"type": "RollingUpdate"},
            # The operator applies spec.storage.reclaimPolicy itself, one member at a time.
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
            "template": template,
            "volumeClaimTemplates": [
                {
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": DATA_VOLUME, "labels": selector_labels(ref.name)},
                    "spec": claim_spec,
                }
            ],
        },
    }
    return with_hash(manifest, template)


def statefulset_template_patch(desired: Manifest) -> dict[str, Any]:
    """A JSON merge patch that brings an existing StatefulSet's mutable parts to `desired`.

    Leaves `replicas` (the planner's), and the immutable selector, serviceName,
    podManagementPolicy and volumeClaimTemplates alone. Lists are replaced whole; keys the
    desired pod spec no longer has are nulled so that a merge patch removes them.
    """
    template = json.loads(json.dumps(desired["spec"]["template"]))
    pod_spec = template["spec"]
    for optional in ("tolerations", "nodeSelector"):
        pod_spec.setdefault(optional, None)
    return {
        "metadata": {
            "labels": desired["metadata"]["labels"],
            "annotations": desired["metadata"]["annotations"],
        },
        "spec": {
            "updateStrategy": desired["spec"]["updateStrategy"],
            "persistentVolumeClaimRetentionPolicy": desired["spec"][
                "persistentVolumeClaimRetentionPolicy"
            ],
            "template": template,
        },
    }


def template_bootstrap_flag(statefulset: Mapping[str, Any]) -> bool:
    """Whether an existing StatefulSet's template still tells pod 0 to bootstrap."""
    try:
        containers = statefulset["spec"]["template"]["spec"]["containers"]
    except (KeyError, TypeError):
        return False
    for container in containers or []:
        if container.get("name") != CONTAINER_NAME:
            continue
        for env in container.get("env") or []:
            if env.get("name") == ENV_BOOTSTRAP:
                return bool(env.get("value") == "true")
    return False


def pod_names(cell: str, replicas: int) -> list[str]:
    return [pod_name(cell, i) for i in range(replicas)]
