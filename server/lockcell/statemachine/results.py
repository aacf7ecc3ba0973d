"""What applying a command hands back: the answer or error, the events, and the effects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import Failure
from .values import EventType, LockMode, SessionEndReason

JsonDict = dict[str, Any]
"""A JSON-ready answer body."""


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """An event for one session, to be queued by the leader and sent on KeepAlive.

    For ``child_*`` events ``path`` is the child's path; ``handle`` is the watching handle.
    """

    session: str
    type: EventType
    handle: str
    path: str

    @property
    def event(self) -> JsonDict:
        """The event body of §4 without ``seq`` (the leader numbers events per session)."""
        return {"type": self.type.value, "handle": self.handle, "path": self.path}


# --- effects: what the leader's node layer must react to -----------------------------------


@dataclass(frozen=True, slots=True)
class SessionStarted:
    """A session was created: the leader starts its lease."""

    session: str
    lease_ms: int


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """A session was closed or expired: drop its lease, waiters and event queue."""

    session: str
    reason: SessionEndReason
    handles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HandleClosed:
    """A handle was closed by Close: cancel its queued Acquire."""

    session: str
    handle: str


@dataclass(frozen=True, slots=True)
class LockGranted:
    """A lock was granted (by Acquire or by a grant list)."""

    session: str
    handle: str
    path: str
    instance: int
    mode: LockMode
    lock_generation: int


@dataclass(frozen=True, slots=True)
class GrantSkipped:
    """A grant of a grant list could not be made (the waiter's handle is gone, lock busy…)."""

    session: str
    handle: str
    mode: LockMode
    failure: Failure


@dataclass(frozen=True, slots=True)
class LockReleased:
    """A holder let go of a lock (Release, Close, session end): the next waiter may go."""

    session: str
    handle: str
    path: str
    instance: int
    mode: LockMode
    lock_generation: int
    remaining_holders: int


@dataclass(frozen=True, slots=True)
class LockDelayArmed:
    """An expired session's lock is blocked until ``until_ms`` (then grant to waiters)."""

    path: str
    instance: int
    until_ms: int


@dataclass(frozen=True, slots=True)
class NodeDeleted:
    """A node instance is gone (Delete or ephemeral clean-up): fail its waiters."""

    path: str
    instance: int


Effect = (
    SessionStarted
    | SessionEnded
    | HandleClosed
    | LockGranted
    | GrantSkipped
    | LockReleased
    | LockDelayArmed
    | NodeDeleted
)
"""Any effect."""


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """The outcome of one log entry.

    Exactly one of ``value`` (the JSON-ready answer, shaped like the HTTP answer of §4) and
    ``error`` is set. ``events`` and ``effects`` are in commit order; a refused command can
    still carry events (a denied Acquire tells the holders ``conflicting_lock``).
    ``duplicate`` is true when ``value`` is the remembered answer of an earlier write with the
    same request id (nothing was applied, so there are no events or effects).
    """

    index: int
    value: JsonDict | None = None
    error: Failure | None = None
    events: tuple[SessionEvent, ...] = ()
    effects: tuple[Effect, ...] = ()
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        """Whether the command succeeded."""
        return self.error is None


# --- query answers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A live session as the state machine knows it (the lease deadline is leader memory)."""

    session: str
    lease_ms: int
    created_ms: int
    handles: int


@dataclass(frozen=True, slots=True)
class HandleInfo:
    """Where a handle points and what it holds; ``valid`` is false once it cannot be used."""

    handle: str
    session: str
    path: str
    instance: int
    lock_mode: LockMode | None
    lock_generation: int
    lock_delay_ms: int
    valid: bool


@dataclass(frozen=True, slots=True)
class LockHolder:
    """One holder of a lock."""

    session: str
    handle: str


@dataclass(frozen=True, slots=True)
class LockInfo:
    """The replicated state of one node's lock."""

    path: str
    instance: int
    mode: LockMode | None
    lock_generation: int
    holders: tuple[LockHolder, ...]
    lock_delay_until_ms: int


@dataclass(frozen=True, slots=True)
class CellCounts:
    """Sizes for metrics, all kept incrementally (O(1) to read)."""

    sessions: int
    tombstones: int
    handles: int
    nodes: int
    locks_exclusive: int
    locks_shared: int
    shared_holders: int
