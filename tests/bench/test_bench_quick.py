"""`python -m bench --quick` runs every workload end to end and reports sane figures."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import config as bench_config
from bench import workloads

REPO = Path(__file__).resolve().parents[2]

# --quick, cut further so the whole run stays well under two minutes on a busy 2-core machine
SMALL = ["--quick", "--window", "1", "--keepalive-seconds", "2", "--longpoll-sessions", "300",
         "--longpoll-seconds", "8", "--longpoll-lease-ms", "3000", "--failover-trials", "2",
         "--files", "2000", "--restart-writes", "200"]


def test_quick_run(tmp_path: Path) -> None:
    """One run (a single test, so pytest-xdist never starts it twice), every check on it."""
    out = tmp_path / "latest.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench", *SMALL, "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    # exit status 1 only says some check failed; the checks below say which must not
    assert result.returncode in (0, 1), result.stderr[-4000:]
    assert out.exists(), result.stderr[-4000:]
    run = (result.stdout, json.loads(out.read_text()))
    _every_workload_is_in_the_table_and_the_file(run)
    _throughput_workloads_made_progress(run)
    _wakeup_probe_measured_each_placement(run)
    _contended_lock_reports_fifo_and_exclusion(run)
    _no_session_is_lost(run)
    _failover_files_and_restart(run)


def _rows(doc: dict[str, Any], group: str) -> list[dict[str, Any]]:
    rows = [r for r in doc["results"] if r["group"] == group]
    assert rows, f"no result for {group}"
    for row in rows:
        assert not row["notes"].startswith("FAILED"), row
    return rows


def _every_workload_is_in_the_table_and_the_file(
        run: tuple[str, dict[str, Any]]) -> None:
    table, doc = run
    assert doc["parameters"]["quick"] is True
    assert doc["parameters"]["files"] == 2000
    assert {r["group"] for r in doc["results"]} == {w.name for w in workloads.WORKLOADS}
    for header in ("workload", "clients/size", "ops/s", "p50 ms", "p99 ms", "CPU %", "RSS MiB"):
        assert header in table
    for row in doc["results"]:
        assert row["workload"] in table


def _throughput_workloads_made_progress(run: tuple[str, dict[str, Any]]) -> None:
    _, doc = run
    for group in ("raft", "storage", "uncontended", "writes", "contended", "scale", "files"):
        for row in _rows(doc, group):
            assert row["ops_per_s"] > 0, row
    sizes = {r["size"] for r in _rows(doc, "uncontended")}
    assert sizes == {"1 client", "64 clients"}
    for row in _rows(doc, "uncontended") + _rows(doc, "writes") + _rows(doc, "scale"):
        assert row["p50_ms"] > 0 and row["p99_ms"] >= row["p50_ms"], row
        assert row["cpu_pct"] > 0, row
        assert row["figures"]["errors"] == 0, row
    assert [r["figures"]["replicas"] for r in _rows(doc, "scale")] == [5]


def _wakeup_probe_measured_each_placement(run: tuple[str, dict[str, Any]]) -> None:
    _, doc = run
    rows = {r["size"]: r for r in _rows(doc, "wakeup")}
    assert set(rows) == {"other CPU", "same CPU", "unpinned"}
    for placement, row in rows.items():
        if placement == "other CPU" and "skipped" in row["figures"]:
            continue  # a one-CPU machine
        figures = row["figures"]
        assert row["ops_per_s"] > 0 and figures["p99_us"] >= figures["p50_us"] > 0, row
        assert figures["caller_cpu_us"] > 0 and figures["echo_cpu_us"] > 0, row


def _contended_lock_reports_fifo_and_exclusion(
        run: tuple[str, dict[str, Any]]) -> None:
    _, doc = run
    (row,) = _rows(doc, "contended")
    figures = row["figures"]
    assert isinstance(figures["fifo_fair"], bool)
    assert len(figures["per_client_counts"]) == 64
    assert figures["overlaps"] == 0 and figures["generation_errors"] == 0
    assert "FIFO" in row["notes"]


def _no_session_is_lost(run: tuple[str, dict[str, Any]]) -> None:
    _, doc = run
    (keepalive,) = _rows(doc, "keepalive")
    assert keepalive["figures"]["lost"] == 0 and keepalive["figures"]["expired_by_server"] == 0
    assert keepalive["ops_per_s"] > 0.8 * keepalive["figures"]["target_per_s"]
    assert keepalive["cpu_pct"] > 0
    (longpoll,) = _rows(doc, "longpoll")
    assert longpoll["figures"]["lost"] == 0 and longpoll["figures"]["expired_by_server"] == 0
    assert longpoll["figures"]["renewals"] >= 300  # every session renewed at least once
    assert longpoll["ok"] and longpoll["rss_mib"] > 0 and longpoll["cpu_pct"] >= 0


def _failover_files_and_restart(run: tuple[str, dict[str, Any]]) -> None:
    _, doc = run
    for group in ("failover", "handover"):
        (failover,) = _rows(doc, group)
        assert failover["figures"]["trials"] == 2
        assert failover["figures"]["succeeded"] == 2
        assert 0 < failover["figures"]["median_s"] <= failover["figures"]["max_s"] < 60
    (files,) = _rows(doc, "files")
    assert files["figures"]["files"] == 2000
    assert files["figures"]["leader_rss_mib"] > 0 and files["figures"]["follower_rss_mib"] > 0
    (restart,) = _rows(doc, "restart")
    assert restart["figures"]["caught_up"] is True
    assert restart["figures"]["ready_s"] > 0


def test_only_and_overrides() -> None:
    assert [w.name for w in workloads.select("scale,uncontended")] == ["uncontended", "scale"]
    with pytest.raises(ValueError):
        workloads.select("nope")
    parser = argparse.ArgumentParser()
    bench_config.add_arguments(parser)
    full = bench_config.from_arguments(parser.parse_args([]))
    assert (full.files, full.longpoll_sessions, full.failover_trials) == (1_000_000, 10000, 20)
    quick = bench_config.from_arguments(parser.parse_args(
        ["--quick", "--files", "77", "--scale-sizes", "5,7"]))
    assert quick.quick and quick.files == 77 and quick.scale_sizes == (5, 7)
    assert quick.longpoll_sessions == 1000
