"""Crash tests with real processes: kill -9 a writer at random moments, then check the log.

The writer (crash_writer.py) prints INTENT before and ACK after every save. After a kill,
the store must hold exactly the state of the last ACK, or of the INTENT after it (that
call may have become durable before the kill): nothing acknowledged is lost, nothing
unacknowledged is half-applied, and every entry has the right index, term and bytes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lockcell.storage.store import FileRaftStorage
from lockcell.storage.wal import scan_segment

from .crash_writer import SEGMENT_SIZE, Model, check_restored

WRITER = Path(__file__).with_name("crash_writer.py")
ITERATIONS = int(os.environ.get("LOCKCELL_CRASH_ITERATIONS", "24"))


def wait_for_line(log: Path, marker: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if marker in log.read_text():
            return
        if process.poll() is not None:
            raise AssertionError(f"writer exited with {process.returncode}:\n{log.read_text()}")
        time.sleep(0.002)
    raise AssertionError(f"writer never printed {marker}")


def _end_of_data(path: Path) -> int:
    return scan_segment(path, tail_may_be_torn=True).end


def candidates(log: Path, before: Model) -> tuple[list[Model], int]:
    """States the store may hold after the kill, and how many saves were acknowledged."""
    lines = [line for line in log.read_text().split("\n")[:-1] if line]  # drop a torn line
    acknowledged = before
    pending: Model | None = None
    acks = 0
    for line in lines:
        kind, _, body = line.partition(" ")
        if kind == "INTENT":
            pending = Model.parse(body)
        elif kind == "ACK":
            acknowledged, pending, acks = Model.parse(body), None, acks + 1
    return [acknowledged] + ([pending] if pending is not None else []), acks


def test_kill_9_never_loses_acknowledged_saves(tmp_path: Path) -> None:
    seed = int(os.environ.get("LOCKCELL_CRASH_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    directory = tmp_path / "raft"
    state = Model()
    total_acks = 0
    torn_tails = 0
    for iteration in range(ITERATIONS):
        log = tmp_path / f"writer-{iteration}.log"
        segments = sorted(directory.glob("*.wal"))
        if iteration % 4 == 3 and segments:
            # a torn frame the writer's own recovery must cut off (maybe while being killed)
            with segments[-1].open("r+b") as handle:
                handle.seek(_end_of_data(segments[-1]))
                handle.write(rng.randbytes(rng.randint(1, 300)) + b"\x01")
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, str(WRITER), str(directory), str(rng.randrange(1 << 30))],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            if iteration % 6 == 5:  # now and then, kill it while it opens and recovers
                wait_for_line(log, "OPENING", process)
                time.sleep(rng.uniform(0.0, 0.03))
            else:
                wait_for_line(log, "READY", process)
                time.sleep(rng.uniform(0.005, 0.3))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        assert process.returncode == -signal.SIGKILL, log.read_text()[-2000:]
        possible, acks = candidates(log, state)
        total_acks += acks
        torn_tails += log.read_text().count("READY torn_tails=1")
        with FileRaftStorage(directory, segment_size=SEGMENT_SIZE) as store:
            torn_tails += len(store.recovery_report.torn_tails)
            restored = store.load()
        problems = [check_restored(restored, model) for model in possible]
        if all(problems):
            pytest.fail(
                f"seed {seed}, iteration {iteration}: restored state matches neither the "
                f"last acknowledged state nor the pending one: {problems}"
            )
        state = possible[problems.index(None)]
    assert total_acks > 20 * ITERATIONS  # the writer really ran between the kills
    assert torn_tails >= 1  # the damaged tails were found and cut
    print(f"seed {seed}: {total_acks} acknowledged saves, {torn_tails} torn tails cut")
