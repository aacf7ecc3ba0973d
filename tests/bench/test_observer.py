"""The benchmark's sampler stops when told to, even as a sample arrives at that moment."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from bench.observer import LEADS, Observer

from bench import observer as observer_module

pytestmark = pytest.mark.asyncio

SAMPLE = {"lockcell_raft_leader_lease": 1.0, "lockcell_raft_term": 2.0,
          "lockcell_sessions": 10_000.0, LEADS: 1.0}


class HeldMetrics:
    """Answers /metrics when the test says so."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[dict[str, float]] = (
            asyncio.get_running_loop().create_future())
        self.calls = 0

    async def metrics(self, names: list[str]) -> dict[str, float]:
        self.calls += 1
        return await self.answer


async def test_stop_lands_as_a_sample_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hang a 10,000-session run hit: with ``asyncio.wait_for`` around the request,
    Python 3.11 hands the sample back instead of the cancellation, the sampler goes on
    sampling and ``stop()`` never returns."""
    monkeypatch.setattr(observer_module, "SAMPLE_S", 0.0)
    api = HeldMetrics()
    observer = Observer(api)  # type: ignore[arg-type]
    observer.start()
    for _ in range(5):
        await asyncio.sleep(0)
    assert api.calls == 1  # the first sample waits for its answer
    api.answer.set_result(dict(SAMPLE))
    stopping = asyncio.ensure_future(observer.stop())  # same turn of the loop as the answer
    done, _ = await asyncio.wait({stopping}, timeout=2.0)
    if stopping not in done:
        calls = api.calls
        api.answer = asyncio.get_running_loop().create_future()  # the next request waits,
        assert observer._task is not None
        observer._task.cancel()  # so this cancellation lands, and the test can end
        await stopping
        pytest.fail(f"the sampler kept sampling after stop() ({calls} requests)")
    seen = stopping.result()
    assert seen.samples <= 1 and seen.terms in ((0.0, 0.0), (2.0, 2.0))


async def test_stop_between_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observer_module, "SAMPLE_S", 0.0)
    api = HeldMetrics()
    api.answer.set_result(dict(SAMPLE))
    observer = Observer(api)  # type: ignore[arg-type]
    observer.start()
    for _ in range(20):
        await asyncio.sleep(0)
    async with asyncio.timeout(2.0):
        seen: Any = await observer.stop()
    assert seen.samples >= 2 and seen.lease_lapses == 0 and seen.max_sessions == 10_000.0
