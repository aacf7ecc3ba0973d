"""Sessions: creation, close, expiry, tombstones, and the state machine's clock."""

from __future__ import annotations

import pytest

from lockcell.statemachine import (
    Acquire,
    CellError,
    CellState,
    CloseSession,
    CreateSession,
    ErrorCode,
    ExpireSession,
    LockDelayArmed,
    LockMode,
    LockReleased,
    NodeDeleted,
    NodeKind,
    SessionEnded,
    SessionEndReason,
    SessionStarted,
    SetContents,
    Tick,
)
from lockcell.statemachine.commands import Close

from .support import ROOT, Harness, session_id

TEN_MINUTES = 10 * 60 * 1000


def test_create_session_answers_lease_and_grace() -> None:
    harness = Harness()
    result = harness.apply(CreateSession(now_ms=harness.now, session=session_id(1)))
    assert result.value == {
        "session": session_id(1),
        "lease_ms": 12000,
        "valid_ms": 12000,
        "grace_ms": 45000,
    }
    assert result.effects == (SessionStarted(session_id(1), 12000),)
    info = harness.state.session_info(session_id(1))
    assert (info.lease_ms, info.created_ms, info.handles) == (12000, harness.now, 0)


@pytest.mark.parametrize(
    ("requested", "granted"), [(1, 1000), (999, 1000), (1000, 1000), (5000, 5000),
                               (60000, 60000), (60001, 60000), (-5, 1000), (10**12, 60000)]
)
def test_lease_is_clamped(requested: int, granted: int) -> None:
    harness = Harness()
    value = harness.ok(CreateSession(now_ms=1, session=session_id(1), lease_ms=requested))
    assert value["lease_ms"] == granted


def test_default_lease_is_the_cells() -> None:
    harness = Harness(default_lease_ms=20000, grace_ms=30000)
    value = harness.ok(CreateSession(now_ms=1, session=session_id(1)))
    assert (value["lease_ms"], value["grace_ms"]) == (20000, 30000)


def test_invalid_cell_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        Harness(default_lease_ms=500)
    with pytest.raises(ValueError):
        Harness(max_lock_delay_ms=60001)
    with pytest.raises(ValueError):
        Harness(tombstone_ms=TEN_MINUTES - 1)
    with pytest.raises(ValueError):
        Harness(request_ids_per_session=999)
    with pytest.raises(ValueError):
        CellState("bad/name")
    with pytest.raises(ValueError):
        CellState("local")


def test_duplicate_and_malformed_session_ids() -> None:
    harness = Harness()
    sid = harness.new_session()
    harness.fail(CreateSession(now_ms=harness.now, session=sid), ErrorCode.CONFLICT)
    harness.fail(CreateSession(now_ms=harness.now, session="short"), ErrorCode.INVALID_ARGUMENT)
    harness.fail(
        CreateSession(now_ms=harness.now, session="x" * 31 + "/"), ErrorCode.INVALID_ARGUMENT
    )
    harness.ok(CloseSession(now_ms=harness.now, session=sid))
    # A tombstone keeps the id taken.
    harness.fail(CreateSession(now_ms=harness.now, session=sid), ErrorCode.CONFLICT)


def test_unknown_session_is_not_found() -> None:
    harness = Harness()
    ghost = session_id(77)
    harness.fail(harness.open_command(ghost, ROOT), ErrorCode.NOT_FOUND)
    harness.fail(CloseSession(now_ms=1, session=ghost), ErrorCode.NOT_FOUND)
    harness.fail(ExpireSession(now_ms=1, session=ghost), ErrorCode.NOT_FOUND)
    with pytest.raises(CellError) as caught:
        harness.state.session_info(ghost)
    assert caught.value.code is ErrorCode.NOT_FOUND


def test_close_session_closes_handles_releases_locks_without_delay_and_drops_ephemerals() -> None:
    harness = Harness()
    owner = harness.new_session()
    other = harness.new_session()
    locked = harness.open(owner, f"{ROOT}/lock", create=NodeKind.FILE)
    harness.acquire(owner, locked)
    harness.open(owner, f"{ROOT}/eph", create=NodeKind.FILE, ephemeral=True)
    result = harness.apply(CloseSession(now_ms=harness.now, session=owner))
    assert result.ok and result.value == {"grants": []}
    assert isinstance(result.effects[-1], SessionEnded)
    assert result.effects[-1].reason is SessionEndReason.CLOSED
    assert len(result.effects[-1].handles) == 2
    assert not any(isinstance(effect, LockDelayArmed) for effect in result.effects)
    assert any(isinstance(effect, NodeDeleted) for effect in result.effects)
    # The lock is free at once: no lock-delay after a normal close.
    taker = harness.open(other, f"{ROOT}/lock")
    harness.acquire(other, taker)
    harness.fail(harness.open_command(other, f"{ROOT}/eph"), ErrorCode.NOT_FOUND)
    counts = harness.state.counts()
    assert (counts.sessions, counts.tombstones, counts.handles) == (1, 1, 1)


def test_calls_in_a_closed_session_are_gone_and_close_is_idempotent() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, ROOT)
    harness.ok(CloseSession(now_ms=harness.now, session=sid))
    harness.fail(harness.open_command(sid, ROOT), ErrorCode.SESSION_EXPIRED)
    harness.fail(Close(now_ms=harness.now, session=sid, handle=handle), ErrorCode.SESSION_EXPIRED)
    assert harness.ok(CloseSession(now_ms=harness.now, session=sid)) == {"grants": []}
    harness.fail(ExpireSession(now_ms=harness.now, session=sid), ErrorCode.SESSION_EXPIRED)


def test_expire_session_arms_lock_delay_per_handle() -> None:
    harness = Harness()
    holder = harness.new_session()
    other = harness.new_session()
    slow = harness.open(holder, f"{ROOT}/slow", create=NodeKind.FILE, lock_delay_ms=30000)
    fast = harness.open(holder, f"{ROOT}/fast", create=NodeKind.FILE, lock_delay_ms=0)
    default = harness.open(holder, f"{ROOT}/default", create=NodeKind.FILE)
    shared = harness.open(holder, f"{ROOT}/shared", create=NodeKind.FILE, lock_delay_ms=5000)
    for handle in (slow, fast, default):
        harness.acquire(holder, handle)
    harness.acquire(holder, shared, LockMode.SHARED)
    co_reader = harness.open(other, f"{ROOT}/shared")
    harness.acquire(other, co_reader, LockMode.SHARED)

    expired_at = harness.now
    result = harness.apply(ExpireSession(now_ms=expired_at, session=holder))
    assert result.ok
    assert result.value is not None and result.value["handles_closed"] == 4
    armed = {effect.path: effect.until_ms for effect in result.effects
             if isinstance(effect, LockDelayArmed)}
    assert armed == {
        f"{ROOT}/slow": expired_at + 30000,
        f"{ROOT}/default": expired_at + 60000,
        f"{ROOT}/shared": expired_at + 5000,
    }
    released = [effect for effect in result.effects if isinstance(effect, LockReleased)]
    assert [effect.path for effect in released] == [
        f"{ROOT}/slow", f"{ROOT}/fast", f"{ROOT}/default", f"{ROOT}/shared"
    ]
    assert released[-1].remaining_holders == 1
    ended = result.effects[-1]
    assert isinstance(ended, SessionEnded) and ended.reason is SessionEndReason.EXPIRED

    h_slow = harness.open(other, f"{ROOT}/slow")
    h_fast = harness.open(other, f"{ROOT}/fast")
    failure = harness.fail(
        Acquire(now_ms=harness.now, session=other, handle=h_slow, mode=LockMode.EXCLUSIVE),
        ErrorCode.LOCK_DELAY,
    )
    assert failure.lock_delay_until_ms == expired_at + 30000
    assert harness.stat(other, h_slow)["lock"]["lock_delay_until_ms"] == expired_at + 30000
    harness.acquire(other, h_fast)  # lock_delay_ms=0: free at once
    harness.advance(30000)
    harness.acquire(other, h_slow)


def test_expire_session_deletes_its_ephemeral_nodes_and_leaves_a_tombstone() -> None:
    harness = Harness()
    sid = harness.new_session()
    watcher = harness.new_session()
    harness.open(sid, f"{ROOT}/edir", create=NodeKind.DIR, ephemeral=True)
    harness.open(sid, f"{ROOT}/edir/f", create=NodeKind.FILE, ephemeral=True)
    harness.open(sid, f"{ROOT}/kept", create=NodeKind.FILE, ephemeral=True)
    visitor = harness.open(watcher, f"{ROOT}/kept")
    result = harness.apply(ExpireSession(now_ms=harness.now, session=sid))
    deleted = [effect.path for effect in result.effects if isinstance(effect, NodeDeleted)]
    assert deleted == [f"{ROOT}/edir/f", f"{ROOT}/edir"]
    # Another session's handle keeps an ephemeral node alive; its close then removes it.
    harness.ok(Close(now_ms=harness.now, session=watcher, handle=visitor))
    harness.fail(harness.open_command(watcher, f"{ROOT}/kept"), ErrorCode.NOT_FOUND)
    harness.fail(harness.open_command(sid, ROOT), ErrorCode.SESSION_EXPIRED)
    assert harness.state.counts().tombstones == 1


def test_tombstone_lasts_ten_minutes_then_purged_by_later_commands() -> None:
    harness = Harness()
    sid = harness.new_session()
    other = harness.new_session()
    harness.ok(ExpireSession(now_ms=harness.now, session=sid))
    harness.advance(TEN_MINUTES - 1)
    harness.ok(Tick(now_ms=harness.now))
    harness.fail(harness.open_command(sid, ROOT), ErrorCode.SESSION_EXPIRED)
    harness.advance(1)
    # Any later command carries the time that purges it.
    harness.open(other, ROOT)
    assert harness.state.counts().tombstones == 0
    harness.fail(harness.open_command(sid, ROOT), ErrorCode.NOT_FOUND)


def test_clock_never_goes_backwards() -> None:
    harness = Harness()
    sid = harness.new_session()
    start = harness.now
    harness.ok(Tick(now_ms=start + 5000))
    assert harness.state.now_ms == start + 5000
    harness.ok(Tick(now_ms=start))
    assert harness.state.now_ms == start + 5000
    # Lock-delay is judged by the state machine's clock, not an older stamp.
    holder = harness.new_session()
    handle = harness.open(holder, f"{ROOT}/x", create=NodeKind.FILE, lock_delay_ms=10000)
    harness.acquire(holder, handle)
    harness.ok(ExpireSession(now_ms=start + 5000, session=holder))
    waiter = harness.open(sid, f"{ROOT}/x")
    harness.ok(Tick(now_ms=start + 15000))
    granted = harness.apply(
        Acquire(now_ms=start, session=sid, handle=waiter, mode=LockMode.EXCLUSIVE)
    )
    assert granted.ok
    assert harness.state.now_ms == start + 15000


def test_negative_time_stamp_is_refused() -> None:
    harness = Harness()
    harness.fail(Tick(now_ms=-1), ErrorCode.INVALID_ARGUMENT)


def test_refused_command_does_not_advance_the_clock() -> None:
    harness = Harness()
    harness.ok(Tick(now_ms=100))
    harness.fail(CreateSession(now_ms=5000, session="bad"), ErrorCode.INVALID_ARGUMENT)
    assert harness.state.now_ms == 100


def test_live_sessions_and_counts() -> None:
    harness = Harness()
    first = harness.new_session(lease_ms=2000)
    second = harness.new_session()
    harness.open(second, ROOT)
    assert [(s.session, s.lease_ms, s.handles) for s in harness.state.live_sessions()] == [
        (first, 2000, 0),
        (second, 12000, 1),
    ]
    harness.ok(ExpireSession(now_ms=harness.now, session=first))
    assert [s.session for s in harness.state.live_sessions()] == [second]


def test_writes_in_an_expired_session_are_refused() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, f"{ROOT}/f", create=NodeKind.FILE)
    harness.ok(ExpireSession(now_ms=harness.now, session=sid))
    harness.fail(
        SetContents(now_ms=harness.now, session=sid, handle=handle, data=b"x"),
        ErrorCode.SESSION_EXPIRED,
    )
    with pytest.raises(CellError) as caught:
        harness.state.get_stat(sid, handle)
    assert caught.value.code is ErrorCode.SESSION_EXPIRED
