"""Replicated commands as frozen dataclasses, and their compact deterministic byte codec.

The wire form is one JSON object with sorted keys and no spaces: ``{"type": <tag>, ...}``
with every field that differs from its default; ``bytes`` are base64 and enums their value.
Decoding is strict (unknown, missing or mistyped fields are refused) and never raises
anything but :class:`~lockcell.statemachine.errors.CellError` (``invalid_argument``).
Every replica encodes or decodes each entry, so both use orjson (a tenth of the standard
library's cost); what orjson cannot write or reads differently (integers beyond 64 bits,
lone surrogates) takes the standard library's path, so every entry reads as it always did.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from .errors import CellError, ErrorCode
from .values import EventType, LockMode, NodeKind


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateSpec:
    """Open's ``create``: make the node when it does not exist."""

    kind: NodeKind
    ephemeral: bool = False
    data: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """A lock grant the leader asks for on behalf of a waiter (one entry of a grant list)."""

    session: str
    handle: str
    mode: LockMode


@dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """Base of every command: ``now_ms`` is the leader's time stamp for the entry."""

    TAG: ClassVar[str] = ""
    now_ms: int

    def encode(self) -> bytes:
        """The canonical wire form of this command."""
        return encode_command(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionCommand(Command):
    """A client write in a session; ``request_id`` makes a retry return the first result."""

    session: str
    request_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HandleCommand(SessionCommand):
    """A client write on one of the session's handles."""

    handle: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick(Command):
    """Advance the state machine's clock only (purges old session tombstones)."""

    TAG: ClassVar[str] = "tick"


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateSession(Command):
    """Start a session with the id the leader chose; ``lease_ms`` is clamped to 1000-60000."""

    TAG: ClassVar[str] = "create_session"
    session: str
    lease_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseSession(SessionCommand):
    """End a session normally: its handles close and its locks go without lock-delay."""

    TAG: ClassVar[str] = "close_session"
    grant_next: tuple[Grant, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpireSession(Command):
    """Leader-proposed expiry: like CloseSession but arming lock-delay; leaves a tombstone."""

    TAG: ClassVar[str] = "expire_session"
    session: str
    grant_next: tuple[Grant, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Open(SessionCommand):
    """Open (and maybe create) the node at ``path`` under the new handle id ``handle``."""

    TAG: ClassVar[str] = "open"
    path: str
    handle: str
    create: CreateSpec | None = None
    events: tuple[EventType, ...] = ()
    lock_delay_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Close(HandleCommand):
    """Close a handle (releasing its lock); always succeeds for the session's own handle."""

    TAG: ClassVar[str] = "close"
    grant_next: tuple[Grant, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Poison(HandleCommand):
    """Make every later call on the handle (except Close) fail with ``handle_invalid``."""

    TAG: ClassVar[str] = "poison"


@dataclass(frozen=True, slots=True, kw_only=True)
class SetContents(HandleCommand):
    """Replace a file's contents; ``if_generation`` makes it a compare-and-set."""

    TAG: ClassVar[str] = "set_contents"
    data: bytes
    if_generation: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Delete(HandleCommand):
    """Delete the handle's node (a file or an empty directory, not the root)."""

    TAG: ClassVar[str] = "delete"


@dataclass(frozen=True, slots=True, kw_only=True)
class Acquire(HandleCommand):
    """Take the handle's lock now or fail (waiting is the leader's business)."""

    TAG: ClassVar[str] = "acquire"
    mode: LockMode


@dataclass(frozen=True, slots=True, kw_only=True)
class Release(HandleCommand):
    """Release the handle's lock (only grant ``generation`` when given), then grant."""

    TAG: ClassVar[str] = "release"
    generation: int | None = None
    grant_next: tuple[Grant, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantLocks(Command):
    """Leader-proposed grants to waiters (e.g. when a lock-delay has ended)."""

    TAG: ClassVar[str] = "grant_locks"
    grants: tuple[Grant, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SetSequencer(HandleCommand):
    """Tie the handle to a sequencer (``None`` unties it): later calls fail once it is stale."""

    TAG: ClassVar[str] = "set_sequencer"
    sequencer: str | None


COMMAND_TYPES: tuple[type[Command], ...] = (
    Tick,
    CreateSession,
    CloseSession,
    ExpireSession,
    Open,
    Close,
    Poison,
    SetContents,
    Delete,
    Acquire,
    Release,
    GrantLocks,
    SetSequencer,
)
"""Every concrete command type."""

_TYPE_KEY = "type"


def _malformed(message: str) -> CellError:
    return CellError(ErrorCode.INVALID_ARGUMENT, f"malformed command: {message}")


# --- value codecs -------------------------------------------------------------------------

_Encoder = Callable[[Any], Any]
_Decoder = Callable[[Any], Any]


def _identity(value: Any) -> Any:
    return value


def _decode_str(value: Any) -> str:
    if type(value) is not str:
        raise _malformed(f"expected a string, got {type(value).__name__}")
    return value


def _decode_int(value: Any) -> int:
    if type(value) is not int:
        raise _malformed(f"expected an integer, got {type(value).__name__}")
    return value


def _decode_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _malformed(f"expected a boolean, got {type(value).__name__}")
    return value


def _encode_bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _decode_bytes(value: Any) -> bytes:
    if type(value) is not str:
        raise _malformed("expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _malformed("invalid base64") from exc


def _encode_enum(value: enum.Enum) -> Any:
    return value.value


def _enum_decoder(enum_type: type[enum.Enum]) -> _Decoder:
    members = {member.value: member for member in enum_type}

    def decode(value: Any) -> Any:
        if type(value) is not str or value not in members:
            raise _malformed(f"expected one of {sorted(members)}, got {value!r}")
        return members[value]

    return decode


def _optional(codec: tuple[_Encoder, _Decoder]) -> tuple[_Encoder, _Decoder]:
    encode, decode = codec

    def encode_optional(value: Any) -> Any:
        return None if value is None else encode(value)

    def decode_optional(value: Any) -> Any:
        return None if value is None else decode(value)

    return encode_optional, decode_optional


def _sequence(codec: tuple[_Encoder, _Decoder]) -> tuple[_Encoder, _Decoder]:
    encode, decode = codec

    def encode_sequence(value: Any) -> Any:
        return [encode(item) for item in value]

    def decode_sequence(value: Any) -> Any:
        if type(value) is not list:
            raise _malformed("expected a list")
        return tuple(decode(item) for item in value)

    return encode_sequence, decode_sequence


_REQUIRED = object()


@dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    default: Any
    encode: _Encoder
    decode: _Decoder


_SPECS: dict[type[Any], tuple[_FieldSpec, ...]] = {}


def _record_codec(record_type: type[Any]) -> tuple[_Encoder, _Decoder]:
    def encode(value: Any) -> Any:
        return _encode_fields(value, _SPECS[record_type])

    def decode(value: Any) -> Any:
        if type(value) is not dict:
            raise _malformed(f"expected an object for {record_type.__name__}")
        return _decode_fields(record_type, value, _SPECS[record_type])

    return encode, decode


_EVENT_CODEC = (_encode_enum, _enum_decoder(EventType))
_MODE_CODEC = (_encode_enum, _enum_decoder(LockMode))
_GRANT_CODEC = _record_codec(Grant)
_CODECS: dict[Any, tuple[_Encoder, _Decoder]] = {
    str: (_identity, _decode_str),
    int: (_identity, _decode_int),
    bool: (_identity, _decode_bool),
    bytes: (_encode_bytes, _decode_bytes),
    str | None: _optional((_identity, _decode_str)),
    int | None: _optional((_identity, _decode_int)),
    LockMode: _MODE_CODEC,
    NodeKind: (_encode_enum, _enum_decoder(NodeKind)),
    CreateSpec | None: _optional(_record_codec(CreateSpec)),
    tuple[EventType, ...]: _sequence(_EVENT_CODEC),
    tuple[Grant, ...]: _sequence(_GRANT_CODEC),
}


def _build_specs(record_type: type[Any]) -> tuple[_FieldSpec, ...]:
    hints = typing.get_type_hints(record_type)
    specs = []
    for field in dataclasses.fields(record_type):
        encode, decode = _CODECS[hints[field.name]]
        default = _REQUIRED if field.default is dataclasses.MISSING else field.default
        specs.append(_FieldSpec(field.name, default, encode, decode))
    return tuple(specs)


def _encode_fields(value: Any, specs: tuple[_FieldSpec, ...]) -> dict[str, Any]:
    wire: dict[str, Any] = {}
    for spec in specs:
        field_value = getattr(value, spec.name)
        if spec.default is not _REQUIRED and field_value == spec.default:
            continue
        wire[spec.name] = spec.encode(field_value)
    return wire


def _decode_fields(
    record_type: type[Any], wire: dict[str, Any], specs: tuple[_FieldSpec, ...]
) -> Any:
    arguments: dict[str, Any] = {}
    for spec in specs:
        if spec.name in wire:
            arguments[spec.name] = spec.decode(wire[spec.name])
        elif spec.default is _REQUIRED:
            raise _malformed(f"{record_type.__name__} needs {spec.name!r}")
    if len(arguments) != len(wire):
        unknown = sorted(set(wire) - {spec.name for spec in specs})
        raise _malformed(f"{record_type.__name__} has unknown fields {unknown}")
    return record_type(**arguments)


for _record_type in (CreateSpec, Grant, *COMMAND_TYPES):
    _SPECS[_record_type] = _build_specs(_record_type)
_BY_TAG: dict[str, type[Command]] = {
    command_type.TAG: command_type for command_type in COMMAND_TYPES
}


def encode_command(command: Command, now_ms: int | None = None) -> bytes:
    """Encode ``command`` canonically (equal commands give identical bytes); with
    ``now_ms``, as ``replace(command, now_ms=now_ms)`` would encode (without making it)."""
    wire = _encode_fields(command, _SPECS[type(command)])
    wire[_TYPE_KEY] = command.TAG
    if now_ms is not None:
        wire["now_ms"] = now_ms
    try:
        # orjson's own bytes keep its whole 4 KiB output buffer; an entry stays in the
        # leader's log until a snapshot compacts it, so it keeps an exact-size copy
        return memoryview(orjson.dumps(wire, option=orjson.OPT_SORT_KEYS)).tobytes()
    except TypeError:  # an integer beyond 64 bits or a lone surrogate
        return json.dumps(wire, sort_keys=True, separators=(",", ":")).encode()


def decode_command(data: bytes) -> Command:
    """Decode what :func:`encode_command` wrote; any malformed input raises ``CellError``."""
    try:
        return _decode_wire(orjson.loads(data))
    except (orjson.JSONDecodeError, CellError):
        pass  # the standard library decides (orjson reads a huge integer as a float)
    try:
        wire = json.loads(data)
    except (ValueError, TypeError, RecursionError) as exc:
        raise _malformed("not JSON") from exc
    return _decode_wire(wire)


def _decode_wire(wire: Any) -> Command:
    if type(wire) is not dict:
        raise _malformed("not a JSON object")
    tag = wire.pop(_TYPE_KEY, None)
    if type(tag) is not str or tag not in _BY_TAG:
        raise _malformed(f"unknown command type {tag!r}")
    command_type = _BY_TAG[tag]
    command: Command = _decode_fields(command_type, wire, _SPECS[command_type])
    return command
