"""Manifests: CRD, builder output, chart and examples against Kubernetes 1.35 schemas."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from lockcell_operator import builders as b
from lockcell_operator import spec as cellspec
from lockcell_operator.spec import CellRef, parse_spec

K8S = "1.35"
ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lockcell"
REF = CellRef(name="demo", namespace="default", uid="0b7c2f6e-1b0a-4c9e-9d2a-5f0e8e1f7a10")


def validate_k8s(manifest: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(manifest, K8S, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise AssertionError(
            f"{manifest.get('kind')}/{manifest['metadata'].get('name')}: {exc.caught}"
        ) from exc


def openapi_to_jsonschema(node: Any) -> Any:
    """The CRD's structural schema as JSON Schema, strict like `kubectl --validate=strict`:
    unknown fields are errors unless x-kubernetes-preserve-unknown-fields says otherwise."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "default":
            continue
        if key == "properties":
            out[key] = {k: openapi_to_jsonschema(v) for k, v in value.items()}
        else:
            out[key] = openapi_to_jsonschema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
    if node.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
    if (
        node.get("type") == "object"
        and "properties" in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def cell_validator(crd: dict[str, Any]) -> jsonschema.Draft7Validator:
    (version,) = crd["spec"]["versions"]
    schema = openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def helm(k8s_bin: Path, *args: str) -> str:
    proc = subprocess.run([str(k8s_bin / "helm"), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


# --- the CRD ---------------------------------------------------------------------------------
def test_crd_is_a_valid_kubernetes_object(crd: dict[str, Any]) -> None:
    validate_k8s(crd)


def test_chart_crd_is_an_identical_copy() -> None:
    assert (CHART / "crds" / "cell.yaml").read_bytes() == (ROOT / "crds" / "cell.yaml").read_bytes()


def test_crd_names_subresources_and_columns(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "cells.lockcell.io"
    assert spec["group"] == cellspec.GROUP and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == cellspec.KIND and spec["names"]["plural"] == cellspec.PLURAL
    assert spec["names"]["shortNames"] == ["lc"]
    (version,) = spec["versions"]
    assert version["name"] == cellspec.VERSION and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Replicas", "Ready", "Leader", "Phase", "Age"]


def test_crd_status_schema_matches_the_status_builder(crd: dict[str, Any]) -> None:
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    props = status["properties"]
    assert set(props) == {"observedGeneration", "replicas", "readyReplicas", "selector",
                          "leader", "term", "members", "phase", "conditions"}
    assert set(props["members"]["items"]["properties"]) == {"name", "id", "role", "healthy"}
    assert props["phase"]["enum"] == ["Creating", "Running", "Scaling", "Degraded", "Failed"]


def test_crd_defaults_match_the_code(crd: dict[str, Any]) -> None:
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    p = spec["properties"]
    assert p["replicas"]["default"] == cellspec.DEFAULT_REPLICAS
    assert (p["replicas"]["minimum"], p["replicas"]["maximum"]) == (1, 9)
    storage = p["storage"]["properties"]
    assert storage["size"]["default"] == cellspec.DEFAULT_STORAGE_SIZE
    assert storage["reclaimPolicy"]["default"] == cellspec.DEFAULT_RECLAIM_POLICY
    session = p["session"]["properties"]
    assert session["leaseSeconds"]["default"] == cellspec.DEFAULT_LEASE_SECONDS
    assert session["graceSeconds"]["default"] == cellspec.DEFAULT_GRACE_SECONDS
    locks = p["locks"]["properties"]
    assert locks["maxLockDelaySeconds"]["default"] == cellspec.DEFAULT_MAX_LOCK_DELAY_SECONDS
    monitor = p["monitoring"]["properties"]["serviceMonitor"]["properties"]
    assert monitor["interval"]["default"] == cellspec.DEFAULT_MONITOR_INTERVAL
    # Only Kubernetes' own big types keep unknown fields.
    preserved = [k for k, v in p.items() if v.get("x-kubernetes-preserve-unknown-fields")]
    assert preserved == ["affinity"]
    assert not spec.get("x-kubernetes-preserve-unknown-fields")


# --- Cells against the CRD schema ------------------------------------------------------------
def cell(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "lockcell.io/v1alpha1", "kind": "Cell",
            "metadata": {"name": "demo"}, "spec": spec}


def test_examples_are_valid(cell_validator: jsonschema.Draft7Validator) -> None:
    files = sorted((ROOT / "examples").glob("*.yaml"))
    assert {f.name for f in files} >= {"cell.yaml", "lock-job.yaml"}
    cells = 0
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            if doc["kind"] == "Cell":
                cell_validator.validate(doc)
                parse_spec(doc["spec"])
                cells += 1
            else:
                validate_k8s(doc)
    assert cells >= 1


def test_example_job_locks_against_the_client_service() -> None:
    job = yaml.safe_load((ROOT / "examples" / "lock-job.yaml").read_text())
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"][:4] == ["lockcell", "lock", "/ls/local/jobs/nightly", "--"]
    assert c["command"][4:6] == ["sh", "-c"]
    example = yaml.safe_load((ROOT / "examples" / "cell.yaml").read_text())
    ref = CellRef(example["metadata"]["name"], job["metadata"]["namespace"])
    endpoints = {e["name"]: e["value"] for e in c["env"]}["LOCKCELL_ENDPOINTS"]
    service = b.client_service_name(ref.name)
    assert endpoints == f"http://{service}.{ref.namespace}.svc:{b.CLIENT_PORT}"


@pytest.mark.parametrize("good", [
    {}, {"replicas": 1}, {"replicas": 9}, {"image": "x:1"},
    {"storage": {"size": "10Gi", "storageClassName": "ssd", "reclaimPolicy": "Delete"}},
    {"resources": {"requests": {"cpu": "250m", "memory": 268435456}}},
    {"tolerations": [{"key": "a", "operator": "Exists", "effect": "NoSchedule"}]},
    {"affinity": {"nodeAffinity": {"anything": ["goes"]}}},
    {"nodeSelector": {"disk": "ssd"}},
    {"monitoring": {"serviceMonitor": {"enabled": True, "interval": "1m30s",
                                       "labels": {"release": "p"}}}},
])
def test_schema_accepts(cell_validator: jsonschema.Draft7Validator, good: dict[str, Any]) -> None:
    cell_validator.validate(cell(good))


@pytest.mark.parametrize("bad", [
    {"replicas": 0},
    {"replicas": 10},
    {"replicas": "3"},
    {"replicas": 2.5},
    {"replicaz": 3},
    {"storage": {"size": "lots"}},
    {"storage": {"reclaimPolicy": "Recycle"}},
    {"storage": {"sizes": "1Gi"}},
    {"session": {"leaseSeconds": 0}},
    {"session": {"leaseSeconds": 61}},
    {"session": {"graceSeconds": -1}},
    {"locks": {"maxLockDelaySeconds": 61}},
    {"locks": {"maxLockDelay": 5}},
    {"image": ""},
    {"image": 5},
    {"resources": {"requests": {"cpu": "a lot"}}},
    {"resources": {"wishes": {}}},
    {"tolerations": [{"key": "a", "operator": "Maybe"}]},
    {"tolerations": [{"colour": "red"}]},
    {"nodeSelector": {"disk": 1}},
    {"monitoring": {"serviceMonitor": {"enabled": "yes"}}},
    {"monitoring": {"serviceMonitor": {"interval": "soon"}}},
    {"monitoring": {"prometheus": True}},
])
def test_schema_refuses(cell_validator: jsonschema.Draft7Validator, bad: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        cell_validator.validate(cell(bad))


def test_schema_refuses_unknown_top_level_and_status_fields(
    cell_validator: jsonschema.Draft7Validator,
) -> None:
    doc = cell({})
    doc["specs"] = {}
    with pytest.raises(jsonschema.ValidationError):
        cell_validator.validate(doc)
    doc = cell({})
    doc["status"] = {"phase": "Happy"}
    with pytest.raises(jsonschema.ValidationError):
        cell_validator.validate(doc)


def test_status_built_by_the_operator_fits_the_schema(
    cell_validator: jsonschema.Draft7Validator,
) -> None:
    from op_cellsim import CellSim

    from lockcell_operator.planner import plan
    from lockcell_operator.status import build_status

    sim = CellSim(desired=3)
    previous: dict[str, Any] | None = None
    for _ in range(40):
        sim.tick()
        obs = sim.observation()
        step = plan(obs)
        status = build_status(obs, step, generation=1, selector=b.selector_string("c"),
                              now="2026-01-01T00:00:00Z", previous=previous)
        doc = cell({})
        doc["status"] = {k: v for k, v in status.items() if v is not None}
        cell_validator.validate(doc)
        previous = status
        sim.apply(step)


# --- builder output against Kubernetes schemas -----------------------------------------------
SPECS = [
    {},
    {"replicas": 5, "image": "x:1", "storage": {"size": "3Gi", "storageClassName": "fast",
                                                "reclaimPolicy": "Delete"},
     "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
     "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "locks",
                      "effect": "NoSchedule"}],
     "nodeSelector": {"disk": "ssd"},
     "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
         {"topologyKey": "kubernetes.io/hostname",
          "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "demo"}}}]}},
     "monitoring": {"serviceMonitor": {"enabled": True}}},
]


@pytest.mark.parametrize("raw", SPECS)
def test_builder_output_is_valid_kubernetes(raw: dict[str, Any]) -> None:
    spec = parse_spec(raw)
    manifests = [
        b.build_statefulset(REF, spec, replicas=spec.replicas, image="x:1", bootstrap=True),
        b.build_statefulset(REF, spec, replicas=1, image="x:1", bootstrap=False),
        b.build_peer_service(REF),
        b.build_client_service(REF),
        b.build_pdb(REF, spec.replicas),
        b.build_config_map(REF, spec),
        b.build_secret(REF, "admin", "token"),
        b.build_secret(REF, "peer", "secret"),
    ]
    for manifest in manifests:
        validate_k8s(manifest)
    monitor = b.build_service_monitor(REF, spec)
    if monitor is not None:  # a prometheus-operator CRD: no bundled schema, check the basics
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(monitor["spec"]) == {"selector", "endpoints"}


def test_template_patch_applied_to_the_statefulset_is_still_valid() -> None:
    current = b.build_statefulset(REF, parse_spec(SPECS[1]), replicas=5, image="x:1",
                                  bootstrap=False)
    desired = b.build_statefulset(REF, parse_spec({}), replicas=5, image="x:2", bootstrap=False)
    patched = merge_patch(current, b.statefulset_template_patch(desired))
    validate_k8s(patched)
    pod = patched["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "nodeSelector" not in pod
    assert pod["containers"][0]["image"] == "x:2"
    assert patched["spec"]["replicas"] == 5
    assert patched["spec"]["volumeClaimTemplates"] == current["spec"]["volumeClaimTemplates"]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


# --- the chart -------------------------------------------------------------------------------
def test_helm_lint(k8s_bin: Path) -> None:
    out = helm(k8s_bin, "lint", str(CHART), "--strict")
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("values", [[], ["--set", "operator.watchNamespaces={team-a,team-b}",
                                         "--set", "serviceAccount.name=lc",
                                         "--set", "operator.logLevel=debug"]])
def test_helm_template_is_valid_kubernetes(k8s_bin: Path, values: list[str]) -> None:
    out = helm(k8s_bin, "template", "lc", str(CHART), "--namespace", "lockcell-system",
               "--include-crds", *values)
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert "CustomResourceDefinition" in kinds and "Deployment" in kinds
    for doc in docs:
        validate_k8s(doc)
    crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    assert crd == yaml.safe_load((ROOT / "crds" / "cell.yaml").read_text())
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert c["command"][:2] == ["kopf", "run"]
    assert "--module=lockcell_operator.handlers" in c["command"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["LOCKCELL_OPERATOR_CELL_IMAGE"] == c["image"]
    if values:
        assert "--namespace=team-a" in c["command"] and "--all-namespaces" not in c["command"]
        roles = [d for d in docs if d["kind"] == "Role"]
        assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    else:
        assert "--all-namespaces" in c["command"]


def test_helm_notes_say_what_to_apply_next(k8s_bin: Path) -> None:
    out = helm(k8s_bin, "install", "lc", str(CHART), "--dry-run=client",
               "--namespace", "lockcell-system")
    notes = out[out.index("NOTES:"):]
    assert "kubectl apply" in notes and '"kind": "Cell"' in notes
    assert "LOCKCELL_ENDPOINTS=http://demo.<namespace>.svc:7001" in notes
    assert "kubectl scale cell/demo" in notes
    command = notes[notes.index("kubectl apply -f - <<< '") + len("kubectl apply -f - <<< '"):]
    cell = json.loads(command[:command.index("'")])
    assert cell["kind"] == "Cell" and cell["spec"]["replicas"] == 3


def test_helm_values_schema_refuses_bad_values(k8s_bin: Path) -> None:
    for bad in (["--set", "image.pullPolicy=Sometimes"], ["--set", "operator.interval=0"],
                ["--set", "nosuchkey=1"]):
        proc = subprocess.run(
            [str(k8s_bin / "helm"), "template", "lc", str(CHART), *bad],
            capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode != 0, bad
        assert "schema" in proc.stderr.lower(), proc.stderr


def test_values_are_all_commented_and_in_the_schema() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(values)
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        previous = lines[i - 1].strip() if i else ""
        assert previous.startswith("#") or "#" in line, f"values.yaml key {m.group(2)!r} " \
            "has no comment"


def rbac_rules(k8s_bin: Path) -> list[dict[str, Any]]:
    out = helm(k8s_bin, "template", "lc", str(CHART), "--namespace", "lockcell-system")
    rules: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(out):
        if doc and doc["kind"] in ("ClusterRole", "Role"):
            rules.extend(doc["rules"])
    return rules


def test_rbac_is_least_privilege(k8s_bin: Path) -> None:
    rules = rbac_rules(k8s_bin)
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert not any("*" in x for t in granted for x in t)
    secrets = {v for g, r, v in granted if r == "secrets"}
    assert secrets == {"get", "create", "delete"}  # never listed, watched or changed
    assert {v for g, r, v in granted if r == "pods"} == {"list"}
    assert ("", "persistentvolumeclaims", "create") not in granted
    assert {r for g, r, v in granted if v in ("update", "put")} == {"cells/finalizers"}


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.MULTILINE)
    assert len(froms) >= 2, "multi-stage"
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.MULTILINE)
    final = text[text.rindex("\nFROM "):]
    assert re.search(r"^USER 10001(:10001)?$", final, re.MULTILINE)
    assert "COPY --from=build /opt/lockcell /opt/lockcell" in final
    assert "pip install" not in final and "apt-get" not in final
    assert 'CMD ["lockcell", "serve"]' in final
