"""Sequencers: format, validity transitions, forged strings, SetSequencer and GetSequencer."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lockcell.statemachine import (
    Acquire,
    CellError,
    Close,
    Delete,
    ErrorCode,
    ExpireSession,
    LockMode,
    NodeKind,
    Release,
    SequencerRef,
    SetContents,
    SetSequencer,
    parse_sequencer,
)

from .support import ROOT, Harness

PATH = f"{ROOT}/lock"


def _valid(harness: Harness, sequencer: str) -> bool:
    answer = harness.state.check_sequencer(sequencer)
    assert set(answer) == {"valid"}
    valid: bool = answer["valid"]
    return valid


def test_sequencer_names_path_mode_generation_and_instance() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, PATH, create=NodeKind.FILE)
    value = harness.acquire(sid, handle)
    assert value["sequencer"].startswith("lc1:")
    reference = parse_sequencer(value["sequencer"])
    instance = harness.stat(sid, handle)["instance"]
    assert reference == SequencerRef(PATH, LockMode.EXCLUSIVE, 1, instance)
    assert reference.encode() == value["sequencer"]
    assert harness.state.get_sequencer(sid, handle) == value


def test_exclusive_sequencer_goes_stale_on_release_and_stays_stale() -> None:
    harness = Harness()
    a, b = harness.new_session(), harness.new_session()
    ha = harness.open(a, PATH, create=NodeKind.FILE)
    hb = harness.open(b, PATH)
    first = harness.acquire(a, ha)["sequencer"]
    assert _valid(harness, first)
    harness.ok(Release(now_ms=harness.now, session=a, handle=ha))
    assert not _valid(harness, first)
    second = harness.acquire(b, hb)["sequencer"]
    assert _valid(harness, second) and not _valid(harness, first)
    harness.ok(ExpireSession(now_ms=harness.now, session=b))
    assert not _valid(harness, second)


def test_shared_sequencer_is_current_while_any_holder_keeps_shared_mode() -> None:
    harness = Harness()
    a, b = harness.new_session(), harness.new_session()
    ha = harness.open(a, PATH, create=NodeKind.FILE)
    hb = harness.open(b, PATH)
    sequencer = harness.acquire(a, ha, LockMode.SHARED)["sequencer"]
    harness.acquire(b, hb, LockMode.SHARED)
    harness.ok(Release(now_ms=harness.now, session=a, handle=ha))
    assert _valid(harness, sequencer)
    harness.ok(Close(now_ms=harness.now, session=b, handle=hb))
    assert not _valid(harness, sequencer)
    # Shared again from free: a new generation, the old sequencer stays stale.
    again = harness.acquire(a, ha, LockMode.SHARED)["sequencer"]
    assert again != sequencer and not _valid(harness, sequencer)


def test_sequencer_is_stale_after_delete_and_recreate() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, PATH, create=NodeKind.FILE)
    sequencer = harness.acquire(sid, handle)["sequencer"]
    harness.ok(Delete(now_ms=harness.now, session=sid, handle=handle))
    assert not _valid(harness, sequencer)
    new = harness.open(sid, PATH, create=NodeKind.FILE)
    harness.acquire(sid, new)
    assert not _valid(harness, sequencer)
    # Forging the old generation onto the new instance does not help either.
    forged = SequencerRef(PATH, LockMode.EXCLUSIVE, 1, harness.stat(sid, new)["instance"])
    assert not _valid(harness, forged.encode())


def _b64(body: bytes) -> str:
    return base64.urlsafe_b64encode(body).rstrip(b"=").decode()


GARBAGE = [
    "",
    "lc1:",
    "lc1:!!!!",
    "lc2:" + _b64(b'["/ls/test/lock","exclusive",1,2]'),
    "lc1:" + _b64(b"not json"),
    "lc1:" + _b64(b'{"path":"/ls/test/lock"}'),
    "lc1:" + _b64(b'["/ls/test/lock","exclusive",1]'),
    "lc1:" + _b64(b'["/ls/test/lock","owner",1,2]'),
    "lc1:" + _b64(b'["/ls/test/lock","exclusive","1",2]'),
    "lc1:" + _b64(b'["/ls/test/lock","exclusive",true,2]'),
    "lc1:" + _b64(b'["/ls/test/lock","exclusive",1.0,2]'),
    "lc1:" + _b64(b'[ "/ls/test/lock","exclusive",1,2]'),  # not the canonical spelling
    "lc1:" + _b64(b"[" * 5000 + b"]" * 5000),
    "lc1:" + "A" * 10000,
    "x" * 100,
]


@pytest.mark.parametrize("text", GARBAGE, ids=range(len(GARBAGE)))
def test_garbled_sequencers_are_invalid_never_errors(text: str) -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, PATH, create=NodeKind.FILE)
    harness.acquire(sid, handle)
    assert parse_sequencer(text) is None
    assert harness.state.check_sequencer(text) == {"valid": False}
    harness.fail(SetSequencer(now_ms=harness.now, session=sid, handle=handle, sequencer=text),
                 ErrorCode.INVALID_ARGUMENT)


def test_non_string_sequencer_is_invalid() -> None:
    assert parse_sequencer(None) is None
    assert parse_sequencer(42) is None
    assert Harness().state.check_sequencer(123) == {"valid": False}  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_random_text_is_never_a_current_sequencer(text: str) -> None:
    harness = Harness()
    assert harness.state.check_sequencer(text) == {"valid": False}
    assert harness.state.check_sequencer("lc1:" + text) == {"valid": False}


def test_set_sequencer_fails_later_calls_once_stale() -> None:
    harness = Harness()
    holder, server = harness.new_session(), harness.new_session()
    lock = harness.open(holder, PATH, create=NodeKind.FILE)
    sequencer = harness.acquire(holder, lock)["sequencer"]
    resource = harness.open(server, f"{ROOT}/resource", create=NodeKind.FILE)
    value = harness.ok(SetSequencer(now_ms=harness.now, session=server, handle=resource,
                                    sequencer=sequencer))
    assert value == {"sequencer": sequencer}
    harness.ok(SetContents(now_ms=harness.now, session=server, handle=resource, data=b"ok"))
    assert harness.state.get_stat(server, resource)["stat"]["length"] == 2
    harness.ok(Release(now_ms=harness.now, session=holder, handle=lock))
    harness.fail(SetContents(now_ms=harness.now, session=server, handle=resource, data=b"no"),
                 ErrorCode.HANDLE_INVALID)
    harness.fail(Acquire(now_ms=harness.now, session=server, handle=resource,
                         mode=LockMode.SHARED), ErrorCode.HANDLE_INVALID)
    with pytest.raises(CellError) as caught:
        harness.state.get_contents_and_stat(server, resource)
    assert caught.value.code is ErrorCode.HANDLE_INVALID
    # Re-granting the lock later does not revive the handle (a new generation).
    harness.acquire(holder, lock)
    harness.fail(SetContents(now_ms=harness.now, session=server, handle=resource, data=b"no"),
                 ErrorCode.HANDLE_INVALID)
    described = harness.state.describe_handle(resource)
    assert described is not None and not described.valid
    # Close still works.
    harness.ok(Close(now_ms=harness.now, session=server, handle=resource))


def test_set_sequencer_refuses_a_stale_one_and_can_be_cleared() -> None:
    harness = Harness()
    sid = harness.new_session()
    lock = harness.open(sid, PATH, create=NodeKind.FILE)
    other = harness.open(sid, f"{ROOT}/other", create=NodeKind.FILE)
    stale = harness.acquire(sid, lock)["sequencer"]
    harness.ok(Release(now_ms=harness.now, session=sid, handle=lock))
    harness.fail(SetSequencer(now_ms=harness.now, session=sid, handle=other, sequencer=stale),
                 ErrorCode.CONFLICT)
    current = harness.acquire(sid, lock)["sequencer"]
    harness.ok(SetSequencer(now_ms=harness.now, session=sid, handle=other, sequencer=current))
    assert harness.ok(SetSequencer(now_ms=harness.now, session=sid, handle=other,
                                   sequencer=None)) == {"sequencer": None}
    harness.ok(Release(now_ms=harness.now, session=sid, handle=lock))
    harness.ok(SetContents(now_ms=harness.now, session=sid, handle=other, data=b"fine"))


def test_get_sequencer_without_a_lock_is_a_conflict() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, PATH, create=NodeKind.FILE)
    with pytest.raises(CellError) as caught:
        harness.state.get_sequencer(sid, handle)
    assert caught.value.code is ErrorCode.CONFLICT


def test_sequencer_body_is_json_of_the_four_fields() -> None:
    text = SequencerRef("/ls/c/x", LockMode.SHARED, 7, 3).encode()
    body = text[4:]
    decoded = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert decoded == ["/ls/c/x", "shared", 7, 3]


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(max_codepoint=0x80), max_size=40) | st.text(max_size=40),
       st.sampled_from(list(LockMode)),
       st.integers(min_value=0, max_value=2**70), st.integers(min_value=0, max_value=2**70))
@example("/ls/cell/\x7f", LockMode.SHARED, 1, 1)
@example("/ls/cell/\u2028", LockMode.SHARED, 1, 1)
def test_sequencer_text_is_the_standard_json_form(path: str, mode: LockMode, generation: int,
                                                  instance: int) -> None:
    reference = SequencerRef(path, mode, generation, instance)
    body = json.dumps([path, mode.value, generation, instance], separators=(",", ":")).encode()
    expected = "lc1:" + base64.urlsafe_b64encode(body).rstrip(b"=").decode("ascii")
    assert reference.encode() == expected
    assert parse_sequencer(expected) == reference
