"""The whole cell stopped (and, separately, killed) and restarted from disk serves identical
state: files, contents, stat generations, locks, lock-delays, sessions and handles
(DESIGN.md §1-§3: persistence before answering; sessions live on with fresh leases)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

import pytest

from lockcell.cli.localcell import LocalCell

from .kit import Api, dump_tree, expect, heal, kill, serving_leader, uniq, wait_until

CELL_OPTIONS = {"lease_ms": 12000}
ROOT = "/ls/local"


@dataclass
class Built:
    base: str
    viewer: str                   # a session that only reads
    owner: str                    # holds locks, an ephemeral file
    handles: dict[str, str]       # the owner's handles by name
    sequencer: str                # the owner's exclusive lock
    shared_sequencer: str
    delay_until: int              # lock-delay armed on base/delayed
    snapshot: dict[str, Any]


def build(api: Api) -> Built:
    base = f"{ROOT}/{uniq('restart')}"
    viewer = api.session(60000)
    owner = api.session(60000)
    api.mkdir(owner, base)
    api.mkdir(owner, f"{base}/a")
    api.mkdir(owner, f"{base}/a/deeper")
    h: dict[str, str] = {}
    h["f1"] = api.handle(owner, f"{base}/a/f1", "file", data=os.urandom(1000))
    h["f2"] = api.handle(owner, f"{base}/a/f2", "file", data=b"v0")
    for i in range(1, 4):
        expect(api.set(owner, h["f2"], f"v{i}".encode()), 200)
    h["empty"] = api.handle(owner, f"{base}/a/deeper/empty", "file")
    recreated = api.handle(owner, f"{base}/b", "file", data=b"first life")
    expect(api.acquire(owner, recreated), 200)
    expect(api.delete(owner, recreated), 204)
    h["b"] = api.handle(owner, f"{base}/b", "file", data=b"second life")
    h["eph"] = api.handle(owner, f"{base}/eph", "file", ephemeral=True, data=b"ephemeral")
    h["locked"] = api.handle(owner, f"{base}/locked", "file")
    sequencer = expect(api.acquire(owner, h["locked"]), 200).body["sequencer"]
    h["shared"] = api.handle(owner, f"{base}/shared", "file")
    shared = expect(api.acquire(owner, h["shared"], "shared"), 200).body["sequencer"]
    other = api.handle(viewer, f"{base}/shared")
    expect(api.acquire(viewer, other, "shared"), 200)
    # a lock whose holder's session expired: lock-delay armed for a minute
    dying = api.session(1000)
    dh = api.handle(dying, f"{base}/delayed", "file", lock_delay_ms=60000)
    expect(api.acquire(dying, dh), 200)
    wait_until(lambda: api.stat(dying, dh).status == 410, 15, message="expiry")
    probe = api.handle(viewer, f"{base}/delayed")
    refused = expect(api.acquire(viewer, probe), 409, "lock_delay")
    delay_until = int(refused.body["error"]["lock_delay_until_ms"])
    expect(api.close(viewer, probe), 204)
    return Built(base, viewer, owner, h, sequencer, shared, delay_until,
                 dump_tree(api, viewer, base))


def check_identical(api: Api, built: Built) -> None:
    assert dump_tree(api, built.viewer, built.base) == built.snapshot
    for name, handle in built.handles.items():
        reply = api.stat(built.owner, handle)
        assert reply.status == 200, (name, reply)
    assert api.contents(built.owner, built.handles["f2"]) == b"v3"
    assert api.contents(built.owner, built.handles["b"]) == b"second life"
    assert api.contents(built.owner, built.handles["eph"]) == b"ephemeral"
    assert expect(api.check_sequencer(built.sequencer), 200).body == {"valid": True}
    assert expect(api.check_sequencer(built.shared_sequencer), 200).body == {"valid": True}
    got = expect(api.get_sequencer(built.owner, built.handles["locked"]), 200).body
    assert got["sequencer"] == built.sequencer
    probe = api.handle(built.viewer, f"{built.base}/delayed")
    if time.time() * 1000 < built.delay_until - 1000:
        refused = expect(api.acquire(built.viewer, probe, retry=0), 409, "lock_delay")
        assert refused.body["error"]["lock_delay_until_ms"] == built.delay_until
    expect(api.close(built.viewer, probe), 204)
    # and the cell takes writes again
    expect(api.set(built.owner, built.handles["f1"], b"after restart"), 200)
    expect(api.set(built.owner, built.handles["f1"], b"x"), 200)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_whole_cell_restarted_from_disk_serves_identical_state(cell: LocalCell,
                                                               how: str) -> None:
    heal(cell)
    api = Api(serving_leader(cell).url)
    built = build(api)
    if how == "sigterm":
        cell.stop()
    else:
        for member in cell.members:
            kill(member, signal.SIGKILL)
    for member in cell.members:
        assert member.process is not None and member.process.poll() is not None
    for member in cell.members:
        cell.start_member(member)
    cell.wait_ready(90)
    check_identical(Api(serving_leader(cell).url), built)
