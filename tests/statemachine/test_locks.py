"""Locks: modes, generations, release by generation, atomic release-and-grant, lock-delay."""

from __future__ import annotations

from lockcell.statemachine import (
    Acquire,
    Close,
    CloseSession,
    ErrorCode,
    ExpireSession,
    Grant,
    GrantLocks,
    GrantSkipped,
    LockGranted,
    LockHolder,
    LockMode,
    LockReleased,
    NodeKind,
    Release,
    SetContents,
    parse_sequencer,
)

from .support import ROOT, Harness

PATH = f"{ROOT}/lock"
EXCLUSIVE = LockMode.EXCLUSIVE
SHARED = LockMode.SHARED


def _setup(sessions: int = 3) -> tuple[Harness, list[str], list[str]]:
    """A cell with ``sessions`` sessions, each with one handle on PATH."""
    harness = Harness()
    sids = [harness.new_session() for _ in range(sessions)]
    handles = [harness.open(sid, PATH, create=NodeKind.FILE) for sid in sids]
    return harness, sids, handles


def _acquire(harness: Harness, sid: str, handle: str, mode: LockMode) -> Acquire:
    return Acquire(now_ms=harness.now, session=sid, handle=handle, mode=mode)


def test_exclusive_excludes_everyone_else() -> None:
    harness, (a, b, _), (ha, hb, _) = _setup()
    value = harness.acquire(a, ha)
    assert set(value) == {"sequencer", "lock_generation", "mode"}
    assert value["lock_generation"] == 1 and value["mode"] == "exclusive"
    harness.fail(_acquire(harness, b, hb, EXCLUSIVE), ErrorCode.LOCK_BUSY)
    harness.fail(_acquire(harness, b, hb, SHARED), ErrorCode.LOCK_BUSY)
    stat = harness.stat(a, ha)
    assert stat["lock"] == {"mode": "exclusive", "holders": 1, "waiters": 0,
                            "lock_delay_until_ms": 0}
    assert stat["lock_generation"] == 1


def test_lock_is_per_handle_even_within_a_session() -> None:
    harness, (a, _, _), (ha, _, _) = _setup()
    second = harness.open(a, PATH)
    harness.acquire(a, ha)
    harness.fail(_acquire(harness, a, second, EXCLUSIVE), ErrorCode.LOCK_BUSY)


def test_shared_holders_share_a_generation() -> None:
    harness, (a, b, c), (ha, hb, hc) = _setup()
    first = harness.acquire(a, ha, SHARED)
    second = harness.acquire(b, hb, SHARED)
    assert first["lock_generation"] == second["lock_generation"] == 1
    assert first["sequencer"] == second["sequencer"]
    harness.fail(_acquire(harness, c, hc, EXCLUSIVE), ErrorCode.LOCK_BUSY)
    stat = harness.stat(c, hc)
    assert stat["lock"]["mode"] == "shared" and stat["lock"]["holders"] == 2
    counts = harness.state.counts()
    assert (counts.locks_shared, counts.shared_holders, counts.locks_exclusive) == (1, 2, 0)


def test_generation_grows_with_each_exclusive_grant_and_each_shared_entry_from_free() -> None:
    harness, (a, b, _), (ha, hb, _) = _setup()
    generations = []
    for _ in range(3):
        generations.append(harness.acquire(a, ha)["lock_generation"])
        harness.ok(Release(now_ms=harness.now, session=a, handle=ha))
    generations.append(harness.acquire(a, ha, SHARED)["lock_generation"])
    generations.append(harness.acquire(b, hb, SHARED)["lock_generation"])  # joins: same
    harness.ok(Release(now_ms=harness.now, session=a, handle=ha))
    generations.append(harness.acquire(a, ha, SHARED)["lock_generation"])  # rejoins: same
    harness.ok(Release(now_ms=harness.now, session=a, handle=ha))
    harness.ok(Release(now_ms=harness.now, session=b, handle=hb))
    generations.append(harness.acquire(b, hb, SHARED)["lock_generation"])  # from free: new
    assert generations == [1, 2, 3, 4, 4, 4, 5]


def test_reacquire_in_the_held_mode_is_idempotent_other_mode_is_a_conflict() -> None:
    harness, (a, _, _), (ha, _, _) = _setup()
    first = harness.acquire(a, ha)
    again = harness.apply(_acquire(harness, a, ha, EXCLUSIVE))
    assert again.value == first and again.effects == ()
    harness.fail(_acquire(harness, a, ha, SHARED), ErrorCode.CONFLICT)


def test_release_errors() -> None:
    harness, (a, b, _), (ha, hb, _) = _setup()
    harness.fail(Release(now_ms=harness.now, session=a, handle=ha), ErrorCode.CONFLICT)
    harness.acquire(a, ha)
    harness.fail(Release(now_ms=harness.now, session=b, handle=hb), ErrorCode.CONFLICT)
    harness.fail(Release(now_ms=harness.now, session=b, handle=ha), ErrorCode.NOT_FOUND)
    harness.fail(Release(now_ms=harness.now, session=a, handle=ha, generation=2),
                 ErrorCode.CONFLICT)
    result = harness.apply(Release(now_ms=harness.now, session=a, handle=ha, generation=1))
    assert result.value == {"lock_generation": 1, "grants": []}
    assert result.effects == (LockReleased(a, ha, PATH, 2, EXCLUSIVE, 1, 0),)
    assert harness.state.counts().locks_exclusive == 0


def test_late_duplicate_release_cannot_release_a_later_grant() -> None:
    harness, (a, _, _), (ha, _, _) = _setup()
    harness.acquire(a, ha)
    harness.ok(Release(now_ms=harness.now, session=a, handle=ha, generation=1))
    later = harness.acquire(a, ha)
    assert later["lock_generation"] == 2
    harness.fail(Release(now_ms=harness.now, session=a, handle=ha, generation=1),
                 ErrorCode.CONFLICT)
    assert harness.stat(a, ha)["lock"]["holders"] == 1
    assert harness.state.check_sequencer(later["sequencer"]) == {"valid": True}


def test_release_and_grant_are_one_entry() -> None:
    harness, (a, b, c), (ha, hb, hc) = _setup()
    harness.acquire(a, ha)
    result = harness.apply(Release(
        now_ms=harness.now, session=a, handle=ha,
        grant_next=(Grant(session=b, handle=hb, mode=EXCLUSIVE),
                    Grant(session=c, handle=hc, mode=EXCLUSIVE)),
    ))
    assert result.ok and result.value is not None
    grants = result.value["grants"]
    assert [g["granted"] for g in grants] == [True, False]
    assert grants[0]["lock_generation"] == 2 and grants[0]["session"] == b
    assert grants[1]["error"]["code"] == "lock_busy"
    assert [type(effect) for effect in result.effects] == [LockReleased, LockGranted, GrantSkipped]
    info = harness.state.lock_info(PATH)
    assert info is not None and info.holders == (LockHolder(b, hb),)
    assert info.lock_generation == 2
    reference = parse_sequencer(grants[0]["sequencer"])
    assert reference is not None and reference.lock_generation == 2


def test_grant_list_skips_invalid_waiters_and_grants_shared_waiters_together() -> None:
    harness, (a, b, c), (ha, hb, hc) = _setup()
    d = harness.new_session()
    hd = harness.open(d, PATH)
    harness.acquire(a, ha)
    harness.ok(Close(now_ms=harness.now, session=b, handle=hb))
    result = harness.apply(Release(
        now_ms=harness.now, session=a, handle=ha,
        grant_next=(Grant(session=b, handle=hb, mode=EXCLUSIVE),
                    Grant(session=c, handle=hc, mode=SHARED),
                    Grant(session=d, handle=hd, mode=SHARED)),
    ))
    assert result.value is not None
    grants = result.value["grants"]
    assert [g["granted"] for g in grants] == [False, True, True]
    assert grants[0]["error"]["code"] == "handle_invalid"
    assert grants[1]["lock_generation"] == grants[2]["lock_generation"] == 2
    assert harness.stat(c, hc)["lock"] == {"mode": "shared", "holders": 2, "waiters": 0,
                                           "lock_delay_until_ms": 0}


def test_failed_release_applies_no_grant() -> None:
    harness, (a, b, _), (ha, hb, _) = _setup()
    harness.fail(Release(now_ms=harness.now, session=a, handle=ha,
                         grant_next=(Grant(session=b, handle=hb, mode=EXCLUSIVE),)),
                 ErrorCode.CONFLICT)
    assert harness.stat(b, hb)["lock"]["holders"] == 0


def test_close_and_close_session_carry_grants_too() -> None:
    harness, (a, b, c), (ha, hb, hc) = _setup()
    harness.acquire(a, ha)
    value = harness.ok(Close(now_ms=harness.now, session=a, handle=ha,
                             grant_next=(Grant(session=b, handle=hb, mode=EXCLUSIVE),)))
    assert value["grants"][0]["granted"] is True
    value = harness.ok(CloseSession(now_ms=harness.now, session=b,
                                    grant_next=(Grant(session=c, handle=hc, mode=SHARED),)))
    assert value["grants"][0]["granted"] is True and value["grants"][0]["mode"] == "shared"


def test_grant_to_a_handle_already_holding() -> None:
    harness, (a, _, _), (ha, _, _) = _setup()
    harness.acquire(a, ha)
    value = harness.ok(GrantLocks(now_ms=harness.now,
                                  grants=(Grant(session=a, handle=ha, mode=EXCLUSIVE),
                                          Grant(session=a, handle=ha, mode=SHARED))))
    assert [g["granted"] for g in value["grants"]] == [True, False]
    assert value["grants"][0]["lock_generation"] == 1
    assert value["grants"][1]["error"]["code"] == "conflict"


def test_lock_delay_is_armed_only_by_expiry() -> None:
    for ending in ("release", "close", "close_session"):
        harness, (a, b, _), (ha, hb, _) = _setup()
        harness.acquire(a, ha)
        if ending == "release":
            harness.ok(Release(now_ms=harness.now, session=a, handle=ha))
        elif ending == "close":
            harness.ok(Close(now_ms=harness.now, session=a, handle=ha))
        else:
            harness.ok(CloseSession(now_ms=harness.now, session=a))
        harness.acquire(b, hb)
        assert harness.stat(b, hb)["lock"]["lock_delay_until_ms"] == 0, ending


def test_lock_delay_blocks_acquire_and_grants_until_it_ends() -> None:
    harness = Harness()
    a, b, c = (harness.new_session() for _ in range(3))
    ha = harness.open(a, PATH, create=NodeKind.FILE, lock_delay_ms=20000)
    hb = harness.open(b, PATH)
    hc = harness.open(c, PATH)
    harness.acquire(a, ha)
    expiry = harness.now
    harness.ok(ExpireSession(now_ms=expiry, session=a))
    for mode in (EXCLUSIVE, SHARED):
        failure = harness.fail(_acquire(harness, b, hb, mode), ErrorCode.LOCK_DELAY)
        assert failure.lock_delay_until_ms == expiry + 20000
        assert failure.to_json() == {"error": {
            "code": "lock_delay", "message": failure.message,
            "lock_delay_until_ms": expiry + 20000}}
    harness.advance(19999)
    value = harness.ok(GrantLocks(now_ms=harness.now,
                                  grants=(Grant(session=b, handle=hb, mode=EXCLUSIVE),)))
    assert value["grants"][0]["error"]["code"] == "lock_delay"
    assert value["grants"][0]["error"]["lock_delay_until_ms"] == expiry + 20000
    harness.advance(1)
    value = harness.ok(GrantLocks(now_ms=harness.now,
                                  grants=(Grant(session=b, handle=hb, mode=EXCLUSIVE),
                                          Grant(session=c, handle=hc, mode=EXCLUSIVE))))
    assert [g["granted"] for g in value["grants"]] == [True, False]
    assert value["grants"][1]["error"]["code"] == "lock_busy"


def test_busy_wins_over_delay_when_a_shared_holder_remains() -> None:
    harness = Harness()
    a, b, c = (harness.new_session() for _ in range(3))
    ha = harness.open(a, PATH, create=NodeKind.FILE, lock_delay_ms=5000)
    hb = harness.open(b, PATH)
    hc = harness.open(c, PATH)
    harness.acquire(a, ha, SHARED)
    harness.acquire(b, hb, SHARED)
    harness.ok(ExpireSession(now_ms=harness.now, session=a))
    harness.fail(_acquire(harness, c, hc, EXCLUSIVE), ErrorCode.LOCK_BUSY)
    harness.fail(_acquire(harness, c, hc, SHARED), ErrorCode.LOCK_DELAY)
    assert harness.stat(b, hb)["lock"]["holders"] == 1


def test_lock_on_a_directory_and_contents_write_while_locked() -> None:
    # Locks are advisory: holding one does not block writes through another handle.
    harness, (a, b, _), (ha, hb, _) = _setup()
    harness.acquire(a, ha)
    harness.ok(SetContents(now_ms=harness.now, session=b, handle=hb, data=b"advisory"))
    root = harness.open(a, ROOT)
    assert harness.acquire(a, root)["lock_generation"] == 1


def test_lock_info_and_describe_handle() -> None:
    harness, (a, _, _), (ha, _, _) = _setup()
    assert harness.state.lock_info(f"{ROOT}/none") is None
    harness.acquire(a, ha)
    info = harness.state.lock_info("/ls/local/lock")
    assert info is not None
    assert (info.mode, info.lock_generation, info.holders) == (EXCLUSIVE, 1, (LockHolder(a, ha),))
    described = harness.state.describe_handle(ha)
    assert described is not None
    assert (described.session, described.lock_mode, described.lock_generation, described.valid) \
        == (a, EXCLUSIVE, 1, True)
    assert described.lock_delay_ms == 60000
