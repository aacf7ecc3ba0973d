"""Arbitrary bytes into the peer-transport and storage decoders: only the documented error."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from lockcell.raft.types import Entry, EntryKind, Message, MessageType
from lockcell.storage import codec as scodec
from lockcell.storage.errors import CodecError
from lockcell.transport.codec import DecodeError, decode_messages, encode_messages

FUZZ = settings(max_examples=1500, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def _valid_batch() -> bytes:
    try:
        msg = Message(MessageType.APPEND, "b", "a", term=3, index=4,
                      entries=(Entry(3, 5, EntryKind.NORMAL, b"xy"),), context=b"c")
        return encode_messages([msg])
    except TypeError:
        return b""


VALID = _valid_batch()


@FUZZ
@given(st.binary(max_size=512))
@example(b"")
@example(b"\xff" * 64)
def test_decode_messages_raises_only_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_messages(raw)


@FUZZ
@given(st.data())
def test_decode_messages_mutated_valid_batches(data: st.DataObject) -> None:
    if not VALID:
        return
    raw = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with contextlib.suppress(DecodeError):
        decode_messages(bytes(raw[:cut]))


@FUZZ
@given(st.binary(max_size=512), st.integers(0, 600), st.integers(0, 600) | st.none())
def test_storage_decode_batch_raises_only_codec_error(raw: bytes, start: int,
                                                      end: int | None) -> None:
    with contextlib.suppress(CodecError):
        scodec.decode_batch(raw, start, end)


@FUZZ
@given(st.binary(max_size=256), st.integers(0, 300), st.integers(0, 2**32 - 1))
def test_storage_read_frame_raises_only_codec_error(raw: bytes, offset: int, salt: int) -> None:
    with contextlib.suppress(CodecError):
        scodec.read_frame(raw, offset, salt)


@FUZZ
@given(st.binary(max_size=256))
def test_storage_headers_and_snapshots_raise_only_codec_error(raw: bytes) -> None:
    for decode in (scodec.decode_segment_header, scodec.decode_snapshot):
        with contextlib.suppress(CodecError):
            decode(raw)


def test_a_valid_batch_exists_for_mutation() -> None:
    assert Entry and EntryKind  # imported for the documentation of the record kinds
    assert VALID, "could not build a valid peer batch to mutate"
    assert decode_messages(VALID)
