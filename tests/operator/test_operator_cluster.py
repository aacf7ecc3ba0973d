"""Against a real API server (marked `cluster`; skipped unless $KUBECONFIG names a cluster).

Installs (or updates) the Cell CRD, then asks the server, with server-side dry runs, to
accept the example and to refuse bad Cells - including what only a real server checks: the
CEL rules and strict field validation. Nothing but the CRD is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.cluster
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kubectl(request: pytest.FixtureRequest) -> Any:
    config = os.environ.get("KUBECONFIG")
    if not config or not all(Path(p).exists() for p in config.split(os.pathsep) if p):
        pytest.skip("needs KUBECONFIG pointing at a real cluster")
    k8s_bin: Path = request.getfixturevalue("k8s_bin")

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(k8s_bin / "kubectl"), *args], input=stdin,
                              capture_output=True, text=True, timeout=60, check=False)

    if run("version", "--request-timeout=5s").returncode != 0:
        pytest.skip("the cluster in KUBECONFIG does not answer")
    applied = run("apply", "-f", str(ROOT / "crds" / "cell.yaml"))
    assert applied.returncode == 0, applied.stderr
    run("wait", "--for=condition=Established", "crd/cells.lockcell.io", "--timeout=30s")
    return run


def dry_run(kubectl: Any, spec: dict[str, Any], name: str = "probe") -> Any:
    cell = {"apiVersion": "lockcell.io/v1alpha1", "kind": "Cell",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}
    return kubectl("create", "--dry-run=server", "--validate=strict", "-o", "json", "-f", "-",
                   stdin=json.dumps(cell))


def test_example_is_accepted_with_defaults(kubectl: Any) -> None:
    proc = kubectl("create", "--dry-run=server", "-o", "json", "-f",
                   str(ROOT / "examples" / "cell.yaml"))
    assert proc.returncode == 0, proc.stderr
    proc = dry_run(kubectl, {})
    assert proc.returncode == 0, proc.stderr
    spec = json.loads(proc.stdout)["spec"]
    assert spec["replicas"] == 3
    assert spec["storage"] == {"size": "1Gi", "reclaimPolicy": "Retain"}
    assert spec["session"] == {"leaseSeconds": 12, "graceSeconds": 45}


@pytest.mark.parametrize("spec", [{"replicas": 0}, {"replicas": 10}, {"replicas": "three"},
                                  {"replicaz": 3}, {"storage": {"reclaimPolicy": "Recycle"}}])
def test_bad_cells_are_refused(kubectl: Any, spec: dict[str, Any]) -> None:
    assert dry_run(kubectl, spec).returncode != 0


def test_cel_rules(kubectl: Any) -> None:
    assert dry_run(kubectl, {}, name="x" * 41).returncode != 0
    assert dry_run(kubectl, {}, name="1abc").returncode != 0
