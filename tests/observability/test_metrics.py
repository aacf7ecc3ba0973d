"""The server's /metrics on a real 3-member cell with traffic, and every dashboard query
against it (and against the operator's registry, driven through real planner passes)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lockcell.cli.localcell import LocalCell, http_json

from .conftest import DASHBOARDS, call, drive_traffic, scrape, wait_until
from .opdrive import driven_metrics
from .promql import parse

# Labels a scrape adds to every series (the Prometheus operator and the cell's
# ServiceMonitor relabelings): dashboards may filter and group by them freely.
TARGET_LABELS = {"namespace", "cell", "instance", "pod", "job", "service", "endpoint",
                 "container"}

# Snapshots every few entries, so that the traffic takes some.
CELL_ENV = {"LOCKCELL_SNAPSHOT_EVERY": "10"}  # 10-15 entries apart (jittered)

# DESIGN.md §6 and the observability issue: what the server must export.
EXPECTED_SERVER = {
    # Raft
    "lockcell_raft_term", "lockcell_raft_role", "lockcell_raft_commit_index",
    "lockcell_raft_applied_index", "lockcell_raft_last_index", "lockcell_raft_has_leader",
    "lockcell_raft_leader_changes_total", "lockcell_raft_role_changes_total",
    "lockcell_raft_proposals_total", "lockcell_raft_follower_lag_entries",
    "lockcell_raft_follower_active", "lockcell_raft_members", "lockcell_raft_joint",
    "lockcell_raft_conf_changes_total", "lockcell_raft_quorum_active",
    "lockcell_raft_voters_active", "lockcell_wal_fsync_seconds_bucket",
    "lockcell_leader_writes_in_loop", "lockcell_wal_aio",
    "lockcell_wal_append_batch_entries_bucket", "lockcell_snapshot_seconds_bucket",
    "lockcell_snapshot_restore_seconds_bucket", "lockcell_snapshot_failures_total",
    "lockcell_event_loop_lag_seconds_bucket", "lockcell_gc_pause_seconds_bucket",
    # lock service
    "lockcell_sessions", "lockcell_sessions_expired_total", "lockcell_keepalives_total",
    "lockcell_locks_held", "lockcell_lock_waiters", "lockcell_lock_acquire_seconds_bucket",
    "lockcell_lock_delay_blocks_total", "lockcell_events_total", "lockcell_handles",
    "lockcell_nodes", "lockcell_write_seconds_bucket",
    # HTTP
    "lockcell_http_requests_total", "lockcell_http_request_seconds_bucket",
}


Samples = dict[str, list[tuple[dict[str, str], float]]]


def samples_of(texts: Iterable[str]) -> Samples:
    """Sample name → (labels, value) of every sample in the texts."""
    out: Samples = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, []).append((dict(s.labels), s.value))
    return out


def types_of(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


@pytest.fixture(scope="module")
def traffic(cell: LocalCell) -> dict[str, Any]:
    return drive_traffic(cell)


@pytest.fixture(scope="module")
def texts(cell: LocalCell, traffic: dict[str, Any]) -> dict[str, str]:
    return scrape(cell)


@pytest.fixture(scope="module")
def server(texts: dict[str, str]) -> Samples:
    return samples_of(texts.values())


@pytest.fixture(scope="module")
def operator_samples() -> Samples:
    metrics, _ = driven_metrics()
    body, _ = metrics.render()
    return samples_of([body.decode()])


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, [])
               if all(got.get(k) == want for k, want in labels.items()))


def test_server_exports_every_metric_the_design_names(server: Samples) -> None:
    missing = sorted(EXPECTED_SERVER - set(server))
    assert not missing, f"not in /metrics: {missing}"
    assert all(name.startswith("lockcell_") for name in server)


def test_traffic_shows_in_the_counters(server: Samples, traffic: dict[str, Any]) -> None:
    assert value(server, "lockcell_keepalives_total") >= 1
    assert value(server, "lockcell_sessions_expired_total") >= 1
    assert value(server, "lockcell_lock_delay_blocks_total") >= 1
    assert value(server, "lockcell_raft_proposals_total", result="committed") >= 10
    for result in ("granted", "lock_busy", "lock_delay"):
        assert value(server, "lockcell_lock_acquire_seconds_count", result=result) >= 1, result
    assert value(server, "lockcell_lock_acquire_seconds_count", mode="shared") >= 1
    assert value(server, "lockcell_events_total", type="contents_modified") >= 1
    assert value(server, "lockcell_events_total", type="lock_acquired") >= 1
    for command in ("CreateSession", "Open", "SetContents", "Acquire", "Release",
                    "ExpireSession"):
        assert value(server, "lockcell_write_seconds_count", command=command) >= 1, command
    assert value(server, "lockcell_http_requests_total", route="create_session", code="201") >= 3
    assert value(server, "lockcell_http_requests_total", route="unmatched", code="404") >= 1
    assert value(server, "lockcell_http_requests_total", route="status_page", code="200") >= 3
    assert value(server, "lockcell_locks_held", mode="shared") >= 1
    assert value(server, "lockcell_raft_members", role="voter") == 3 * 3  # 3 members say 3
    assert value(server, "lockcell_raft_role", role="leader") == 1
    assert value(server, "lockcell_raft_has_leader") == 3
    assert value(server, "lockcell_raft_quorum_active") == 1  # the leader's
    assert value(server, "lockcell_raft_voters_active") == 3
    assert value(server, "lockcell_wal_fsync_seconds_count") >= 3
    assert value(server, "lockcell_snapshot_seconds_count") >= 3  # every member took one
    assert value(server, "lockcell_snapshot_bytes") > 0
    assert value(server, "lockcell_raft_snapshot_index") > 0


def test_counters_are_counters_and_gauges_gauges(texts: dict[str, str]) -> None:
    types: dict[str, str] = {}
    for text in texts.values():
        types.update(types_of(text))
    for family in ("lockcell_keepalives", "lockcell_sessions_expired",
                   "lockcell_lock_delay_blocks", "lockcell_raft_leader_changes",
                   "lockcell_raft_proposals", "lockcell_events", "lockcell_http_requests"):
        assert types.get(family) == "counter", family
    for family in ("lockcell_sessions", "lockcell_raft_term", "lockcell_lock_waiters"):
        assert types.get(family) == "gauge", family
    for family in ("lockcell_wal_fsync_seconds", "lockcell_lock_acquire_seconds",
                   "lockcell_write_seconds", "lockcell_http_request_seconds"):
        assert types.get(family) == "histogram", family


def test_labels_stay_low_cardinality(server: Samples, traffic: dict[str, Any]) -> None:
    allowed = {"role", "result", "member", "mode", "type", "command", "route", "code", "le",
               "version", "generation"}
    secrets = set(traffic["sessions"])
    for name, rows in server.items():
        for labels, _ in rows:
            assert set(labels) <= allowed, f"{name} has labels {sorted(labels)}"
            for label, text in labels.items():
                assert text not in secrets, f"{name}{{{label}}} carries a session id"
                assert not text.startswith("/"), f"{name}{{{label}}} carries a path"
                assert not re.fullmatch(r"[0-9a-f]{32}", text), f"{name}{{{label}}}={text}"
    series = sum(len(rows) for rows in server.values())
    assert series < 3 * 1500, f"{series} series from three members"


def _dashboard_targets() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        doc = json.loads(path.read_text())
        for panel in doc["panels"]:
            for target in panel.get("targets", []):
                found.append((path.name, panel["title"], target))
        for var in doc["templating"]["list"]:
            if var["type"] == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
                assert m, f"{path.name} variable {var['name']}: {query}"
                found.append((path.name, f"variable {var['name']}",
                              {"expr": m.group(1), "label": m.group(2)}))
    return found


def _labels_of(samples: Samples, names: set[str]) -> set[str]:
    labels: set[str] = set()
    for name in names:
        for got, _ in samples.get(name, []):
            labels |= set(got)
    return labels


def test_every_dashboard_query_names_only_exported_metrics(
        server: Samples, operator_samples: Samples) -> None:
    """Each metric, each label a matcher, grouping or legend uses, and each literal label
    value a query asks for must turn up in a real scrape (server or operator)."""
    scraped: Samples = {**server, **operator_samples}
    problems = []
    targets = _dashboard_targets()
    assert len(targets) > 60
    for dashboard, title, target in targets:
        where = f"{dashboard} / {title}: {target['expr']}"
        query = parse(target["expr"])
        names = query.metric_names()
        if not names:
            problems.append(f"{where}: names no metric")
        for name in sorted(names - set(scraped)):
            problems.append(f"{where}: {name} is not exported")
        known = _labels_of(scraped, names)
        target_labels = TARGET_LABELS if not names or not all(
            n.startswith("lockcell_operator_") for n in names) else TARGET_LABELS - {"cell"}
        usable = known | target_labels
        for selector in query.selectors:
            own = _labels_of(scraped, selector.names())
            for matcher in selector.matchers:
                if matcher.label not in own | target_labels:
                    problems.append(f"{where}: label {matcher.label} is not on "
                                    f"{selector.metric}")
                elif matcher.op == "=" and matcher.label in own:
                    values = {labels.get(matcher.label) for n in selector.names()
                              for labels, _ in scraped.get(n, [])}
                    if matcher.value not in values:
                        problems.append(f"{where}: no {selector.metric} has "
                                        f"{matcher.label}={matcher.value!r}")
        for grouping in query.groupings:
            for label in grouping.labels:
                if label not in usable:
                    problems.append(f"{where}: grouping by unknown label {label}")
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
            if label not in usable:
                problems.append(f"{where}: legend uses unknown label {label}")
        if "label" in target and target["label"] not in usable:
            problems.append(f"{where}: variable label {target['label']} is unknown")
    assert not problems, "\n".join(problems)


def test_leader_changes_are_counted_when_they_happen(cell: LocalCell,
                                                     texts: dict[str, str]) -> None:
    before = samples_of(scrape(cell).values())
    changes = value(before, "lockcell_raft_leader_changes_total")
    elections = value(before, "lockcell_raft_role_changes_total", role="candidate")
    leader = cell.leader()
    view = call("GET", f"{leader.url}/v1/cluster", None, (200,))
    target = next(m["id"] for m in view["members"] if m["id"] != view["leader"])
    call("POST", f"{leader.url}/v1/cluster/leader", {"to": target}, (200,),
         headers={"Authorization": f"Bearer {cell.admin_token}"})
    wait_until(lambda: http_json("GET", f"{leader.url}/v1/cluster")[1]["leader"] == target,
               10, "leadership to move")

    def counted() -> bool:
        after = samples_of(scrape(cell).values())
        return (value(after, "lockcell_raft_leader_changes_total") >= changes + 3
                and value(after, "lockcell_raft_role_changes_total", role="candidate")
                >= elections + 1)

    wait_until(counted, 10, "every member to count the new leader")
