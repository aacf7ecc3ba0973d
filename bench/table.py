"""The human-readable results table."""

from __future__ import annotations

from collections.abc import Sequence

from bench.results import Result

HEADERS = ("workload", "clients/size", "ops/s", "p50 ms", "p99 ms", "CPU %", "RSS MiB", "ok",
           "notes")


def render(results: Sequence[Result]) -> str:
    """A fixed-width table, one line per result, notes last and unbounded."""
    rows = [HEADERS] + [_cells(r) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADERS) - 1)]
    lines = []
    for n, row in enumerate(rows):
        cells = [c.ljust(w) if i < 2 or i == 7 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=False))]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  -----")
    return "\n".join(lines)


def markdown(results: Sequence[Result]) -> str:
    """The same table in Markdown (for RESULTS.md)."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r)) + " |" for r in results]
    return "\n".join(lines)


def _cells(r: Result) -> tuple[str, ...]:
    cpu = "" if r.cpu_pct is None else f"{r.cpu_pct:.1f}" + (f" ({r.cpu_of})" if r.cpu_of else "")
    rss = "" if r.rss_mib is None else f"{r.rss_mib:.1f}" + (f" ({r.rss_of})" if r.rss_of else "")
    return (r.workload, r.size, _num(r.ops_per_s), _num(r.p50_ms), _num(r.p99_ms), cpu, rss,
            "yes" if r.ok else "NO", r.notes)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"
