"""The command codec: round trips, canonical bytes, and malformed input as error results."""

from __future__ import annotations

import json
import tracemalloc
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockcell.statemachine import (
    COMMAND_TYPES,
    Acquire,
    CellError,
    Close,
    CloseSession,
    Command,
    CreateSession,
    CreateSpec,
    Delete,
    ErrorCode,
    EventType,
    ExpireSession,
    Grant,
    GrantLocks,
    LockMode,
    NodeKind,
    Open,
    Poison,
    Release,
    SetContents,
    SetSequencer,
    Tick,
    decode_command,
    encode_command,
)

from .support import ROOT, Harness, handle_id, session_id

S = session_id(1)
H = handle_id(1)
GRANTS = (
    Grant(session=S, handle=H, mode=LockMode.SHARED),
    Grant(session=session_id(2), handle=handle_id(2), mode=LockMode.EXCLUSIVE),
)

EXAMPLES: list[Command] = [
    Tick(now_ms=5),
    CreateSession(now_ms=1, session=S),
    CreateSession(now_ms=1, session=S, lease_ms=3000),
    CloseSession(now_ms=2, session=S, request_id="r", grant_next=GRANTS),
    ExpireSession(now_ms=3, session=S, grant_next=GRANTS[:1]),
    Open(now_ms=4, session=S, path=f"{ROOT}/a", handle=H),
    Open(
        now_ms=4,
        session=S,
        path=f"{ROOT}/a",
        handle=H,
        create=CreateSpec(kind=NodeKind.FILE, ephemeral=True, data=b"\x00\xffdata"),
        events=(EventType.CHILD_ADDED, EventType.LOCK_ACQUIRED),
        lock_delay_ms=0,
        request_id="req-1",
    ),
    Close(now_ms=5, session=S, handle=H, grant_next=GRANTS),
    Poison(now_ms=6, session=S, handle=H),
    SetContents(now_ms=7, session=S, handle=H, data=b"", if_generation=0),
    SetContents(now_ms=7, session=S, handle=H, data=b"x" * 1000),
    Delete(now_ms=8, session=S, handle=H, request_id="d"),
    Acquire(now_ms=9, session=S, handle=H, mode=LockMode.SHARED),
    Release(now_ms=10, session=S, handle=H, generation=7, grant_next=GRANTS),
    GrantLocks(now_ms=11, grants=GRANTS),
    GrantLocks(now_ms=11, grants=()),
    SetSequencer(now_ms=12, session=S, handle=H, sequencer="lc1:abc"),
    SetSequencer(now_ms=12, session=S, handle=H, sequencer=None),
]


def test_every_command_type_has_an_example() -> None:
    assert {type(command) for command in EXAMPLES} == set(COMMAND_TYPES)


@pytest.mark.parametrize("command", EXAMPLES, ids=lambda c: type(c).__name__)
def test_round_trip(command: Command) -> None:
    encoded = encode_command(command)
    assert encoded == command.encode()
    assert decode_command(encoded) == command
    assert type(decode_command(encoded)) is type(command)


@pytest.mark.parametrize("command", EXAMPLES, ids=lambda c: type(c).__name__)
def test_a_stamp_encodes_as_the_stamped_command_does(command: Command) -> None:
    for stamp in (0, 7, 1795736621230):
        assert encode_command(command, stamp) == replace(command, now_ms=stamp).encode()


def test_encoding_is_canonical_sorted_compact_and_omits_defaults() -> None:
    command = Open(now_ms=4, session=S, path=f"{ROOT}/a", handle=H)
    text = command.encode().decode()
    assert " " not in text
    wire = json.loads(text)
    assert list(wire) == sorted(wire)
    assert wire == {"type": "open", "now_ms": 4, "session": S, "path": f"{ROOT}/a", "handle": H}
    # Any key order decodes to the same command and re-encodes to the same bytes.
    shuffled = json.dumps(dict(reversed(list(wire.items())))).encode()
    assert decode_command(shuffled) == command
    assert decode_command(shuffled).encode() == command.encode()


def test_bytes_travel_as_base64() -> None:
    command = SetContents(now_ms=1, session=S, handle=H, data=b"\x00\x01binary\xff")
    wire = json.loads(command.encode())
    assert wire["data"] == "AAFiaW5hcnn/"


def test_an_encoded_entry_holds_no_more_memory_than_its_bytes() -> None:
    command = Open(now_ms=4, session=S, path=f"{ROOT}/a", handle=H)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [command.encode() for _ in range(1000)]
        held = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert held < len(kept[0]) + 200, f"{held:.0f} bytes held per {len(kept[0])}-byte entry"


def test_integers_beyond_64_bits_and_lone_surrogates_round_trip() -> None:
    huge = Release(now_ms=1, session=S, handle=H, generation=2**70)
    negative = SetContents(now_ms=1, session=S, handle=H, data=b"", if_generation=-(2**64))
    surrogate = Open(now_ms=4, session=S, path=f"{ROOT}/\ud800", handle=H)
    for command in (huge, negative, surrogate):
        encoded = command.encode()
        assert decode_command(encoded) == command
        assert encode_command(decode_command(encoded)) == encoded
    assert json.loads(huge.encode())["generation"] == 2**70


def test_entries_written_with_escaped_non_ascii_read_as_before() -> None:
    command = Open(now_ms=4, session=S, path=f"{ROOT}/caf\u00e9-\U0001f512", handle=H)
    wire = json.loads(command.encode())
    assert wire["path"] == f"{ROOT}/caf\u00e9-\U0001f512"
    escaped = json.dumps(wire, sort_keys=True, separators=(",", ":")).encode()
    assert b"\\u00e9" in escaped  # the form logs written before the orjson codec hold
    assert decode_command(escaped) == command


MALFORMED: list[bytes] = [
    b"\xff\xfe\x00",
    b"not json",
    b"[]",
    b"42",
    b"null",
    b'"open"',
    b"{}",
    b'{"type":"no_such_command","now_ms":1}',
    b'{"type":7,"now_ms":1}',
    b'{"type":"tick"}',
    b'{"type":"tick","now_ms":"1"}',
    b'{"type":"tick","now_ms":1.5}',
    b'{"type":"tick","now_ms":true}',
    b'{"type":"tick","now_ms":NaN}',
    b'{"type":"tick","now_ms":1,"extra":0}',
    b'{"type":"create_session","now_ms":1}',
    b'{"type":"create_session","now_ms":1,"session":5}',
    b'{"type":"acquire","now_ms":1,"session":"s","handle":"h","mode":"upgrade"}',
    b'{"type":"set_contents","now_ms":1,"session":"s","handle":"h","data":"***"}',
    b'{"type":"set_contents","now_ms":1,"session":"s","handle":"h","data":null}',
    b'{"type":"open","now_ms":1,"session":"s","path":"/ls/x","handle":"h","events":"x"}',
    b'{"type":"open","now_ms":1,"session":"s","path":"/ls/x","handle":"h","events":["nope"]}',
    b'{"type":"open","now_ms":1,"session":"s","path":"/ls/x","handle":"h","create":[]}',
    b'{"type":"open","now_ms":1,"session":"s","path":"/ls/x","handle":"h","create":{}}',
    b'{"type":"open","now_ms":1,"session":"s","path":"/ls/x","handle":"h",'
    b'"create":{"kind":"link"}}',
    b'{"type":"grant_locks","now_ms":1,"grants":[{"session":"s","handle":"h"}]}',
    b'{"type":"grant_locks","now_ms":1,"grants":[[1,2,3]]}',
    b'{"type":"tick","now_ms":' + b"9" * 5000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
]


@pytest.mark.parametrize("data", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_bytes_give_an_invalid_argument_result(data: bytes) -> None:
    with pytest.raises(CellError) as caught:
        decode_command(data)
    assert caught.value.code is ErrorCode.INVALID_ARGUMENT
    harness = Harness()
    harness.new_session()
    before = harness.state.snapshot()
    result = harness.state.apply(99, data)
    assert result.index == 99
    assert result.error is not None
    assert result.error.code is ErrorCode.INVALID_ARGUMENT
    assert result.value is None and result.events == () and result.effects == ()
    assert harness.state.snapshot() == before


def test_empty_entry_is_the_leaders_no_op() -> None:
    harness = Harness()
    before = harness.state.snapshot()
    result = harness.state.apply(1, b"")
    assert result.ok and result.value == {}
    assert harness.state.snapshot() == before


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    harness = Harness()
    before = harness.state.snapshot()
    result = harness.state.apply(1, data)
    if data == b"":
        assert result.ok
    if result.error is not None:
        assert result.error.code is ErrorCode.INVALID_ARGUMENT
        assert harness.state.snapshot() == before


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
_field_names = st.sampled_from(
    ["now_ms", "session", "handle", "path", "create", "events", "lock_delay_ms", "request_id",
     "data", "if_generation", "mode", "generation", "grant_next", "grants", "sequencer",
     "lease_ms", "kind", "ephemeral"]
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([command.TAG for command in COMMAND_TYPES]),
    st.dictionaries(_field_names, _json_values, max_size=6),
)
def test_random_json_objects_never_raise(tag: str, fields: dict[str, object]) -> None:
    harness = Harness()
    harness.new_session()
    data = json.dumps({"type": tag, **fields}).encode()
    before = harness.state.snapshot()
    result = harness.state.apply(5, data)
    if result.error is not None:
        assert harness.state.snapshot() == before
