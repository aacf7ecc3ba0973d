"""A follower that was down while the cell took many writes and compacted its log catches
up by snapshot, and serves identical state once leadership is transferred to it
(DESIGN.md §2 snapshots/InstallSnapshot/leadership transfer, §4 POST /v1/cluster/leader)."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest

from lockcell.cli.localcell import LocalCell

from .kit import (
    Api,
    b64,
    dump_tree,
    expect,
    followers,
    heal,
    kill,
    member_id,
    request,
    rid,
    serving_leader,
    uniq,
    view,
    wait_until,
)

SNAPSHOT_EVERY = 50
RETAINED = 2000  # entries a snapshotting member keeps behind its snapshot (DriverConfig)
CELL_OPTIONS = {"lease_ms": 12000,
                "extra_env": {"LOCKCELL_SNAPSHOT_EVERY": str(SNAPSHOT_EVERY)}}
ROOT = "/ls/local"


async def _hammer(url: str, session: str, handles: list[str], count: int,
                  concurrency: int = 24) -> None:
    """``count`` SetContents spread over ``handles``, ``concurrency`` at a time."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    failures: list[str] = []

    async def worker(http: aiohttp.ClientSession) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            h = handles[i % len(handles)]
            body = {"data": b64(f"write {i}".encode())}
            async with http.put(f"{url}/v1/sessions/{session}/handles/{h}", json=body) as r:
                if r.status != 200:
                    failures.append(f"{r.status} {await r.text()}")

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    assert not failures, failures[:5]


def test_follower_catches_up_by_snapshot_and_serves_identical_state_as_leader(
        cell: LocalCell) -> None:
    leader = serving_leader(cell)
    lagging = followers(cell, leader)[0]
    lagging_id = member_id(lagging)
    api = Api(leader.url)
    s = api.session(60000)
    base = f"{ROOT}/{uniq('snap')}"
    api.mkdir(s, base)
    kill(lagging, signal.SIGKILL)
    behind = view(leader)["commit_index"]
    handles = [api.handle(s, f"{base}/f{i:02d}", "file") for i in range(20)]
    # replicated state beyond the namespace that the snapshot must carry: a remembered
    # request id, a poisoned handle, a handle's event mask, a set sequencer, a held lock
    key = rid()
    first = expect(api.set(s, handles[2], b"once", headers={"X-Request-Id": key}), 200)
    poisoned = api.handle(s, f"{base}/f03")
    expect(api.poison(s, poisoned), 204)
    watcher = api.session(60000)
    watching = api.handle(watcher, f"{base}/f04", events=["contents_modified"])
    locker = api.session(60000)
    locked = api.handle(locker, f"{base}/f05")
    sequencer = expect(api.acquire(locker, locked), 200).body["sequencer"]
    fenced = api.handle(locker, f"{base}/f06")
    expect(api.set_sequencer(locker, fenced, sequencer), 200)
    # namespace changes as well as contents: some files deleted, one directory re-created
    for i in range(5):
        expect(api.delete(s, api.handle(s, f"{base}/gone{i}", "file")), 204)
    sub = api.mkdir(s, f"{base}/sub")
    expect(api.delete(s, sub), 204)
    api.mkdir(s, f"{base}/sub")
    api.handle(s, f"{base}/sub/kept", "file", data=b"kept")
    needed = RETAINED + 3 * SNAPSHOT_EVERY + 100
    while view(leader)["commit_index"] - behind < needed:
        asyncio.run(_hammer(leader.url, s, handles, 600))
    # the lagging member's next entry is no longer in the leader's log: only a snapshot helps
    assert view(leader)["commit_index"] - behind > RETAINED + SNAPSHOT_EVERY + 1
    expect(api.set(s, handles[0], b"final"), 200)
    before = dump_tree(api, s, base)
    assert len(before) == 20 + 3  # base, 20 files, sub, sub/kept
    cell.start_member(lagging)
    cell.wait_ready(90)
    assert view(lagging)["applied_index"] >= view(leader)["commit_index"] - 1
    # evidence on its disk (layout of storage/store.py: <seq>-<first index>.wal): its old
    # log was replaced by an installed snapshot, so no segment starts at or before the
    # point where it stopped
    firsts = [int(p.stem.split("-")[1]) for p in (lagging.data_dir / "raft").glob("*.wal")]
    assert firsts and min(firsts) > behind, (sorted(firsts), behind)
    # hand leadership to the member that caught up, then read everything through it
    moved = request(leader.url, "POST", "/v1/cluster/leader", {"to": lagging_id},
                    headers={"Authorization": f"Bearer {cell.admin_token}"}, timeout=30)
    expect(moved, 200)
    new = wait_until(lambda: serving_leader(cell) is lagging and lagging, 30,
                     message="the caught-up member to lead")
    napi = Api(new.url)
    assert dump_tree(napi, s, base) == before
    assert napi.contents(s, handles[0]) == b"final"
    # it takes writes as the leader
    expect(napi.set(s, handles[1], b"written at the new leader"), 200)
    assert napi.contents(s, handles[1]) == b"written at the new leader"
    # ... and the rest of the replicated state came with the snapshot
    generation = napi.stat_of(s, handles[2])["content_generation"]
    again = expect(napi.set(s, handles[2], b"once", headers={"X-Request-Id": key}), 200)
    assert again.body == first.body
    assert napi.stat_of(s, handles[2])["content_generation"] == generation
    expect(napi.get(s, poisoned), 410, "handle_invalid")
    expect(napi.get(locker, fenced), 200)
    assert expect(napi.check_sequencer(sequencer), 200).body == {"valid": True}
    assert napi.stat_of(locker, locked)["lock"]["mode"] == "exclusive"
    expect(napi.keepalive(watcher, wait_ms=0), 200)  # drain master_failover
    events = expect(napi.keepalive(watcher, wait_ms=0), 200).body["events"]
    acked = max([e["seq"] for e in events], default=0)
    expect(napi.set(s, handles[4], b"watched"), 200)
    events = expect(napi.keepalive(watcher, wait_ms=0, ack=acked), 200).body["events"]
    assert [(e["type"], e["handle"]) for e in events
            if e["type"] != "master_failover"] == [("contents_modified", watching)]
    expect(napi.release(locker, locked), 204)
    expect(napi.get(locker, fenced), 410, "handle_invalid")
    cell.wait_ready(60)


def test_a_lagging_follower_is_not_ready_before_it_has_caught_up(cell: LocalCell) -> None:
    heal(cell)
    leader = serving_leader(cell)
    lagging = followers(cell, leader)[0]
    api = Api(leader.url)
    s = api.session(60000)
    h = api.handle(s, f"{ROOT}/{uniq('ready')}", "file")
    blob = os.urandom(200 * 1024)
    assert lagging.process is not None
    kill(lagging, signal.SIGSTOP)
    try:
        for _ in range(80):
            expect(api.set(s, h, blob), 200)
        final = view(leader)["commit_index"]
    finally:
        lagging.process.send_signal(signal.SIGCONT)
    # /readyz: 200 only once the member "has applied what that leader had committed"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if request(lagging.url, "GET", "/readyz", timeout=5).status == 200:
            applied = view(lagging)["applied_index"]  # never lower than when it said ready
            assert applied >= final, (f"ready at applied index {applied} while the leader "
                                      f"had committed {final}")
            return
        time.sleep(0.005)
    pytest.fail("the follower never became ready")


def test_members_restart_from_the_snapshots_on_their_disks(cell: LocalCell) -> None:
    """Restoring a snapshot at startup must not need the peer transport yet (a member that
    had snapshotted could not start again: the restore announced the member list to a
    transport that did not exist)."""
    heal(cell)
    leader = serving_leader(cell)
    api = Api(leader.url)
    s = api.session(60000)
    h = api.handle(s, f"{ROOT}/{uniq('reboot')}", "file")
    # a member snapshots every SNAPSHOT_EVERY..1.5 x SNAPSHOT_EVERY entries (jittered per
    # member); on a fresh cell (this test may run alone on an xdist worker) all must have
    # taken one
    writes = SNAPSHOT_EVERY * 3 // 2 + 10
    for i in range(writes):
        expect(api.set(s, h, f"v{i}".encode()), 200)
    for member in cell.members:
        wait_until(lambda m=member: list((m.data_dir / "raft").glob("*.snap")), 30,
                   message=f"a snapshot on member {member.index}'s disk")
    follower = followers(cell, leader)[0]
    kill(follower, signal.SIGKILL)
    cell.start_member(follower)
    cell.wait_ready(60)
    for member in cell.members:  # then the whole cell, from snapshots only
        kill(member, signal.SIGTERM)
    for member in cell.members:
        cell.start_member(member)
    cell.wait_ready(60)
    again = Api(serving_leader(cell).url)
    assert again.contents(s, h) == f"v{writes - 1}".encode()
