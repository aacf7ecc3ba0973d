"""A background sampler: the leader's lease and term, and this process's event-loop lag."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from bench.api import TRANSPORT_ERRORS, Api, ApiError

SAMPLE_S = 1.0
LEADS = 'lockcell_raft_role{role="leader"}'
METRICS = ["lockcell_raft_leader_lease", "lockcell_raft_term", "lockcell_sessions", LEADS]


@dataclass(frozen=True)
class Observation:
    """What the sampler saw over a run."""

    samples: int
    lease_lapses: int
    """Samples in which the observed member led but did not hold its leader lease."""
    not_leading: int
    """Samples in which the observed member (the leader at the start) no longer led."""
    unanswered: int
    """Samples in which the leader's /metrics did not answer within a second."""
    terms: tuple[float, float]
    max_sessions: float
    max_loop_lag_s: float
    """Largest delay of this process's own wake-ups (the load generator starved of CPU)."""

    def note(self) -> str:
        """A short summary for the table."""
        return (f"leader lease lapsed in {self.lease_lapses}/{self.samples} samples, "
                f"first leader not leading in {self.not_leading}, "
                f"/metrics unanswered {self.unanswered}; harness loop lag max "
                f"{self.max_loop_lag_s:.1f} s")


@dataclass
class Observer:
    """Samples once a second until stopped."""

    api: Api
    _samples: list[dict[str, float]] = field(default_factory=list)
    _unanswered: int = 0
    _lag: float = 0.0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin sampling."""
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            due = time.perf_counter() + SAMPLE_S
            await asyncio.sleep(SAMPLE_S)
            self._lag = max(self._lag, time.perf_counter() - due)
            try:
                async with asyncio.timeout(1.0):
                    self._samples.append(await self.api.metrics(METRICS))
            except (ApiError, *TRANSPORT_ERRORS, ValueError):
                self._unanswered += 1

    async def stop(self) -> Observation:
        """Stop sampling; what was seen."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        s = self._samples
        terms = (s[0]["lockcell_raft_term"], s[-1]["lockcell_raft_term"]) if s else (0.0, 0.0)
        return Observation(
            len(s) + self._unanswered,
            sum(1 for x in s if x[LEADS] >= 1 and x["lockcell_raft_leader_lease"] < 1),
            sum(1 for x in s if x[LEADS] < 1), self._unanswered, terms,
            max((x["lockcell_sessions"] for x in s), default=0.0), round(self._lag, 2))
