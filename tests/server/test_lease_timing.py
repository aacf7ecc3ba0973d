"""The driver's clock and the leader lease (DESIGN.md §2): ticks are never closer together
than ``tick_ms``, so a follower's promise not to vote lasts as long as the lease assumes."""

from __future__ import annotations

import itertools
import types

import pytest

from lockcell.node import driver as driver_module
from lockcell.node.driver import DriverConfig, RaftDriver


class _Enough(Exception):
    """Raised by the fake wake-up once enough ticks were counted."""


def tick_times(monkeypatch: pytest.MonkeyPatch, *, tick_ms: int, stall_after: int,
               stall_s: float, lateness_s: float = 0.0004, count: int = 40) -> list[float]:
    """Run the driver's ticker on a fake clock; the process stalls for ``stall_s`` right
    after tick ``stall_after``; every sleep also ends ``lateness_s`` late. Returns the
    clock reading at each tick."""
    clock = [0.0]
    times: list[float] = []

    async def sleep(seconds: float) -> None:
        clock[0] += seconds + lateness_s

    class Wake:
        def set(self) -> None:
            times.append(clock[0])
            if len(times) == stall_after:
                clock[0] += stall_s
            if len(times) >= count:
                raise _Enough

    monkeypatch.setattr(driver_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(driver_module.asyncio, "sleep", sleep)
    ticker = types.SimpleNamespace(config=DriverConfig(tick_ms=tick_ms), _pending_ticks=0,
                                   _wake=Wake(), _metric=lambda name, value: None)
    coro = RaftDriver._tick_forever(ticker)  # type: ignore[arg-type]
    with pytest.raises(_Enough):
        coro.send(None)
    coro.close()
    assert ticker._pending_ticks == count
    return times


@pytest.mark.parametrize("stall_ticks", [0.5, 2.5, 4.5, 12.0])
def test_ticks_after_a_stall_come_no_closer_than_tick_ms(
        monkeypatch: pytest.MonkeyPatch, stall_ticks: float) -> None:
    """A stalled loop must not catch up in a burst: ten ticks counted by a follower right
    after it heard the leader must span at least nine intervals of real time."""
    interval = 0.1
    times = tick_times(monkeypatch, tick_ms=100, stall_after=5, stall_s=stall_ticks * interval)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= interval - 1e-9, f"ticks {min(gaps) * 1000:.1f} ms apart"
    assert gaps[4] >= stall_ticks * interval  # the stall shows as one long gap, then none


def test_ticks_keep_their_rate_when_nothing_stalls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without stalls a tick comes every ``tick_ms``, later only by its sleep's lateness."""
    times = tick_times(monkeypatch, tick_ms=100, stall_after=0, stall_s=0.0, count=101)
    assert 100 * 0.1 - 1e-9 <= times[-1] - times[0] <= 100 * (0.1 + 0.0004) + 1e-9


def test_the_lease_ends_before_a_follower_may_vote() -> None:
    """The quorum's members received the round at or after ``sent_at``; a member's first
    tick after that may come at once, so it may vote after ``election_ticks - 1`` ticks.
    The lease must end before that, less the drift allowance and the margin."""
    config = DriverConfig(tick_ms=100, election_ticks=10, clock_drift=0.01,
                          lease_margin_ms=50.0)
    sent_at = 1000.0
    leader = types.SimpleNamespace(
        core=types.SimpleNamespace(lease_anchor_tick=lambda: 7), _tick_times={7: sent_at},
        config=config)
    deadline = RaftDriver.lease_deadline(leader)  # type: ignore[arg-type]
    assert deadline is not None
    earliest_vote = sent_at + (config.election_ticks - 1) * config.tick_ms / 1000.0
    assert deadline <= earliest_vote - config.lease_margin_ms / 1000.0
    assert deadline == pytest.approx(sent_at + 0.9 * 0.99 - 0.05)


def test_a_driver_without_a_lease_anchor_has_no_lease() -> None:
    leader = types.SimpleNamespace(
        core=types.SimpleNamespace(lease_anchor_tick=lambda: None), _tick_times={},
        config=DriverConfig())
    assert RaftDriver.lease_deadline(leader) is None  # type: ignore[arg-type]

