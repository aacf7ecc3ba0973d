"""Error codes of the cell's API and the exception that carries one out of the state machine."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class ErrorCode(enum.StrEnum):
    """The error codes of HTTP API v1 (DESIGN.md §4) that the state machine can answer."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    LOCK_BUSY = "lock_busy"
    LOCK_DELAY = "lock_delay"
    SESSION_EXPIRED = "session_expired"
    HANDLE_INVALID = "handle_invalid"
    TOO_LARGE = "too_large"

    @property
    def http_status(self) -> int:
        """The HTTP status the API answers with for this code."""
        return _HTTP_STATUS[self]


_HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.LOCK_BUSY: 409,
    ErrorCode.LOCK_DELAY: 409,
    ErrorCode.SESSION_EXPIRED: 410,
    ErrorCode.HANDLE_INVALID: 410,
    ErrorCode.TOO_LARGE: 413,
}


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a command or query was refused; ``lock_delay_until_ms`` only with ``lock_delay``."""

    code: ErrorCode
    message: str
    lock_delay_until_ms: int | None = None

    @property
    def http_status(self) -> int:
        """The HTTP status of :attr:`code`."""
        return self.code.http_status

    def to_json(self) -> dict[str, Any]:
        """The error body of §4: ``{"error": {"code", "message"[, "lock_delay_until_ms"]}}``."""
        error: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.lock_delay_until_ms is not None:
            error["lock_delay_until_ms"] = self.lock_delay_until_ms
        return {"error": error}


class CellError(Exception):
    """Raised by queries and by command validation; carries a :class:`Failure`."""

    def __init__(
        self, code: ErrorCode, message: str, *, lock_delay_until_ms: int | None = None
    ) -> None:
        super().__init__(f"{code.value}: {message}")
        self.failure = Failure(code, message, lock_delay_until_ms)

    @property
    def code(self) -> ErrorCode:
        """The error code."""
        return self.failure.code
