"""Builders: the manifests a Cell turns into, and the spec parsing in front of them."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lockcell_operator import builders as b
from lockcell_operator.model import quorum
from lockcell_operator.spec import CellRef, CellSpec, SpecError, parse_spec

REF = CellRef(name="demo", namespace="prod", uid="1234-5678", generation=3)
IMAGE = "registry.example/lockcell:1.2.3"


def sts(spec: CellSpec | None = None, *, replicas: int = 3, bootstrap: bool = False,
        domain: str = b.DEFAULT_CLUSTER_DOMAIN) -> dict[str, Any]:
    return b.build_statefulset(REF, spec or parse_spec({}), replicas=replicas, image=IMAGE,
                               bootstrap=bootstrap, cluster_domain=domain)


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def env(manifest: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container(manifest)["env"]}


def test_statefulset_shape() -> None:
    m = sts(replicas=4)
    spec = m["spec"]
    assert m["apiVersion"] == "apps/v1" and m["kind"] == "StatefulSet"
    assert m["metadata"]["name"] == "demo" and m["metadata"]["namespace"] == "prod"
    assert spec["replicas"] == 4
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["serviceName"] == "demo-peers"
    assert spec["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "lockcell", "app.kubernetes.io/instance": "demo"}
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain", "whenScaled": "Retain"}
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"]
    owner = m["metadata"]["ownerReferences"][0]
    assert owner == {"apiVersion": "lockcell.io/v1alpha1", "kind": "Cell", "name": "demo",
                     "uid": "1234-5678", "controller": True, "blockOwnerDeletion": True}


def test_container_runs_lockcell_serve_with_probes_and_volume() -> None:
    c = container(sts())
    assert c["command"] == ["lockcell", "serve"]
    assert c["image"] == IMAGE
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"client": 7001, "peer": 7101}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "client"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "client"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {v["name"]: v["mountPath"] for v in c["volumeMounts"]}
    assert mounts["data"] == "/var/lib/lockcell"
    assert c["resources"] == b.DEFAULT_RESOURCES
    assert c["envFrom"] == [{"configMapRef": {"name": "demo-config"}}]


def test_security_context_is_non_root_and_locked_down() -> None:
    pod = sts()["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["fsGroup"] == 10001
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    sc = container(sts())["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_every_server_env_var_is_provided_once() -> None:
    m = sts()
    explicit = set(env(m))
    from_config = set(b.config_data(REF, parse_spec({})))
    assert explicit.isdisjoint(from_config)
    assert explicit | from_config == set(b.SERVER_ENV_VARS)
    assert len(b.SERVER_ENV_VARS) == len(set(b.SERVER_ENV_VARS))
    assert all(v.startswith("LOCKCELL_") for v in b.SERVER_ENV_VARS)


def test_env_values() -> None:
    e = env(sts())
    assert e["LOCKCELL_NAME_HINT"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert e["LOCKCELL_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "demo-admin", "key": "token"}
    assert e["LOCKCELL_PEER_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "demo-peer", "key": "secret"}
    assert e["LOCKCELL_BOOTSTRAP"]["value"] == "false"
    assert env(sts(bootstrap=True))["LOCKCELL_BOOTSTRAP"]["value"] == "true"
    data = b.config_data(REF, parse_spec({"session": {"leaseSeconds": 20, "graceSeconds": 30},
                                          "locks": {"maxLockDelaySeconds": 5}}))
    assert data == {
        "LOCKCELL_CELL_NAME": "demo",
        "LOCKCELL_DATA_DIR": "/var/lib/lockcell/data",
        "LOCKCELL_CLIENT_LISTEN": "0.0.0.0:7001",
        "LOCKCELL_PEER_LISTEN": "0.0.0.0:7101",
        "LOCKCELL_LEASE_MS": "20000",
        "LOCKCELL_GRACE_MS": "30000",
        "LOCKCELL_MAX_LOCK_DELAY_MS": "5000",
    }


@pytest.mark.parametrize("domain", ["cluster.local", "corp.internal"])
def test_advertised_urls_match_what_the_env_expands_to(domain: str) -> None:
    e = env(sts(domain=domain))
    for pod in ("demo-0", "demo-7"):
        expanded = tuple(
            e[k]["value"].replace("$(LOCKCELL_NAME_HINT)", pod)
            for k in ("LOCKCELL_ADVERTISE_CLIENT_URL", "LOCKCELL_ADVERTISE_PEER_URL")
        )
        assert expanded == b.advertised_urls(REF, pod, domain)
    assert b.advertised_urls(REF, "demo-1", domain)[1] == (
        f"http://demo-1.demo-peers.prod.svc.{domain}:7101")


def test_bootstrap_flag_is_read_back() -> None:
    assert b.template_bootstrap_flag(sts(bootstrap=True)) is True
    assert b.template_bootstrap_flag(sts(bootstrap=False)) is False
    assert b.template_bootstrap_flag({}) is False


def test_default_anti_affinity_and_overrides() -> None:
    pod = sts()["spec"]["template"]["spec"]
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == b.selector_labels("demo")
    assert "tolerations" not in pod and "nodeSelector" not in pod
    custom = parse_spec({
        "affinity": {"nodeAffinity": {"x": 1}},
        "tolerations": [{"key": "k", "operator": "Exists"}],
        "nodeSelector": {"disk": "ssd"},
        "resources": {"requests": {"cpu": "1"}},
        "storage": {"size": "5Gi", "storageClassName": "fast"},
    })
    m = sts(custom)
    pod = m["spec"]["template"]["spec"]
    assert pod["affinity"] == {"nodeAffinity": {"x": 1}}
    assert pod["tolerations"] == [{"key": "k", "operator": "Exists"}]
    assert pod["nodeSelector"] == {"disk": "ssd"}
    assert container(m)["resources"] == {"requests": {"cpu": "1"}}
    claim = m["spec"]["volumeClaimTemplates"][0]["spec"]
    assert claim["storageClassName"] == "fast"
    assert claim["resources"]["requests"]["storage"] == "5Gi"


def test_hash_tracks_the_template_not_the_replicas() -> None:
    h = b.HASH_ANNOTATION
    base = sts(replicas=3)["metadata"]["annotations"][h]
    assert sts(replicas=5)["metadata"]["annotations"][h] == base
    assert sts(bootstrap=True)["metadata"]["annotations"][h] != base
    other = parse_spec({"session": {"leaseSeconds": 30}})
    changed = sts(other)
    assert changed["metadata"]["annotations"][h] != base
    # A config change also changes the pod template (so pods restart with the new env).
    assert (changed["spec"]["template"]["metadata"]["annotations"][b.CONFIG_HASH_ANNOTATION]
            != sts()["spec"]["template"]["metadata"]["annotations"][b.CONFIG_HASH_ANNOTATION])


def test_template_patch_leaves_immutable_fields_and_replicas_alone() -> None:
    patch = b.statefulset_template_patch(sts())
    assert set(patch["spec"]) == {"template", "updateStrategy",
                                  "persistentVolumeClaimRetentionPolicy"}
    pod = patch["spec"]["template"]["spec"]
    assert pod["tolerations"] is None and pod["nodeSelector"] is None
    assert patch["metadata"]["annotations"][b.HASH_ANNOTATION]


def test_services() -> None:
    peers = b.build_peer_service(REF)
    assert peers["metadata"]["name"] == "demo-peers"
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in peers["spec"]["ports"]} == {"client": 7001,
                                                                       "peer": 7101}
    client = b.build_client_service(REF)
    assert client["metadata"]["name"] == "demo"
    assert "publishNotReadyAddresses" not in client["spec"]
    assert [p["port"] for p in client["spec"]["ports"]] == [7001]
    assert client["spec"]["selector"] == peers["spec"]["selector"] == b.selector_labels("demo")
    assert b.client_endpoint(REF) == "http://demo.prod.svc.cluster.local:7001"


@pytest.mark.parametrize(("voters", "allowed"),
                         [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 2), (6, 2), (7, 3), (9, 4)])
def test_pdb_allows_exactly_what_quorum_can_lose(voters: int, allowed: int) -> None:
    pdb = b.build_pdb(REF, voters)
    assert pdb["spec"]["maxUnavailable"] == allowed
    assert pdb["spec"]["selector"]["matchLabels"] == b.selector_labels("demo")


@given(st.integers(1, 9))
def test_pdb_never_allows_losing_quorum(n: int) -> None:
    allowed = b.pdb_max_unavailable(n)
    assert n - allowed >= quorum(n)
    assert n - allowed - 1 < quorum(n)  # and not stricter than needed


def test_secrets_and_config_map() -> None:
    admin = b.build_secret(REF, "admin", "s3cret")
    assert admin["metadata"]["name"] == "demo-admin"
    assert base64.b64decode(admin["data"]["token"]) == b"s3cret"
    assert b.secret_value(admin, "token") == "s3cret"
    assert b.secret_value({"stringData": {"token": "x"}}, "token") == "x"
    assert b.secret_value({"data": {"token": "!!"}}, "token") is None
    peer = b.build_secret(REF, "peer", "p")
    assert peer["metadata"]["name"] == "demo-peer" and "secret" in peer["data"]
    with pytest.raises(ValueError):
        b.build_secret(REF, "admin", "")
    cm = b.build_config_map(REF, parse_spec({}))
    assert cm["metadata"]["name"] == "demo-config"
    assert cm["data"]["LOCKCELL_LEASE_MS"] == "12000"


def test_service_monitor_optional() -> None:
    assert b.build_service_monitor(REF, parse_spec({})) is None
    spec = parse_spec({"monitoring": {"serviceMonitor": {
        "enabled": True, "interval": "15s", "labels": {"release": "prom"}}}})
    sm = b.build_service_monitor(REF, spec)
    assert sm is not None
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"] == [{"port": "client", "path": "/metrics", "interval": "15s",
                                        "relabelings": b.METRICS_RELABELINGS}]
    targets = {r["targetLabel"] for r in b.METRICS_RELABELINGS}
    assert targets == {"cell", "instance"}  # the dashboards' variables and legends
    assert sm["spec"]["selector"]["matchLabels"][b.SERVICE_ROLE_LABEL] == "client"
    assert b.build_client_service(REF)["metadata"]["labels"][b.SERVICE_ROLE_LABEL] == "client"


def test_names() -> None:
    assert b.pvc_name("demo-2") == "data-demo-2"
    assert b.pod_of_pvc("data-demo-2") == "demo-2"
    assert b.pod_of_pvc("other") is None
    assert b.selector_string("demo") == (
        "app.kubernetes.io/instance=demo,app.kubernetes.io/name=lockcell")
    assert b.pod_names("demo", 3) == ["demo-0", "demo-1", "demo-2"]


# --- spec parsing ----------------------------------------------------------------------------
def test_parse_spec_defaults() -> None:
    spec = parse_spec({})
    assert spec == CellSpec()
    assert spec.replicas == 3 and spec.storage.reclaim_policy == "Retain"
    assert spec.lease_seconds == 12 and spec.grace_seconds == 45
    assert spec.max_lock_delay_seconds == 60 and not spec.service_monitor.enabled


@pytest.mark.parametrize("bad", [
    {"replicas": 0}, {"replicas": 10}, {"replicas": "3"}, {"replicas": True},
    {"image": ""}, {"storage": {"reclaimPolicy": "Recycle"}}, {"storage": "1Gi"},
    {"session": {"leaseSeconds": 0}}, {"session": {"graceSeconds": 601}},
    {"locks": {"maxLockDelaySeconds": 61}}, {"tolerations": "x"}, {"affinity": []},
    {"nodeSelector": []}, {"resources": []}, {"monitoring": {"serviceMonitor": 1}},
])
def test_parse_spec_refuses(bad: dict[str, Any]) -> None:
    with pytest.raises(SpecError):
        parse_spec(bad)
