"""The member's garbage-collector policy: settled state is frozen out of collections (so a
large cell does not pause the loop), frozen garbage is reclaimed once the frozen set has
grown by half, and every collection's pause is reported."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from lockcell.node.collector import THAW_GROWTH, YOUNG_THRESHOLD, Collector


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def collector() -> Iterator[tuple[Collector, list[tuple[str, float]]]]:
    seen: list[tuple[str, float]] = []
    before = gc.get_threshold()
    gc.collect()
    gc.unfreeze()
    policy = Collector(lambda name, value: seen.append((name, value)))
    policy.install()
    try:
        yield policy, seen
    finally:
        policy.uninstall()
        gc.unfreeze()
        gc.set_threshold(*before)
        gc.collect()


def test_collections_are_timed_by_generation(
        collector: tuple[Collector, list[tuple[str, float]]]) -> None:
    _, seen = collector
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    gc.collect(2)
    assert any(name == "gc_pause_seconds:2" and value >= 0 for name, value in seen)


def test_settled_objects_are_out_of_sight_until_the_frozen_set_grows_by_half(
        collector: tuple[Collector, list[tuple[str, float]]]) -> None:
    policy, _ = collector
    policy._min_thaw = 1000
    state = [Cycle() for _ in range(1000)]
    watch = weakref.ref(state[0])
    policy.settle()
    assert policy.thaws == 0 and gc.get_freeze_count() >= 1000
    del state  # cyclic garbage among frozen objects: a collection does not see it
    gc.collect()
    assert watch() is not None
    policy.settle()  # the frozen set is above the threshold: thaw, collect, freeze again
    assert policy.thaws == 1 and watch() is None
    policy.settle()  # it has not grown by half since: no thaw
    assert policy.thaws == 1
    grown = [[Cycle()] for _ in range(gc.get_freeze_count() + 1000)]
    policy.settle()
    policy.settle()
    assert policy.thaws == 2
    del grown


def test_thaws_that_find_little_garbage_wait_for_more_growth(
        collector: tuple[Collector, list[tuple[str, float]]]) -> None:
    policy, _ = collector
    policy._min_thaw = 1000
    live = [[Cycle()] for _ in range(2000)]  # growth that stays alive (a cell filling up)
    policy.settle()
    policy.settle()
    assert policy.thaws == 1 and policy._growth == 2 * THAW_GROWTH
    live += [[Cycle()] for _ in range(gc.get_freeze_count())]  # doubled: not enough now
    policy.settle()
    assert policy.thaws == 1
    live += [[Cycle()] for _ in range(gc.get_freeze_count())]
    policy.settle()
    assert policy.thaws == 2 and policy._growth == 4 * THAW_GROWTH
    garbage = [Cycle() for _ in range(6 * gc.get_freeze_count())]
    policy.settle()
    del garbage  # the growth since the last thaw was mostly garbage: back to half
    policy.settle()
    assert policy.thaws == 3 and policy._growth == THAW_GROWTH
    del live
