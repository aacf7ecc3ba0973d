"""Record, frame, segment-header and snapshot encoding: round trips and decoder fuzzing."""

from __future__ import annotations

import contextlib
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockcell.raft.types import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from lockcell.storage.codec import (
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    LogReset,
    SegmentHeader,
    decode_batch,
    decode_segment_header,
    decode_snapshot,
    encode_batch,
    encode_frame,
    encode_segment_header,
    encode_snapshot,
    read_frame,
)
from lockcell.storage.errors import CodecError

U64 = st.integers(min_value=0, max_value=2**64 - 1)
SALT = st.integers(min_value=0, max_value=2**32 - 1)
NODE_ID = st.text(min_size=0, max_size=30)
entry_st = st.builds(
    Entry,
    term=U64,
    index=U64,
    kind=st.sampled_from(list(EntryKind)),
    data=st.binary(max_size=300),
)
hard_state_st = st.builds(HardState, term=U64, vote=st.none() | NODE_ID, commit=U64)
reset_st = st.builds(LogReset, index=U64, term=U64)
conf_st = st.builds(
    ConfState,
    voters=st.frozensets(NODE_ID, max_size=5),
    voters_outgoing=st.frozensets(NODE_ID, max_size=5),
    learners=st.frozensets(NODE_ID, max_size=5),
)
snapshot_st = st.builds(
    Snapshot,
    meta=st.builds(SnapshotMeta, index=U64, term=U64, conf=conf_st),
    data=st.binary(max_size=2000),
)


# ----------------------------------------------------------------------------- round trips


@given(
    hard_state=st.none() | hard_state_st,
    batch=st.lists(entry_st, max_size=20),
    reset=st.none() | reset_st,
)
def test_batch_round_trip(
    hard_state: HardState | None, batch: list[Entry], reset: LogReset | None
) -> None:
    payload = encode_batch(hard_state, batch, reset)
    expected: list[object] = []
    if reset is not None:
        expected.append(reset)
    if hard_state is not None:
        expected.append(hard_state)
    expected.extend(batch)
    if not expected:
        assert payload == b""
        return
    assert decode_batch(payload) == expected


def test_entry_record_is_compact() -> None:
    payload = encode_batch(None, [Entry(3, 7, data=b"x" * 100)])
    assert len(payload) == 22 + 100


def test_vote_none_and_empty_string_are_distinct() -> None:
    decoded = decode_batch(
        encode_batch(HardState(1, None, 0), []) + encode_batch(HardState(1, "", 0), [])
    )
    assert decoded == [HardState(1, None, 0), HardState(1, "", 0)]


@given(payload=st.binary(min_size=1, max_size=500), salt=SALT)
def test_frame_round_trip(payload: bytes, salt: int) -> None:
    frame = encode_frame(payload, salt)
    assert read_frame(frame, 0, salt) == len(frame)
    assert frame[FRAME_HEADER_SIZE:] == payload


@given(payload=st.binary(min_size=1, max_size=300), salt=SALT, data=st.data())
def test_every_single_bit_flip_in_a_frame_is_detected(
    payload: bytes, salt: int, data: st.DataObject
) -> None:
    frame = bytearray(encode_frame(payload, salt))
    bit = data.draw(st.integers(min_value=0, max_value=len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CodecError):
        read_frame(bytes(frame), 0, salt)


def test_frame_from_another_segment_does_not_validate() -> None:
    frame = encode_frame(b"\x02" + bytes(19), salt=1)
    with pytest.raises(CodecError, match="marker"):
        read_frame(frame, 0, salt=2)


def test_empty_frames_are_rejected() -> None:
    with pytest.raises(ValueError):
        encode_frame(b"", 0)
    with pytest.raises(CodecError, match="empty"):
        read_frame(struct.pack("<III", 7, zlib.crc32(b"\0\0\0\0", 7), 0) + b"rest", 0, 7)


@given(seq=U64, first=U64, salt=SALT)
def test_segment_header_round_trip(seq: int, first: int, salt: int) -> None:
    header = SegmentHeader(seq=seq, first_index=first, salt=salt)
    raw = encode_segment_header(header)
    assert len(raw) == SEGMENT_HEADER_SIZE
    assert decode_segment_header(raw + b"frames follow") == header


@given(snap=snapshot_st)
def test_snapshot_round_trip(snap: Snapshot) -> None:
    assert decode_snapshot(encode_snapshot(snap)) == snap


@given(snap=snapshot_st, data=st.data())
def test_snapshot_bit_flips_are_detected(snap: Snapshot, data: st.DataObject) -> None:
    raw = bytearray(encode_snapshot(snap))
    bit = data.draw(st.integers(min_value=0, max_value=len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CodecError):
        decode_snapshot(bytes(raw))


def test_out_of_range_values_are_rejected_when_encoding() -> None:
    with pytest.raises(ValueError):
        encode_batch(None, [Entry(-1, 1)])
    with pytest.raises(ValueError):
        encode_batch(HardState(term=2**64), [])
    with pytest.raises(ValueError):
        encode_batch(HardState(vote="v" * 70000), [])


# ----------------------------------------------------------------------------- fuzzing


@settings(max_examples=400)
@given(raw=st.binary(max_size=400))
def test_decode_batch_never_crashes(raw: bytes) -> None:
    try:
        records = decode_batch(raw)
    except CodecError:
        return
    assert records


@settings(max_examples=300)
@given(
    records=st.lists(st.one_of(entry_st, hard_state_st, reset_st), min_size=1, max_size=6),
    cut=st.integers(min_value=0, max_value=2000),
    noise=st.lists(
        st.tuples(st.integers(min_value=0, max_value=2000), st.integers(0, 255)), max_size=4
    ),
)
def test_decode_batch_of_damaged_valid_records(
    records: list[Entry | HardState | LogReset], cut: int, noise: list[tuple[int, int]]
) -> None:
    """Structured damage gets past the type dispatch and into every field decoder."""
    raw = bytearray()
    for record in records:
        if isinstance(record, Entry):
            raw += encode_batch(None, [record])
        elif isinstance(record, HardState):
            raw += encode_batch(record, [])
        else:
            raw += encode_batch(None, [], record)
    for position, value in noise:
        if raw:
            raw[position % len(raw)] = value
    damaged = bytes(raw[: cut % (len(raw) + 1)])
    with contextlib.suppress(CodecError):
        decode_batch(damaged)


@settings(max_examples=300)
@given(
    raw=st.binary(max_size=200),
    offset=st.integers(min_value=-5, max_value=250),
    salt=SALT,
    marked=st.booleans(),
)
def test_read_frame_never_crashes(raw: bytes, offset: int, salt: int, marked: bool) -> None:
    if marked:  # get past the marker check into the length and checksum checks
        raw = raw[: max(offset, 0)] + struct.pack("<I", salt) + raw[max(offset, 0) :]
    try:
        end = read_frame(raw, offset, salt)
    except CodecError:
        return
    assert offset + FRAME_HEADER_SIZE < end <= len(raw)


@settings(max_examples=300)
@given(raw=st.binary(max_size=120))
def test_decode_segment_header_never_crashes(raw: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_segment_header(raw)


@settings(max_examples=300)
@given(raw=st.binary(max_size=300))
def test_decode_snapshot_never_crashes(raw: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_snapshot(raw)


@settings(max_examples=200)
@given(snap=snapshot_st, noise=st.binary(min_size=1, max_size=40), where=st.integers(0, 4000))
def test_decode_snapshot_with_valid_crc_over_garbage_never_crashes(
    snap: Snapshot, noise: bytes, where: int
) -> None:
    """Garbage with a correct trailing crc reaches the structural checks."""
    raw = bytearray(encode_snapshot(snap)[:-4])
    position = where % (len(raw) + 1)
    raw[position : position + len(noise)] = noise
    body = bytes(raw)
    with contextlib.suppress(CodecError):
        decode_snapshot(body + struct.pack("<I", zlib.crc32(body)))
