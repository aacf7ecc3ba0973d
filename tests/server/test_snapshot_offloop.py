"""Snapshots are imaged in a forked child, so the driver loop keeps committing meanwhile;
the image is exactly the state at the applied index it is filed under, survives a restart,
and a failed image costs nothing but a retry (DESIGN.md §2 snapshots)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from lockcell.node import imaging
from lockcell.node.driver import DriverConfig, RaftDriver
from lockcell.raft.core import bootstrap_entries
from lockcell.raft.types import ConfChange, Message, NodeId, Role, Snapshot, SnapshotMeta
from lockcell.storage.snapshots import STAGED_SUFFIX, list_snapshots, read_snapshot
from lockcell.storage.store import FileRaftStorage

MEMBER = "m1"


class ListApp:
    """A state machine that appends every entry to a list; imaging can be made slow or
    made to fail (both happen in whatever process images it)."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self.image_delay = 0.0
        self.fail_images = 0

    def apply_entry(self, index: int, data: bytes) -> object:
        self.values.append(data.decode())
        return len(self.values)

    def apply_conf_change(self, index: int, change: ConfChange) -> None:
        pass

    def snapshot(self) -> bytes:
        if self.fail_images:
            raise RuntimeError("imaging failed on purpose")
        time.sleep(self.image_delay)
        return json.dumps(self.values).encode()

    def restore(self, data: bytes) -> None:
        self.values = list(json.loads(data))

    def on_role_change(self, role: Role, leader: NodeId | None, term: int) -> None:
        pass

    def on_applied(self, index: int) -> None:
        pass


class NoPeers:
    def send(self, messages: tuple[Message, ...]) -> None:
        assert not messages or all(m.to == MEMBER for m in messages)


def new_storage(directory: Path) -> FileRaftStorage:
    store = FileRaftStorage(directory)
    if store.load().hard_state.term == 0 and not store.load().entries:
        store.save(*bootstrap_entries([MEMBER]))
    return store


async def started(directory: Path, app: ListApp, **config: Any) -> RaftDriver:
    cfg = DriverConfig(tick_ms=10, election_ticks=5, snapshot_retain=5, **config)
    driver = RaftDriver(MEMBER, new_storage(directory), app, cfg)
    driver.metrics: list[tuple[str, float]] = []  # type: ignore[misc]
    driver.metrics_hook = lambda name, value: driver.metrics.append((name, value))  # type: ignore[attr-defined]
    driver.start(NoPeers())
    for _ in range(500):
        if driver.is_leader and driver.core.log.applied >= driver.core.log.last_index():
            return driver
        await asyncio.sleep(0.01)
    raise AssertionError("a single member never became leader")


async def write(driver: RaftDriver, value: str) -> None:
    await driver.propose(lambda stamp: value.encode())


def snapshot_files(directory: Path) -> list[Snapshot]:
    return [read_snapshot(found.path) for found in list_snapshots(directory)]


async def commits_while_imaging(directory: Path, in_child: bool) -> tuple[int, ListApp]:
    """Write until a snapshot starts, then count writes that commit while its image is
    still being built, and go on writing until that snapshot is installed."""
    app = ListApp()
    app.image_delay = 1.0
    driver = await started(directory, app, snapshot_every=20, snapshot_log_ratio=0.0,
                           snapshot_in_child=in_child)
    try:
        n = 0
        while driver._imaging is None:
            await write(driver, f"v{n}")
            n += 1
            assert n < 100, "no snapshot started"
        first = driver._imaging
        during = 0
        while driver._imaging is first:
            await asyncio.wait_for(write(driver, f"v{n}"), timeout=10)
            n += 1
            if driver._image_child is not None:
                during += 1
        return during, app
    finally:
        await driver.stop()


def test_the_loop_keeps_committing_while_a_child_images_the_state(tmp_path: Path) -> None:
    during, app = asyncio.run(commits_while_imaging(tmp_path / "child", in_child=True))
    assert during >= 10, f"only {during} writes committed during a 1 s image"
    snaps = snapshot_files(tmp_path / "child")
    assert snaps
    # the image holds exactly the entries applied up to the index it is filed under
    for snap in snaps:
        image = json.loads(snap.data)
        assert image == app.values[: len(image)]
        assert 18 <= len(image) < len(app.values)  # index 20 less bootstrap and no-op


def test_without_fork_the_image_is_built_inline_and_is_just_as_exact(
        tmp_path: Path) -> None:
    during, app = asyncio.run(commits_while_imaging(tmp_path / "inline", in_child=False))
    assert during == 0  # no child: the loop was busy imaging, nothing committed meanwhile
    [snap] = snapshot_files(tmp_path / "inline")
    image = json.loads(snap.data)
    assert image == app.values[: len(image)] and len(image) >= 18


def test_a_snapshot_from_a_child_and_the_log_after_it_restore_everything(
        tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], SnapshotMeta, list[str]]:
        app = ListApp()
        driver = await started(tmp_path, app, snapshot_every=30, snapshot_log_ratio=0.0)
        try:
            for i in range(200):
                await write(driver, f"w{i}")
            for _ in range(300):  # let an image in progress finish
                if driver._imaging is None:
                    break
                await asyncio.sleep(0.01)
        finally:
            await driver.stop()
        meta = snapshot_files(tmp_path)[0].meta
        again = ListApp()
        second = RaftDriver(MEMBER, FileRaftStorage(tmp_path), again, DriverConfig())
        restored_from_image = list(again.values)
        await second.stop()
        return app.values, meta, restored_from_image

    written, meta, restored = asyncio.run(scenario())
    assert meta.index >= 30  # the first gap is drawn from 30-45 entries, 30 included
    assert restored and restored == written[: len(restored)]
    assert not list(tmp_path.glob("*" + STAGED_SUFFIX))


def test_a_failed_image_is_counted_and_retried(tmp_path: Path) -> None:
    async def scenario() -> list[tuple[str, float]]:
        app = ListApp()
        app.fail_images = 1
        driver = await started(tmp_path, app, snapshot_every=10, snapshot_log_ratio=0.0,
                               snapshot_retry_s=0.5)
        try:
            for i in range(15):
                await write(driver, f"w{i}")
            for _ in range(1000):
                if any(name == "snapshot_failures" for name, _ in driver.metrics):  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.01)
            app.fail_images = 0  # well inside the retry delay: no child forked meanwhile
            i = 15
            while not (driver._imaging is None and snapshot_files(tmp_path)):
                await write(driver, f"w{i}")
                i += 1
                assert i < 5_000, "the failed image was never retried"
                await asyncio.sleep(0.005)
            return list(driver.metrics)  # type: ignore[attr-defined]
        finally:
            await driver.stop()

    metrics = asyncio.run(scenario())
    assert [m for m in metrics if m[0] == "snapshot_failures"] == [("snapshot_failures", 1.0)]
    assert any(name == "snapshot_seconds" for name, _ in metrics)
    assert snapshot_files(tmp_path)


def test_a_failing_image_is_retried_later_and_less_often(tmp_path: Path) -> None:
    """Every batch applied is a chance to snapshot; after a failure the next try waits
    (1x, then 2x the retry delay), so a persistent failure does not fork per batch."""
    async def scenario() -> list[float]:
        app = ListApp()
        app.fail_images = 1
        driver = await started(tmp_path, app, snapshot_every=10, snapshot_log_ratio=0.0,
                               snapshot_retry_s=0.2)
        failed_at: list[float] = []
        driver.metrics_hook = lambda name, value: (  # type: ignore[assignment]
            failed_at.append(time.monotonic()) if name == "snapshot_failures" else None)
        try:
            i = 0
            while len(failed_at) < 3:
                await write(driver, f"w{i}")
                i += 1
                assert i < 20_000, f"only {len(failed_at)} failed images"
                await asyncio.sleep(0.002)
            return failed_at
        finally:
            await driver.stop()

    failed_at = asyncio.run(scenario())
    assert failed_at[1] - failed_at[0] >= 0.2
    assert failed_at[2] - failed_at[1] >= 0.4
    assert not snapshot_files(tmp_path)


def test_a_large_state_is_not_reimaged_until_the_log_has_grown(tmp_path: Path) -> None:
    async def scenario() -> int:
        app = ListApp()
        app.values = ["x" * 1000] * 200  # a ~200 KB image
        driver = await started(tmp_path, app, snapshot_every=10, snapshot_log_ratio=0.25)
        driver._last_image_size = len(app.snapshot())
        try:
            for i in range(100):  # 100 short entries: far less than a quarter of the image
                await write(driver, f"{i}")
            return len(snapshot_files(tmp_path))
        finally:
            await driver.stop()

    assert asyncio.run(scenario()) == 0


# ---------------------------------------------------------------- the child itself


def test_the_child_images_the_state_as_it_was_when_it_forked() -> None:
    state = {"value": "before"}
    child = imaging.fork_image(lambda: (time.sleep(0.2), state["value"].encode())[1])
    state["value"] = "after"
    assert child.collect() == b"before"


def test_a_child_that_fails_reports_it() -> None:
    def boom() -> bytes:
        raise RuntimeError("no image")

    with pytest.raises(imaging.ImagingFailed):
        imaging.fork_image(boom).collect()


def test_the_child_holds_no_inherited_socket_or_directory_lock(tmp_path: Path) -> None:
    store = FileRaftStorage(tmp_path / "raft")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    started_file = tmp_path / "child-started"

    def image() -> bytes:
        started_file.touch()  # the child has dropped its inherited descriptors by now
        time.sleep(1.0)
        return b"done"

    child = imaging.fork_image(image)
    try:
        for _ in range(500):
            if started_file.exists():
                break
            time.sleep(0.01)
        store.close()
        listener.close()
        FileRaftStorage(tmp_path / "raft").close()  # the directory lock is free again
        again = socket.socket()
        again.bind(("127.0.0.1", port))  # and so is the port
        again.close()
    finally:
        assert child.collect() == b"done"


def test_a_killed_child_fails_collect() -> None:
    child = imaging.fork_image(lambda: (time.sleep(30), b"never")[1])
    child.kill()
    with pytest.raises(imaging.ImagingFailed):
        child.collect()
    assert os.getpid() > 0
