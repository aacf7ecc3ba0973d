"""Minimal reproductions of server misbehaviour found while building the client.

Both are fixed in the server; these tests keep them fixed.
"""

from __future__ import annotations

import time
import urllib.error
from collections.abc import Callable

import pytest

from lockcell.cli.localcell import LocalCell, http_json

from .support import live, new_leader

MakeCell = Callable[..., LocalCell]


def test_master_failover_survives_an_ack_from_the_old_leader(make_cell: MakeCell) -> None:
    cell = make_cell()
    old = cell.leader()
    _, session = http_json("POST", f"{old.url}/v1/sessions", {"lease_ms": 10000})
    s = f"/v1/sessions/{session['session']}"
    _, handle = http_json("POST", f"{old.url}{s}/handles", {
        "path": "/ls/local/x", "create": {"kind": "file"}, "events": ["contents_modified"]})
    for _ in range(2):
        http_json("PUT", f"{old.url}{s}/handles/{handle['handle']}", {"data": ""})
    _, answer = http_json("POST", f"{old.url}{s}/keepalive", {"wait_ms": 0})
    seqs = [e["seq"] for e in answer["events"]]
    assert len(seqs) == 2 and seqs[0] < seqs[1], answer
    acked = seqs[-1]
    cell.kill(old)
    leader = new_leader(cell, old)
    deadline = time.monotonic() + 20
    while True:  # the client's next KeepAlive acks what it processed (seq 2)
        status, answer = http_json("POST", f"{leader.url}{s}/keepalive",
                                   {"wait_ms": 0, "ack": acked})
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == 200
    assert [e["type"] for e in answer["events"]] == ["master_failover"]


def test_a_follower_answers_promptly_after_the_leader_is_killed(make_cell: MakeCell) -> None:
    cell = make_cell()
    old = cell.leader()
    follower = next(m for m in live(cell) if m is not old)
    cell.kill(old)
    started = time.monotonic()
    try:
        status, _ = http_json("POST", f"{follower.url}/v1/sessions", {}, timeout=5)
    except (TimeoutError, urllib.error.URLError) as exc:
        pytest.fail(f"no answer within {time.monotonic() - started:.1f}s: {exc}")
    assert status in (201, 503)
