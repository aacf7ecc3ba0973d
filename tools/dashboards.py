#!/usr/bin/env python3
"""Generate lockcell's Grafana dashboards and copy them into the chart.

    python3 tools/dashboards.py           # write dashboards/*.json and the chart's copies
    python3 tools/dashboards.py --check   # exit 1 if either is out of date

The JSON in dashboards/ is what Grafana imports (the canonical copies); the chart ships
byte-identical copies from charts/lockcell/dashboards/ (Helm's .Files can read only files
inside the chart). tests/observability checks both, and that every query parses and names
only metrics the server and operator export. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "dashboards"
CHART_COPY = ROOT / "charts" / "lockcell" / "dashboards"

DS = {"type": "prometheus", "uid": "${datasource}"}
# The cell's series: `namespace` (added by the Prometheus operator) and `cell` (the
# ServiceMonitor the operator makes relabels the pod's app.kubernetes.io/instance label).
C = 'namespace=~"$namespace", cell=~"$cell"'
# The operator's series name the Cell they are about with cell_namespace and cell.
OP = 'cell_namespace=~"$namespace", cell=~"$cell"'
RI = "$__rate_interval"


@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    heatmap: bool = False

    def json(self, ref: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"refId": ref, "datasource": DS, "expr": self.expr,
                               "legendFormat": self.legend or "__auto",
                               "range": not self.instant, "instant": self.instant}
        if self.table:
            doc["format"] = "table"
        elif self.heatmap:
            doc["format"] = "heatmap"
        else:
            doc["format"] = "time_series"
        return doc


@dataclass
class Panel:
    title: str
    targets: list[Target]
    kind: str = "timeseries"
    unit: str = "short"
    w: int = 12
    h: int = 8
    description: str = ""
    stack: bool = False
    mappings: list[dict[str, Any]] = field(default_factory=list)
    thresholds: list[tuple[float | None, str]] = field(default_factory=list)
    decimals: int | None = None
    text_mode: str = "auto"
    min: float | None = None
    max: float | None = None


@dataclass
class Row:
    title: str


def _thresholds(steps: list[tuple[float | None, str]]) -> dict[str, Any]:
    steps = steps or [(None, "green")]
    return {"mode": "absolute",
            "steps": [{"color": color, "value": value} for value, color in steps]}


def _panel_json(panel: Panel, ident: int, x: int, y: int) -> dict[str, Any]:
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    defaults: dict[str, Any] = {"unit": panel.unit, "mappings": panel.mappings,
                                "thresholds": _thresholds(panel.thresholds)}
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    options: dict[str, Any]
    if panel.kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 25 if panel.stack else 10,
            "showPoints": "never", "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
        }
        options = {"legend": {"displayMode": "list", "placement": "bottom",
                              "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}
    elif panel.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "colorMode": "background", "graphMode": "none", "justifyMode": "center",
                   "orientation": "auto", "textMode": panel.text_mode}
    elif panel.kind == "table":
        options = {"showHeader": True, "cellHeight": "sm",
                   "footer": {"show": False, "reducer": ["sum"], "fields": ""}}
    elif panel.kind == "heatmap":
        options = {"calculate": False, "cellGap": 1, "color": {"mode": "scheme",
                                                                "scheme": "Oranges",
                                                                "steps": 64},
                   "yAxis": {"unit": panel.unit}, "legend": {"show": True},
                   "tooltip": {"mode": "single", "yHistogram": True},
                   "rowsFrame": {"layout": "auto"}}
    else:  # bargauge
        defaults["color"] = {"mode": "thresholds"}
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "orientation": "horizontal", "displayMode": "gradient",
                   "showUnfilled": True}
    doc: dict[str, Any] = {
        "id": ident,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DS,
        "gridPos": {"h": panel.h, "w": panel.w, "x": x, "y": y},
        "targets": [t.json(refs[i]) for i, t in enumerate(panel.targets)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
    }
    if panel.kind == "table" and len(panel.targets) > 1:
        doc["transformations"] = [{"id": "merge", "options": {}},
                                  {"id": "organize", "options": {
                                      "excludeByName": {"Time": True}}}]
    elif panel.kind == "table":
        doc["transformations"] = [{"id": "organize", "options": {
            "excludeByName": {"Time": True, "Value": True}}}]
    return doc


def _layout(items: list[Panel | Row]) -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    x = y = 0
    row_h = 0
    ident = 1
    for item in items:
        if isinstance(item, Row):
            if x:
                y += row_h
            x, row_h = 0, 0
            panels.append({"id": ident, "type": "row", "title": item.title, "collapsed": False,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            y += 1
        else:
            if x + item.w > 24:
                x, y = 0, y + row_h
                row_h = 0
            panels.append(_panel_json(item, ident, x, y))
            x += item.w
            row_h = max(row_h, item.h)
        ident += 1
    return panels


def _variable_query(name: str, label: str, query: str, *, include_all: bool) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-variable", "qryType": 1},
        "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": [], "current": {},
        "includeAll": include_all, "multi": include_all,
    }
    if include_all:
        doc["allValue"] = ".*"
    return doc


def dashboard(uid: str, title: str, description: str, items: list[Panel | Row],
              variables: list[dict[str, Any]], tags: list[str]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["lockcell", *tags],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "lockcell dashboards", "type": "dashboards", "tags": ["lockcell"],
                   "asDropdown": True, "includeVars": True, "keepTime": True}],
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "refresh": 1, "hide": 0, "regex": "", "options": [],
             "current": {}},
            *variables,
        ]},
        "panels": _layout(items),
    }


def cell_variables() -> list[dict[str, Any]]:
    return [
        _variable_query("namespace", "Namespace", "label_values(lockcell_member_info, namespace)",
                        include_all=False),
        _variable_query("cell", "Cell",
                        'label_values(lockcell_member_info{namespace=~"$namespace"}, cell)',
                        include_all=False),
    ]


def q(expr: str, legend: str = "") -> Target:
    return Target(expr, legend)


def p99(metric: str, by: str = "", selector: str = C, quantile: str = "0.99") -> str:
    group = f"{by}, le" if by else "le"
    matchers = f"{{{selector}}}" if selector else ""
    return (f"histogram_quantile({quantile}, sum by ({group}) "
            f"(rate({metric}_bucket{matchers}[{RI}])))")


YES_NO = [{"type": "value", "options": {
    "0": {"text": "NO", "color": "red", "index": 0},
    "1": {"text": "yes", "color": "green", "index": 1}}}]


def cell_overview() -> dict[str, Any]:
    items: list[Panel | Row] = [
        Row("Quorum and leader"),
        Panel("Leader known", [q(f"min(lockcell_raft_has_leader{{{C}}})")], "stat",
              w=4, h=4, mappings=YES_NO, thresholds=[(None, "red"), (1, "green")],
              description="1 when every scraped member knows a leader."),
        Panel("Quorum", [q(f"max(lockcell_raft_quorum_active{{{C}}})")],
              "stat", w=4, h=4, thresholds=[(None, "red"), (1, "green")],
              mappings=[{"type": "value", "options": {
                  "0": {"text": "AT RISK", "color": "red", "index": 0},
                  "1": {"text": "quorum", "color": "green", "index": 1}}}],
              description="1 when a leader exists and a majority of the voters (of both "
                          "configurations while joint) answered it within an election "
                          "timeout."),
        Panel("Leader", [Target(
            f"max by (instance) (lockcell_raft_role{{{C}, role=\"leader\"}}) == 1",
            "{{instance}}", instant=True)], "stat", w=6, h=4, text_mode="name",
            thresholds=[(None, "blue")], description="The member that leads now."),
        Panel("Term", [q(f"max(lockcell_raft_term{{{C}}})")], "stat", w=3, h=4,
              thresholds=[(None, "blue")]),
        Panel("Leader changes (1h)", [q(
            f"max(increase(lockcell_raft_leader_changes_total{{{C}}}[1h]))")], "stat",
            w=4, h=4, decimals=0, thresholds=[(None, "green"), (2, "orange"), (5, "red")]),
        Panel("Joint configuration", [q(f"max(lockcell_raft_joint{{{C}}})")], "stat", w=3,
              h=4, thresholds=[(None, "green"), (1, "orange")],
              mappings=[{"type": "value", "options": {
                  "0": {"text": "no", "color": "green", "index": 0},
                  "1": {"text": "joint", "color": "orange", "index": 1}}}]),
        Row("Members"),
        Panel("Members", [
            Target(f"max by (instance, role) (lockcell_raft_role{{{C}}}) == 1", instant=True,
                   table=True),
            Target(f"max by (instance) (lockcell_raft_term{{{C}}})", instant=True, table=True),
            Target(f"max by (instance) (lockcell_raft_applied_index{{{C}}})", instant=True,
                   table=True),
            Target(f"max by (instance, member) (lockcell_member_info{{{C}}})", instant=True,
                   table=True),
        ], "table", w=12, h=8,
            description="Every scraped member: its Raft role, term, applied index and id."),
        Panel("Members by role", [
            q(f"max by (role) (lockcell_raft_members{{{C}}})", "{{role}}s"),
            q(f"max(lockcell_raft_voters_active{{{C}}})", "voters answering the leader"),
        ], "timeseries", w=12, h=8, decimals=0,
            description="The configuration's voters and learners (joint: old and new voters "
                        "together), and the voters the leader heard from recently."),
        Row("Writes"),
        Panel("Writes by command", [q(
            f"sum by (command) (rate(lockcell_write_seconds_count{{{C}}}[{RI}]))",
            "{{command}}")], unit="ops", stack=True, w=8,
            description="Commands the leader committed, by type."),
        Panel("Write latency", [
            q(p99("lockcell_write_seconds"), "p99"),
            q(p99("lockcell_write_seconds", quantile="0.5"), "p50"),
        ], unit="s", w=8, description="Leader: proposal to applied result."),
        Panel("WAL fsync p99 by member", [q(p99("lockcell_wal_fsync_seconds", "instance"),
                                            "{{instance}}")], unit="s", w=8),
        Panel("Proposals by result", [q(
            f"sum by (result) (rate(lockcell_raft_proposals_total{{{C}}}[{RI}]))",
            "{{result}}")], unit="ops", w=12, stack=True),
        Panel("Commit rate", [q(
            f"max(deriv(lockcell_raft_commit_index{{{C}}}[{RI}]))", "entries/s")],
            unit="ops", w=12, description="Log entries committed per second."),
        Row("Sessions"),
        Panel("Sessions", [
            q(f"max(lockcell_sessions{{{C}}})", "live"),
            q(f"max(lockcell_session_tombstones{{{C}}})", "tombstones"),
        ], w=8, decimals=0),
        Panel("KeepAlives and expiries", [
            q(f"sum(rate(lockcell_keepalives_total{{{C}}}[{RI}]))", "keepalives"),
            q(f"sum(rate(lockcell_sessions_expired_total{{{C}}}[{RI}]))", "expiries"),
        ], unit="ops", w=8),
        Panel("Events to clients by type", [q(
            f"sum by (type) (rate(lockcell_events_total{{{C}}}[{RI}]))", "{{type}}")],
            unit="ops", w=8, stack=True),
        Row("Locks"),
        Panel("Locks held by mode", [q(f"max by (mode) (lockcell_locks_held{{{C}}})",
                                       "{{mode}}")], w=6, decimals=0),
        Panel("Waiters", [q(f"sum(lockcell_lock_waiters{{{C}}})", "queued acquires")], w=6,
              decimals=0, description="Blocking Acquires queued at the leader."),
        Panel("Acquire latency p99 (granted)", [q(p99(
            "lockcell_lock_acquire_seconds", "mode", f'{C}, result="granted"'), "{{mode}}")],
            unit="s", w=6, description="Waiting included."),
        Panel("Acquires by result", [q(
            f"sum by (result) (rate(lockcell_lock_acquire_seconds_count{{{C}}}[{RI}]))",
            "{{result}}")], unit="ops", w=6, stack=True),
        Panel("Lock-delay blocks", [q(
            f"sum(rate(lockcell_lock_delay_blocks_total{{{C}}}[{RI}]))", "blocked")],
            unit="ops", w=8),
        Panel("Handles and nodes", [
            q(f"max(lockcell_handles{{{C}}})", "handles"),
            q(f"max(lockcell_nodes{{{C}}})", "nodes"),
        ], w=8, decimals=0),
        Panel("Shared holders", [q(f"max(lockcell_lock_shared_holders{{{C}}})", "holders")],
              w=8, decimals=0),
        Row("Errors and HTTP"),
        Panel("Server error ratio", [q(
            f"sum(rate(lockcell_http_requests_total{{{C}, code=~\"5..\"}}[{RI}])) / "
            f"sum(rate(lockcell_http_requests_total{{{C}}}[{RI}]))")], "stat", unit="percentunit",
            w=4, h=8, thresholds=[(None, "green"), (0.01, "orange"), (0.05, "red")]),
        Panel("5xx by route", [q(
            f"sum by (route, code) (rate(lockcell_http_requests_total{{{C}, "
            f"code=~\"5..\"}}[{RI}]))", "{{route}} {{code}}")], unit="reqps", w=10),
        Panel("4xx by route", [q(
            f"sum by (route, code) (rate(lockcell_http_requests_total{{{C}, "
            f"code=~\"4..\"}}[{RI}]))", "{{route}} {{code}}")], unit="reqps", w=10,
            description="409 from acquire is lock_busy or lock_delay: normal under "
                        "contention."),
        Panel("Requests by route", [q(
            f"sum by (route) (rate(lockcell_http_requests_total{{{C}}}[{RI}]))",
            "{{route}}")], unit="reqps", w=12, stack=True),
        Panel("Latency p99 by route (KeepAlive long polls left out)", [q(p99(
            "lockcell_http_request_seconds", "route", f'{C}, route!="keepalive"'),
            "{{route}}")], unit="s", w=12),
    ]
    return dashboard("lockcell-cell-overview", "lockcell / Cell overview",
                     "Quorum, leader, members, writes, sessions, locks and errors of a cell.",
                     items, cell_variables(), ["overview"])


def raft_internals() -> dict[str, Any]:
    items: list[Panel | Row] = [
        Row("Replication"),
        Panel("Replication lag per member (leader's view)", [q(
            f"max by (member) (lockcell_raft_follower_lag_entries{{{C}}})", "{{member}}")],
            w=12, decimals=0, description="Entries between the leader's last index and each "
                                          "member's match index."),
        Panel("Answering the leader", [q(
            f"max by (member) (lockcell_raft_follower_active{{{C}}})", "{{member}}")],
            w=12, min=0, max=1, decimals=0,
            description="1 while the member answered within an election timeout."),
        Panel("Commit minus applied per member", [q(
            f"lockcell_raft_commit_index{{{C}}} - lockcell_raft_applied_index{{{C}}}",
            "{{instance}}")], w=8, decimals=0),
        Panel("Applied entries per second", [q(
            f"deriv(lockcell_raft_applied_index{{{C}}}[{RI}])", "{{instance}}")], unit="ops",
            w=8),
        Panel("Log entries since the last snapshot", [q(
            f"lockcell_raft_last_index{{{C}}} - lockcell_raft_snapshot_index{{{C}}}",
            "{{instance}}")], w=8, decimals=0),
        Row("WAL"),
        Panel("Append batch size", [
            q(p99("lockcell_wal_append_batch_entries", quantile="0.5"), "p50"),
            q(p99("lockcell_wal_append_batch_entries"), "p99"),
            q(f"sum(rate(lockcell_wal_append_batch_entries_sum{{{C}}}[{RI}])) / "
              f"sum(rate(lockcell_wal_append_batch_entries_count{{{C}}}[{RI}]))", "mean"),
        ], w=8, description="Entries per WAL write: group commit at work."),
        Panel("fsyncs per second", [q(
            f"rate(lockcell_wal_fsync_seconds_count{{{C}}}[{RI}])", "{{instance}}")],
            unit="ops", w=8),
        Panel("fsync latency", [Target(
            f"sum by (le) (increase(lockcell_wal_fsync_seconds_bucket{{{C}}}[{RI}]))",
            "{{le}}", heatmap=True)], "heatmap", unit="s", w=8),
        Row("Snapshots"),
        Panel("Snapshot duration (mean)", [
            q(f"rate(lockcell_snapshot_seconds_sum{{{C}}}[{RI}]) / "
              f"rate(lockcell_snapshot_seconds_count{{{C}}}[{RI}])", "take {{instance}}"),
            q(f"rate(lockcell_snapshot_restore_seconds_sum{{{C}}}[{RI}]) / "
              f"rate(lockcell_snapshot_restore_seconds_count{{{C}}}[{RI}])",
              "install {{instance}}"),
        ], unit="s", w=8),
        Panel("Snapshots taken and installed", [
            q(f"increase(lockcell_snapshot_seconds_count{{{C}}}[{RI}])", "taken {{instance}}"),
            q(f"increase(lockcell_snapshot_restore_seconds_count{{{C}}}[{RI}])",
              "installed {{instance}}"),
        ], w=8, decimals=0),
        Panel("Snapshot size", [q(f"lockcell_snapshot_bytes{{{C}}}", "{{instance}}")],
              unit="bytes", w=8),
        Row("Event loop and garbage collector"),
        Panel("Event loop lag (p99 of ticker wake-ups)", [q(
            p99("lockcell_event_loop_lag_seconds", by="instance"), "{{instance}}")],
            unit="s", w=8, description="How late the Raft ticker woke. Near an election "
                                       "timeout (1 s by default) followers stop hearing the "
                                       "leader and elect another."),
        Panel("Collector pauses per second", [q(
            f"sum by (instance, generation) "
            f"(rate(lockcell_gc_pause_seconds_sum{{{C}}}[{RI}]))",
            "{{instance}} gen {{generation}}")], unit="s", w=8,
            description="Seconds per second the cyclic garbage collector stopped the loop; "
                        "settled state is frozen out of it."),
        Panel("Snapshot failures", [q(
            f"increase(lockcell_snapshot_failures_total{{{C}}}[{RI}])", "{{instance}}")],
            w=8, decimals=0, description="Images that could not be built or staged (retried "
                                         "at the next threshold); the member logs why."),
        Row("Elections and membership"),
        Panel("Elections started", [q(
            f"sum by (instance, role) (increase(lockcell_raft_role_changes_total{{{C}, "
            f"role=~\"pre_candidate|candidate\"}}[{RI}]))", "{{instance}} {{role}}")],
            w=8, decimals=0, description="PreVote rounds (pre_candidate) and real elections "
                                         "(candidate) each member started."),
        Panel("Leader changes seen", [q(
            f"increase(lockcell_raft_leader_changes_total{{{C}}}[{RI}])", "{{instance}}")],
            w=8, decimals=0),
        Panel("Term by member", [q(f"lockcell_raft_term{{{C}}}", "{{instance}}")], w=8,
              decimals=0),
        Panel("Membership changes applied", [q(
            f"max(increase(lockcell_raft_conf_changes_total{{{C}}}[{RI}]))", "changes")],
            w=8, decimals=0),
        Panel("Joint configuration", [q(f"max(lockcell_raft_joint{{{C}}})", "joint")], w=8,
              min=0, max=1, decimals=0),
        Panel("Leader lease held", [q(f"max by (instance) (lockcell_raft_leader_lease{{{C}}})",
                                      "{{instance}}")], w=8, min=0, max=1, decimals=0),
        Row("Process"),
        Panel("CPU", [q(f"rate(lockcell_process_cpu_seconds_total{{{C}}}[{RI}])",
                        "{{instance}}")], unit="percentunit", w=12),
        Panel("Resident memory", [q(f"lockcell_process_resident_memory_bytes{{{C}}}",
                                    "{{instance}}")], unit="bytes", w=12),
    ]
    return dashboard("lockcell-raft-internals", "lockcell / Raft internals",
                     "Replication lag, WAL batching and fsync, snapshots, elections.",
                     items, cell_variables(), ["raft"])


def operator() -> dict[str, Any]:
    catch_up = 'reason="LearnerCatchingUp"'
    items: list[Panel | Row] = [
        Row("Cells"),
        Panel("Cells reconciled", [q("max(lockcell_operator_cells)")], "stat", w=4, h=6,
              thresholds=[(None, "blue")], decimals=0),
        Panel("Phase", [Target(
            f"max by (cell_namespace, cell, phase) (lockcell_operator_cell_phase{{{OP}}}) == 1",
            instant=True, table=True)], "table", w=8, h=6),
        Panel("Replicas", [q(
            f"max by (cell, kind) (lockcell_operator_cell_replicas{{{OP}}})",
            "{{cell}} {{kind}}")], w=12, h=6, decimals=0),
        Row("Reconciles"),
        Panel("Reconciles by result", [q(
            f"sum by (result) (rate(lockcell_operator_reconciles_total{{{OP}}}[{RI}]))",
            "{{result}}")], unit="ops", w=12, stack=True),
        Panel("Reconcile duration", [
            q(p99("lockcell_operator_reconcile_seconds", selector=""), "p99"),
            q(p99("lockcell_operator_reconcile_seconds", selector="", quantile="0.5"), "p50"),
        ], unit="s", w=12),
        Row("Membership steps"),
        Panel("Steps by kind", [q(
            f"sum by (kind) (increase(lockcell_operator_membership_steps_total{{{OP}, "
            f"result=\"ok\"}}[{RI}]))", "{{kind}}")], w=12, decimals=0, stack=True),
        Panel("Failed steps", [q(
            f"sum by (kind) (increase(lockcell_operator_membership_steps_total{{{OP}, "
            f"result=\"failed\"}}[{RI}]))", "{{kind}}")], w=12, decimals=0),
        Row("Waits"),
        Panel("Waiting now", [q(
            f"max by (cell, reason) (lockcell_operator_waiting_seconds{{{OP}}})",
            "{{cell}} {{reason}}")], unit="s", w=12,
            description="How long each cell has been waiting, and why."),
        Panel("Waiting passes by reason", [q(
            f"sum by (reason) (rate(lockcell_operator_waits_total{{{OP}}}[{RI}]))",
            "{{reason}}")], unit="ops", w=12, stack=True),
        Panel("Catch-up waits (p50, p90)", [
            q(p99("lockcell_operator_wait_duration_seconds", selector=catch_up,
                  quantile="0.9"), "p90"),
            q(p99("lockcell_operator_wait_duration_seconds", selector=catch_up,
                  quantile="0.5"), "p50"),
        ], unit="s", w=12, description="How long promoting a new learner waited for it to "
                                       "catch up."),
        Panel("Mean wait by reason (time range)", [q(
            "sum by (reason) (increase(lockcell_operator_wait_duration_seconds_sum[$__range]))"
            " / sum by (reason) (increase(lockcell_operator_wait_duration_seconds_count"
            "[$__range]))", "{{reason}}")], "bargauge", unit="s", w=12),
    ]
    variables = [
        _variable_query("namespace", "Namespace",
                        "label_values(lockcell_operator_reconciles_total, cell_namespace)",
                        include_all=True),
        _variable_query("cell", "Cell",
                        "label_values(lockcell_operator_reconciles_total"
                        '{cell_namespace=~"$namespace"}, cell)', include_all=True),
    ]
    return dashboard("lockcell-operator", "lockcell / Operator",
                     "Reconcile passes, membership steps and waits of the lockcell operator.",
                     items, variables, ["operator"])


DASHBOARDS = {
    "cell-overview.json": cell_overview,
    "raft-internals.json": raft_internals,
    "operator.json": operator,
}


def render() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {name: json.dumps(make(), indent=2, ensure_ascii=False) + "\n"
            for name, make in DASHBOARDS.items()}


def check() -> list[str]:
    """What is out of date (empty: everything is)."""
    problems = []
    for name, text in render().items():
        for folder in (OUT, CHART_COPY):
            path = folder / name
            if not path.exists() or path.read_text() != text:
                problems.append(f"{path.relative_to(ROOT)} is out of date")
    for folder in (OUT, CHART_COPY):
        for path in sorted(folder.glob("*.json")):
            if path.name not in DASHBOARDS:
                problems.append(f"{path.relative_to(ROOT)} is not generated by this script")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check, write nothing")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("run: python3 tools/dashboards.py", file=sys.stderr)
        return 1 if problems else 0
    for folder in (OUT, CHART_COPY):
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in render().items():
            (folder / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
