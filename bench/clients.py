"""Benchmark clients: one session each, kept alive in the background by long polls."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from bench.api import TRANSPORT_ERRORS, Api, ApiError, last_seq

WORKER_LEASE_MS = 60000
T = TypeVar("T")


class Client:
    """A session with its handles; a background long poll renews its lease."""

    def __init__(self, api: Api, session: str) -> None:
        self.api = api
        self.session = session
        self.handles: list[str] = []
        self._keeper: asyncio.Task[None] | None = None

    @classmethod
    async def create(cls, api: Api, lease_ms: int = WORKER_LEASE_MS) -> Client:
        """A new session, kept alive until :meth:`close`."""
        client = cls(api, await retried(lambda: api.create_session(lease_ms)))
        client._keeper = asyncio.create_task(client._keep_alive(lease_ms))
        return client

    async def _keep_alive(self, lease_ms: int) -> None:
        ack = 0
        target = self.api
        while True:
            try:
                answer = await target.keepalive(self.session, wait_ms=lease_ms,
                                                timeout=lease_ms / 1000 + 30, ack=ack)
                ack = last_seq(answer, ack)
            except ApiError as exc:
                if exc.status in (404, 410):
                    return
                target = target.follow(exc)
                await asyncio.sleep(0.2)
            except TRANSPORT_ERRORS:
                await asyncio.sleep(0.2)

    async def open(self, path: str, kind: str = "file") -> str:
        """Open (creating) ``path``; the handle is also kept in :attr:`handles`."""
        handle = await self.api.open(self.session, path, kind)
        self.handles.append(handle)
        return handle

    async def close(self) -> None:
        """Stop renewing and close the session."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        with contextlib.suppress(ApiError, *TRANSPORT_ERRORS):
            await self.api.close_session(self.session)


async def ensure_dir(api: Api, path: str) -> None:
    """Create the directory ``path`` and its parents below the cell root if missing."""
    session = await retried(api.create_session)
    try:
        parts = path.split("/")
        for depth in range(4, len(parts) + 1):  # /ls/<cell>/... : components from the third
            await retried(functools.partial(api.open, session, "/".join(parts[:depth]), "dir"))
    finally:
        await retried(functools.partial(api.close_session, session))


async def retried(call: Callable[[], Awaitable[T]], tries: int = 480, pause: float = 0.25) -> T:
    """``call()``, again after ``pause`` while it answers 503 or the connection fails.

    Patient (two minutes by default): a cell that is electing a leader is measured, not
    abandoned; how long it was unavailable shows in the latencies and the notes.
    """
    for attempt in range(tries):
        try:
            return await call()
        except ApiError as exc:
            if exc.status != 503 or attempt == tries - 1:
                raise
        except TRANSPORT_ERRORS:
            if attempt == tries - 1:
                raise
        await asyncio.sleep(pause)
    raise AssertionError("unreachable")


async def all_or_none(jobs: Iterable[Awaitable[T]]) -> list[T]:
    """Await every job; if one fails, cancel the others (no strays) and raise its error."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def bounded(limit: int, jobs: Iterable[Callable[[], Awaitable[T]]]) -> list[T]:
    """Run ``jobs`` with at most ``limit`` at once; their results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(job: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await job()

    return await all_or_none(one(job) for job in jobs)


async def make_clients(api: Api, count: int, lease_ms: int = WORKER_LEASE_MS) -> list[Client]:
    """``count`` kept-alive clients of ``api``."""
    return await bounded(64, [lambda: Client.create(api, lease_ms) for _ in range(count)])


async def close_all(clients: Iterable[Client]) -> None:
    """Close every client's session."""
    await bounded(64, [c.close for c in clients])
