"""Safety under failures: leader kill -9, a frozen cell (jeopardy, grace, expiry), a frozen
lock holder fenced off by a resource server, and `lockcell lock` stopping its command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from lockcell.cli.localcell import LocalCell
from lockcell.client import (
    Cell,
    Health,
    HealthChange,
    LockBusy,
    LockLost,
    SessionExpired,
)

from .support import (
    ROOT,
    cli_env,
    freeze,
    lockcell_argv,
    new_leader,
    thaw,
    unique,
    wait_for,
)

MakeCell = Callable[..., LocalCell]


class Recorder:
    """Collects health changes (with when they were heard)."""

    def __init__(self) -> None:
        self.changes: list[Health] = []
        self.lock = threading.Lock()

    def __call__(self, change: HealthChange) -> None:
        with self.lock:
            self.changes.append(change.new)

    def callbacks(self) -> dict[str, Any]:
        return {"on_jeopardy": self, "on_safe": self, "on_expired": self}

    def saw(self, *wanted: Health) -> Callable[[], bool]:
        return lambda: all(w in self.changes for w in wanted)


@pytest.fixture
def client_for() -> Iterator[Callable[[LocalCell], Cell]]:
    clients: list[Cell] = []

    def make(cell: LocalCell) -> Cell:
        client = Cell(cell.endpoints, retry_for=20)
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in clients:
            client.close()


@pytest.mark.parametrize("lock_delay_ms", [60000, 0])
def test_lock_across_leader_kill_is_kept_or_reported_lost(
        make_cell: MakeCell, client_for: Callable[[LocalCell], Cell], lock_delay_ms: int) -> None:
    cell = make_cell(grace_ms=4000)
    client = client_for(cell)
    heard = Recorder()
    failovers: list[str] = []
    session = client.session(lease_ms=2000, on_event=lambda e: failovers.append(e.type),
                             **heard.callbacks())
    rival = client.session()
    path = unique("failover")
    rival_handle = rival.open(path, create="file")
    context = session.lock(path, lock_delay_ms=lock_delay_ms)
    lock = context.__enter__()
    told: list[float] = []
    lock.aio.add_lost_listener(lambda _lock: told.append(time.monotonic()))
    rival_got: list[float] = []

    def compete() -> None:
        try:
            rival_handle.acquire(wait_ms=15000)
            rival_got.append(time.monotonic())
        except LockBusy:
            pass

    competitor = threading.Thread(target=compete)
    competitor.start()
    old = cell.leader()
    cell.kill(old)
    new_leader(cell, old)
    wait_for(lambda: "master_failover" in failovers or Health.EXPIRED in heard.changes, 25,
             "the session never heard of the failover")
    if lock.lost:
        assert told or lock.lost_reason, "lost, and the holder was told"
        with pytest.raises(LockLost):
            context.__exit__(None, None, None)
    else:
        assert session.health is Health.SAFE
        assert client.check_sequencer(lock.sequencer), "kept: the same sequencer is current"
        assert not rival_got, "a second holder while the first still holds"
        lock.check()
        released_at = time.monotonic()
        context.__exit__(None, None, None)
        told.append(released_at)
    competitor.join(20)
    if rival_got:
        assert told and rival_got[0] >= min(told), "never a silent double holder"
    if lock_delay_ms >= 60000:
        assert not lock.lost or Health.JEOPARDY in heard.changes


def test_jeopardy_then_safe_when_the_cell_returns_within_grace(
        make_cell: MakeCell, client_for: Callable[[LocalCell], Cell]) -> None:
    cell = make_cell(grace_ms=8000)
    client = client_for(cell)
    heard = Recorder()
    session = client.session(lease_ms=2000, **heard.callbacks())
    weak_context = session.lock(unique("weak"), lock_delay_ms=0)
    strong_context = session.lock(unique("strong"), lock_delay_ms=60000)
    weak = weak_context.__enter__()
    strong = strong_context.__enter__()
    assert strong.keeps_through_grace and not weak.keeps_through_grace
    freeze(cell)
    try:
        wait_for(heard.saw(Health.JEOPARDY), 6, "no jeopardy")
        assert weak.lost and weak.lost_event.is_set()
        assert not strong.lost, "its lock-delay covers the grace period"
        time.sleep(0.5)
    finally:
        thaw(cell)
    wait_for(heard.saw(Health.SAFE), 10, "not safe again")
    assert heard.changes == [Health.JEOPARDY, Health.SAFE]
    assert session.health is Health.SAFE
    assert weak.lost, "once lost, always lost"
    assert client.check_sequencer(strong.sequencer)
    with pytest.raises(LockLost):
        weak_context.__exit__(None, None, None)
    strong_context.__exit__(None, None, None)


def test_jeopardy_then_expired_when_the_cell_stays_away(
        make_cell: MakeCell, client_for: Callable[[LocalCell], Cell]) -> None:
    cell = make_cell(grace_ms=1500)
    client = client_for(cell)
    heard = Recorder()
    session = client.session(lease_ms=2000, **heard.callbacks())
    path = unique("expiring")
    context = session.lock(path, lock_delay_ms=60000)
    lock = context.__enter__()
    freeze(cell)
    try:
        wait_for(heard.saw(Health.EXPIRED), 10, "never expired")
        assert heard.changes == [Health.JEOPARDY, Health.EXPIRED]
        assert lock.lost and "expired" in (lock.lost_reason or "")
    finally:
        thaw(cell)
    with pytest.raises(LockLost):
        context.__exit__(None, None, None)
    with pytest.raises(SessionExpired):
        session.open(path)
    # the client closed the session once the cell was back: the lock is free at once
    other = client.session()
    assert other.open(path).acquire(wait_ms=10000).lock_generation > lock.lock_generation


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


CHILD = """
import os, signal, sys, time
out = sys.argv[1]
def term(signum, frame):
    with open(out, "a") as f:
        f.write("term\\n")
signal.signal(signal.SIGTERM, term)
with open(out, "a") as f:
    f.write(f"pid {os.getpid()}\\n")
time.sleep(120)
"""


def test_lockcell_lock_stops_its_command_when_the_lock_may_be_lost(
        make_cell: MakeCell, tmp_path: Path) -> None:
    cell = make_cell(grace_ms=4000)
    record = tmp_path / "child"
    runner = _spawn(lockcell_argv("lock", unique("cli-jeopardy"), "--lease-ms", "2000",
                                  "--lock-delay-ms", "0", "--kill-after", "1", "-v", "--",
                                  sys.executable, "-c", CHILD, str(record)), cli_env(cell))
    try:
        wait_for(lambda: record.exists() and "pid" in record.read_text(), 20, "no child")
        pid = int(record.read_text().split()[1])
        freeze(cell)
        try:
            code = runner.wait(20)
        finally:
            thaw(cell)
        stderr = runner.stderr.read() if runner.stderr else ""
        assert code == 4, stderr
        assert "may be lost" in stderr
        assert "term" in record.read_text(), "SIGTERM first"
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # then SIGKILL: it ignored SIGTERM
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


def test_lockcell_lock_keeps_its_command_when_the_delay_covers_grace(
        make_cell: MakeCell, tmp_path: Path) -> None:
    cell = make_cell(grace_ms=8000)
    started, stop = tmp_path / "started", tmp_path / "stop"
    body = f"touch {started}; while [ ! -e {stop} ]; do sleep 0.05; done; exit 3"
    runner = _spawn(lockcell_argv("lock", unique("cli-keep"), "--lease-ms", "2000", "-v",
                                  "--", "sh", "-c", body), cli_env(cell))
    try:
        wait_for(started.exists, 20, "no child")
        freeze(cell)
        try:
            time.sleep(4.0)  # past the 2 s lease, well within the 8 s grace
        finally:
            thaw(cell)
        time.sleep(2.0)
        assert runner.poll() is None, "the command was stopped"
        stop.touch()
        code = runner.wait(20)
        stderr = runner.stderr.read() if runner.stderr else ""
        assert code == 3, stderr
        assert "session jeopardy" in stderr and "session safe" in stderr
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


def _read_json_line(stream: IO[str], timeout: float) -> dict[str, Any]:
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not result or not result[0]:
        raise AssertionError("no line from the holder")
    return dict(json.loads(result[0]))


def test_fenced_resource_refuses_a_holder_paused_past_its_lease(
        make_cell: MakeCell, client_for: Callable[[LocalCell], Cell]) -> None:
    cell = make_cell(grace_ms=1000)
    server = _spawn([sys.executable, str(ROOT / "examples" / "resource_server.py"), "--port",
                     "0"], cli_env(cell))
    holder: subprocess.Popen[str] | None = None
    try:
        assert server.stdout is not None
        resource = server.stdout.readline().split()[-1] + "/data"
        path = unique("fenced")
        holder = _spawn([sys.executable, str(ROOT / "tests" / "client" / "holder.py"),
                         ",".join(cell.endpoints), path, resource], cli_env(cell))
        assert holder.stdout is not None
        first = _read_json_line(holder.stdout, 20)["acquired"]
        wait_for(lambda: _read_json_line(holder.stdout, 10).get("status") == 200, 10,  # type: ignore[arg-type]
                 "the holder never wrote")
        holder.send_signal(signal.SIGSTOP)
        try:
            client = client_for(cell)
            with client.session().lock(path, wait_ms=20000) as lock:
                assert lock.lock_generation > first
                request = urllib.request.Request(
                    resource, data=b"newer holder", method="PUT",
                    headers={"X-Lockcell-Sequencer": lock.sequencer})
                with urllib.request.urlopen(request, timeout=5) as answer:
                    assert answer.status == 200
                holder.send_signal(signal.SIGCONT)
                refused = wait_for(
                    lambda: _read_json_line(holder.stdout, 10).get("status") == 409,  # type: ignore[arg-type]
                    10, "the paused holder's write was not refused")
                assert refused
                with urllib.request.urlopen(resource, timeout=5) as answer:
                    log = json.loads(answer.read())
        finally:
            holder.send_signal(signal.SIGCONT)
        generations = [w["generation"] for w in log["writes"]]
        newest = generations.index(lock.lock_generation)
        assert all(g == lock.lock_generation for g in generations[newest:])
        assert log["data"] == "newer holder"
    finally:
        for process in (holder, server):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
