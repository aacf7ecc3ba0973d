"""Longer chaos runs: `python -m tests.chaos.run --duration 60 --seeds 3 [--faults a,b]`.

Writes one JSON report per run (per scenario: faults, operation counts, verdicts, problems)
under --out (default tests/chaos/reports/<timestamp>/), keeps the full history and the
member logs of any failed scenario next to it for replay (tests.chaos.checkers), writes
``report.md`` (a Markdown table: fault kind x runs x operations checked x violations, and
wall time) and prints it, and exits 1 if any scenario failed.

Fault kinds (tests.chaos.harness.FAULT_KINDS): kill_leader, kill_follower, pause,
partition (between replicas), client_partition (between the clients and replicas: from
the leader, from every member, or from one follower), delay_loss, torn_wal, restart_all,
membership, crash_point, and mixed (each injection another kind).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .harness import FAULT_KINDS, ScenarioReport, run_scenario


@dataclass
class KindTotals:
    """What the runs of one fault kind checked and found."""

    runs: int = 0
    failed: int = 0
    faults: int = 0
    register_ops: int = 0
    fenced_writes: int = 0
    fenced_refused: int = 0
    session_probes: int = 0
    violations: int = 0
    errors: int = 0
    wall_s: float = 0.0
    histories: list[str] = field(default_factory=list)

    def add(self, report: ScenarioReport) -> None:
        counts = report.counts
        self.runs += 1
        self.failed += not report.ok
        self.faults += len(report.injected)
        self.register_ops += counts.get("register_checked", 0)
        self.fenced_writes += counts.get("fenced_writes", 0)
        self.fenced_refused += counts.get("admissions_refused", 0)
        self.session_probes += counts.get("session_checks", 0)
        self.violations += report.violations
        self.errors += len(report.problems) - report.violations
        self.wall_s += report.wall_s
        if report.history_file:
            self.histories.append(report.history_file)


def markdown(totals: dict[str, KindTotals], duration: float, seeds: int, wall_s: float) -> str:
    """The campaign's table (one row per fault kind, and a total)."""
    head = ("| fault kind | runs | faults injected | register ops | fenced writes (refused) "
            "| session probes | violations | failed runs | wall time |")
    lines = [f"# Chaos campaign: {duration:g} s of faults per run, seeds 1..{seeds}", "",
             head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    total = KindTotals()
    for kind, t in totals.items():
        lines.append(f"| {kind} | {t.runs} | {t.faults} | {t.register_ops} | "
                     f"{t.fenced_writes} ({t.fenced_refused}) | {t.session_probes} | "
                     f"{t.violations} | {t.failed} | {t.wall_s:.0f} s |")
        for name in ("runs", "failed", "faults", "register_ops", "fenced_writes",
                     "fenced_refused", "session_probes", "violations", "errors"):
            setattr(total, name, getattr(total, name) + getattr(t, name))
    lines.append(f"| **total** | {total.runs} | {total.faults} | {total.register_ops} | "
                 f"{total.fenced_writes} ({total.fenced_refused}) | {total.session_probes} | "
                 f"{total.violations} | {total.failed} | {wall_s:.0f} s |")
    lines += ["", "register ops: operations the linearizability checker took in; fenced "
              "writes: requests the resource server process admitted or refused (lock "
              "safety); session probes: checks on abandoned sessions (ephemeral files, "
              "lock-delay); violations: problems the checkers found; a failed run without "
              f"violations hit a harness error. {total.errors} harness error(s)."]
    histories = [h for t in totals.values() for h in t.histories]
    if histories:
        lines += ["", "Kept histories:", *(f"- `{h}`" for h in histories)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of faults per run")
    ap.add_argument("--seeds", type=int, default=1, help="runs per fault kind (seeds 1..N)")
    ap.add_argument("--faults", default=",".join(FAULT_KINDS),
                    help="comma-separated fault kinds (default: all of them): "
                         + ", ".join(FAULT_KINDS) + "; client_partition cuts the clients "
                         "(not the replicas) off from the leader, from every member for "
                         "longer than a lease, or from one follower")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or f"tests/chaos/reports/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    campaign_started = time.monotonic()
    totals: dict[str, KindTotals] = {}
    for fault in args.faults.split(","):
        kind = totals.setdefault(fault, KindTotals())
        for seed in range(1, args.seeds + 1):
            with tempfile.TemporaryDirectory(prefix=f"chaos-{fault}-") as tmp:
                report = run_scenario(Path(tmp), fault, seed=seed, duration=args.duration,
                                      keep_history=out / "histories")
            doc = report.to_json() | {"ok": report.ok}
            (out / f"{fault}-seed{seed}.json").write_text(json.dumps(doc, indent=1))
            kind.add(report)
            print(f"{fault:14} seed {seed}: {'ok' if report.ok else 'FAIL'} "
                  f"({report.wall_s:.0f} s) {report.counts}", flush=True)
            for problem in report.problems[:5]:
                print("   ", problem[:300], flush=True)
    table = markdown(totals, args.duration, args.seeds, time.monotonic() - campaign_started)
    (out / "report.md").write_text(table)
    print()
    print(table)
    failed = sum(t.failed for t in totals.values())
    runs = sum(t.runs for t in totals.values())
    print(f"reports in {out}; {failed} failed of {runs}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
