"""Locks over real processes: Acquire/TryAcquire, blocking waits served FIFO, Release
(with generations), sequencers, session expiry and lock-delay (DESIGN.md §3 Locks,
Sequencer, Lock-delay, Sessions; §4)."""

from __future__ import annotations

import base64
import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from lockcell.cli.localcell import LocalCell

from .kit import Api, Reply, background, expect, serving_leader, uniq, wait_until

MAX_LOCK_DELAY_MS = 30000
CELL_OPTIONS = {"lease_ms": 12000,
                "extra_env": {"LOCKCELL_MAX_LOCK_DELAY_MS": str(MAX_LOCK_DELAY_MS)}}
ROOT = "/ls/local"


@pytest.fixture
def api(cell: LocalCell) -> Api:
    return Api(serving_leader(cell).url)


@pytest.fixture
def path(api: Api) -> str:
    """A fresh file (the lock under test)."""
    p = f"{ROOT}/{uniq('lock')}"
    s = api.session()
    api.handle(s, p, "file")
    expect(api.close_session(s), 204)
    return p


def holder(api: Api, path: str, **open_kw: object) -> tuple[str, str]:
    """A new session and a handle on ``path``."""
    s = api.session()
    return s, api.handle(s, path, **open_kw)  # type: ignore[arg-type]


def waiters(api: Api, path: str) -> int:
    s = api.session()
    h = api.handle(s, path)
    count = int(api.stat_of(s, h)["lock"]["waiters"])
    expect(api.close_session(s), 204)
    return count


def lock_of(api: Api, path: str) -> dict[str, object]:
    s = api.session()
    h = api.handle(s, path)
    lock = dict(api.stat_of(s, h)["lock"])
    expect(api.close_session(s), 204)
    return lock


def queue_waiter(api: Api, path: str, mode: str = "exclusive",
                 wait_ms: int = 20000) -> tuple[str, str, Future[Reply]]:
    """Start a blocking Acquire and wait until the leader has queued it."""
    before = waiters(api, path)
    s, h = holder(api, path)
    future = background(api.acquire, s, h, mode, wait_ms, retry=0)
    wait_until(lambda: waiters(api, path) > before or future.done(), 10,
               message="the blocking Acquire to queue")
    assert not future.done(), future.result()
    return s, h, future


def decode_sequencer(seq: str) -> list[object]:
    assert seq.startswith("lc1:")
    body = seq[4:]
    return list(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


def encode_sequencer(fields: list[object]) -> str:
    raw = json.dumps(fields, separators=(",", ":")).encode()
    return "lc1:" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --------------------------------------------------------------------------- basics


def test_exclusive_lock(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    b, hb = holder(api, path)
    got = expect(api.acquire(a, ha), 200).body
    assert set(got) == {"sequencer", "lock_generation"}
    assert isinstance(got["sequencer"], str) and isinstance(got["lock_generation"], int)
    lock = api.stat_of(a, ha)["lock"]
    assert lock["mode"] == "exclusive" and lock["holders"] == 1
    assert api.stat_of(a, ha)["lock_generation"] == got["lock_generation"]
    expect(api.acquire(b, hb), 409, "lock_busy")
    expect(api.acquire(b, hb, "shared"), 409, "lock_busy")
    expect(api.acquire(b, hb, wait_ms=0), 409, "lock_busy")
    # the default mode is exclusive
    expect(api.acquire(b, hb, None), 409, "lock_busy")
    expect(api.release(a, ha), 204)
    assert api.stat_of(a, ha)["lock"]["mode"] is None
    again = expect(api.acquire(b, hb, None), 200).body
    assert again["lock_generation"] > got["lock_generation"]
    assert api.stat_of(b, hb)["lock"]["mode"] == "exclusive"


def test_shared_lock_and_generations(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    b, hb = holder(api, path)
    c, hc = holder(api, path)
    ga = expect(api.acquire(a, ha, "shared"), 200).body
    gb = expect(api.acquire(b, hb, "shared"), 200).body
    # joining shared mode does not start a new generation
    assert gb["lock_generation"] == ga["lock_generation"]
    lock = api.stat_of(a, ha)["lock"]
    assert lock["mode"] == "shared" and lock["holders"] == 2
    expect(api.acquire(c, hc, "exclusive"), 409, "lock_busy")
    expect(api.release(a, ha), 204)
    lock = api.stat_of(a, ha)["lock"]
    assert lock["mode"] == "shared" and lock["holders"] == 1
    expect(api.acquire(c, hc, "exclusive"), 409, "lock_busy")
    expect(api.release(b, hb), 204)
    assert api.stat_of(a, ha)["lock"] == {"mode": None, "holders": 0, "waiters": 0,
                                          "lock_delay_until_ms": 0}
    gc = expect(api.acquire(c, hc, "exclusive"), 200).body
    assert gc["lock_generation"] > gb["lock_generation"]
    expect(api.release(c, hc), 204)
    # shared mode entered from free starts a new generation as well
    again = expect(api.acquire(a, ha, "shared"), 200).body
    assert again["lock_generation"] > gc["lock_generation"]


def test_release_of_a_lock_not_held_is_409(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    b, hb = holder(api, path)
    expect(api.release(a, ha), 409, "conflict")
    expect(api.acquire(a, ha), 200)
    expect(api.release(b, hb), 409, "conflict")  # held, but not by this handle
    assert api.stat_of(a, ha)["lock"]["mode"] == "exclusive"
    expect(api.release(a, ha), 204)
    expect(api.release(a, ha), 409, "conflict")


def test_release_of_a_named_generation(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    g1 = expect(api.acquire(a, ha), 200).body["lock_generation"]
    expect(api.release(a, ha, g1 + 100), 409, "conflict")
    assert api.stat_of(a, ha)["lock"]["mode"] == "exclusive"
    expect(api.release(a, ha, g1), 204)
    g2 = expect(api.acquire(a, ha), 200).body["lock_generation"]
    assert g2 > g1
    # a late duplicate of the first Release never releases the later grant
    expect(api.release(a, ha, g1), 409, "conflict")
    lock = api.stat_of(a, ha)["lock"]
    assert lock["mode"] == "exclusive" and lock["holders"] == 1
    expect(api.release(a, ha, g2), 204)
    assert api.stat_of(a, ha)["lock"]["mode"] is None


# --------------------------------------------------------------------------- waiting


def test_blocking_acquire_is_granted_when_the_holder_releases(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    first = expect(api.acquire(a, ha), 200).body
    b, hb, waiting = queue_waiter(api, path)
    assert waiters(api, path) == 1
    released = time.monotonic()
    expect(api.release(a, ha), 204)
    got = expect(waiting.result(30), 200).body
    assert time.monotonic() - released < 3.0, "the waiter was not handed the lock at once"
    assert got["lock_generation"] > first["lock_generation"]
    assert expect(api.check_sequencer(got["sequencer"]), 200).body == {"valid": True}
    lock = api.stat_of(b, hb)["lock"]
    assert lock["mode"] == "exclusive" and lock["waiters"] == 0
    assert lock["lock_delay_until_ms"] == 0


def test_waiters_are_served_first_in_first_out(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    expect(api.acquire(a, ha), 200)
    queued = [queue_waiter(api, path) for _ in range(3)]
    assert waiters(api, path) == 3
    current = (a, ha)
    for i, (s, h, future) in enumerate(queued):
        expect(api.release(*current), 204)
        expect(future.result(30), 200)
        for _, _, later in queued[i + 1:]:
            assert not later.done(), f"waiter {queued.index((_, _, later))} overtook {i}"
        assert api.stat_of(s, h)["lock"]["holders"] == 1
        current = (s, h)
    expect(api.release(*current), 204)


def test_a_run_of_shared_waiters_goes_together_but_never_overtakes(api: Api,
                                                                  path: str) -> None:
    a, ha = holder(api, path)
    expect(api.acquire(a, ha), 200)
    s1 = queue_waiter(api, path, "shared")
    s2 = queue_waiter(api, path, "shared")
    x3 = queue_waiter(api, path, "exclusive")
    s4 = queue_waiter(api, path, "shared")
    expect(api.release(a, ha), 204)
    expect(s1[2].result(30), 200)
    expect(s2[2].result(30), 200)
    lock = lock_of(api, path)
    assert lock["mode"] == "shared" and lock["holders"] == 2
    assert not x3[2].done() and not s4[2].done(), "a later waiter overtook the queue"
    expect(api.release(s1[0], s1[1]), 204)
    assert not x3[2].done()
    expect(api.release(s2[0], s2[1]), 204)
    expect(x3[2].result(30), 200)
    assert not s4[2].done()
    expect(api.release(x3[0], x3[1]), 204)
    expect(s4[2].result(30), 200)
    expect(api.release(s4[0], s4[1]), 204)


def test_wait_running_out_is_lock_busy_and_leaves_no_waiter(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    expect(api.acquire(a, ha), 200)
    b, hb = holder(api, path)
    reply = api.acquire(b, hb, wait_ms=800, retry=0)
    expect(reply, 409, "lock_busy")
    assert reply.elapsed >= 0.75, f"answered after {reply.elapsed}s of a 0.8s wait"
    assert reply.elapsed < 10
    assert waiters(api, path) == 0
    expect(api.release(a, ha), 204)
    # the timed-out waiter was not granted the lock later on
    assert lock_of(api, path)["mode"] is None
    expect(api.release(b, hb), 409, "conflict")


def test_close_releases_to_a_waiter_and_cancels_queued_acquires(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    expect(api.acquire(a, ha), 200)
    b, hb, b_wait = queue_waiter(api, path)
    c, hc, c_wait = queue_waiter(api, path)
    # closing a waiting handle cancels its queued Acquire
    started = time.monotonic()
    expect(api.close(b, hb), 204)
    cancelled = b_wait.result(30)
    assert cancelled.status in (404, 409, 410) and cancelled.status != 200, cancelled
    assert time.monotonic() - started < 5.0
    assert waiters(api, path) == 1
    # closing the holder's handle releases its lock to the next waiter at once
    started = time.monotonic()
    expect(api.close(a, ha), 204)
    expect(c_wait.result(30), 200)
    assert time.monotonic() - started < 3.0
    assert api.stat_of(c, hc)["lock"]["lock_delay_until_ms"] == 0


def test_close_session_hands_the_lock_over_without_lock_delay(api: Api, path: str) -> None:
    a, ha = holder(api, path, lock_delay_ms=60000)
    expect(api.acquire(a, ha), 200)
    b, hb, waiting = queue_waiter(api, path)
    started = time.monotonic()
    expect(api.close_session(a), 204)
    expect(waiting.result(30), 200)
    assert time.monotonic() - started < 3.0
    assert api.stat_of(b, hb)["lock"]["lock_delay_until_ms"] == 0


# --------------------------------------------------------------------------- sequencers


def test_sequencer_lifecycle(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    b, hb = holder(api, path)
    got = expect(api.acquire(a, ha), 200).body
    seq = expect(api.get_sequencer(a, ha), 200).body
    assert seq["sequencer"] == got["sequencer"]
    assert expect(api.check_sequencer(got["sequencer"]), 200).body == {"valid": True}
    expect(api.release(a, ha), 204)
    assert expect(api.check_sequencer(got["sequencer"]), 200).body == {"valid": False}
    # the same handle taking the lock again gets a new sequencer; the old one stays stale
    again = expect(api.acquire(a, ha), 200).body
    assert again["sequencer"] != got["sequencer"]
    assert expect(api.check_sequencer(got["sequencer"]), 200).body == {"valid": False}
    expect(api.release(a, ha), 204)
    theirs = expect(api.acquire(b, hb), 200).body
    assert expect(api.check_sequencer(again["sequencer"]), 200).body == {"valid": False}
    assert expect(api.check_sequencer(theirs["sequencer"]), 200).body == {"valid": True}
    # shared: joining does not invalidate the first holder's sequencer
    expect(api.release(b, hb), 204)
    sa = expect(api.acquire(a, ha, "shared"), 200).body
    sb = expect(api.acquire(b, hb, "shared"), 200).body
    for s in (sa, sb):
        assert expect(api.check_sequencer(s["sequencer"]), 200).body == {"valid": True}
    assert sa["sequencer"] == sb["sequencer"]


def test_sequencer_of_a_deleted_or_recreated_node_is_invalid(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    got = expect(api.acquire(a, ha), 200).body
    expect(api.delete(a, ha), 204)
    assert expect(api.check_sequencer(got["sequencer"]), 200).body == {"valid": False}
    h2 = api.handle(a, path, "file")
    new = expect(api.acquire(a, h2), 200).body
    assert new["lock_generation"] > got["lock_generation"]
    assert expect(api.check_sequencer(got["sequencer"]), 200).body == {"valid": False}
    assert expect(api.check_sequencer(new["sequencer"]), 200).body == {"valid": True}


def test_forged_sequencers_are_invalid(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    good = expect(api.acquire(a, ha), 200).body["sequencer"]
    p, mode, gen, inst = decode_sequencer(good)
    assert isinstance(gen, int) and isinstance(inst, int)
    forged = [
        "", "x", "lc1:", "lc1:!!!!", "lc2:" + good[4:], good + "A", good[:-2], good.upper(),
        "lc1:" + good[4:] + "==", encode_sequencer([p, mode, gen + 1, inst]),
        encode_sequencer([p, mode, gen - 1, inst]), encode_sequencer([p, mode, gen, inst + 1]),
        encode_sequencer([p, "shared", gen, inst]), encode_sequencer([p + "x", mode, gen, inst]),
        encode_sequencer([p, mode, str(gen), inst]), encode_sequencer([p, mode, gen]),
        encode_sequencer([p, mode, gen, inst, 0]), encode_sequencer({"path": p}),  # type: ignore[arg-type]
        "lc1:" + "A" * 5000,
    ]
    for text in forged:
        reply = expect(api.check_sequencer(text), 200)
        assert reply.body == {"valid": False}, (text, reply)
    assert expect(api.check_sequencer(good), 200).body == {"valid": True}
    expect(api("POST", "/v1/sequencers/check", {}), 400, "invalid_argument")
    expect(api.check_sequencer(5), 400, "invalid_argument")
    expect(api.check_sequencer(None), 400, "invalid_argument")


def test_set_sequencer_fails_the_handle_once_the_lock_moves_on(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    b, hb = holder(api, path)
    server = api.session()
    resource = f"{ROOT}/{uniq('resource')}"
    rh = api.handle(server, resource, "file", data=b"r")
    seq = expect(api.acquire(a, ha), 200).body["sequencer"]
    assert expect(api.set_sequencer(server, rh, seq), 200).body == {"sequencer": seq}
    assert api.contents(server, rh) == b"r"
    expect(api.set(server, rh, b"written under the lock"), 200)
    expect(api.release(a, ha), 204)
    expect(api.acquire(b, hb), 200)
    for reply in (api.get(server, rh), api.stat(server, rh), api.set(server, rh, b"late"),
                  api.acquire(server, rh)):
        expect(reply, 410, "handle_invalid")
    expect(api.close(server, rh), 204)
    other = api.handle(server, resource)
    assert api.contents(server, other) == b"written under the lock"


def test_set_sequencer_refuses_stale_and_forged_and_changes_nothing(api: Api,
                                                                   path: str) -> None:
    a, ha = holder(api, path)
    server = api.session()
    rh = api.handle(server, f"{ROOT}/{uniq('resource')}", "file", data=b"r")
    stale = expect(api.acquire(a, ha), 200).body["sequencer"]
    expect(api.release(a, ha), 204)
    current = expect(api.acquire(a, ha), 200).body["sequencer"]
    p, mode, gen, inst = decode_sequencer(current)
    for bad in (stale, "garbage", encode_sequencer([p, mode, gen + 1, inst])):
        reply = api.set_sequencer(server, rh, bad)
        assert reply.status in (400, 409, 410) and reply.code in (
            "invalid_argument", "conflict", "handle_invalid"), reply
        # refused: the handle works as before, also after the lock moves on
        assert api.contents(server, rh) == b"r"
    expect(api.release(a, ha), 204)
    expect(api.acquire(a, ha), 200)
    assert api.contents(server, rh) == b"r"


# --------------------------------------------------------------------------- expiry


def test_expiry_releases_locks_arms_lock_delay_and_deletes_ephemerals(api: Api) -> None:
    base = f"{ROOT}/{uniq('expiry')}"
    setup = api.session()
    api.mkdir(setup, base)
    delayed, undelayed, eph = f"{base}/delayed", f"{base}/undelayed", f"{base}/eph"
    api.handle(setup, delayed, "file")
    api.handle(setup, undelayed, "file")
    dying = api.session(1000)
    hd = api.handle(dying, delayed, lock_delay_ms=3000)
    hu = api.handle(dying, undelayed, lock_delay_ms=0)
    api.handle(dying, eph, "file", ephemeral=True)
    before = expect(api.acquire(dying, hd), 200).body
    expect(api.acquire(dying, hu, "shared"), 200)
    # someone waits for the lock long enough to see the holder expire and the delay end
    w, hw, waiting = queue_waiter(api, delayed, wait_ms=30000)
    other, ho = holder(api, delayed)
    # the dying session sends no KeepAlive; reads do not renew it
    wait_until(lambda: api.stat(dying, hd).status == 410, 15,
               message="the session to expire")
    expect(api.get(dying, hd), 410, "session_expired")
    assert expect(api.check_sequencer(before["sequencer"]), 200).body == {"valid": False}
    # ephemeral nodes of the session are gone
    assert not api.exists(setup, eph)
    # a lock whose handle asked for no delay is free at once
    u = api.handle(other, undelayed)
    expect(api.acquire(other, u), 200)
    # the delayed one: nobody gets it during its lock-delay (with a waiter queued ahead, a
    # TryAcquire may be told lock_busy instead of lock_delay)
    stat = api.stat_of(other, ho)
    until = stat["lock"]["lock_delay_until_ms"]
    assert stat["lock"]["mode"] is None and stat["lock"]["holders"] == 0
    now_ms = time.time() * 1000
    assert now_ms - 500 < until <= now_ms + 3000 + 500, (until, now_ms)
    reply = api.acquire(other, ho, retry=0)
    if reply.status == 200:
        pytest.fail(f"the lock was granted during its lock-delay: {reply!r}")
    expect(reply, 409)
    assert reply.code in ("lock_delay", "lock_busy"), reply
    if reply.code == "lock_delay":
        assert reply.body["error"]["lock_delay_until_ms"] == until
    # the queued waiter gets the lock once the delay is over, not before
    got = expect(waiting.result(30), 200).body
    granted_ms = time.time() * 1000
    assert granted_ms >= until - 50, (granted_ms, until)
    assert got["lock_generation"] > before["lock_generation"]
    assert api.stat_of(w, hw)["lock"]["mode"] == "exclusive"
    expect(api.release(w, hw), 204)
    # a blocking Acquire that arrives during a delay and whose wait covers it is granted
    # after it as well (see test_blocking_acquire_during_lock_delay)


def test_blocking_acquire_during_lock_delay_is_granted_after_it(api: Api, path: str) -> None:
    dying = api.session(1000)
    hd = api.handle(dying, path, lock_delay_ms=2500)
    expect(api.acquire(dying, hd), 200)
    other, ho = holder(api, path)
    wait_until(lambda: api.stat(dying, hd).status == 410, 15,
               message="the session to expire")
    first = api.acquire(other, ho, retry=0)
    expect(first, 409, "lock_delay")
    until = first.body["error"]["lock_delay_until_ms"]
    assert isinstance(until, int)
    now_ms = time.time() * 1000
    assert now_ms - 500 < until <= now_ms + 2500 + 500, (until, now_ms)
    stat = api.stat_of(other, ho)
    assert stat["lock"]["mode"] is None and stat["lock"]["lock_delay_until_ms"] == until
    # a wait that does not cover the delay is answered lock_delay without waiting it out
    short = api.acquire(other, ho, wait_ms=100, retry=0)
    expect(short, 409, "lock_delay")
    assert short.body["error"]["lock_delay_until_ms"] == until
    assert short.elapsed < 1.0
    reply = api.acquire(other, ho, wait_ms=10000, retry=0)
    done_ms = time.time() * 1000
    expect(reply, 200)
    assert done_ms >= until - 50, (done_ms, until)
    assert done_ms <= until + 3000, "granted long after the delay ended"


def test_lock_delay_is_clamped_by_the_cells_maximum(api: Api, path: str) -> None:
    s = api.session()
    granted = {asked: expect(api.open(s, path, lock_delay_ms=asked), 200).body["lock_delay_ms"]
               for asked in (0, 1000, MAX_LOCK_DELAY_MS, 45000, 60000)}
    assert granted == {0: 0, 1000: 1000, MAX_LOCK_DELAY_MS: MAX_LOCK_DELAY_MS,
                       45000: MAX_LOCK_DELAY_MS, 60000: MAX_LOCK_DELAY_MS}
    # the default (a minute) is clamped as well
    assert expect(api.open(s, path), 200).body["lock_delay_ms"] == MAX_LOCK_DELAY_MS
    expect(api.open(s, path, lock_delay_ms=60001), 400, "invalid_argument")


def test_poison_fails_a_pending_acquire(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    expect(api.acquire(a, ha), 200)
    b, hb, waiting = queue_waiter(api, path, wait_ms=3000)
    poisoned = time.monotonic()
    expect(api.poison(b, hb), 204)
    reply = waiting.result(30)
    elapsed = time.monotonic() - poisoned
    # "Poison makes pending and later calls on the handle fail" (§3): at once, as
    # handle_invalid -- not when the wait runs out, not as lock_busy
    expect(reply, 410, "handle_invalid")
    assert elapsed < 2.0, f"the pending Acquire failed only after {elapsed:.1f}s"
    assert waiters(api, path) == 0
    expect(api.release(a, ha), 204)
    assert lock_of(api, path)["mode"] is None


def test_a_later_blocking_acquire_does_not_overtake_a_queued_one(api: Api, path: str) -> None:
    a, ha = holder(api, path)
    expect(api.acquire(a, ha, "shared"), 200)
    _x, _hx, x_wait = queue_waiter(api, path, "exclusive")
    s, hs = holder(api, path)
    later = background(api.acquire, s, hs, "shared", 3000, retry=0)
    # FIFO: the shared request that arrived after the queued exclusive one must wait
    # behind it, even though the lock is held in a mode it could share
    reply = later.result(30)
    assert reply.status != 200, f"a later Acquire overtook the queued waiter: {reply!r}"
    expect(reply, 409, "lock_busy")
    expect(api.release(a, ha), 204)
    expect(x_wait.result(30), 200)


def test_directories_are_locks_too(api: Api) -> None:
    a = api.session()
    b = api.session()
    d = f"{ROOT}/{uniq('dirlock')}"
    ha = api.mkdir(a, d)
    hb = api.handle(b, d)
    got = expect(api.acquire(a, ha), 200).body
    expect(api.acquire(b, hb), 409, "lock_busy")
    assert api.stat_of(b, hb)["lock"]["mode"] == "exclusive"
    # a child can still be created: locks are advisory
    api.handle(b, f"{d}/child", "file")
    expect(api.release(a, ha, got["lock_generation"]), 204)
    expect(api.acquire(b, hb, "shared"), 200)


def test_queued_acquires_fail_when_their_session_closes_or_the_node_goes(api: Api,
                                                                       path: str) -> None:
    a, ha = holder(api, path)
    expect(api.acquire(a, ha), 200)
    b, _hb, b_wait = queue_waiter(api, path)
    c, _hc, c_wait = queue_waiter(api, path)
    # the waiters are visible in the stat of the node, also in its directory's listing
    root = api.handle(a, ROOT)
    name = path.rsplit("/", 1)[1]
    listed = {e["name"]: e["stat"] for e in
              expect(api.readdir(a, root), 200).body["children"]}
    assert listed[name]["lock"]["waiters"] == 2
    started = time.monotonic()
    expect(api.close_session(b), 204)
    cancelled = b_wait.result(30)
    assert cancelled.status in (404, 410), cancelled
    assert time.monotonic() - started < 3.0
    assert waiters(api, path) == 1
    # deleting the node fails its remaining waiters at once: their handles are invalid
    started = time.monotonic()
    expect(api.delete(a, ha), 204)
    expect(c_wait.result(30), 410, "handle_invalid")
    assert time.monotonic() - started < 3.0
    expect(api.close_session(c), 204)


def test_many_sessions_expiring_together_release_everything(api: Api) -> None:
    base = f"{ROOT}/{uniq('mass')}"
    keeper = api.session()
    api.mkdir(keeper, base)
    dying = []
    for i in range(20):
        s = api.session(1000)
        h = api.handle(s, f"{base}/lock{i}", "file", lock_delay_ms=0)
        expect(api.acquire(s, h, "exclusive" if i % 2 else "shared"), 200)
        api.handle(s, f"{base}/eph{i}", "file", ephemeral=True)
        dying.append((s, h))
    wait_until(lambda: all(api.stat(s, h).status == 410 for s, h in dying), 20,
               message="all twenty sessions to expire")
    children = expect(api.readdir(keeper, api.handle(keeper, base)), 200).body["children"]
    assert sorted(c["name"] for c in children) == sorted(f"lock{i}" for i in range(20))
    for child in children:
        assert child["stat"]["lock"] == {"mode": None, "holders": 0, "waiters": 0,
                                         "lock_delay_until_ms": 0}, child
    h = api.handle(keeper, f"{base}/lock7")
    expect(api.acquire(keeper, h), 200)


def test_contended_lock_keeps_mutual_exclusion_and_fresh_generations(api: Api,
                                                                     path: str) -> None:
    """Writers and readers hammer one lock with blocking Acquires."""
    setup = api.session()
    counter = f"{path}-counter"
    api.handle(setup, counter, "file", data=b"0")
    generations: list[int] = []
    torn: list[tuple[bytes, bytes]] = []
    lock = threading.Lock()

    def writer(rounds: int) -> None:
        s = api.session()
        h = api.handle(s, path)
        c = api.handle(s, counter)
        for _ in range(rounds):
            got = expect(api.acquire(s, h, "exclusive", 20000, retry=0), 200).body
            value = int(api.contents(s, c))
            time.sleep(0.005)
            expect(api.set(s, c, str(value + 1).encode()), 200)
            with lock:
                generations.append(got["lock_generation"])
            expect(api.release(s, h, got["lock_generation"]), 204)
        expect(api.close_session(s), 204)

    def reader(rounds: int) -> None:
        s = api.session()
        h = api.handle(s, path)
        c = api.handle(s, counter)
        for _ in range(rounds):
            got = expect(api.acquire(s, h, "shared", 20000, retry=0), 200).body
            first = api.contents(s, c)
            time.sleep(0.005)
            second = api.contents(s, c)
            if first != second:
                with lock:
                    torn.append((first, second))
            expect(api.release(s, h, got["lock_generation"]), 204)
        expect(api.close_session(s), 204)

    with ThreadPoolExecutor(max_workers=10) as pool:
        futures = [pool.submit(writer, 5) for _ in range(6)]
        futures += [pool.submit(reader, 5) for _ in range(4)]
        for future in futures:
            future.result(120)
    assert not torn, f"a writer ran while readers held the lock: {torn[:3]}"
    assert api.contents(setup, api.handle(setup, counter)) == b"30"
    # every exclusive grant had its own, larger generation
    assert len(set(generations)) == 30
    assert lock_of(api, path) == {"mode": None, "holders": 0, "waiters": 0,
                                  "lock_delay_until_ms": 0}
