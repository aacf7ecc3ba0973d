"""Test harness: drives a CellState through encoded commands with a clock and fresh ids."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lockcell.statemachine import (
    Acquire,
    ApplyResult,
    CellState,
    Command,
    CreateSession,
    CreateSpec,
    ErrorCode,
    EventType,
    Failure,
    LockMode,
    NodeKind,
    Open,
    decode_command,
)

CELL = "test"
ROOT = f"/ls/{CELL}"


def session_id(number: int) -> str:
    """A well-formed session id (32 characters)."""
    return f"s{number:031d}"


def handle_id(number: int) -> str:
    """A well-formed handle id (32 characters)."""
    return f"h{number:031d}"


class Harness:
    """A cell plus a log index, a leader clock and id counters."""

    def __init__(self, state: CellState | None = None, **config: Any) -> None:
        self.state = state if state is not None else CellState(CELL, **config)
        self.index = 0
        self.now = 1_000_000
        self._sessions = 0
        self._handles = 0
        self.results: list[ApplyResult] = []

    def restored(self) -> Harness:
        """A harness on a restored copy of this cell, continuing its clock and ids."""
        copy = Harness(state=CellState.restore(self.state.snapshot()))
        copy.index, copy.now = self.index, self.now
        copy._sessions, copy._handles = self._sessions, self._handles
        return copy

    # -- raw application ------------------------------------------------------------------

    def apply(self, command: Command) -> ApplyResult:
        """Encode, check the codec round trip, and apply ``command`` as the next log entry."""
        encoded = command.encode()
        assert decode_command(encoded) == command
        self.index += 1
        result = self.state.apply(self.index, encoded)
        assert result.index == self.index
        self.results.append(result)
        return result

    def ok(self, command: Command) -> dict[str, Any]:
        """Apply ``command`` and return its value, failing the test on an error."""
        result = self.apply(command)
        assert result.error is None, result.error
        assert result.value is not None
        return result.value

    def fail(self, command: Command, code: ErrorCode) -> Failure:
        """Apply ``command``, expect ``code``, and check that the state did not change."""
        before = self.state.snapshot()
        result = self.apply(command)
        assert result.error is not None, f"expected {code}, got {result.value}"
        assert result.error.code is code, result.error
        assert result.value is None
        assert result.effects == ()
        assert self.state.snapshot() == before
        return result.error

    def advance(self, ms: int) -> None:
        """Move the leader's clock forward."""
        self.now += ms

    # -- conveniences ---------------------------------------------------------------------

    def new_session(self, lease_ms: int | None = None) -> str:
        """Create a session and return its id."""
        self._sessions += 1
        sid = session_id(self._sessions)
        self.ok(CreateSession(now_ms=self.now, session=sid, lease_ms=lease_ms))
        return sid

    def next_handle_id(self) -> str:
        """A fresh handle id."""
        self._handles += 1
        return handle_id(self._handles)

    def open_command(
        self,
        session: str,
        path: str,
        *,
        create: NodeKind | None = None,
        ephemeral: bool = False,
        data: bytes = b"",
        events: tuple[EventType, ...] = (),
        lock_delay_ms: int | None = None,
        request_id: str | None = None,
    ) -> Open:
        """An Open command with a fresh handle id."""
        spec = None if create is None else CreateSpec(kind=create, ephemeral=ephemeral, data=data)
        return Open(
            now_ms=self.now,
            session=session,
            path=path,
            handle=self.next_handle_id(),
            create=spec,
            events=events,
            lock_delay_ms=lock_delay_ms,
            request_id=request_id,
        )

    def open(self, session: str, path: str, **options: Any) -> str:
        """Open ``path`` and return the new handle id."""
        value = self.ok(self.open_command(session, path, **options))
        handle: str = value["handle"]
        return handle

    def acquire(self, session: str, handle: str, mode: LockMode = LockMode.EXCLUSIVE) -> Any:
        """Take a lock, failing the test when it is refused."""
        return self.ok(Acquire(now_ms=self.now, session=session, handle=handle, mode=mode))

    def stamp(self, command: Command) -> Command:
        """``command`` re-stamped with the current time."""
        return replace(command, now_ms=self.now)

    def stat(self, session: str, handle: str) -> dict[str, Any]:
        """The stat of the handle's node."""
        stat: dict[str, Any] = self.state.get_stat(session, handle)["stat"]
        return stat

    def events_of(self, result: ApplyResult) -> list[tuple[str, str, str, str]]:
        """``(session, type, handle, path)`` of every event of ``result``."""
        return [(e.session, e.type.value, e.handle, e.path) for e in result.events]
