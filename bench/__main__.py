"""`make bench`: run the workloads on local cells, print a table, write the results file."""

from __future__ import annotations

import argparse
import sys
import time

from bench import config as bench_config
from bench import runner, table, workloads
from bench.results import load_results, write_results


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run, print the table, write the JSON; exit 1 if a check failed."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    bench_config.add_arguments(parser)
    parser.add_argument("--only", help="comma-separated workloads: "
                        + ",".join(w.name for w in workloads.WORKLOADS))
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--show", action="store_true",
                        help="print the table of the results file (--out) without running")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other workloads' rows of the results file (runs made "
                             "workload by workload); the table shows the merged file")
    args = parser.parse_args(argv)
    if args.list:
        for w in workloads.WORKLOADS:
            print(f"{w.name:<12} {w.summary}")
        return 0
    config = bench_config.from_arguments(args)
    if args.show:
        shown = load_results(config.out)
        print(table.markdown(shown) if args.markdown else table.render(shown))
        return 0
    try:
        chosen = workloads.select(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    began = time.perf_counter()
    results = runner.run(config, chosen)
    seconds = time.perf_counter() - began
    order = [w.name for w in workloads.WORKLOADS]
    write_results(config, results, seconds, config.out, merge=args.merge, order=order)
    shown = load_results(config.out) if args.merge else results
    print(table.render(shown))
    if args.markdown:
        print()
        print(table.markdown(shown))
    print(f"\n{len(results)} results in {seconds:.0f} s; wrote {config.out}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
