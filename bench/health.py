"""Server-side counters read around a workload: elections, snapshots, expiries."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from bench.api import TRANSPORT_ERRORS, ApiError
from bench.cells import BenchCell
from bench.context import Context

FAST_SNAPSHOT = 'lockcell_snapshot_seconds_bucket{le="1.0"}'
MEMBER_METRICS = ["lockcell_snapshot_seconds_sum", "lockcell_snapshot_seconds_count",
                  FAST_SNAPSHOT, "lockcell_sessions_expired_total"]


@dataclass(frozen=True)
class Health:
    """The leader's term; snapshots taken and session expiries, summed over the members."""

    term: float
    snapshots: float
    snapshot_seconds: float
    fast_snapshots: float
    """Snapshots that took at most a second, image to installed file (the image is built in
    a forked child, so a longer one no longer holds the event loop)."""
    expired: float

    def since(self, before: Health) -> dict[str, float]:
        """What changed from ``before`` to this reading."""
        taken = self.snapshots - before.snapshots
        spent = self.snapshot_seconds - before.snapshot_seconds
        return {"elections": self.term - before.term, "snapshots": taken,
                "snapshot_mean_s": round(spent / taken, 3) if taken else 0.0,
                "snapshots_over_1s": taken - (self.fast_snapshots - before.fast_snapshots),
                "sessions_expired": self.expired - before.expired}


async def read(ctx: Context, cell: BenchCell) -> Health:
    """A reading: the leader's term; snapshots and session expiries summed over the members.

    Every member snapshots its own state, so snapshot counters are summed over the running
    members (the mean per snapshot stays meaningful when leadership moves).
    """
    totals = dict.fromkeys(MEMBER_METRICS, 0.0)
    for member in cell.running():
        with contextlib.suppress(ApiError, *TRANSPORT_ERRORS, ValueError):
            values = await ctx.api(member).metrics(MEMBER_METRICS)
            for name in MEMBER_METRICS:
                totals[name] += values[name]
    leader = await asyncio.to_thread(cell.leader)
    term = (await ctx.api(leader).metrics(["lockcell_raft_term"]))["lockcell_raft_term"]
    return Health(term, totals["lockcell_snapshot_seconds_count"],
                  totals["lockcell_snapshot_seconds_sum"], totals[FAST_SNAPSHOT],
                  totals["lockcell_sessions_expired_total"])
