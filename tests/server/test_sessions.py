"""Sessions over real processes: CreateSession, KeepAlive (long poll, events, ack),
CloseSession, unknown and expired sessions (DESIGN.md §3 Sessions/Events, §4)."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from lockcell.cli.localcell import LocalCell

from .kit import (
    Api,
    Reply,
    background,
    expect,
    metric,
    request,
    serving_leader,
    uniq,
    wait_until,
)

CELL_OPTIONS = {"lease_ms": 12000}
ROOT = "/ls/local"


@pytest.fixture
def api(cell: LocalCell) -> Api:
    return Api(serving_leader(cell).url)


def _keepalives_served(api: Api) -> float:
    return metric(api, "lockcell_keepalives")


def test_create_session_answer(api: Api) -> None:
    reply = expect(api.create_session(), 201)
    body = reply.body
    assert set(body) == {"session", "lease_ms", "valid_ms", "grace_ms"}
    assert isinstance(body["session"], str) and len(body["session"]) >= 32
    assert body["lease_ms"] == 12000  # the cell's default
    assert isinstance(body["valid_ms"], int)
    assert 11000 <= body["valid_ms"] <= 12000 + 1000
    assert isinstance(body["grace_ms"], int) and body["grace_ms"] >= 0
    # a body-less CreateSession is the same as {}
    other = expect(api("POST", "/v1/sessions", raw=b""), 201)
    assert other.body["session"] != body["session"]
    assert other.body["lease_ms"] == 12000


@pytest.mark.parametrize(("asked", "granted"), [
    (0, 1000), (1, 1000), (999, 1000), (1000, 1000), (2500, 2500), (60000, 60000),
    (60001, 60000), (3_600_000, 60000),
])
def test_lease_is_clamped(api: Api, asked: int, granted: int) -> None:
    reply = expect(api.create_session(asked), 201)
    assert reply.body["lease_ms"] == granted
    assert reply.body["valid_ms"] <= granted + 1000
    s = reply.body["session"]
    ka = expect(api.keepalive(s, wait_ms=0), 200)
    assert ka.body["lease_ms"] == granted
    expect(api.close_session(s), 204)


def test_keepalive_without_wait_answers_at_once(api: Api) -> None:
    s = api.session(5000)
    reply = expect(api.keepalive(s, wait_ms=0), 200)
    assert set(reply.body) == {"lease_ms", "valid_ms", "events"}
    assert reply.body["events"] == []
    assert reply.body["lease_ms"] == 5000
    assert 4000 <= reply.body["valid_ms"] <= 5000 + 1000
    assert reply.elapsed < 2.0
    # no body at all is the same as {}
    expect(api("POST", f"/v1/sessions/{s}/keepalive", raw=b""), 200)


def test_held_long_poll_answers_valid_ms_beyond_the_lease(api: Api) -> None:
    s = api.session(2000)
    reply = expect(api.keepalive(s, wait_ms=1000), 200)
    # nothing pending and the lease is far from its end: the leader holds the call
    assert reply.elapsed >= 0.9, reply.elapsed
    assert reply.body["events"] == []
    # valid_ms counts from when the leader received the call: held time + a full lease
    assert reply.body["valid_ms"] >= 2000, reply.body
    assert reply.body["valid_ms"] <= reply.elapsed * 1000 + 2000 + 500, reply.body


def test_long_poll_returns_before_the_lease_ends_and_keeps_the_session(api: Api) -> None:
    s = api.session(1500)
    h = api.handle(s, f"{ROOT}/{uniq()}", "file")
    started = time.monotonic()
    rounds = 0
    while time.monotonic() - started < 5.0:  # more than three leases
        reply = expect(api.keepalive(s, wait_ms=60000), 200)
        rounds += 1
        # wait_ms is only an upper bound: the leader answers before the lease runs out
        assert reply.elapsed < 1.5, reply.elapsed
        assert reply.body["valid_ms"] > reply.elapsed * 1000, reply.body
    assert rounds >= 3
    expect(api.stat(s, h), 200)


def test_keepalive_returns_early_when_an_event_arrives(api: Api) -> None:
    watcher = api.session()
    writer = api.session()
    path = f"{ROOT}/{uniq()}"
    h = api.handle(watcher, path, "file", events=["contents_modified"])
    w = api.handle(writer, path)
    before = _keepalives_served(api)
    poll = background(api.keepalive, watcher, 20000)
    # the long poll has reached the leader once its KeepAlive counter moved
    wait_until(lambda: _keepalives_served(api) > before, 10, message="the long poll to arrive")
    started = time.monotonic()
    expect(api.set(writer, w, b"new"), 200)
    reply = expect(poll.result(30), 200)
    assert time.monotonic() - started < 5.0, "the long poll was not woken by the event"
    assert reply.elapsed < 15.0
    events = reply.body["events"]
    assert len(events) == 1, events
    event = events[0]
    assert set(event) == {"seq", "type", "handle", "path"}
    assert event["type"] == "contents_modified"
    assert event["handle"] == h
    assert event["path"] == path.replace("/ls/local", "/ls/demo")
    assert isinstance(event["seq"], int)


def test_pending_events_answer_a_long_poll_at_once(api: Api) -> None:
    watcher = api.session()
    path = f"{ROOT}/{uniq()}"
    h = api.handle(watcher, path, "file", events=["contents_modified"])
    expect(api.set(watcher, h, b"x"), 200)
    reply = expect(api.keepalive(watcher, wait_ms=10000), 200)
    assert reply.elapsed < 3.0
    assert [e["type"] for e in reply.body["events"]] == ["contents_modified"]


def test_events_in_commit_order_with_increasing_seq_until_acked(api: Api) -> None:
    watcher = api.session()
    actor = api.session()
    d = f"{ROOT}/{uniq('dir')}"
    api.mkdir(actor, d)
    f = f"{d}/file"
    api.handle(actor, f, "file")
    hd = api.handle(watcher, d, events=["child_added", "child_removed"])
    hf = api.handle(watcher, f, events=["contents_modified", "lock_acquired"])
    # one event per call, so the expected order is the commit order of the calls
    hx = api.handle(actor, f"{d}/x", "file")                       # child_added   (hd)
    af = api.handle(actor, f)
    expect(api.set(actor, af, b"1"), 200)                          # contents_modified (hf)
    expect(api.acquire(actor, af), 200)                            # lock_acquired (hf)
    expect(api.delete(actor, hx), 204)                             # child_removed (hd)
    expect(api.release(actor, af), 204)                            # (nothing)
    expect(api.set(actor, af, b"2"), 200)                          # contents_modified (hf)
    reply = expect(api.keepalive(watcher, wait_ms=0), 200)
    events = reply.body["events"]
    assert [(e["type"], e["handle"]) for e in events] == [
        ("child_added", hd), ("contents_modified", hf), ("lock_acquired", hf),
        ("child_removed", hd), ("contents_modified", hf)], events
    seqs = [e["seq"] for e in events]
    assert all(isinstance(x, int) for x in seqs)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    canonical_f = f.replace("/ls/local", "/ls/demo")
    canonical_d = d.replace("/ls/local", "/ls/demo")
    for e in events:
        if e["handle"] == hf:
            assert e["path"] == canonical_f
        else:
            assert e["path"] in (canonical_d, f"{canonical_d}/x")
    # not acknowledged: delivered again, unchanged
    again = expect(api.keepalive(watcher, wait_ms=0), 200).body["events"]
    assert again == events
    # ack drops everything up to the acknowledged seq
    partly = expect(api.keepalive(watcher, wait_ms=0, ack=seqs[1]), 200).body["events"]
    assert partly == events[2:]
    expect(api.set(actor, af, b"3"), 200)
    rest = expect(api.keepalive(watcher, wait_ms=0, ack=seqs[-1]), 200).body["events"]
    assert [e["type"] for e in rest] == ["contents_modified"]
    assert rest[0]["seq"] > seqs[-1]
    done = expect(api.keepalive(watcher, wait_ms=0, ack=rest[0]["seq"]), 200).body["events"]
    assert done == []


def test_handle_events_and_conflicting_lock(api: Api) -> None:
    holder = api.session()
    other = api.session()
    path = f"{ROOT}/{uniq()}"
    h = api.handle(holder, path, "file", events=["conflicting_lock", "handle_invalid"])
    expect(api.acquire(holder, h), 200)
    o = api.handle(other, path)
    expect(api.acquire(other, o), 409, "lock_busy")
    events = expect(api.keepalive(holder, wait_ms=0), 200).body["events"]
    assert [(e["type"], e["handle"]) for e in events] == [("conflicting_lock", h)]
    expect(api.release(holder, h), 204)
    expect(api.delete(other, o), 204)
    events = expect(api.keepalive(holder, wait_ms=0, ack=events[0]["seq"]), 200).body["events"]
    assert [(e["type"], e["handle"]) for e in events] == [("handle_invalid", h)]


def test_close_session(api: Api) -> None:
    s = api.session()
    other = api.session()
    lock_path = f"{ROOT}/{uniq()}"
    eph_path = f"{ROOT}/{uniq()}"
    h = api.handle(s, lock_path, "file", lock_delay_ms=60000)
    api.handle(s, eph_path, "file", ephemeral=True)
    expect(api.acquire(s, h), 200)
    expect(api.close_session(s), 204)
    # its locks are released at once (no lock-delay: the session did not expire) ...
    o = api.handle(other, lock_path)
    expect(api.acquire(other, o), 200)
    # ... and its ephemeral nodes are gone with its handles
    assert not api.exists(other, eph_path)
    # later calls on the closed session fail as calls on an ended session
    later = api.keepalive(s, wait_ms=0)
    assert (later.status, later.code) in ((410, "session_expired"), (404, "not_found")), later
    later = api.stat(s, h)
    assert (later.status, later.code) in ((410, "session_expired"), (404, "not_found")), later
    later = api.open(s, lock_path)
    assert (later.status, later.code) in ((410, "session_expired"), (404, "not_found")), later
    again = api.close_session(s)
    assert again.status in (204, 404, 410), again


def _session_routes(s: str, h: str) -> list[tuple[str, str, object]]:
    base = f"/v1/sessions/{s}"
    return [
        ("POST", f"{base}/keepalive", {"wait_ms": 0}),
        ("DELETE", base, None),
        ("POST", f"{base}/handles", {"path": f"{ROOT}/x"}),
        ("DELETE", f"{base}/handles/{h}", None),
        ("POST", f"{base}/handles/{h}/poison", None),
        ("GET", f"{base}/handles/{h}", None),
        ("GET", f"{base}/handles/{h}/stat", None),
        ("GET", f"{base}/handles/{h}/children", None),
        ("PUT", f"{base}/handles/{h}", {"data": "eA=="}),
        ("DELETE", f"{base}/handles/{h}/node", None),
        ("POST", f"{base}/handles/{h}/lock", {"mode": "exclusive"}),
        ("DELETE", f"{base}/handles/{h}/lock", None),
        ("GET", f"{base}/handles/{h}/sequencer", None),
        ("PUT", f"{base}/handles/{h}/sequencer", {"sequencer": None}),
    ]


@pytest.mark.parametrize("kind", ["well-formed", "malformed"])
def test_unknown_session_is_404(api: Api, kind: str) -> None:
    session = uuid.uuid4().hex if kind == "well-formed" else "nope"
    for method, path, body in _session_routes(session, uuid.uuid4().hex):
        reply = api(method, path, {} if body is None else body)
        expect(reply, 404, "not_found")


def test_expired_session_is_410_everywhere(cell: LocalCell, api: Api) -> None:
    keeper = api.session()
    s = api.session(1000)
    path = f"{ROOT}/{uniq()}"
    h = api.handle(s, path, "file", data=b"kept")
    eph = f"{ROOT}/{uniq()}"
    api.handle(s, eph, "file", ephemeral=True)
    # reads do not renew the lease: poll one until the session has expired
    wait_until(lambda: api.stat(s, h).status == 410, 15, message="the session to expire")
    for method, route, body in _session_routes(s, h):
        reply = api(method, route, {} if body is None else body)
        expect(reply, 410, "session_expired")
    # the answers of a follower are the same
    follower = next(m for m in cell.members if m.url != api.base)
    expect(request(follower.url, "GET", f"/v1/sessions/{s}/handles/{h}"), 410,
           "session_expired")
    # its handles are closed (the permanent file stays), its ephemeral file is gone
    k = api.handle(keeper, path)
    assert api.contents(keeper, k) == b"kept"
    assert not api.exists(keeper, eph)


def test_acknowledging_everything_lets_the_long_poll_wait(api: Api) -> None:
    s = api.session(4000)
    h = api.handle(s, f"{ROOT}/{uniq()}", "file", events=["contents_modified"])
    expect(api.set(s, h, b"x"), 200)
    seq = expect(api.keepalive(s, wait_ms=0), 200).body["events"][0]["seq"]
    reply = expect(api.keepalive(s, wait_ms=1000, ack=seq), 200)
    assert reply.body["events"] == []
    assert reply.elapsed >= 0.9, "acknowledged events must not cut the long poll short"


def test_child_modified_event(api: Api) -> None:
    watcher = api.session()
    d = f"{ROOT}/{uniq('dir')}"
    api.mkdir(watcher, d)
    hd = api.handle(watcher, d, events=["child_modified"])
    hf = api.handle(watcher, f"{d}/f", "file")
    expect(api.set(watcher, hf, b"changed"), 200)
    events = expect(api.keepalive(watcher, wait_ms=0), 200).body["events"]
    assert [(e["type"], e["handle"]) for e in events] == [("child_modified", hd)]


def test_a_renewed_session_stays_valid_for_valid_ms(api: Api) -> None:
    """KeepAlives landing around the moment a lease ends: each 200 must be honoured."""
    results: list[tuple[Reply, Reply]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        created = expect(api.create_session(1000, retry=0), 201)
        started = time.monotonic()  # the leader started the lease before it answered
        s = created.body["session"]
        h = api.handle(s, f"{ROOT}/{uniq('race')}", "file")
        # aim around the end of the lease: from 10 ms before to 150 ms after it
        while time.monotonic() < started + 0.99 + 2 * i / 1000:
            time.sleep(0.0005)
        renewed = api.keepalive(s, wait_ms=0, retry=0)
        if renewed.status != 200:
            expect(renewed, 410, "session_expired")
            return
        answered = time.monotonic()
        # well inside the validity just granted, the session must still be alive
        wait_until(lambda: time.monotonic() > answered + min(0.3, renewed.body["valid_ms"]
                                                            / 3000), 5)
        check = api.stat(s, h, retry=0)
        with lock:
            results.append((renewed, check))

    with ThreadPoolExecutor(max_workers=80) as pool:
        for future in [pool.submit(one, i) for i in range(80)]:
            future.result(60)
    broken = [(r, c) for r, c in results if c.status != 200]
    assert not broken, (f"{len(broken)} of {len(results)} sessions renewed with "
                        f"valid_ms={broken[0][0].body['valid_ms']} expired right after: "
                        f"{broken[0][1]!r}")


def test_closing_a_session_ends_its_held_long_poll(api: Api) -> None:
    s = api.session(12000)
    before = _keepalives_served(api)
    poll = background(api.keepalive, s, 8000, retry=0)
    wait_until(lambda: _keepalives_served(api) > before, 10, message="the long poll to arrive")
    closed = time.monotonic()
    expect(Api(api.base).close_session(s), 204)
    reply = poll.result(30)
    assert time.monotonic() - closed < 3.0, "the long poll outlived its session"
    assert (reply.status, reply.code) in ((410, "session_expired"), (404, "not_found")), reply


def test_a_closed_handle_gets_no_more_events(api: Api) -> None:
    watcher = api.session()
    writer = api.session()
    path = f"{ROOT}/{uniq()}"
    closed = api.handle(watcher, path, "file", events=["contents_modified"])
    kept = api.handle(watcher, path, events=["contents_modified"])
    w = api.handle(writer, path)
    expect(api.close(watcher, closed), 204)
    expect(api.set(writer, w, b"x"), 200)
    events = expect(api.keepalive(watcher, wait_ms=0), 200).body["events"]
    assert [(e["type"], e["handle"]) for e in events] == [("contents_modified", kept)]


def test_a_session_is_valid_for_valid_ms_and_expires_after(api: Api) -> None:
    s = api.session(2000)
    h = api.handle(s, f"{ROOT}/{uniq()}", "file")
    reply = expect(api.keepalive(s, wait_ms=0), 200)
    answered = time.monotonic()
    valid = reply.body["valid_ms"] / 1000
    assert valid >= 1.5
    # reads do not renew; the session must hold for (nearly) all of valid_ms ...
    while time.monotonic() < answered + valid * 0.8:
        expect(api.stat(s, h, retry=0), 200)
        time.sleep(0.1)
    # ... and then expire without KeepAlives
    wait_until(lambda: api.stat(s, h).status == 410, 10, message="the session to expire")


@pytest.mark.parametrize("asked", [10**10, 2**53])
def test_a_huge_lease_is_clamped_too(api: Api, asked: int) -> None:
    reply = expect(api.create_session(asked), 201)
    assert reply.body["lease_ms"] == 60000
