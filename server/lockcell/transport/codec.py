"""Compact binary encoding of Raft messages for the peer transport."""

from __future__ import annotations

import struct

from lockcell.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)


class DecodeError(ValueError):
    """Bytes that are not a well-formed peer message."""


_HEADER = struct.Struct("<BQQQQQQBI")  # type, term, log_term, index, commit, leader commit,
# hint, reject, n
_ENTRY = struct.Struct("<QQBI")  # term, index, kind, len(data)
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_SNAP = struct.Struct("<QQ")


def _put_str(out: list[bytes], text: str) -> None:
    raw = text.encode()
    out.append(_U16.pack(len(raw)))
    out.append(raw)


def _put_bytes(out: list[bytes], raw: bytes) -> None:
    out.append(_U32.pack(len(raw)))
    out.append(raw)


def _put_set(out: list[bytes], items: frozenset[str]) -> None:
    out.append(_U16.pack(len(items)))
    for item in sorted(items):
        _put_str(out, item)


def encode_message(m: Message, out: list[bytes]) -> None:
    """Append the encoding of ``m`` to ``out`` (joined by the caller, one write per batch)."""
    out.append(
        _HEADER.pack(m.type, m.term, m.log_term, m.index, m.commit, m.leader_commit,
                     m.reject_hint, 1 if m.reject else 0, len(m.entries))
    )
    _put_str(out, m.to)
    _put_str(out, m.sender)
    _put_bytes(out, m.context)
    for e in m.entries:
        out.append(_ENTRY.pack(e.term, e.index, e.kind, len(e.data)))
        out.append(e.data)
    if m.snapshot is None:
        out.append(b"\x00")
    else:
        out.append(b"\x01")
        meta = m.snapshot.meta
        out.append(_SNAP.pack(meta.index, meta.term))
        _put_set(out, meta.conf.voters)
        _put_set(out, meta.conf.voters_outgoing)
        _put_set(out, meta.conf.learners)
        _put_bytes(out, m.snapshot.data)


def encode_messages(messages: list[Message]) -> bytes:
    """Encode a batch of messages as one buffer."""
    out: list[bytes] = [_U32.pack(len(messages))]
    for m in messages:
        encode_message(m, out)
    return b"".join(out)


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise DecodeError(f"truncated message at byte {self.pos} (need {n})")
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        end = self.pos + fmt.size
        if end > len(self.buf):
            raise DecodeError(f"truncated message at byte {self.pos}")
        values = fmt.unpack_from(self.buf, self.pos)
        self.pos = end
        return values

    def text(self) -> str:
        (n,) = self.unpack(_U16)
        try:
            return self.take(n).decode()
        except UnicodeDecodeError as exc:
            raise DecodeError(f"bad text at byte {self.pos}") from exc

    def blob(self) -> bytes:
        (n,) = self.unpack(_U32)
        return self.take(n)

    def names(self) -> frozenset[str]:
        (n,) = self.unpack(_U16)
        return frozenset(self.text() for _ in range(n))


def _decode_one(r: _Reader) -> Message:
    mtype, term, log_term, index, commit, leader_commit, hint, reject, count = r.unpack(_HEADER)
    try:
        kind = MessageType(mtype)
    except ValueError as exc:
        raise DecodeError(f"unknown message type {mtype}") from exc
    to = r.text()
    sender = r.text()
    context = r.blob()
    entries: list[Entry] = []
    for _ in range(count):
        e_term, e_index, e_kind, size = r.unpack(_ENTRY)
        try:
            entry_kind = EntryKind(e_kind)
        except ValueError as exc:
            raise DecodeError(f"unknown entry kind {e_kind}") from exc
        entries.append(Entry(e_term, e_index, entry_kind, r.take(size)))
    snapshot: Snapshot | None = None
    flag = r.take(1)
    if flag == b"\x01":
        s_index, s_term = r.unpack(_SNAP)
        conf = ConfState(r.names(), r.names(), r.names())
        snapshot = Snapshot(SnapshotMeta(s_index, s_term, conf), r.blob())
    elif flag != b"\x00":
        raise DecodeError(f"bad snapshot flag at byte {r.pos - 1}")
    return Message(kind, to=to, sender=sender, term=term, log_term=log_term, index=index,
                   entries=tuple(entries), commit=commit, reject=bool(reject),
                   reject_hint=hint, snapshot=snapshot, context=context,
                   leader_commit=leader_commit)


def decode_messages(buf: bytes) -> list[Message]:
    """Decode a batch written by :func:`encode_messages`; raises :class:`DecodeError`."""
    r = _Reader(buf)
    (count,) = r.unpack(_U32)
    messages = [_decode_one(r) for _ in range(count)]
    if r.pos != len(buf):
        raise DecodeError(f"{len(buf) - r.pos} trailing bytes after {count} messages")
    return messages
