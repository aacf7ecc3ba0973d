"""The Grafana dashboards: valid dashboard JSON, queries that parse, and the chart's copies.

That every metric a query names is really exported is checked against a live cell in
test_metrics.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import CHART, DASHBOARDS, ROOT
from .promql import SCALAR, VECTOR, parse

PANEL_TYPES = {"row", "timeseries", "stat", "table", "heatmap", "bargauge", "gauge", "text",
               "state-timeline"}
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__interval_ms",
                     "__range_s", "__range_ms"}
FILES = sorted(DASHBOARDS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def all_panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in doc["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def test_the_three_dashboards_exist() -> None:
    titles = {load(p)["title"] for p in FILES}
    assert titles == {"lockcell / Cell overview", "lockcell / Raft internals",
                      "lockcell / Operator"}


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_dashboard_is_valid_grafana_json(path: Path) -> None:
    doc = load(path)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", doc["uid"]), doc["uid"]
    assert isinstance(doc["title"], str) and doc["title"]
    assert isinstance(doc["schemaVersion"], int) and doc["schemaVersion"] >= 36
    assert doc.get("id") is None, "an exported id would clash on import"
    assert set(doc["time"]) == {"from", "to"}
    assert "lockcell" in doc["tags"]
    panels = all_panels(doc)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel["title"]
        grid = panel["gridPos"]
        assert set(grid) == {"h", "w", "x", "y"}
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                   for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not covered & cells, f"{panel['title']!r} overlaps another panel"
        cells |= covered
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        targets = panel["targets"]
        assert targets, panel["title"]
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs))
        for target in targets:
            assert target["datasource"] == panel["datasource"]
            assert target["expr"].strip()
        assert "defaults" in panel["fieldConfig"]


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_variables_are_defined_used_and_on_the_datasource_variable(path: Path) -> None:
    doc = load(path)
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert {"datasource", "namespace", "cell"} <= set(variables)
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    text = json.dumps(doc["panels"]) + json.dumps([v.get("query") for v in variables.values()])
    used = set(re.findall(r"\$\{?(\w+)", text))
    assert used - BUILTIN_VARIABLES <= set(variables), used - set(variables)
    for name in variables:
        assert name in used, f"variable ${name} is never used"
    assert "$__rate_interval" in text
    assert "[5m]" not in text and "[1m]" not in text, "use $__rate_interval"


def test_uids_and_titles_are_unique_and_stable() -> None:
    docs = [load(p) for p in FILES]
    uids = [d["uid"] for d in docs]
    assert len(set(uids)) == len(uids)
    assert set(uids) == {"lockcell-cell-overview", "lockcell-raft-internals",
                         "lockcell-operator"}
    assert len({d["title"] for d in docs}) == len(docs)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_every_query_parses_as_promql(path: Path) -> None:
    for panel in all_panels(load(path)):
        for target in panel.get("targets", []):
            query = parse(target["expr"])
            assert query.type in (SCALAR, VECTOR), (panel["title"], target["expr"])
            assert query.metric_names(), target["expr"]


def test_cell_dashboards_filter_every_query_by_namespace_and_cell() -> None:
    for path in FILES:
        if path.name == "operator.json":
            continue
        for panel in all_panels(load(path)):
            for target in panel.get("targets", []):
                for selector in parse(target["expr"]).selectors:
                    labels = {(m.label, m.value) for m in selector.matchers}
                    assert ("namespace", "$namespace") in labels, target["expr"]
                    assert ("cell", "$cell") in labels, target["expr"]


def test_generator_output_is_committed_and_the_chart_copies_are_identical() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "dashboards.py"), "--check"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    chart_copies = sorted((CHART / "dashboards").glob("*.json"))
    assert [p.name for p in chart_copies] == [p.name for p in FILES]
    for copy in chart_copies:
        assert copy.read_bytes() == (DASHBOARDS / copy.name).read_bytes()
        assert not copy.is_symlink()


def _helm(k8s_bin: Path, *args: str) -> list[dict[str, Any]]:
    proc = subprocess.run([str(k8s_bin / "helm"), "template", "lc", str(CHART),
                           "--namespace", "lockcell-system", *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_chart_ships_exactly_the_dashboards_as_labelled_config_maps(k8s_bin: Path) -> None:
    docs = _helm(k8s_bin)
    maps = [d for d in docs if d["kind"] == "ConfigMap"
            and d["metadata"]["labels"].get("grafana_dashboard") == "1"]
    shipped: dict[str, str] = {}
    for cm in maps:
        assert cm["metadata"]["namespace"] == "lockcell-system"
        assert len(cm["data"]) == 1
        shipped.update(cm["data"])
    expected = {f"lockcell-{p.name}": p.read_text() for p in FILES}
    assert shipped == expected
    assert not [d for d in docs if d["kind"] == "PodMonitor"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LOCKCELL_OPERATOR_METRICS_PORT"] == "8081"
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container["ports"]


def test_chart_values_switch_dashboards_and_the_pod_monitor(k8s_bin: Path) -> None:
    docs = _helm(k8s_bin, "--set", "dashboards.enabled=false", "--set",
                 "metrics.podMonitor.enabled=true", "--set",
                 "metrics.podMonitor.labels.release=prom", "--set", "metrics.port=9100")
    assert not [d for d in docs if d["kind"] == "ConfigMap"]
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in container["ports"]
    off = _helm(k8s_bin, "--set", "metrics.enabled=false",
                "--set", "dashboards.namespace=monitoring")
    deployment = next(d for d in off if d["kind"] == "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LOCKCELL_OPERATOR_METRICS_PORT"] == "0"
    assert all(p["name"] != "metrics" for p in container["ports"])
    namespaces = {d["metadata"]["namespace"] for d in off if d["kind"] == "ConfigMap"}
    assert namespaces == {"monitoring"}
