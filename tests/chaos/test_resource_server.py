"""The chaos resource server as a process: admits, refuses stale sequencers, records.

Without a cell only the generation rule applies; the record feeds the lock-safety checker."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lockcell.cli.localcell import http_json
from lockcell.client import SEQUENCER_HEADER

from .checkers import Admission, check_lock_safety
from .harness import RESOURCE_SERVER


def sequencer(path: str, generation: int) -> str:
    raw = json.dumps([path, "exclusive", generation, 1]).encode()
    return "lc1:" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.fixture
def server() -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, str(RESOURCE_SERVER), "--endpoints", "http://127.0.0.1:9"],
        stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        assert line.startswith("listening on "), line
        yield line.split()[-1]
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


def write(url: str, seq: str, owner: str, section: int, late: bool = False) -> int:
    status, _ = http_json("PUT", f"{url}/write", {"owner": owner, "section": section,
                                                 "late": late},
                          headers={SEQUENCER_HEADER: seq}, timeout=5)
    return status


def test_resource_server_admits_refuses_and_records(server: str) -> None:
    lock = "/ls/demo/fenced"
    assert write(server, sequencer(lock, 3), "A", 1) == 200
    assert write(server, sequencer(lock, 3), "A", 1) == 200
    assert write(server, sequencer(lock, 5), "B", 1) == 200
    assert write(server, sequencer(lock, 3), "A", 1) == 409  # A lost the lock to B
    assert write(server, sequencer(lock, 5), "B", 1, late=True) == 200  # no cell to ask
    assert write(server, "not a sequencer", "C", 1) == 400
    status, body = http_json("GET", f"{server}/record", timeout=5)
    assert status == 200 and body["highest"] == {lock: 5}
    record = [Admission(**raw) for raw in body["admissions"]]
    assert [(a.owner, a.generation, a.accepted) for a in record] == [
        ("A", 3, True), ("A", 3, True), ("B", 5, True), ("A", 3, False), ("B", 5, True)]
    assert all(a.end is not None and a.end >= a.t for a in record if a.accepted)
    verdict = check_lock_safety(record)
    assert not verdict.ok and "stale sequencer" in verdict.problems[0]  # the late write
    assert check_lock_safety(record[:4]).ok
