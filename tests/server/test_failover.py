"""A 3-process cell losing its leader: kill -9 during a stream of writes, request ids
across a leader change, fresh leases and master_failover after it, and no KeepAlive
renewal without the leader lease (DESIGN.md §2 Leader lease, §3 Sessions/Events, §4)."""

from __future__ import annotations

import http.client
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pytest

from lockcell.cli.localcell import LocalCell, LocalMember

from .kit import (
    Api,
    Reply,
    background,
    expect,
    followers,
    heal,
    kill,
    member_id,
    request,
    rid,
    serving_leader,
    unb64,
    uniq,
    view,
    wait_until,
)

CELL_OPTIONS = {"lease_ms": 12000}
ROOT = "/ls/local"


@pytest.fixture(autouse=True)
def whole(cell: LocalCell) -> None:
    """Every test starts with all three members running and ready."""
    heal(cell)


def _new_leader(cell: LocalCell, old: LocalMember) -> LocalMember:
    new = serving_leader(cell, timeout=30, exclude=old)
    assert new is not old
    return new


# --------------------------------------------------------------------------- stream


@dataclass
class Stream:
    acked: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    unexpected: list[Reply] = field(default_factory=list)
    acks: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def _writer(stream: Stream, index: int, endpoints: list[str], session: str,
            base: str) -> None:
    apis = [Api(url, retry=0, timeout=5) for url in endpoints]
    n = 0
    target = index
    while not stream.stop.is_set():
        n += 1
        path = f"{base}/w{index}-{n:05d}"
        data = f"writer {index} write {n}".encode()
        api = apis[target % len(apis)]
        try:
            reply: Reply | None = api.open(session, path, "file", data=data,
                                           headers={"X-Request-Id": rid()})
        except (OSError, http.client.HTTPException):
            reply = None
        if reply is not None and reply.status == 201:
            with stream.lock:
                stream.acked[path] = (data, time.monotonic())
                stream.acks[index].append(time.monotonic())
            time.sleep(0.01)
            continue
        # not acknowledged: its outcome is unknown; go on with another member
        if reply is not None and reply.status != 503:
            with stream.lock:
                stream.unexpected.append(reply)
        target += 1
        time.sleep(0.05)


def _leading_url(endpoints: list[str]) -> str | None:
    """The URL of a member that says it leads (never a follower: it would forward)."""
    for url in endpoints:
        try:
            reply = request(url, "GET", "/v1/cluster", timeout=1)
        except (OSError, http.client.HTTPException):
            continue
        if reply.status == 200 and reply.body["self"]["role"] == "leader":
            return url
    return None


def _counter_writer(stream: Stream, endpoints: list[str], session: str, handle: str,
                    counted: list[int]) -> None:
    """SetContents n = 1, 2, ...; each retried with its request id until acknowledged."""
    n = 0
    while not stream.stop.is_set():
        n += 1
        key = rid()
        deadline = time.monotonic() + 60
        while True:
            url = _leading_url(endpoints)
            reply: Reply | None = None
            if url is not None:
                try:
                    reply = Api(url, retry=0, timeout=5).set(
                        session, handle, str(n).encode(), headers={"X-Request-Id": key})
                except (OSError, http.client.HTTPException):
                    reply = None
            if reply is not None and reply.status == 200:
                counted.append(n)
                break
            if reply is not None and reply.status != 503:
                with stream.lock:
                    stream.unexpected.append(reply)
                return
            assert time.monotonic() < deadline, f"write {n} never acknowledged"
            time.sleep(0.05)


def test_kill_9_of_the_leader_during_a_stream_of_writes(cell: LocalCell) -> None:
    leader = serving_leader(cell)
    term_before = view(leader)["term"]
    api = Api(leader.url)
    setup = api.session(30000)
    base = f"{ROOT}/{uniq('stream')}"
    api.mkdir(setup, base)
    stream = Stream()
    writers = []
    for i in range(3):
        session = api.session(30000)
        writers.append(threading.Thread(target=_writer, args=(stream, i, cell.endpoints,
                                                               session, base), daemon=True))
    counter = api.handle(setup, f"{base}-counter", "file")
    generation = api.stat_of(setup, counter)["content_generation"]
    counted: list[int] = []
    writers.append(threading.Thread(target=_counter_writer, daemon=True,
                                    args=(stream, cell.endpoints, setup, counter, counted)))
    for thread in writers:
        thread.start()
    try:
        wait_until(lambda: all(len(stream.acks[i]) >= 20 for i in range(3)), 30,
                   message="every writer to have 20 acknowledged writes")
        killed_at = time.monotonic()
        kill(leader, signal.SIGKILL)
        new = _new_leader(cell, leader)
        # clients carry on: every writer gets writes acknowledged after the failover
        wait_until(lambda: all(sum(1 for t in stream.acks[i] if t > killed_at) >= 20
                               for i in range(3)), 45,
                   message="every writer to have 20 writes acknowledged after the kill")
    finally:
        stream.stop.set()
        for thread in writers:
            thread.join(30)
    assert not stream.unexpected, stream.unexpected[:5]
    assert not any(thread.is_alive() for thread in writers)
    assert view(new)["term"] > term_before
    # every acknowledged write is there, with its contents
    reader = Api(new.url)
    s = reader.session()
    names = {c["name"]: c["stat"] for c in expect(
        reader.readdir(s, reader.handle(s, base)), 200).body["children"]}
    missing = [p for p in stream.acked if p.rsplit("/", 1)[1] not in names]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    for path, (data, _) in sorted(stream.acked.items()):
        h = reader.handle(s, path)
        assert reader.contents(s, h) == data, path
        expect(reader.close(s, h), 204)
    # the retried writes were applied exactly once each: one generation per write
    assert counted == list(range(1, len(counted) + 1)) and len(counted) > 20
    c = reader.handle(s, f"{base}-counter")
    assert reader.contents(s, c) == str(counted[-1]).encode()
    assert reader.stat_of(s, c)["content_generation"] == generation + len(counted)
    # the killed member comes back and catches up
    cell.start_member(leader)
    cell.wait_ready(60)


# --------------------------------------------------------------------------- one failover


@dataclass
class Failover:
    """What clients saw across one kill -9 of the leader."""

    killed: LocalMember
    new: LocalMember
    lease_ms: int
    keepalive_after: Reply            # S1's first KeepAlive at the new leader
    stat_after: Reply                 # S1's handle read at the new leader
    ack_keepalive: Reply              # S2's KeepAlive at the new leader with its old ack
    acked_seq: int                    # the highest seq S2 had acknowledged before
    retried: Reply                    # S3's SetContents retried with the same request id
    first: Reply                      # ... and its first answer, from the old leader
    generation_after: int             # S3's file's content generation after the retry
    retried_open: Reply               # S3's Open retried with the same request id
    first_open: Reply
    lock_holder_stat: dict[str, Any]  # S4's locked file at the new leader
    sequencer_valid: Reply
    waiter_first: Reply               # S5's blocking Acquire (through a follower) at the kill
    waiter_granted: Reply             # S5's Acquire re-queued at the new leader, granted
    delay_until: int                  # lock-delay armed (S7 expired) before the kill
    delay_try: Reply                  # S8's TryAcquire at the new leader ...
    delay_try_sent_ms: float          # ... sent at this wall-clock time
    delay_granted: Reply              # S8's blocking Acquire at the new leader ...
    delay_granted_ms: float           # ... answered at this wall-clock time
    fresh_events: Reply               # a session created after the failover: its KeepAlive


@pytest.fixture(scope="module")
def failover(cell: LocalCell) -> Failover:
    heal(cell)
    leader = serving_leader(cell)
    api = Api(leader.url)
    d = f"{ROOT}/{uniq('failover')}"
    setup = api.session(60000)
    api.mkdir(setup, d)
    # S1: a short lease, renewed just before the kill
    lease_ms = 4000
    s1 = api.session(lease_ms)
    h1 = api.handle(s1, f"{d}/s1", "file", data=b"s1")
    # S2: three events delivered and acknowledged before the kill
    s2 = api.session(60000)
    h2 = api.handle(s2, f"{d}/s2", "file", events=["contents_modified"])
    for i in range(3):
        expect(api.set(s2, h2, f"{i}".encode()), 200)
    events = expect(api.keepalive(s2, wait_ms=0), 200).body["events"]
    assert [e["type"] for e in events] == ["contents_modified"] * 3
    acked_seq = events[-1]["seq"]
    expect(api.keepalive(s2, wait_ms=0, ack=acked_seq), 200)
    # S3: a write and an Open with request ids, answered by the old leader
    s3 = api.session(60000)
    h3 = api.handle(s3, f"{d}/s3", "file")
    write_id, open_id = rid(), rid()
    first = expect(api.set(s3, h3, b"exactly once", headers={"X-Request-Id": write_id},
                           retry=0), 200)
    first_open = expect(api.open(s3, f"{d}/s3-open", "file", data=b"o",
                                 headers={"X-Request-Id": open_id}, retry=0), 201)
    # S4 holds a lock; S5 waits for it through a follower
    s4 = api.session(60000)
    h4 = api.handle(s4, f"{d}/lock", "file")
    seq = expect(api.acquire(s4, h4), 200).body["sequencer"]
    s5 = api.session(60000)
    h5 = api.handle(s5, f"{d}/lock")
    follower = followers(cell, leader)[0]
    waiter = background(Api(follower.url, retry=0).acquire, s5, h5, "exclusive", 30000)
    wait_until(lambda: api.stat_of(s4, h4)["lock"]["waiters"] == 1, 10,
               message="S5's Acquire to queue")
    # S7 expires holding a lock with a long lock-delay; S8 will want that lock
    s7 = api.session(1000)
    h7 = api.handle(s7, f"{d}/delayed", "file", lock_delay_ms=7000)
    expect(api.acquire(s7, h7), 200)
    s8 = api.session(60000)
    h8 = api.handle(s8, f"{d}/delayed")
    wait_until(lambda: api.stat(s7, h7).status == 410, 15, message="S7 to expire")
    delay_until = int(api.stat_of(s8, h8)["lock"]["lock_delay_until_ms"])
    assert delay_until > time.time() * 1000 + 4000, "lock-delay not armed by the expiry"
    expect(api.keepalive(s1, wait_ms=0), 200)
    renewed = time.monotonic()
    kill(leader, signal.SIGKILL)
    waiter_first = waiter.result(60)
    new = _new_leader(cell, leader)
    napi = Api(new.url)
    # S1 did not (and could not) renew while there was no leader; wait until its old lease
    # is over for sure: it lives on only through the fresh lease the new leader grants
    wait_until(lambda: time.monotonic() > renewed + lease_ms / 1000 + 0.1, 30,
               message="S1's old lease to end")
    stat_after = napi.stat(s1, h1)
    keepalive_after = napi.keepalive(s1, wait_ms=0)
    ack_keepalive = napi.keepalive(s2, wait_ms=0, ack=acked_seq)
    retried = napi.set(s3, h3, b"exactly once", headers={"X-Request-Id": write_id})
    generation_after = napi.stat_of(s3, h3)["content_generation"]
    retried_open = napi.open(s3, f"{d}/s3-open", "file", data=b"o",
                             headers={"X-Request-Id": open_id})
    lock_holder_stat = napi.stat_of(s4, h4)
    sequencer_valid = napi.check_sequencer(seq)
    # S5 re-queues at the new leader; S4 releases; S5 is granted
    again = background(napi.acquire, s5, h5, "exclusive", 30000)
    wait_until(lambda: napi.stat_of(s4, h4)["lock"]["waiters"] == 1 or again.done(), 10,
               message="S5's Acquire to re-queue")
    expect(napi.release(s4, h4), 204)
    waiter_granted = again.result(60)
    fresh_events = napi.keepalive(napi.session(), wait_ms=0)
    delay_try_sent_ms = time.time() * 1000
    delay_try = napi.acquire(s8, h8, retry=0)
    delay_granted = napi.acquire(s8, h8, wait_ms=30000, retry=0)
    delay_granted_ms = time.time() * 1000
    return Failover(leader, new, lease_ms, keepalive_after, stat_after, ack_keepalive,
                    acked_seq, retried, first, generation_after, retried_open, first_open,
                    lock_holder_stat, sequencer_valid, waiter_first, waiter_granted,
                    delay_until, delay_try, delay_try_sent_ms, delay_granted,
                    delay_granted_ms, fresh_events)


def test_sessions_get_a_fresh_lease_from_a_new_leader(failover: Failover) -> None:
    expect(failover.stat_after, 200)
    reply = expect(failover.keepalive_after, 200)
    assert reply.body["lease_ms"] == failover.lease_ms
    assert reply.body["valid_ms"] >= failover.lease_ms - 500


def test_every_session_gets_master_failover(failover: Failover) -> None:
    events = expect(failover.keepalive_after, 200).body["events"]
    kinds = [e["type"] for e in events]
    assert kinds.count("master_failover") == 1, events
    # ... but not one created after the failover
    assert expect(failover.fresh_events, 200).body["events"] == []


def test_lock_delay_outlives_the_leader_that_armed_it(failover: Failover) -> None:
    if failover.delay_try_sent_ms < failover.delay_until - 500:
        expect(failover.delay_try, 409, "lock_delay")
        assert failover.delay_try.body["error"]["lock_delay_until_ms"] == failover.delay_until
    expect(failover.delay_granted, 200)
    assert failover.delay_granted_ms >= failover.delay_until - 50


def test_event_seq_keeps_increasing_across_a_failover(failover: Failover) -> None:
    events = expect(failover.ack_keepalive, 200).body["events"]
    assert [e["type"] for e in events] == ["master_failover"], events
    assert events[0]["seq"] > failover.acked_seq


def test_a_write_retried_across_the_leader_change_is_applied_once(failover: Failover) -> None:
    expect(failover.retried, 200)
    assert failover.retried.body == failover.first.body
    assert failover.generation_after == failover.first.body["stat"]["content_generation"]
    expect(failover.retried_open, (200, 201))
    assert failover.retried_open.body["handle"] == failover.first_open.body["handle"]


def test_locks_and_sequencers_survive_and_waiters_requeue(failover: Failover) -> None:
    assert failover.lock_holder_stat["lock"]["mode"] == "exclusive"
    assert failover.lock_holder_stat["lock"]["holders"] == 1
    assert expect(failover.sequencer_valid, 200).body == {"valid": True}
    # the waiter's first Acquire was cut by the failover with a retryable answer ...
    assert failover.waiter_first.status == 503, failover.waiter_first
    assert failover.waiter_first.code == "unavailable"
    # ... and its retry at the new leader was granted when the holder released
    expect(failover.waiter_granted, 200)


# --------------------------------------------------------------------------- leader lease


def test_no_keepalive_renewal_without_the_leader_lease(cell: LocalCell) -> None:
    leader = serving_leader(cell)
    api = Api(leader.url, retry=0, timeout=5)
    s = Api(leader.url).session()
    h = Api(leader.url).handle(s, f"{ROOT}/{uniq()}", "file", data=b"lease")
    expect(api.keepalive(s, wait_ms=0), 200)
    stopped = followers(cell, leader)
    answers: list[tuple[str, float, Reply | None]] = []
    calls = {
        "keepalive": lambda: api.keepalive(s, wait_ms=0),
        "read": lambda: api.stat(s, h),
        "write": lambda: api.set(s, h, b"without quorum"),
    }
    isolated_ready = None
    try:
        for member in stopped:
            kill(member, signal.SIGSTOP)
        t0 = time.monotonic()
        first_refusal: float | None = None
        while time.monotonic() - t0 < 10:
            for kind, call in calls.items():
                sent = time.monotonic() - t0
                try:
                    reply: Reply | None = call()
                except (OSError, http.client.HTTPException):
                    reply = None
                answers.append((kind, sent, reply))
                if kind == "keepalive" and reply is not None and reply.status == 503 \
                        and first_refusal is None:
                    first_refusal = sent
            if first_refusal is not None and time.monotonic() - t0 > max(first_refusal + 1.5,
                                                                         3.0):
                break
            time.sleep(0.05)
        # without a quorum the isolated member does not call itself ready
        isolated_ready = wait_until(
            lambda: request(leader.url, "GET", "/readyz", timeout=5).status == 503 and "no",
            10, message="the isolated leader's /readyz to turn 503")
        expect(request(leader.url, "GET", "/healthz", timeout=5), 200)
        # it no longer claims to know a leader (itself least of all)
        assert view(leader)["leader"] is None
    finally:
        for member in stopped:
            assert member.process is not None
            member.process.send_signal(signal.SIGCONT)
    assert isolated_ready == "no"

    def of(kind: str, status: int) -> list[tuple[float, Reply]]:
        return [(sent, r) for k, sent, r in answers
                if k == kind and r is not None and r.status == status]

    refused = of("keepalive", 503)
    assert refused, f"KeepAlive was still renewed 10 s after losing the quorum: {answers[-3:]}"
    first = refused[0][0]
    # the leader lease is shorter than one election timeout (10 ticks of 100 ms)
    assert first < 3.0, f"first refusal only {first:.2f}s after the stop"
    late = [(sent, r) for sent, r in of("keepalive", 200) if sent > 1.5]
    assert not late, f"KeepAlive renewed without the leader lease: {late[:3]}"
    assert not [r for sent, r in of("keepalive", 200) if sent > first], "renewed after a 503"
    for _, reply in refused:
        assert reply.code == "unavailable"
        assert reply.header("Retry-After") is not None
    # reads: at most within the leader lease; writes: never without a quorum
    stale_reads = [(sent, r) for sent, r in of("read", 200) if sent > 1.5]
    assert not stale_reads, f"reads served without a quorum: {stale_reads[:3]}"
    assert not of("write", 200), f"a write was acknowledged without a quorum: {of('write', 200)}"
    assert of("read", 503) and of("write", 503)
    # quorum back: the session lives on and is renewed again
    cell.wait_ready(60)
    new = serving_leader(cell)
    napi = Api(new.url)
    expect(napi.keepalive(s, wait_ms=0), 200)
    assert napi.contents(s, h) in (b"lease", b"without quorum")


def test_all_members_serve_after_the_failovers(cell: LocalCell) -> None:
    """Every member answers /healthz again after the failovers above (nothing leaked)."""
    for member in cell.members:
        expect(request(member.url, "GET", "/healthz"), 200)


def test_a_paused_old_leader_never_serves_stale_data(cell: LocalCell) -> None:
    leader = serving_leader(cell)
    api = Api(leader.url)
    s = api.session(60000)
    h = api.handle(s, f"{ROOT}/{uniq('stale')}", "file", data=b"old")
    assert leader.process is not None
    kill(leader, signal.SIGSTOP)
    try:
        new = serving_leader(cell, exclude=leader)
        expect(Api(new.url).set(s, h, b"new"), 200)
    finally:
        leader.process.send_signal(signal.SIGCONT)
    # right after it resumes, and for a while, it must never answer the old contents
    answers: list[Reply] = []
    write: Reply | None = None
    until = time.monotonic() + 3.0
    while time.monotonic() < until:
        try:
            answers.append(request(leader.url, "GET", f"/v1/sessions/{s}/handles/{h}",
                                   timeout=5))
            if write is None:
                write = Api(leader.url, retry=0).set(s, h, b"through the old leader")
        except (OSError, http.client.HTTPException):
            continue
        time.sleep(0.02)
    stale = [r for r in answers if r.status == 200 and unb64(r.body["data"]) == b"old"]
    assert not stale, f"stale reads from the resumed old leader: {stale[:2]}"
    assert any(r.status == 200 for r in answers), answers[-3:]
    # a write through it counts only if it was really committed
    final = Api(serving_leader(cell).url).contents(s, h)
    if write is not None and write.status == 200:
        assert final == b"through the old leader"
    else:
        assert final in (b"new", b"through the old leader")


def test_members_say_whether_they_hear_from_their_leader(cell: LocalCell) -> None:
    """``leader_in_contact`` in GET /v1/cluster: true on every member of a healthy cell;
    false on a follower cut off from its leader (clients relay through members that say
    true when only the leader is unreachable from them)."""
    leader = serving_leader(cell)
    wait_until(lambda: all(view(m)["leader_in_contact"] for m in cell.members), 10,
               message="every member in contact with the leader")
    lone, other = followers(cell, leader)
    try:
        kill(leader, signal.SIGSTOP)
        kill(other, signal.SIGSTOP)
        wait_until(lambda: view(lone)["leader_in_contact"] is False, 10,
                   message="the lone follower to notice it no longer hears from a leader")
    finally:
        heal(cell)
    wait_until(lambda: view(lone)["leader_in_contact"] is True, 30,
               message="contact again once the cell is whole")


def test_a_leader_stopped_by_sigterm_hands_leadership_over_first(cell: LocalCell) -> None:
    """A rolling restart stops the leader with SIGTERM: it hands leadership to another
    voter before it exits, so when its process is gone the others already follow a new
    leader (without the hand-over they would keep naming the dead one for an election
    timeout) and a write succeeds at once."""
    leader = serving_leader(cell)
    old_id = str(view(leader)["self"]["id"])
    old_term = int(view(leader)["term"])
    kill(leader, signal.SIGTERM)  # returns once the process has exited
    survivors = [m for m in cell.members if m is not leader]
    views = [view(m) for m in survivors]
    assert all(v["leader"] not in (None, old_id) for v in views), views
    assert {v["leader"] for v in views} == {views[0]["leader"]}
    assert all(int(v["term"]) == old_term + 1 for v in views)
    api = Api(survivors[0].url, retry=0, timeout=5)
    session = api.session()
    expect(api.open(session, f"{ROOT}/{uniq('handover')}", "file", data=b"x"), (200, 201))


def test_the_members_see_a_killed_leader_go(cell: LocalCell) -> None:
    """kill -9: the link the leader dialled to each member closes and its address refuses
    connections, so each member knows the process is gone (and campaigns as soon as its
    promise to it ends, rather than after a random wait); a new leader follows."""
    leader = serving_leader(cell)
    gone = f"member {member_id(leader)} is gone"
    survivors = followers(cell, leader)

    def reports() -> list[int]:
        return [(cell.root / "logs" / f"member-{m.index}.log").read_text().count(gone)
                for m in survivors]

    before = reports()
    kill(leader, signal.SIGKILL)
    wait_until(lambda: all(n > b for n, b in zip(reports(), before, strict=True)), 10,
               message="every survivor to report the killed leader gone")
    assert _new_leader(cell, leader) in survivors
