"""The `lockcell` client commands against a real local cell."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from lockcell.cli.localcell import LocalCell

from .support import cli, cli_env, lockcell_argv, unique, wait_for


def test_file_commands(cell: LocalCell) -> None:
    d = unique("cli")
    assert cli(cell, "mkdir", "-p", f"{d}/sub").returncode == 0
    done = cli(cell, "put", f"{d}/sub/f", "hello")
    assert done.returncode == 0 and "created" in done.stdout
    done = cli(cell, "put", f"{d}/sub/f", input_text="from stdin")
    assert done.returncode == 0 and "wrote" in done.stdout
    assert cli(cell, "get", f"{d}/sub/f").stdout == "from stdin"
    doc = json.loads(cli(cell, "get", "--json", f"{d}/sub/f").stdout)
    assert doc["text"] == "from stdin" and doc["stat"]["kind"] == "file"
    generation = doc["stat"]["content_generation"]
    stale = cli(cell, "put", f"{d}/sub/f", "x", "--if-generation", str(generation - 1))
    assert stale.returncode == 1 and "conflict" in stale.stderr
    assert cli(cell, "put", f"{d}/sub/f", "y", "--if-generation", str(generation)).returncode == 0
    assert cli(cell, "ls", d).stdout.split() == ["sub/"]
    listing = json.loads(cli(cell, "ls", "--json", f"{d}/sub").stdout)
    assert [c["name"] for c in listing] == ["f"]
    assert "lock" in cli(cell, "ls", "-l", f"{d}/sub").stdout
    stat = cli(cell, "stat", f"{d}/sub/f")
    assert "content generation:" in stat.stdout and "length:" in stat.stdout
    assert json.loads(cli(cell, "stat", "--json", d).stdout)["stat"]["children"] == 1
    assert cli(cell, "mkdir", d).returncode == 1  # exists already
    busy = cli(cell, "rm", d)
    assert busy.returncode == 1 and "not empty" in busy.stderr
    assert cli(cell, "rm", "-r", d).returncode == 0
    missing = cli(cell, "get", f"{d}/sub/f")
    assert missing.returncode == 1 and "not_found" in missing.stderr


def test_lock_runs_the_command_with_the_sequencer_and_returns_its_code(cell: LocalCell) -> None:
    path = unique("cli-lock")
    script = ('import os, sys; print(os.environ["LOCKCELL_SEQUENCER"]); '
              'print(os.environ["LOCKCELL_LOCK_GENERATION"]); sys.exit(7)')
    done = cli(cell, "lock", path, "--wait", "5", "--", sys.executable, "-c", script)
    assert done.returncode == 7, done.stderr
    sequencer, generation = done.stdout.split()
    assert sequencer.startswith("lc1:") and int(generation) > 0
    assert cli(cell, "lock", path, "--", "sh", "-c", "kill -TERM $$").returncode == 128 + 15
    assert cli(cell, "lock", path, "--", "/nonexistent/cmd").returncode == 127


def test_lock_wait_zero_gives_up_when_busy(cell: LocalCell, tmp_path: Path) -> None:
    path = unique("cli-busy")
    marker = tmp_path / "holding"
    holder = subprocess.Popen(
        lockcell_argv("lock", path, "--", "sh", "-c", f"touch {marker}; sleep 30"),
        env=cli_env(cell), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(marker.exists, 20, "holder never ran")
        done = cli(cell, "lock", path, "--wait", "0", "--", "true")
        assert done.returncode == 5 and "lock_busy" in done.stderr
    finally:
        holder.terminate()
        holder.wait(20)
    assert holder.returncode == 128 + 15  # the SIGTERM was forwarded to the command
    assert cli(cell, "lock", path, "--wait", "5", "--", "true").returncode == 0


def test_two_lock_processes_never_overlap(cell: LocalCell, tmp_path: Path) -> None:
    path = unique("cli-mutex")
    journal = tmp_path / "journal"
    body = f'echo "start $$" >> {journal}; sleep 0.3; echo "end $$" >> {journal}'
    runs = [subprocess.Popen(lockcell_argv("lock", path, "--", "sh", "-c", body),
                             env=cli_env(cell)) for _ in range(4)]
    assert [r.wait(60) for r in runs] == [0, 0, 0, 0]
    lines = [line.split() for line in journal.read_text().splitlines()]
    assert len(lines) == 8
    for (start, pid_a), (end, pid_b) in zip(lines[0::2], lines[1::2], strict=True):
        assert (start, end) == ("start", "end") and pid_a == pid_b, lines


def test_elect_publishes_the_leader_while_running(cell: LocalCell, tmp_path: Path) -> None:
    path = unique("cli-elect")
    marker, stop = tmp_path / "leading", tmp_path / "stop"
    body = f'echo "$LOCKCELL_LEADER_ID" > {marker}; while [ ! -e {stop} ]; do sleep 0.05; done'
    leader = subprocess.Popen(lockcell_argv("elect", path, "--id", "node-a", "--", "sh", "-c",
                                            body), env=cli_env(cell))
    wait_for(marker.exists, 20, "never elected")
    assert cli(cell, "get", path).stdout == "node-a"
    follower = cli(cell, "elect", path, "--id", "node-b", "--wait", "0", "--", "true")
    assert follower.returncode == 5
    stop.touch()
    assert leader.wait(30) == 0
    assert marker.read_text().strip() == "node-a"
    assert cli(cell, "get", path).stdout == ""  # cleared on a clean exit


def test_watch_prints_events_as_they_arrive(cell: LocalCell) -> None:
    path = unique("cli-watch")
    assert cli(cell, "put", path, "0").returncode == 0
    watcher = subprocess.Popen(lockcell_argv("watch", path, "--count", "2", "--json"),
                               env=cli_env(cell), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)  # let it open the handle
        assert cli(cell, "put", path, "1").returncode == 0
        assert cli(cell, "put", path, "2").returncode == 0
        out, _ = watcher.communicate(timeout=30)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in events] == ["contents_modified", "contents_modified"]
    assert watcher.returncode == 0


def test_cluster_commands(cell: LocalCell) -> None:
    status = cli(cell, "cluster", "status")
    assert status.returncode == 0 and "leader:" in status.stdout
    view = json.loads(cli(cell, "cluster", "members", "--json").stdout)
    assert len(view["members"]) == 3 and view["leader"]
    bad = cli(cell, "cluster", "transfer", "--admin-token", "wrong")
    assert bad.returncode == 1 and "unauthorized" in bad.stderr
    old = view["leader"]
    target = next(m["id"] for m in view["members"] if m["id"] != old)
    moved = cli(cell, "cluster", "transfer", target, "--json",
                LOCKCELL_ADMIN_TOKEN=cell.admin_token)
    assert moved.returncode == 0, moved.stderr
    wait_for(lambda: json.loads(cli(cell, "cluster", "status", "--json").stdout)["leader"]
             == target, 20, "leadership did not move")
    missing = cli(cell, "cluster", "remove", "no-such-member",
                  LOCKCELL_ADMIN_TOKEN=cell.admin_token)
    assert missing.returncode == 1 and "not_found" in missing.stderr
