"""The Linux AIO syncer: syncs complete on the loop, errors reach the caller, and where AIO
cannot be used there is no syncer (callers sync as before). This machine's kernel has AIO."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
from pathlib import Path

import pytest

from lockcell.storage import aio


async def _syncer() -> aio.AioSyncer:
    syncer = aio.open_syncer(asyncio.get_running_loop())
    assert syncer is not None, "this machine's kernel has Linux AIO"
    return syncer


def test_the_structures_match_the_kernel_abi() -> None:
    assert ctypes.sizeof(aio._Iocb) == 64
    assert ctypes.sizeof(aio._IoEvent) == 32


def test_syncs_complete_on_the_loop_and_never_inside_the_call(tmp_path: Path) -> None:
    async def run() -> tuple[list[OSError | None], bool, int]:
        syncer = await _syncer()
        outcomes: list[OSError | None] = []
        files = [os.open(tmp_path / f"f{n}", os.O_CREAT | os.O_WRONLY) for n in range(5)]
        try:
            every = asyncio.get_running_loop().create_future()

            def done(error: OSError | None) -> None:
                outcomes.append(error)
                if len(outcomes) == len(files) and not every.done():
                    every.set_result(None)

            for fd in files:
                os.write(fd, b"x" * 100)
                syncer.sync(fd, done)
            reported_inside = bool(outcomes)
            await asyncio.wait_for(every, 10)
            return outcomes, reported_inside, syncer.in_flight
        finally:
            syncer.close()
            for fd in files:
                os.close(fd)

    outcomes, reported_inside, in_flight = asyncio.run(run())
    assert outcomes == [None] * 5
    assert not reported_inside
    assert in_flight == 0


def test_a_sync_that_cannot_start_reports_its_error(tmp_path: Path) -> None:
    async def run() -> OSError | None:
        syncer = await _syncer()
        try:
            fd = os.open(tmp_path / "gone", os.O_CREAT | os.O_WRONLY)
            os.close(fd)  # a descriptor that is no longer open
            outcome = asyncio.get_running_loop().create_future()
            syncer.sync(fd, outcome.set_result)
            result: OSError | None = await asyncio.wait_for(outcome, 10)
            return result
        finally:
            syncer.close()

    error = asyncio.run(run())
    assert isinstance(error, OSError) and error.errno == errno.EBADF


def test_a_closed_syncer_refuses_new_syncs(tmp_path: Path) -> None:
    async def run() -> OSError | None:
        syncer = await _syncer()
        syncer.close()
        syncer.close()  # idempotent
        fd = os.open(tmp_path / "f", os.O_CREAT | os.O_WRONLY)
        try:
            outcome = asyncio.get_running_loop().create_future()
            syncer.sync(fd, outcome.set_result)
            result: OSError | None = await asyncio.wait_for(outcome, 10)
            return result
        finally:
            os.close(fd)

    assert isinstance(asyncio.run(run()), OSError)


@pytest.mark.parametrize("machine", ["sparc64", "riscv64"])
def test_no_syncer_where_the_architecture_is_not_known(
    machine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(aio.platform, "machine", lambda: machine)

    async def run() -> aio.AioSyncer | None:
        return aio.open_syncer(asyncio.get_running_loop())

    assert asyncio.run(run()) is None


def test_no_syncer_when_the_kernel_refuses_an_aio_context(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    real = aio.AioSyncer.__init__

    def refused(self: aio.AioSyncer, loop: asyncio.AbstractEventLoop,
                numbers: tuple[int, int, int, int], syscall: object) -> None:
        # io_setup with an impossible event count: the kernel answers EINVAL
        monkeypatch.setattr(aio, "_MAX_EVENTS", -1)
        real(self, loop, numbers, syscall)  # type: ignore[arg-type]

    monkeypatch.setattr(aio.AioSyncer, "__init__", refused)

    async def run() -> aio.AioSyncer | None:
        return aio.open_syncer(asyncio.get_running_loop())

    assert asyncio.run(run()) is None
