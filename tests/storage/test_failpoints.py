"""Crash failpoints: parser, cost when unset, placement, and real crashes at each of them.

A real crash is a writer process killed by its own failpoint; after it the store must open
cleanly with every acknowledged save intact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import timeit
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockcell.raft.types import HardState
from lockcell.storage import failpoints
from lockcell.storage.failpoints import (
    ENV_VAR,
    FAILPOINTS,
    FailpointConfig,
    Failpoints,
    failpoint,
    parse,
)
from lockcell.storage.store import FileRaftStorage

from .crash_writer import SEGMENT_SIZE, Model, check_restored
from .helpers import entries, snapshot
from .test_crash import WRITER, _end_of_data, candidates, wait_for_line

# --------------------------------------------------------------------------- parser


def test_parse_names_probabilities_and_seed() -> None:
    config = parse("wal.before_write=0.02, wal.after_write=0.5,snapshot.before_rename=1;seed=42")
    assert config == FailpointConfig(
        {"wal.before_write": 0.02, "wal.after_write": 0.5, "snapshot.before_rename": 1.0}, 42)
    assert parse("segment.after_create=0.2") == FailpointConfig({"segment.after_create": 0.2})
    assert parse("") == FailpointConfig()
    assert parse(";seed=7") == FailpointConfig({}, 7)


@pytest.mark.parametrize("text", [
    "wal.before_write",  # no probability
    "wal.nowhere=0.5",  # unknown failpoint
    "wal.before_write=often",
    "wal.before_write=1.5",
    "wal.before_write=-0.1",
    "wal.before_write=0.1;seed=x",
    "wal.before_write=0.1;speed=3",
])
def test_parse_refuses_malformed_specs(text: str) -> None:
    with pytest.raises(ValueError, match=ENV_VAR):
        parse(text)


def test_every_known_failpoint_parses() -> None:
    spec = ",".join(f"{name}=0.5" for name in FAILPOINTS)
    assert set(parse(spec).probabilities) == set(FAILPOINTS)


# --------------------------------------------------------------------------- firing rule


def test_probability_one_always_fires_zero_never() -> None:
    fired: list[str] = []
    points = Failpoints(parse("wal.before_write=1,wal.after_write=0"), fired.append)
    for _ in range(100):
        points.hit("wal.before_write")
        points.hit("wal.after_write")
        points.hit("wal.after_fsync")  # not armed
    assert fired == ["wal.before_write"] * 100


def test_seeded_draws_are_reproducible_and_near_the_probability() -> None:
    def run() -> list[int]:
        fired: list[int] = []
        calls = [0]

        def crash(name: str) -> None:
            fired.append(calls[0])

        points = Failpoints(parse("wal.after_write=0.1;seed=5"), crash)
        for calls[0] in range(5000):
            points.hit("wal.after_write")
        return fired

    first = run()
    assert first == run()
    assert 350 < len(first) < 650


# --------------------------------------------------------------------------- unset: free


def test_unset_variable_never_fires_and_costs_one_lookup() -> None:
    probe = (
        "import os, timeit\n"
        f"assert {ENV_VAR!r} not in os.environ\n"
        "from lockcell.storage import failpoints as f\n"
        "assert f.active() is None\n"
        "for name in f.FAILPOINTS:\n"
        "    for _ in range(10000):\n"
        "        f.failpoint(name)\n"
        "print('survived')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "survived" in done.stdout, done.stderr
    # in this (unarmed) process: a call costs about what an empty function call costs
    assert failpoints.active() is None

    def empty(name: str) -> None:
        pass

    def best(fn: object) -> float:
        return min(timeit.repeat(lambda: fn("wal.before_write"),  # type: ignore[operator]
                                 number=100_000, repeat=7))

    assert best(failpoint) < 2.0 * best(empty)


def test_a_bad_specification_fails_at_startup() -> None:
    env = dict(os.environ, **{ENV_VAR: "wal.typo=0.5"})
    done = subprocess.run([sys.executable, "-c", "import lockcell.storage.store"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "unknown failpoint 'wal.typo'" in done.stderr


# --------------------------------------------------------------------------- placement


@pytest.fixture
def recorded() -> Iterator[list[str]]:
    """Every failpoint armed at probability 1, recording instead of crashing."""
    hits: list[str] = []
    failpoints.arm(",".join(f"{name}=1" for name in FAILPOINTS), hits.append)
    try:
        yield hits
    finally:
        failpoints.arm(None)
    assert failpoints.active() is None


def test_failpoints_sit_between_the_persistence_steps(tmp_path: Path,
                                                      recorded: list[str]) -> None:
    with FileRaftStorage(tmp_path, segment_size=4096) as store:
        assert recorded == []  # opening an empty store writes nothing
        store.save(HardState(1, "a", 0), entries(1, 3, 1))
        assert recorded == ["segment.before_rename", "segment.after_create",
                            "wal.before_write", "wal.after_write", "wal.after_fsync"]
        recorded.clear()
        store.save(HardState(1, "a", 3), entries(4, 40, 1, size=200))  # a segment's worth
        assert recorded == ["segment.before_rename", "segment.after_create",
                            "wal.before_write", "wal.after_write", "wal.after_fsync"]
        recorded.clear()
        store.save(HardState(1, "a", 4), [])
        assert recorded == ["segment.before_rename", "segment.after_create",
                            "wal.before_write", "wal.after_write", "wal.after_fsync"]
        recorded.clear()
        store.save(None, entries(44, 2, 1))
        assert recorded == ["wal.before_write", "wal.after_write", "wal.after_fsync"]
        recorded.clear()
        store.save_snapshot(snapshot(44, 1))  # compacts the two older segments away
        assert recorded == ["snapshot.before_write", "snapshot.before_fsync",
                            "snapshot.before_rename", "snapshot.before_dir_fsync",
                            "snapshot.after_dir_fsync", "segment.before_delete",
                            "segment.after_delete", "segment.after_delete"]


# --------------------------------------------------------------------------- real crashes


def _run_writer(directory: Path, log: Path, seed: int, spec: str | None) -> None:
    """Run the crash writer: with ``spec`` until its failpoint kills it, else kill it."""
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if spec is not None:
        env[ENV_VAR] = spec
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, str(WRITER), str(directory), str(seed)],
                                   stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        if spec is None:
            wait_for_line(log, "READY", process)
            time.sleep(0.15)
        else:
            process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, log.read_text()[-2000:]


def _check_reopen(directory: Path, log: Path, state: Model, *, torn: bool) -> Model:
    """Reopen the store: nothing damaged, and the state of the last acknowledged save (or
    of the one in flight at the crash). A log that a newer snapshot supersedes (a crash
    between installing the snapshot and writing the reset marker) is dropped by design."""
    possible, _ = candidates(log, state)
    with FileRaftStorage(directory, segment_size=SEGMENT_SIZE) as store:
        report = store.recovery_report
        restored = store.load()
    assert not report.damaged_snapshots, report
    assert torn or not report.torn_tails, report  # a crash between syscalls tears nothing
    problems = [check_restored(restored, model) for model in possible]
    assert not all(problems), f"restored state matches no acknowledged state: {problems}"
    return possible[problems.index(None)]


@pytest.mark.parametrize("name", FAILPOINTS)
def test_crash_at_failpoint_keeps_acknowledged_saves(name: str, tmp_path: Path) -> None:
    rng = random.Random(name)
    directory = tmp_path / "raft"
    state = Model()
    for cycle in range(2):
        # build up a log (and snapshots, segments) normally, then crash at the failpoint
        log = tmp_path / f"build-{cycle}.log"
        _run_writer(directory, log, rng.randrange(1 << 30), None)
        # (SIGKILL may cut a large write short: a torn tail is possible here)
        state = _check_reopen(directory, log, state, torn=True)
        torn = name == "wal.before_truncate"
        if torn:  # the only way to reach it: a torn tail to cut on open
            newest = sorted(directory.glob("*.wal"))[-1]
            with newest.open("r+b") as handle:
                handle.seek(_end_of_data(newest))
                handle.write(rng.randbytes(40) + b"\x01")
        log = tmp_path / f"crash-{cycle}.log"
        _run_writer(directory, log, rng.randrange(1 << 30), f"{name}=1")
        assert f"failpoint {name} fired" in log.read_text(), log.read_text()[-2000:]
        state = _check_reopen(directory, log, state, torn=torn)


def test_random_crash_points_keep_acknowledged_saves(tmp_path: Path) -> None:
    rng = random.Random(11)
    directory = tmp_path / "raft"
    state = Model()
    spec = ",".join(f"{name}=0.03" for name in FAILPOINTS if name.startswith("wal.")) + ","
    spec += ",".join(f"{name}=0.3" for name in FAILPOINTS if not name.startswith("wal."))
    fired: set[str] = set()
    for run in range(8):
        log = tmp_path / f"run-{run}.log"
        _run_writer(directory, log, rng.randrange(1 << 30), f"{spec};seed={run}")
        text = log.read_text()
        fired |= {name for name in FAILPOINTS if f"failpoint {name} fired" in text}
        state = _check_reopen(directory, log, state, torn=False)
    assert len(fired) >= 3, fired
