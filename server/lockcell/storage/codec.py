"""Binary encoding of WAL records, frames, segment headers and snapshot files (struct + crc32).

Layout (all integers little-endian):

- **Record** (inside a frame payload), one type byte then fixed fields:

  - ``ENTRY``       ``<B Q Q B I`` type, term, index, kind, data length; then the data.
  - ``HARD_STATE``  ``<B Q Q H``   type, term, commit, vote length (``0xFFFF`` = no vote);
    then the vote as UTF-8.
  - ``LOG_RESET``   ``<B Q Q``     type, index, term: "the log is empty; its last compacted
    entry is (index, term)" - written when a snapshot replaces the whole log.

- **Frame**: ``<I I I`` marker, crc32, payload length; then the payload (one or more
  records). The marker is the segment's random ``salt`` (four non-zero bytes), so frame
  starts can be found again with a C-speed ``bytes.find`` when telling a torn tail from
  damage in the middle. The crc covers the length field and the payload and is seeded
  with the salt, so bytes copied from elsewhere (even a whole frame embedded in entry
  data) do not validate in this segment. One frame is written per ``save`` call: it is
  the unit of atomicity, so a torn write can only ever damage the last frame.

- **Segment header** (36 bytes): ``<8s H H I Q Q I`` magic, version, flags, salt, sequence
  number, first index, crc32 of the preceding 32 bytes.

- **Snapshot file**: ``<8s Q Q`` magic, index, term; three node-id sets (voters, outgoing
  voters, learners), each ``<I`` count then ``<H`` length + UTF-8 per id; ``<Q`` data
  length and the data; ``<I`` crc32 of everything before it.

Every decoder raises only :class:`~lockcell.storage.errors.CodecError` on bad input.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lockcell.raft.types import ConfState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from lockcell.storage.errors import CodecError

ENTRY_RECORD = 1
HARD_STATE_RECORD = 2
LOG_RESET_RECORD = 3

_ENTRY = struct.Struct("<BQQBI")
_HARD_STATE = struct.Struct("<BQQH")
_LOG_RESET = struct.Struct("<BQQ")
_NO_VOTE = 0xFFFF
MAX_VOTE_BYTES = 0xFFFE
MAX_ENTRY_DATA = 0xFFFFFFFF

FRAME_HEADER = struct.Struct("<III")
FRAME_HEADER_SIZE = FRAME_HEADER.size
_LENGTH = struct.Struct("<I")
MAX_FRAME_PAYLOAD = 0xFFFFFFFF

SEGMENT_MAGIC = b"LCWALSEG"
SEGMENT_VERSION = 2
"""2: frames carry the segment marker (12-byte frame header); 1 (8-byte header) is unread."""
_SEGMENT_HEADER_BODY = struct.Struct("<8sHHIQQ")
_CRC = struct.Struct("<I")
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER_BODY.size + _CRC.size

SNAPSHOT_MAGIC = b"LCSNAP01"
_SNAPSHOT_HEAD = struct.Struct("<8sQQ")
_COUNT = struct.Struct("<I")
_ID_LEN = struct.Struct("<H")
_DATA_LEN = struct.Struct("<Q")

_KINDS: dict[int, EntryKind] = {kind.value: kind for kind in EntryKind}


@dataclass(frozen=True, slots=True)
class LogReset:
    """The log was replaced by a snapshot: it is empty and continues after (index, term)."""

    index: int
    term: int


Record = Entry | HardState | LogReset
"""What a frame payload decodes into, in write order."""


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """The fixed header at the start of every WAL segment file."""

    seq: int
    first_index: int
    salt: int
    version: int = SEGMENT_VERSION


# --------------------------------------------------------------------------- records


def encode_batch(
    hard_state: HardState | None,
    entries: Sequence[Entry],
    reset: LogReset | None = None,
) -> bytes:
    """Encode one save's records as a frame payload: reset, then hard state, then entries."""
    parts: list[bytes] = []
    try:
        if reset is not None:
            parts.append(_LOG_RESET.pack(LOG_RESET_RECORD, reset.index, reset.term))
        if hard_state is not None:
            parts.extend(_encode_hard_state(hard_state))
        pack = _ENTRY.pack
        append = parts.append
        for entry in entries:
            data = entry.data
            append(pack(ENTRY_RECORD, entry.term, entry.index, entry.kind, len(data)))
            append(data)
    except struct.error as err:
        raise ValueError(f"value out of range for the WAL encoding: {err}") from err
    return b"".join(parts)


def _encode_hard_state(hard_state: HardState) -> list[bytes]:
    if hard_state.vote is None:
        return [_HARD_STATE.pack(HARD_STATE_RECORD, hard_state.term, hard_state.commit, _NO_VOTE)]
    vote = hard_state.vote.encode()
    if len(vote) > MAX_VOTE_BYTES:
        raise ValueError(f"vote {hard_state.vote[:40]!r}... is longer than {MAX_VOTE_BYTES} bytes")
    return [
        _HARD_STATE.pack(HARD_STATE_RECORD, hard_state.term, hard_state.commit, len(vote)),
        vote,
    ]


def decode_batch(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> list[Record]:
    """Decode the records in ``buf[start:end]``; raises :class:`CodecError` if malformed."""
    if end is None:
        end = len(buf)
    if not 0 <= start <= end <= len(buf):
        raise CodecError(f"bad record range {start}..{end} of a {len(buf)}-byte buffer")
    if start == end:
        raise CodecError("empty frame payload")
    records: list[Record] = []
    append = records.append
    unpack_entry = _ENTRY.unpack_from
    pos = start
    while pos < end:
        record_type = buf[pos]
        if record_type == ENTRY_RECORD:
            body = pos + _ENTRY.size
            if body > end:
                raise CodecError(f"entry record header cut short at {pos}")
            _, term, index, kind, length = unpack_entry(buf, pos)
            pos = body + length
            if pos > end:
                raise CodecError(f"entry data ({length} bytes) runs past the payload end")
            entry_kind = _KINDS.get(kind)
            if entry_kind is None:
                raise CodecError(f"unknown entry kind {kind} at {body - _ENTRY.size}")
            append(Entry(term, index, entry_kind, bytes(buf[body:pos])))
        elif record_type == HARD_STATE_RECORD:
            body = pos + _HARD_STATE.size
            if body > end:
                raise CodecError(f"hard state record cut short at {pos}")
            _, term, commit, vote_length = _HARD_STATE.unpack_from(buf, pos)
            vote: str | None = None
            if vote_length == _NO_VOTE:
                pos = body
            else:
                pos = body + vote_length
                if pos > end:
                    raise CodecError("hard state vote runs past the payload end")
                try:
                    vote = bytes(buf[body:pos]).decode()
                except UnicodeDecodeError as err:
                    raise CodecError("hard state vote is not valid UTF-8") from err
            append(HardState(term=term, vote=vote, commit=commit))
        elif record_type == LOG_RESET_RECORD:
            body = pos + _LOG_RESET.size
            if body > end:
                raise CodecError(f"log reset record cut short at {pos}")
            _, index, term = _LOG_RESET.unpack_from(buf, pos)
            append(LogReset(index=index, term=term))
            pos = body
        else:
            raise CodecError(f"unknown record type {record_type} at {pos}")
    return records


def _decode_text(raw: bytes | memoryview, what: str) -> str:
    try:
        return bytes(raw).decode()
    except UnicodeDecodeError as err:
        raise CodecError(f"{what} is not valid UTF-8") from err


# --------------------------------------------------------------------------- frames


def frame_checksum(payload: bytes | memoryview, salt: int) -> int:
    """The crc32 a frame carries: over its length field and payload, seeded with ``salt``."""
    return zlib.crc32(payload, zlib.crc32(_LENGTH.pack(len(payload)), salt))


def frame_marker(salt: int) -> bytes:
    """The bytes every frame of a segment with this ``salt`` starts with."""
    return _LENGTH.pack(salt)


def encode_frame(payload: bytes, salt: int) -> bytes:
    """Wrap a non-empty payload in a frame header (marker, crc32, length)."""
    if not payload:
        raise ValueError("a frame carries at least one record")
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise ValueError(f"batch of {len(payload)} bytes exceeds the {MAX_FRAME_PAYLOAD} limit")
    return FRAME_HEADER.pack(salt, frame_checksum(payload, salt), len(payload)) + payload


def read_frame(buf: bytes | memoryview, offset: int, salt: int) -> int:
    """Validate the frame at ``offset``; return where it ends (its payload starts 12 bytes in).

    Raises :class:`CodecError` if the frame is cut short, lacks the segment's marker, is
    empty or fails its checksum.
    """
    if offset < 0:
        raise CodecError(f"negative offset {offset}")
    payload_start = offset + FRAME_HEADER_SIZE
    if payload_start > len(buf):
        raise CodecError(
            f"frame header cut short ({len(buf) - offset} of {FRAME_HEADER_SIZE} bytes)"
        )
    marker, crc, length = FRAME_HEADER.unpack_from(buf, offset)
    if marker != salt:
        raise CodecError(f"no frame marker (found {marker:08x})")
    length = int(length)
    if length == 0:
        raise CodecError("frame declares an empty payload")
    end: int = payload_start + length
    if end > len(buf):
        raise CodecError(
            f"frame declares {length} payload bytes but only {len(buf) - payload_start} remain"
        )
    actual = zlib.crc32(memoryview(buf)[payload_start:end], zlib.crc32(_LENGTH.pack(length), salt))
    if actual != crc:
        raise CodecError(f"frame checksum mismatch (stored {crc:08x}, computed {actual:08x})")
    return end


# --------------------------------------------------------------------------- segment header


def encode_segment_header(header: SegmentHeader) -> bytes:
    """Encode a segment header (36 bytes)."""
    body = _SEGMENT_HEADER_BODY.pack(
        SEGMENT_MAGIC, header.version, 0, header.salt, header.seq, header.first_index
    )
    return body + _CRC.pack(zlib.crc32(body))


def decode_segment_header(buf: bytes | memoryview) -> SegmentHeader:
    """Decode and check the header at the start of ``buf``; raises :class:`CodecError`."""
    if len(buf) < SEGMENT_HEADER_SIZE:
        raise CodecError(f"segment header cut short ({len(buf)} of {SEGMENT_HEADER_SIZE} bytes)")
    body = bytes(buf[: _SEGMENT_HEADER_BODY.size])
    (crc,) = _CRC.unpack_from(buf, _SEGMENT_HEADER_BODY.size)
    if zlib.crc32(body) != crc:
        raise CodecError("segment header checksum mismatch")
    magic, version, _flags, salt, seq, first_index = _SEGMENT_HEADER_BODY.unpack(body)
    if magic != SEGMENT_MAGIC:
        raise CodecError(f"not a lockcell WAL segment (magic {magic!r})")
    if version != SEGMENT_VERSION:
        raise CodecError(f"unsupported WAL segment version {version}")
    return SegmentHeader(seq=seq, first_index=first_index, salt=salt, version=version)


# --------------------------------------------------------------------------- snapshots


def encode_snapshot(snapshot: Snapshot) -> bytes:
    """Encode a snapshot file image (metadata, configuration, data, trailing crc32)."""
    return b"".join(snapshot_file_chunks(snapshot))


def snapshot_file_chunks(snapshot: Snapshot) -> list[bytes]:
    """The pieces of :func:`encode_snapshot`'s image, in order, without copying the data
    (so a large image can be written without building it in memory twice)."""
    meta = snapshot.meta
    try:
        parts = [_SNAPSHOT_HEAD.pack(SNAPSHOT_MAGIC, meta.index, meta.term)]
    except struct.error as err:
        raise ValueError(f"snapshot metadata out of range: {err}") from err
    for members in (meta.conf.voters, meta.conf.voters_outgoing, meta.conf.learners):
        parts.extend(_encode_id_set(members))
    parts.append(_DATA_LEN.pack(len(snapshot.data)))
    parts.append(snapshot.data)
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    parts.append(_CRC.pack(crc))
    return parts


def _encode_id_set(members: Iterable[str]) -> list[bytes]:
    ids = sorted(members)
    out = [_COUNT.pack(len(ids))]
    for node in ids:
        raw = node.encode()
        if len(raw) > 0xFFFF:
            raise ValueError(f"node id {node[:40]!r}... is too long")
        out.append(_ID_LEN.pack(len(raw)))
        out.append(raw)
    return out


def decode_snapshot(buf: bytes | memoryview) -> Snapshot:
    """Decode a snapshot file image; raises :class:`CodecError` if damaged or malformed."""
    size = len(buf)
    if size < _SNAPSHOT_HEAD.size + 3 * _COUNT.size + _DATA_LEN.size + _CRC.size:
        raise CodecError(f"snapshot file too short ({size} bytes)")
    body_end = size - _CRC.size
    (crc,) = _CRC.unpack_from(buf, body_end)
    if zlib.crc32(memoryview(buf)[:body_end]) != crc:
        raise CodecError("snapshot checksum mismatch")
    magic, index, term = _SNAPSHOT_HEAD.unpack_from(buf, 0)
    if magic != SNAPSHOT_MAGIC:
        raise CodecError(f"not a lockcell snapshot (magic {magic!r})")
    pos = _SNAPSHOT_HEAD.size
    sets: list[frozenset[str]] = []
    for _ in range(3):
        members, pos = _decode_id_set(buf, pos, body_end)
        sets.append(members)
    if pos + _DATA_LEN.size > body_end:
        raise CodecError("snapshot data length cut short")
    (length,) = _DATA_LEN.unpack_from(buf, pos)
    pos += _DATA_LEN.size
    if pos + length != body_end:
        raise CodecError(f"snapshot data length {length} does not match the file size")
    conf = ConfState(voters=sets[0], voters_outgoing=sets[1], learners=sets[2])
    return Snapshot(SnapshotMeta(index=index, term=term, conf=conf), bytes(buf[pos:body_end]))


def _decode_id_set(buf: bytes | memoryview, pos: int, end: int) -> tuple[frozenset[str], int]:
    if pos + _COUNT.size > end:
        raise CodecError("snapshot configuration cut short")
    (count,) = _COUNT.unpack_from(buf, pos)
    pos += _COUNT.size
    if count > (end - pos) // _ID_LEN.size:
        raise CodecError(f"snapshot configuration claims {count} members")
    ids: list[str] = []
    for _ in range(count):
        if pos + _ID_LEN.size > end:
            raise CodecError("snapshot member id cut short")
        (length,) = _ID_LEN.unpack_from(buf, pos)
        pos += _ID_LEN.size
        if pos + length > end:
            raise CodecError("snapshot member id runs past the end")
        ids.append(_decode_text(buf[pos : pos + length], "member id"))
        pos += length
    return frozenset(ids), pos
