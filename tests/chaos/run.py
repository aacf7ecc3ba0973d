"""Longer chaos runs: `python -m tests.chaos.run --duration 60 --seeds 3 [--faults a,b]`.

Writes one JSON report per run (per scenario: faults, operation counts, verdicts, problems)
under --out (default tests/chaos/reports/<timestamp>/), keeps the full history of any
failed scenario next to it for replay (tests.chaos.checkers.load_history), prints a table,
and exits 1 if any scenario failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from .harness import FAULT_KINDS, run_scenario


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of faults per run")
    ap.add_argument("--seeds", type=int, default=1, help="runs per fault kind (seeds 1..N)")
    ap.add_argument("--faults", default=",".join(FAULT_KINDS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out or f"tests/chaos/reports/{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    rows = []
    for fault in args.faults.split(","):
        for seed in range(1, args.seeds + 1):
            with tempfile.TemporaryDirectory(prefix=f"chaos-{fault}-") as tmp:
                started = time.monotonic()
                report = run_scenario(Path(tmp), fault, seed=seed, duration=args.duration,
                                      keep_history=out / "histories")
            doc = report.to_json() | {"ok": report.ok,
                                      "wall_s": round(time.monotonic() - started, 1)}
            (out / f"{fault}-seed{seed}.json").write_text(json.dumps(doc, indent=1))
            failed += not report.ok
            rows.append((fault, seed, report.counts.get("faults", 0),
                         report.counts.get("register_ops", 0),
                         report.counts.get("admissions_accepted", 0),
                         "ok" if report.ok else "FAIL"))
            print(f"{fault:14} seed {seed}: {rows[-1][5]} {report.counts}", flush=True)
            for problem in report.problems[:5]:
                print("   ", problem[:300], flush=True)
    summary = out / "summary.txt"
    with summary.open("w") as f:
        f.write("fault seed faults register_ops fenced_writes verdict\n")
        for row in rows:
            f.write(" ".join(map(str, row)) + "\n")
    print(f"reports in {out}; {failed} failed of {len(rows)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
