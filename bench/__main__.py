"""Run every benchmark, print a table and write bench/results/latest.json."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from bench import cell_bench, raft_bench


def main() -> None:
    """`make bench`."""
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="short runs (for smoke tests)")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for batch in (1, 16, 256):
        rows.append(raft_bench.run(quick=args.quick, batch=batch))
    try:
        from bench import storage_bench

        rows.extend(storage_bench.run(quick=args.quick))
    except ImportError:
        pass
    rows.extend(cell_bench.run(quick=args.quick))
    for row in rows:
        print(json.dumps(row))
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    doc = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.node(),
           "python": platform.python_version(), "results": rows}
    (out / "latest.json").write_text(json.dumps(doc, indent=2))
    print(f"wrote {out / 'latest.json'}")


if __name__ == "__main__":
    main()
