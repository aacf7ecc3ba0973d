"""Session checks shared by the KeepAlive workloads: expiries counted by the servers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence

from bench.api import TRANSPORT_ERRORS, Api, ApiError
from bench.clients import bounded


async def final_check(api: Api, sessions: Sequence[str]) -> int:
    """One more non-blocking KeepAlive per session; how many failed (lost sessions)."""
    async def alive(session: str) -> bool:
        for _ in range(3):
            try:
                await api.keepalive(session, wait_ms=0, timeout=30)
                return True
            except ApiError as exc:
                if exc.status in (404, 410):
                    return False
            except TRANSPORT_ERRORS:
                pass
            await asyncio.sleep(0.5)
        return False

    answers = await bounded(64, [functools.partial(alive, s) for s in sessions])
    return sum(1 for a in answers if not a)


async def close_sessions(api: Api, sessions: Sequence[str]) -> None:
    """Close every session (errors ignored)."""
    async def close(session: str) -> None:
        with contextlib.suppress(ApiError, *TRANSPORT_ERRORS):
            await api.close_session(session)

    await bounded(64, [functools.partial(close, s) for s in sessions])
