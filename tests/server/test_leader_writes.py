"""Where a leader writes its log: in its own loop while writes are fast, on the WAL thread
once they are slow (so the loop keeps serving), back in the loop when the disk recovers;
every acknowledged entry is durable either way. (Limits are set far from what this
machine's disk does, so its own speed cannot decide a test.)"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from lockcell.node.driver import RaftDriver
from lockcell.raft.types import Entry, HardState, Snapshot
from lockcell.storage.store import FileRaftStorage

from .test_snapshot_offloop import ListApp, started, write


class WatchedStorage:
    """A log store that records which thread each write ran on, can be made slow, and says
    whether a write is in progress."""

    def __init__(self, inner: FileRaftStorage) -> None:
        self.inner = inner
        self.delay = 0.0
        self.writes: list[int] = []
        self.writing = False

    def save(self, hard_state: HardState | None, entries: tuple[Entry, ...],
             snapshot: Snapshot | None = None) -> None:
        self.writing = True
        try:
            if entries:
                self.writes.append(threading.get_ident())
                time.sleep(self.delay)
            self.inner.save(hard_state, entries, snapshot)
        finally:
            self.writing = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def leader_over(directory: Path, **config: Any) -> tuple[RaftDriver, WatchedStorage]:
    driver = await started(directory, ListApp(), **config)
    watched = WatchedStorage(driver.storage)  # type: ignore[arg-type]
    driver.storage = watched  # type: ignore[assignment]
    return driver, watched


async def write_many(driver: RaftDriver, first: int, count: int) -> None:
    for n in range(first, first + count):
        await write(driver, f"v{n}")


async def loop_ran_during_a_write(driver: RaftDriver, storage: WatchedStorage,
                                  first: int, count: int) -> bool:
    """Write ``count`` entries one after another while a task on the loop looks, every
    millisecond, whether a log write is in progress."""
    seen = False
    done = asyncio.Event()

    async def look() -> None:
        nonlocal seen
        while not done.is_set():
            seen = seen or storage.writing
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(look())
    try:
        await write_many(driver, first, count)
    finally:
        done.set()
        await watcher
    return seen


def values_after_restart(directory: Path) -> list[str]:
    async def run() -> list[str]:
        app = ListApp()
        driver = await started(directory, app)
        try:
            await write(driver, "after-restart")
            return app.values
        finally:
            await driver.stop()
    return asyncio.run(run())


def test_a_leader_with_a_fast_disk_writes_in_its_loop(tmp_path: Path) -> None:
    async def run() -> tuple[list[int], int, bool]:
        driver, storage = await leader_over(tmp_path, leader_inline_write_ms=1000.0)
        try:
            ran = await loop_ran_during_a_write(driver, storage, 0, 30)
            return storage.writes, threading.get_ident(), ran
        finally:
            await driver.stop()

    writes, loop_thread, ran = asyncio.run(run())
    assert len(writes) >= 30
    assert set(writes) == {loop_thread}
    assert not ran
    assert values_after_restart(tmp_path)[:30] == [f"v{n}" for n in range(30)]


def test_slow_writes_move_to_the_wal_thread_and_back_when_the_disk_recovers(
        tmp_path: Path) -> None:
    async def run() -> tuple[list[int], list[int], list[int], int, bool]:
        driver, storage = await leader_over(tmp_path, leader_inline_write_ms=20.0)
        try:
            await write_many(driver, 0, 5)
            fast = list(storage.writes)
            storage.delay = 0.3  # fifteen times the limit
            ran = await loop_ran_during_a_write(driver, storage, 5, 10)
            slow = storage.writes[len(fast):]
            storage.delay = 0.0
            await write_many(driver, 15, 60)
            recovered = storage.writes[len(fast) + len(slow):]
            return fast, slow, recovered, threading.get_ident(), ran
        finally:
            await driver.stop()

    fast, slow, recovered, loop_thread, ran = asyncio.run(run())
    assert set(fast) == {loop_thread}
    # One slow write in the loop lifts the average over the limit; the rest run beside it.
    assert slow[0] == loop_thread
    assert len(slow) >= 9 and loop_thread not in slow[1:]
    assert ran, "the loop never ran while a slow write was in progress"
    # The average falls under half the limit within ~29 fast writes, then the loop writes.
    assert recovered[0] != loop_thread
    assert set(recovered[-20:]) == {loop_thread}
    assert values_after_restart(tmp_path)[:75] == [f"v{n}" for n in range(75)]


def test_a_limit_of_zero_keeps_every_leader_write_on_the_wal_thread(tmp_path: Path) -> None:
    async def run() -> tuple[list[int], int]:
        driver, storage = await leader_over(tmp_path, leader_inline_write_ms=0.0)
        try:
            await asyncio.gather(*(write(driver, f"v{n}") for n in range(50)))
            await write_many(driver, 50, 10)
            return storage.writes, threading.get_ident()
        finally:
            await driver.stop()

    writes, loop_thread = asyncio.run(run())
    assert writes and loop_thread not in writes
    assert len(writes) < 60, "fifty concurrent proposals were not written in batches"
    assert sorted(values_after_restart(tmp_path)[:60]) == sorted(f"v{n}" for n in range(60))

