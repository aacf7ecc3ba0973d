"""Typed exceptions of the lockcell client, one per API error code (DESIGN.md §4)."""

from __future__ import annotations

from typing import Any, ClassVar


class LockcellError(Exception):
    """Base of every error the client raises; ``code`` and ``status`` mirror the API answer."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 0

    def __init__(self, message: str = "", *, answer_status: int | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.answer_status = self.status if answer_status is None else answer_status

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgument(LockcellError):
    """400: the request was malformed (bad path, bad field, out-of-range value)."""

    code = "invalid_argument"
    status = 400


class Unauthorized(LockcellError):
    """401: an admin call without the cell's admin token."""

    code = "unauthorized"
    status = 401


class NotFound(LockcellError):
    """404: no such node, parent directory, session or route."""

    code = "not_found"
    status = 404


class Conflict(LockcellError):
    """409: compare-and-set mismatch, non-empty directory, lock not held, wrong kind."""

    code = "conflict"
    status = 409


class LockBusy(Conflict):
    """409: the lock is held by others (or a blocking Acquire's ``wait_ms`` ran out)."""

    code = "lock_busy"


class LockDelay(Conflict):
    """409: the lock is in lock-delay after a holder's session expired."""

    code = "lock_delay"

    def __init__(self, message: str = "", *, until_ms: int = 0,
                 answer_status: int | None = None) -> None:
        super().__init__(message, answer_status=answer_status)
        self.until_ms = until_ms
        """Wall-clock time (ms since the epoch, the cell's clock) when the delay ends."""


class SessionExpired(LockcellError):
    """410: the session expired (or was closed); every handle and lock of it is gone."""

    code = "session_expired"
    status = 410


class HandleInvalid(LockcellError):
    """410: the handle is closed or poisoned, its node was deleted or re-created, or the
    sequencer set on it is stale."""

    code = "handle_invalid"
    status = 410


class TooLarge(LockcellError):
    """413: contents larger than 256 KiB (or an oversized request)."""

    code = "too_large"
    status = 413


class Unavailable(LockcellError):
    """503, or no member reachable: no quorum or no leader yet; retried automatically."""

    code = "unavailable"
    status = 503


class LockLost(LockcellError):
    """Client-side: a lock may have been lost (jeopardy, expiry, node deleted); work done
    under it may have overlapped with another holder's."""

    code = "lock_lost"
    status = 0


ERRORS_BY_CODE: dict[str, type[LockcellError]] = {
    cls.code: cls
    for cls in (InvalidArgument, Unauthorized, NotFound, Conflict, LockBusy, LockDelay,
                SessionExpired, HandleInvalid, TooLarge, Unavailable)
}
"""API error code → exception class."""

_BY_STATUS: dict[int, type[LockcellError]] = {
    400: InvalidArgument, 401: Unauthorized, 404: NotFound, 405: InvalidArgument,
    409: Conflict, 410: SessionExpired, 413: TooLarge, 503: Unavailable,
}


def error_from_answer(status: int, body: Any) -> LockcellError:
    """The typed exception for an error answer (``{"error": {"code", "message"}}``).

    An unknown code falls back on the HTTP status; a body that is not the documented
    error shape still gives a useful message.
    """
    code = ""
    message = ""
    until = 0
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code", ""))
        message = str(error.get("message", ""))
        raw_until = error.get("lock_delay_until_ms")
        if isinstance(raw_until, int) and not isinstance(raw_until, bool):
            until = raw_until
    elif isinstance(body, str):
        message = body.strip()[:500]
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        cls = _BY_STATUS.get(status, LockcellError)
        if not message:
            message = f"HTTP {status}"
        if code:
            message = f"{code}: {message}"
    if cls is LockDelay:
        return LockDelay(message, until_ms=until, answer_status=status)
    return cls(message, answer_status=status)
