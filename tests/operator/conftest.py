"""Shared fixtures of the operator tests: paths, the CRD schema, helm/kubectl binaries."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

# Before lockcell_operator.handlers is imported anywhere: the timer's interval is fixed when
# the handler is registered. Fast passes keep the kmock tests short.
os.environ.setdefault("LOCKCELL_OPERATOR_INTERVAL", "0.2")
# Parallel kopf runs must not fight over the operator's metrics port.
os.environ.setdefault("LOCKCELL_OPERATOR_METRICS_PORT", "0")

ROOT = Path(__file__).resolve().parents[2]
CRD_PATH = ROOT / "crds" / "cell.yaml"
CHART = ROOT / "charts" / "lockcell"
FETCH = ROOT / "tools" / "fetch-k8s-binaries.sh"


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CRD_PATH.read_text())
    return data


@pytest.fixture(scope="session")
def k8s_bin() -> Path:
    """Directory with kubectl and helm, fetched once (tools/fetch-k8s-binaries.sh)."""
    proc = subprocess.run(
        ["bash", str(FETCH)], capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode == 2:
        pytest.skip(f"kubectl/helm unavailable here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert (path / "helm").exists() and (path / "kubectl").exists()
    return path
