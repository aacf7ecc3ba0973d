"""How the member runs Python's cyclic garbage collector: measured, and kept off the state.

A full collection walks every tracked object; with a large cell (about 1.5 million objects
at 500,000 files) that stops the event loop for a second or more, long enough to miss
heartbeats. The replicated state is acyclic and long-lived (entries are freed by reference
counting when removed), so once it has settled (after start-up, after each snapshot,
and every 10 s) the surviving objects are moved out of the collector's sight with
``gc.freeze()``. Young garbage is still collected as usual. Cyclic garbage among frozen
objects is only reclaimed by an occasional thaw, done when the frozen set has grown by half
since the last one, so its cost stays proportional to the growth it pays for. A thaw is a
full collection (about 0.7 s at 400,000 files), so when one finds that little of the
growth was garbage (the cell grew, as while files are being created), the growth allowed
before the next doubles, up to 8x; a thaw that finds much garbage goes back to half.
Objects that die are freed by reference counting whether frozen or not; only cycles wait
for a thaw.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

YOUNG_THRESHOLD = 10_000
"""Allocations between young collections (CPython's default is 700: too eager here)."""

THAW_GROWTH = 1.5
"""The frozen set (live objects and frozen cyclic garbage) may grow this much between two
thaws: memory held by frozen garbage stays below half the live set."""

MAX_THAW_GROWTH = 8.0
"""The most the allowed growth backs off to after thaws that found little garbage."""

GARBAGE_SHARE = 0.25
"""A thaw that finds less than this share of the growth since the last one to be garbage
lets the next one wait for twice the growth."""

log = logging.getLogger("lockcell.collector")

SETTLE_EVERY_S = 10.0
"""Objects that survived this long (sessions, files, parked long polls) are treated as
settled, besides after start-up and each snapshot."""


class Collector:
    """Installs the policy for this process and reports every collection's pause."""

    def __init__(self, observe: Callable[[str, float], None],
                 min_thaw: int = 100_000) -> None:
        self._observe = observe
        self._started: float | None = None
        self._min_thaw = min_thaw
        self._frozen_after_thaw = 0
        self._growth = THAW_GROWTH
        self.thaws = 0

    def install(self) -> None:
        """Raise the young threshold and time every collection."""
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
        gc.callbacks.append(self._on_collection)

    def uninstall(self) -> None:
        """Stop timing collections (tests run several members in one process)."""
        if self._on_collection in gc.callbacks:
            gc.callbacks.remove(self._on_collection)

    def settle(self) -> None:
        """The state has settled: put everything alive now out of the collector's sight;
        when the frozen set grew by half since the last thaw, thaw and collect it first."""
        frozen = gc.get_freeze_count()
        if frozen > max(self._growth * self._frozen_after_thaw, self._min_thaw):
            started = time.perf_counter()
            gc.unfreeze()
            found = gc.collect()
            self.thaws += 1
            gc.freeze()
            grown = frozen - self._frozen_after_thaw
            self._frozen_after_thaw = gc.get_freeze_count()
            if found < GARBAGE_SHARE * grown:
                self._growth = min(self._growth * 2, MAX_THAW_GROWTH)
            else:
                self._growth = THAW_GROWTH
            log.info("collector: thaw over %d frozen objects took %.2f s and found %d "
                     "unreachable; next thaw after %.1fx growth", frozen,
                     time.perf_counter() - started, found, self._growth)
            return
        gc.freeze()

    async def settle_forever(self, every: float = SETTLE_EVERY_S) -> None:
        """Settle every ``every`` seconds (run as a task on the member's loop)."""
        while True:
            await asyncio.sleep(every)
            self.settle()

    def _on_collection(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self._observe(f"gc_pause_seconds:{info.get('generation', '?')}",
                          time.perf_counter() - self._started)
            self._started = None
