"""The operator end to end against kmock and a fake cell: create, scale 3→5→3, refusals,
empty-volume replacement, deletion with the finalizer, and least-privilege RBAC."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from op_harness import NAMESPACE, Harness, history, operator_harness

from lockcell_operator import builders as b
from lockcell_operator.spec import CellRef

pytestmark = [
    pytest.mark.asyncio,
    # kmock 0.8 loads its bundled resources with a deprecated importlib call.
    pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning"),
]


def conditions(h: Harness) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in h.cell_status().get("conditions") or []}


def event_reasons(h: Harness) -> list[str]:
    return [e.get("reason", "") for e in h.events()]


def verb_of(method: str, has_name: bool, watch: bool) -> str:
    if method == "GET":
        return "watch" if watch else ("get" if has_name else "list")
    return {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]


def chart_grants(k8s_bin: Path) -> set[tuple[str, str, str]]:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [str(k8s_bin / "helm"), "template", "lc", str(root / "charts" / "lockcell")],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    granted: set[tuple[str, str, str]] = set()
    for doc in yaml.safe_load_all(out):
        if doc and doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc["rules"]:
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        for v in rule["verbs"]:
                            granted.add((g, r, v))
    return granted


def assert_allowed_by_chart_rbac(h: Harness, k8s_bin: Path) -> set[tuple[str, str, str]]:
    """Every API call the operator (and kopf) made is granted by the chart's RBAC."""
    granted = chart_grants(k8s_bin)
    used: set[tuple[str, str, str]] = set()
    for request in h.operator_requests():
        resource = request.resource
        if resource is None or not resource.plural:  # discovery, /version: no RBAC needed
            continue
        plural = resource.plural + (f"/{request.subresource}" if request.subresource else "")
        watch = request.params.get("watch") in ("true", "True", "1")
        used.add((resource.group or "", plural,
                  verb_of(str(request.method.value), request.name is not None, watch)))
    missing = used - granted
    assert not missing, f"RBAC lacks {sorted(missing)}"
    return used


async def test_create_forms_the_cell_one_pod_at_a_time(k8s_bin: Path) -> None:
    async with operator_harness() as h:
        await h.create_cell({"replicas": 3})
        await h.wait_for("a running 3-member cell", lambda: h.running_with(3))

        sts = h.obj("statefulsets", "demo")
        assert sts is not None
        assert sts["spec"]["podManagementPolicy"] == "Parallel"
        assert sts["spec"]["serviceName"] == "demo-peers"
        assert sts["metadata"]["ownerReferences"][0]["kind"] == "Cell"
        # Grown one pod at a time; pod 0 bootstrapped, then bootstrap was turned off.
        assert h.replicas_history() == [1, 2, 3]
        assert not b.template_bootstrap_flag(sts)
        flags = [b.template_bootstrap_flag(v) for v in
                 history(h.km, "statefulsets", NAMESPACE, "demo") if v]
        assert flags[0] is True and flags[-1] is False
        assert flags == sorted(flags, reverse=True)  # never turned back on

        peers = h.obj("services", "demo-peers")
        client = h.obj("services", "demo")
        assert peers and peers["spec"]["clusterIP"] == "None"
        assert peers["spec"]["publishNotReadyAddresses"] is True
        assert client and client["spec"]["ports"][0]["port"] == 7001
        pdb = h.obj("poddisruptionbudgets", "demo")
        assert pdb and pdb["spec"]["maxUnavailable"] == 1
        assert h.obj("configmaps", "demo-config")
        admin = h.obj("secrets", "demo-admin")
        peer = h.obj("secrets", "demo-peer")
        assert admin and peer
        token = b.secret_value(admin, "token")
        assert token and len(token) >= 32
        assert b.secret_value(peer, "secret") != token
        cell_obj = h.obj("cells", "demo")
        assert cell_obj and "lockcell.io/finalizer" in cell_obj["metadata"]["finalizers"]

        status = h.cell_status()
        assert status["selector"] == b.selector_string("demo")
        assert status["replicas"] == 3 and status["readyReplicas"] == 3
        assert status["leader"] in {"demo-0", "demo-1", "demo-2"}
        assert status["observedGeneration"] == cell_obj["metadata"]["generation"]
        c = conditions(h)
        assert c["Available"]["status"] == "True"
        assert c["Progressing"]["status"] == "False"
        assert c["Degraded"]["status"] == "False"
        # kopf posts Events in the background: the last one may trail the status patch.
        wanted = ("Bootstrap", "EndBootstrap", "ScaleStatefulSet", "AddLearner", "Promote",
                  "Reconciled")
        await h.wait_for(f"the events {wanted}", lambda: set(wanted) <= set(event_reasons(h)),
                         timeout=10)

        # Another reconcile pass regenerates nothing: the secrets keep their tokens.
        await h.patch_cell({"metadata": {"labels": {"touched": "yes"}}})
        await asyncio.sleep(1.0)
        admin_after = h.obj("secrets", "demo-admin")
        assert admin_after is not None and b.secret_value(admin_after, "token") == token
        assert_allowed_by_chart_rbac(h, k8s_bin)


async def test_scale_3_to_5_to_3_one_member_at_a_time(k8s_bin: Path) -> None:
    async with operator_harness() as h:
        await h.create_cell({"replicas": 3, "storage": {"reclaimPolicy": "Delete"}})
        await h.wait_for("3 members", lambda: h.running_with(3))

        await h.patch_cell({"spec": {"replicas": 5}})
        seen_scaling: set[str] = set()

        def progressed() -> bool:
            seen_scaling.add(h.cell_status().get("phase", ""))
            return h.running_with(5)

        await h.wait_for("5 members", progressed)
        assert "Scaling" in seen_scaling
        assert h.replicas_history() == [1, 2, 3, 4, 5]
        pdb = h.obj("poddisruptionbudgets", "demo")
        assert pdb and pdb["spec"]["maxUnavailable"] == 2
        kinds = [c[0] for c in h.cell.calls]
        # Each new member: added as learner, then promoted; never two at once.
        assert kinds[-4:] == ["add", "promote", "add", "promote"]

        await h.patch_cell({"spec": {"replicas": 3}})
        await h.wait_for("back to 3 members", lambda: h.running_with(3)
                         and h.obj("persistentvolumeclaims", "data-demo-3") is None
                         and h.obj("persistentvolumeclaims", "data-demo-4") is None)
        assert h.replicas_history() == [1, 2, 3, 4, 5, 4, 3]
        removals = [c for c in h.cell.calls if c[0] in ("remove", "leader")]
        assert [c[0] for c in removals if c[0] == "remove"] == ["remove", "remove"]
        assert {m.url for m in h.cell.members.values()} == {
            b.advertised_urls(CellRef("demo", NAMESPACE), f"demo-{i}")[0] for i in range(3)}
        assert h.obj("persistentvolumeclaims", "data-demo-2") is not None
        c = conditions(h)
        assert c["Progressing"]["status"] == "False" and c["Available"]["status"] == "True"
        pdb = h.obj("poddisruptionbudgets", "demo")
        assert pdb and pdb["spec"]["maxUnavailable"] == 1
        used = assert_allowed_by_chart_rbac(h, k8s_bin)
        assert ("", "persistentvolumeclaims", "delete") in used


async def test_two_of_three_down_nothing_is_removed_and_it_says_why() -> None:
    async with operator_harness() as h:
        await h.create_cell({"replicas": 3})
        await h.wait_for("3 members", lambda: h.running_with(3))
        h.kubelet.crashed.update({"demo-1", "demo-2"})
        await h.wait_for("the leader to go", lambda: h.cell.leader is None)
        await h.patch_cell({"spec": {"replicas": 1}})
        await h.wait_for(
            "a NoLeader wait",
            lambda: conditions(h).get("Progressing", {}).get("reason") == "NoLeader",
        )
        await asyncio.sleep(1.0)  # a few more passes: still nothing removed
        c = conditions(h)
        assert c["Available"]["status"] == "False"
        assert c["Degraded"]["status"] == "True"
        assert "nothing is changed" in c["Progressing"]["message"]
        assert h.cell_status()["phase"] == "Degraded"
        assert "NoLeader" in event_reasons(h)
        assert not [c for c in h.cell.calls if c[0] == "remove"]
        assert h.replicas_history()[-1] == 3
        # They come back: now the operator shrinks the cell to one member.
        h.kubelet.crashed.clear()
        await h.wait_for("1 member", lambda: h.running_with(1))
        assert h.replicas_history()[-3:] == [3, 2, 1]


async def test_one_down_removal_that_would_lose_quorum_is_refused() -> None:
    async with operator_harness() as h:
        await h.create_cell({"replicas": 3})
        await h.wait_for("3 members", lambda: h.running_with(3))
        leader_pod = h.cell_status()["leader"]
        down = next(p for p in ("demo-1", "demo-0") if p != leader_pod)
        h.kubelet.crashed.add(down)
        await h.wait_for("a degraded status",
                         lambda: conditions(h).get("Degraded", {}).get("status") == "True")
        await h.patch_cell({"spec": {"replicas": 2}})
        await h.wait_for(
            "a QuorumAtRisk wait",
            lambda: conditions(h).get("Progressing", {}).get("reason") == "QuorumAtRisk",
        )
        c = conditions(h)
        assert "below quorum 2" in c["Progressing"]["message"]
        assert c["Degraded"]["reason"] == "QuorumAtRisk"
        await h.wait_for("the QuorumAtRisk event",  # posted in the background by kopf
                         lambda: "QuorumAtRisk" in event_reasons(h), timeout=10)
        warnings = [e for e in h.events() if e.get("reason") == "QuorumAtRisk"]
        assert warnings and warnings[0]["type"] == "Warning"
        assert "below quorum" in warnings[0]["message"]
        assert len(warnings) == 1  # said once, not on every pass
        assert not [x for x in h.cell.calls if x[0] == "remove"]
        assert h.replicas_history()[-1] == 3
        h.kubelet.crashed.clear()
        await h.wait_for("2 members", lambda: h.running_with(2))
        assert h.replicas_history()[-2:] == [3, 2]


async def test_pod_back_with_an_empty_volume_is_replaced() -> None:
    async with operator_harness() as h:
        await h.create_cell({"replicas": 3})
        await h.wait_for("3 members", lambda: h.running_with(3))
        old = h.cell.volumes["demo-2"]
        h.kubelet.crashed.add("demo-2")
        await h.wait_for("demo-2 down", lambda: not h.cell.is_up("demo-2"))
        h.cell.wipe("demo-2")
        h.kubelet.crashed.clear()
        await h.wait_for("the new incarnation to replace the old one",
                         lambda: old not in h.cell.members and h.running_with(3))
        new = h.cell.volumes["demo-2"]
        assert new != old and h.cell.members[new].role == "voter"
        calls = h.cell.calls

        def first(kind: str, match: Any) -> int:
            return next(i for i, c in enumerate(calls) if c[0] == kind and match(c[2]))

        add_new = first("add", lambda body: body["id"] == new)
        promote_new = first("promote", lambda member: member == new)
        remove_old = first("remove", lambda member: member == old)
        assert add_new < promote_new < remove_old
        assert h.replicas_history() == [1, 2, 3]


# Granted but not exercised by the delete test below, each for a reason:
EXPLAINED_GRANTS = {
    ("", "services", "patch"),  # only when a Service drifted from what the operator builds
    ("policy", "poddisruptionbudgets", "patch"),  # when the number of voters changes
    ("monitoring.coreos.com", "servicemonitors", "patch"),  # when monitoring settings change
    ("lockcell.io", "cells/finalizers", "update"),  # owner refs with blockOwnerDeletion
}


async def test_spec_change_then_delete_runs_the_finalizer(k8s_bin: Path) -> None:
    async with operator_harness() as h:
        h.km.resources["monitoring.coreos.com/v1/servicemonitors"] = {
            "kind": "ServiceMonitor", "singular": "servicemonitor", "namespaced": True,
            "verbs": ["get", "create", "patch", "delete"], "shortnames": [], "categories": [],
            "subresources": []}
        await h.create_cell({"replicas": 2, "storage": {"reclaimPolicy": "Delete"},
                             "monitoring": {"serviceMonitor": {"enabled": True}}})
        await h.wait_for("2 members", lambda: h.running_with(2))
        assert h.obj("servicemonitors", "demo") is not None
        sts = h.obj("statefulsets", "demo")
        assert sts is not None
        before = sts["spec"]["template"]["metadata"]["annotations"][b.CONFIG_HASH_ANNOTATION]

        await h.patch_cell({"spec": {"session": {"leaseSeconds": 20}}})

        def rolled() -> bool:
            cm = h.obj("configmaps", "demo-config") or {}
            return (cm.get("data") or {}).get("LOCKCELL_LEASE_MS") == "20000"

        await h.wait_for("the new lease in the ConfigMap", rolled)
        await h.wait_for("the pod template to follow", lambda: (
            (h.obj("statefulsets", "demo") or {})["spec"]["template"]["metadata"]
            ["annotations"][b.CONFIG_HASH_ANNOTATION] != before))
        assert h.replicas_history() == [1, 2]  # a config change is not a scale

        await h.delete_cell()
        await h.wait_for("the Cell to go", lambda: h.obj("cells", "demo") is None)
        for plural, name in [("statefulsets", "demo"), ("services", "demo"),
                             ("services", "demo-peers"), ("configmaps", "demo-config"),
                             ("secrets", "demo-admin"), ("secrets", "demo-peer"),
                             ("poddisruptionbudgets", "demo"), ("servicemonitors", "demo"),
                             ("persistentvolumeclaims", "data-demo-0"),
                             ("persistentvolumeclaims", "data-demo-1")]:
            assert h.obj(plural, name) is None, (plural, name)
        used = assert_allowed_by_chart_rbac(h, k8s_bin)
        granted = chart_grants(k8s_bin)
        assert granted - used <= EXPLAINED_GRANTS, sorted(granted - used - EXPLAINED_GRANTS)


async def test_retain_keeps_volumes_on_delete() -> None:
    async with operator_harness() as h:
        await h.create_cell({"replicas": 1})
        await h.wait_for("1 member", lambda: h.running_with(1))
        await h.delete_cell()
        await h.wait_for("the Cell to go", lambda: h.obj("cells", "demo") is None)
        assert h.obj("statefulsets", "demo") is None
        assert h.obj("persistentvolumeclaims", "data-demo-0") is not None
