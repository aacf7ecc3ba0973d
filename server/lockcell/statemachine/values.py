"""Enumerations shared by commands, state, snapshots and results (lock modes, kinds, events)."""

from __future__ import annotations

import enum

from .errors import CellError, ErrorCode


class LockMode(enum.StrEnum):
    """A reader/writer lock mode."""

    EXCLUSIVE = "exclusive"
    SHARED = "shared"


class NodeKind(enum.StrEnum):
    """Whether a node is a file or a directory."""

    FILE = "file"
    DIR = "dir"


class EventType(enum.StrEnum):
    """Events a handle may subscribe to at Open (``master_failover`` is session-wide)."""

    CONTENTS_MODIFIED = "contents_modified"
    CHILD_ADDED = "child_added"
    CHILD_REMOVED = "child_removed"
    CHILD_MODIFIED = "child_modified"
    HANDLE_INVALID = "handle_invalid"
    LOCK_ACQUIRED = "lock_acquired"
    CONFLICTING_LOCK = "conflicting_lock"
    MASTER_FAILOVER = "master_failover"

    @property
    def bit(self) -> int:
        """This event's bit in a handle's event mask."""
        return _EVENT_BITS[self]


_EVENT_BITS: dict[EventType, int] = {event: 1 << i for i, event in enumerate(EventType)}


class SessionEndReason(enum.StrEnum):
    """Why a session ended (kept in its tombstone)."""

    CLOSED = "closed"
    EXPIRED = "expired"


def event_mask(events: tuple[EventType, ...]) -> int:
    """The bit mask of ``events``."""
    mask = 0
    for event in events:
        mask |= event.bit
    return mask


def events_of_mask(mask: int) -> tuple[EventType, ...]:
    """The events whose bits are set in ``mask``, in declaration order."""
    return tuple(event for event in EventType if mask & event.bit)


def parse_lock_mode(text: object) -> LockMode:
    """Parse an API lock mode; raises ``invalid_argument`` for anything else."""
    if isinstance(text, str):
        try:
            return LockMode(text)
        except ValueError:
            pass
    raise CellError(ErrorCode.INVALID_ARGUMENT, f"lock mode must be exclusive or shared: {text!r}")


def parse_node_kind(text: object) -> NodeKind:
    """Parse an API node kind; raises ``invalid_argument`` for anything else."""
    if isinstance(text, str):
        try:
            return NodeKind(text)
        except ValueError:
            pass
    raise CellError(ErrorCode.INVALID_ARGUMENT, f"kind must be file or dir: {text!r}")


def parse_event_type(text: object) -> EventType:
    """Parse an API event name; raises ``invalid_argument`` for an unknown one."""
    if isinstance(text, str):
        try:
            return EventType(text)
        except ValueError:
            pass
    raise CellError(ErrorCode.INVALID_ARGUMENT, f"unknown event type {text!r}")
