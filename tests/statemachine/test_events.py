"""Events: chosen per handle, generated at apply in commit order."""

from __future__ import annotations

from lockcell.statemachine import (
    Acquire,
    Close,
    Delete,
    EventType,
    ExpireSession,
    Grant,
    LockMode,
    NodeKind,
    Poison,
    Release,
    SetContents,
)

from .support import ROOT, Harness

ALL = tuple(event for event in EventType if event is not EventType.MASTER_FAILOVER)


def test_child_added_and_removed_go_to_directory_watchers_with_the_childs_path() -> None:
    harness = Harness()
    watcher, actor = harness.new_session(), harness.new_session()
    watching = harness.open(watcher, ROOT, events=(EventType.CHILD_ADDED,
                                                   EventType.CHILD_REMOVED))
    harness.open(watcher, ROOT, events=(EventType.CONTENTS_MODIFIED,))  # wrong mask: nothing
    created = harness.apply(harness.open_command(actor, f"{ROOT}/kid", create=NodeKind.FILE))
    assert harness.events_of(created) == [(watcher, "child_added", watching, f"{ROOT}/kid")]
    assert created.events[0].event == {"type": "child_added", "handle": watching,
                                       "path": f"{ROOT}/kid"}
    reopened = harness.apply(harness.open_command(actor, f"{ROOT}/kid", create=NodeKind.FILE))
    assert reopened.events == ()
    kid = reopened.value["handle"] if reopened.value else ""
    deleted = harness.apply(Delete(now_ms=harness.now, session=actor, handle=kid))
    assert harness.events_of(deleted) == [(watcher, "child_removed", watching, f"{ROOT}/kid")]


def test_contents_and_child_modified() -> None:
    harness = Harness()
    sid = harness.new_session()
    directory = harness.open(sid, f"{ROOT}/d", create=NodeKind.DIR,
                             events=(EventType.CHILD_MODIFIED,))
    file_watch = harness.open(sid, f"{ROOT}/d/f", create=NodeKind.FILE,
                              events=(EventType.CONTENTS_MODIFIED,))
    writer = harness.open(sid, f"{ROOT}/d/f")
    result = harness.apply(SetContents(now_ms=harness.now, session=sid, handle=writer, data=b"1"))
    assert harness.events_of(result) == [
        (sid, "contents_modified", file_watch, f"{ROOT}/d/f"),
        (sid, "child_modified", directory, f"{ROOT}/d/f"),
    ]


def test_handle_invalid_goes_to_every_watching_handle_on_a_deleted_node() -> None:
    harness = Harness()
    a, b = harness.new_session(), harness.new_session()
    first = harness.open(a, f"{ROOT}/x", create=NodeKind.FILE,
                         events=(EventType.HANDLE_INVALID,))
    second = harness.open(b, f"{ROOT}/x", events=(EventType.HANDLE_INVALID,))
    harness.open(b, f"{ROOT}/x")
    parent = harness.open(b, ROOT, events=(EventType.CHILD_REMOVED,))
    result = harness.apply(Delete(now_ms=harness.now, session=a, handle=first))
    assert harness.events_of(result) == [
        (a, "handle_invalid", first, f"{ROOT}/x"),
        (b, "handle_invalid", second, f"{ROOT}/x"),
        (b, "child_removed", parent, f"{ROOT}/x"),
    ]


def test_lock_acquired_and_conflicting_lock() -> None:
    harness = Harness()
    a, b, c = (harness.new_session() for _ in range(3))
    ha = harness.open(a, f"{ROOT}/l", create=NodeKind.FILE,
                      events=(EventType.LOCK_ACQUIRED, EventType.CONFLICTING_LOCK))
    ha_quiet = harness.open(a, f"{ROOT}/l")
    hb = harness.open(b, f"{ROOT}/l", events=(EventType.CONFLICTING_LOCK,))
    hc = harness.open(c, f"{ROOT}/l", events=(EventType.LOCK_ACQUIRED,))
    granted = harness.apply(Acquire(now_ms=harness.now, session=a, handle=ha,
                                    mode=LockMode.EXCLUSIVE))
    assert harness.events_of(granted) == [
        (a, "lock_acquired", ha, f"{ROOT}/l"),
        (c, "lock_acquired", hc, f"{ROOT}/l"),
    ]
    # A denied request from another session tells the holder, and the refusal carries it.
    before = harness.state.snapshot()
    denied = harness.apply(Acquire(now_ms=harness.now, session=b, handle=hb,
                                   mode=LockMode.SHARED))
    assert denied.error is not None and denied.error.code.value == "lock_busy"
    assert harness.events_of(denied) == [(a, "conflicting_lock", ha, f"{ROOT}/l")]
    assert harness.state.snapshot() == before
    # The holder's own session asking through another handle is not "another session".
    own = harness.apply(Acquire(now_ms=harness.now, session=a, handle=ha_quiet,
                                mode=LockMode.EXCLUSIVE))
    assert own.error is not None and own.events == ()


def test_release_and_grant_events_in_commit_order() -> None:
    harness = Harness()
    a, b = harness.new_session(), harness.new_session()
    watcher = harness.new_session()
    ha = harness.open(a, f"{ROOT}/l", create=NodeKind.FILE)
    hb = harness.open(b, f"{ROOT}/l", events=(EventType.LOCK_ACQUIRED,))
    hw = harness.open(watcher, f"{ROOT}/l", events=(EventType.LOCK_ACQUIRED,))
    harness.acquire(a, ha)
    result = harness.apply(Release(now_ms=harness.now, session=a, handle=ha,
                                   grant_next=(Grant(session=b, handle=hb,
                                                     mode=LockMode.EXCLUSIVE),)))
    assert harness.events_of(result) == [
        (b, "lock_acquired", hb, f"{ROOT}/l"),
        (watcher, "lock_acquired", hw, f"{ROOT}/l"),
    ]


def test_expiry_tells_others_and_not_the_expired_session() -> None:
    harness = Harness()
    dying, watcher = harness.new_session(), harness.new_session()
    own_watch = harness.open(dying, ROOT, events=ALL)
    harness.open(dying, f"{ROOT}/eph", create=NodeKind.FILE, ephemeral=True)
    others_watch = harness.open(watcher, ROOT, events=(EventType.CHILD_REMOVED,))
    result = harness.apply(ExpireSession(now_ms=harness.now, session=dying))
    assert harness.events_of(result) == [
        (watcher, "child_removed", others_watch, f"{ROOT}/eph"),
    ]
    assert own_watch not in [event.handle for event in result.events]


def test_poisoned_and_closed_handles_get_no_events() -> None:
    harness = Harness()
    sid = harness.new_session()
    poisoned = harness.open(sid, ROOT, events=(EventType.CHILD_ADDED,))
    closed = harness.open(sid, ROOT, events=(EventType.CHILD_ADDED,))
    live = harness.open(sid, ROOT, events=(EventType.CHILD_ADDED,))
    harness.ok(Poison(now_ms=harness.now, session=sid, handle=poisoned))
    harness.ok(Close(now_ms=harness.now, session=sid, handle=closed))
    result = harness.apply(harness.open_command(sid, f"{ROOT}/n", create=NodeKind.DIR))
    assert [event.handle for event in result.events] == [live]


def test_events_follow_the_order_handles_were_opened() -> None:
    harness = Harness()
    sessions = [harness.new_session() for _ in range(4)]
    handles = [harness.open(sid, ROOT, events=(EventType.CHILD_ADDED,)) for sid in sessions]
    result = harness.apply(harness.open_command(sessions[0], f"{ROOT}/z", create=NodeKind.FILE))
    assert [(event.session, event.handle) for event in result.events] == list(
        zip(sessions, handles, strict=True)
    )
