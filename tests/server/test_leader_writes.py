"""Where a leader writes its log: in its own loop with Linux AIO running the fdatasync (when
turned on and the kernel has it), else in its loop while writes are fast, on the WAL thread
once they are slow (so the loop keeps serving), back in the loop when the disk recovers;
every acknowledged entry is durable either way. (Limits are set far from what this
machine's disk does, so its own speed cannot decide a test.)"""

from __future__ import annotations

import asyncio
import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lockcell.node.driver import RaftDriver, Unavailable
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
        driver, storage = await leader_over(tmp_path, leader_inline_write_ms=1000.0,
                                             leader_async_sync=False)
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
        driver, storage = await leader_over(tmp_path, leader_inline_write_ms=20.0,
                                             leader_async_sync=False)
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
        driver, storage = await leader_over(tmp_path, leader_inline_write_ms=0.0,
                                             leader_async_sync=False)
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



class SlowSyncer:
    """Wraps the driver's AIO syncer: every real sync is reported ``delay`` seconds late,
    or fails with ``failure`` instead."""

    def __init__(self, inner: Any, delay: float = 0.0, failure: OSError | None = None) -> None:
        self.inner = inner
        self.delay = delay
        self.failure = failure
        self.in_flight = 0

    def sync(self, fd: int, done: Callable[[OSError | None], None]) -> None:
        self.in_flight += 1
        loop = asyncio.get_running_loop()

        def finished(error: OSError | None) -> None:
            def report() -> None:
                self.in_flight -= 1
                done(self.failure or error)
            loop.call_later(self.delay, report)

        self.inner.sync(fd, finished)

    def close(self) -> None:
        self.inner.close()


class SyncedValues:
    """Wraps the store: which values a write left unsynced, and which are durable."""

    def __init__(self, inner: FileRaftStorage) -> None:
        self.inner = inner
        self.threads: list[int] = []
        self.unsynced: list[str] = []
        self.durable: set[str] = set()

    def write(self, hard_state: HardState | None, entries: tuple[Entry, ...]) -> int | None:
        self.threads.append(threading.get_ident())
        fd = self.inner.write(hard_state, entries)
        values = [e.data.decode() for e in entries if e.data]
        if fd is None:
            self.durable.update(values)
        else:
            self.unsynced = values
        return fd

    def synced(self) -> None:
        self.inner.synced()
        self.durable.update(self.unsynced)
        self.unsynced = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_with_aio_a_leader_writes_in_its_loop_and_acknowledges_only_synced_entries(
        tmp_path: Path) -> None:
    async def run() -> tuple[list[int], int, list[str], bool, list[tuple[str, float]]]:
        driver = await started(tmp_path, ListApp(), leader_async_sync=True)
        try:
            assert driver._syncer is not None, "this machine's kernel has Linux AIO"
            syncer = SlowSyncer(driver._syncer, delay=0.05)
            driver._syncer = syncer  # type: ignore[assignment]
            storage = SyncedValues(driver.storage)  # type: ignore[arg-type]
            driver.storage = storage  # type: ignore[assignment]
            not_durable: list[str] = []
            loop_ran = False

            async def acknowledged(value: str) -> None:
                await write(driver, value)
                if value not in storage.durable:
                    not_durable.append(value)

            async def look() -> None:
                nonlocal loop_ran
                while True:
                    loop_ran = loop_ran or syncer.in_flight > 0
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(look())
            await asyncio.gather(*(acknowledged(f"v{n}") for n in range(50)))
            for n in range(50, 60):
                await acknowledged(f"v{n}")
            watcher.cancel()
            return (storage.threads, threading.get_ident(), not_durable, loop_ran,
                    driver.metrics)  # type: ignore[attr-defined]
        finally:
            await driver.stop()

    threads, loop_thread, not_durable, loop_ran, metrics = asyncio.run(run())
    assert not_durable == []
    assert set(threads) == {loop_thread}
    assert len(threads) < 60, "fifty concurrent proposals were not written in batches"
    assert loop_ran, "the loop never ran while a sync was in flight"
    assert ("wal_aio", 1.0) in metrics
    assert sorted(values_after_restart(tmp_path)[:60]) == sorted(f"v{n}" for n in range(60))


def test_with_aio_a_failed_sync_stops_the_member_before_it_acknowledges(
        tmp_path: Path) -> None:
    async def run() -> tuple[BaseException | None, list[str]]:
        app = ListApp()
        driver = await started(tmp_path, app, leader_async_sync=True)
        try:
            assert driver._syncer is not None, "this machine's kernel has Linux AIO"
            driver._syncer = SlowSyncer(  # type: ignore[assignment]
                driver._syncer, failure=OSError(errno.EIO, "injected"))
            failure: BaseException | None = None
            try:
                await asyncio.wait_for(write(driver, "lost"), 5)
            except Unavailable as exc:
                failure = exc
            return failure, app.values
        finally:
            await driver.stop()

    failure, values = asyncio.run(run())
    assert isinstance(failure, Unavailable)
    assert "lost" not in values
