"""Request-id dedupe: a retried write answers the first result and is applied once."""

from __future__ import annotations

from lockcell.statemachine import (
    Acquire,
    Close,
    CloseSession,
    ErrorCode,
    ExpireSession,
    LockMode,
    NodeKind,
    Release,
    SetContents,
)

from .support import ROOT, Harness


def test_retry_returns_the_original_result_without_reapplying() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, f"{ROOT}/f", create=NodeKind.FILE)
    write = SetContents(now_ms=harness.now, session=sid, handle=handle, data=b"x",
                        request_id="req-1")
    first = harness.apply(write)
    assert first.ok and not first.duplicate
    snapshot = harness.state.snapshot()
    retry = harness.apply(harness.stamp(write))
    assert retry.duplicate and retry.value == first.value
    assert retry.events == () and retry.effects == ()
    assert harness.state.snapshot() == snapshot
    assert harness.stat(sid, handle)["content_generation"] == \
        first.value["stat"]["content_generation"]  # type: ignore[index]


def test_retried_open_keeps_the_first_handle() -> None:
    harness = Harness()
    sid = harness.new_session()
    first = harness.ok(harness.open_command(sid, f"{ROOT}/f", create=NodeKind.FILE,
                                            request_id="open-1"))
    # The leader picks a fresh handle id for the retry; the first answer wins.
    retry = harness.apply(harness.open_command(sid, f"{ROOT}/f", create=NodeKind.FILE,
                                               request_id="open-1"))
    assert retry.duplicate and retry.value == first
    assert harness.state.counts().handles == 1


def test_retried_delete_and_release_answer_success_again() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, f"{ROOT}/f", create=NodeKind.FILE)
    harness.acquire(sid, handle)
    release = Release(now_ms=harness.now, session=sid, handle=handle, request_id="rel")
    assert harness.ok(release) == {"lock_generation": 1, "grants": []}
    assert harness.ok(release) == {"lock_generation": 1, "grants": []}
    # Without the request id the same call is a conflict: nothing is held.
    harness.fail(Release(now_ms=harness.now, session=sid, handle=handle), ErrorCode.CONFLICT)


def test_refusals_are_not_remembered() -> None:
    harness = Harness()
    a, b = harness.new_session(), harness.new_session()
    ha = harness.open(a, f"{ROOT}/l", create=NodeKind.FILE)
    hb = harness.open(b, f"{ROOT}/l")
    harness.acquire(a, ha)
    attempt = Acquire(now_ms=harness.now, session=b, handle=hb, mode=LockMode.EXCLUSIVE,
                      request_id="try")
    harness.fail(attempt, ErrorCode.LOCK_BUSY)
    harness.ok(Release(now_ms=harness.now, session=a, handle=ha))
    retried = harness.apply(harness.stamp(attempt))
    assert retried.ok and not retried.duplicate


def test_request_ids_are_per_session() -> None:
    harness = Harness()
    a, b = harness.new_session(), harness.new_session()
    first = harness.ok(harness.open_command(a, ROOT, request_id="same"))
    second = harness.apply(harness.open_command(b, ROOT, request_id="same"))
    assert not second.duplicate and second.value != first


def test_at_least_1000_request_ids_are_kept_per_session_oldest_dropped_first() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, f"{ROOT}/f", create=NodeKind.FILE)
    for number in range(1001):
        harness.ok(SetContents(now_ms=harness.now, session=sid, handle=handle,
                               data=str(number).encode(), request_id=f"r{number}"))
    generation = harness.stat(sid, handle)["content_generation"]
    for number in (1, 500, 1000):
        retry = harness.apply(SetContents(now_ms=harness.now, session=sid, handle=handle,
                                          data=b"?", request_id=f"r{number}"))
        assert retry.duplicate
    assert harness.stat(sid, handle)["content_generation"] == generation
    # r0 was the oldest of 1001: forgotten, so it applies again.
    fresh = harness.apply(SetContents(now_ms=harness.now, session=sid, handle=handle, data=b"!",
                                      request_id="r0"))
    assert not fresh.duplicate
    assert harness.stat(sid, handle)["content_generation"] == generation + 1


def test_dedupe_table_survives_snapshot_and_restore() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, f"{ROOT}/f", create=NodeKind.FILE)
    write = SetContents(now_ms=harness.now, session=sid, handle=handle, data=b"x",
                        request_id="keep")
    first = harness.ok(write)
    retry = harness.restored().apply(write)
    assert retry.duplicate and retry.value == first


def test_remembered_answers_cannot_be_changed_by_callers() -> None:
    harness = Harness()
    sid = harness.new_session()
    command = harness.open_command(sid, ROOT, request_id="o")
    first = harness.ok(command)
    first["stat"]["lock"]["waiters"] = 99  # the node layer overrides waiters in answers
    retry = harness.apply(command)
    assert retry.value is not None and retry.value["stat"]["lock"]["waiters"] == 0


def test_table_goes_with_the_session() -> None:
    harness = Harness()
    sid = harness.new_session()
    write = harness.open_command(sid, ROOT, request_id="o")
    harness.ok(write)
    harness.ok(ExpireSession(now_ms=harness.now, session=sid))
    harness.fail(write, ErrorCode.SESSION_EXPIRED)


def test_retried_close_session_and_close_succeed() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, ROOT)
    close = Close(now_ms=harness.now, session=sid, handle=handle, request_id="c")
    harness.ok(close)
    assert harness.apply(close).duplicate
    close_session = CloseSession(now_ms=harness.now, session=sid, request_id="cs")
    harness.ok(close_session)
    assert harness.ok(close_session) == {"grants": []}


def test_malformed_request_ids_are_refused() -> None:
    harness = Harness()
    sid = harness.new_session()
    harness.fail(harness.open_command(sid, ROOT, request_id=""), ErrorCode.INVALID_ARGUMENT)
    harness.fail(harness.open_command(sid, ROOT, request_id="x" * 257),
                 ErrorCode.INVALID_ARGUMENT)
    harness.ok(harness.open_command(sid, ROOT, request_id="x" * 256))
