"""Blocking client: the asyncio client run on a private event loop in a background thread."""

from __future__ import annotations

import asyncio
import queue
import random
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any, TypeVar

from . import core
from .aio import (
    AsyncCell,
    AsyncHandle,
    AsyncLock,
    AsyncLockContext,
    AsyncSession,
    EventCallback,
    HealthCallback,
    finish_lock,
)
from .core import Child, ClusterView, Contents, Event, Health, HealthChange, LockGrant, Stat

T = TypeVar("T")


class _LoopThread:
    """A private event loop in a daemon thread; blocking calls hop onto it."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a blocking lockcell call from a callback would deadlock; "
                               "hand the work to another thread or use lockcell.client.aio")
        if self.loop.is_closed():
            coro.close()
            raise RuntimeError("the cell client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except (KeyboardInterrupt, FutureTimeout):
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop and join the thread."""
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            if threading.current_thread() is not self.thread:
                self.thread.join(timeout=10)


class Cell:
    """Blocking client of a lockcell cell (see :class:`lockcell.client.aio.AsyncCell` for
    the options). Callbacks run on the client's background thread; they must not make
    blocking calls on this client (hand work to another thread)."""

    def __init__(self, endpoints: str | Sequence[str] | None = None, *,
                 admin_token: str | None = None, request_timeout: float = 10.0,
                 retry_timeout: float = 2.0, connect_timeout: float = 2.0,
                 retry_for: float = 30.0, rng: random.Random | None = None) -> None:
        self._runner = _LoopThread("lockcell-client")
        self.aio = AsyncCell(endpoints, admin_token=admin_token,
                             request_timeout=request_timeout, retry_timeout=retry_timeout,
                             connect_timeout=connect_timeout, retry_for=retry_for, rng=rng)
        self._closed = False

    @property
    def endpoints(self) -> list[str]:
        """Known member URLs."""
        return list(self.aio.endpoints.urls)

    def __enter__(self) -> Cell:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close every session of this client and stop its thread."""
        if self._closed:
            return
        self._closed = True
        try:
            self._runner.run(self.aio.close(), timeout=30)
        finally:
            self._runner.stop()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def session(self, *, lease_ms: int | None = None, grace_ms: int | None = None,
                drift: float = core.DEFAULT_DRIFT, on_jeopardy: HealthCallback | None = None,
                on_safe: HealthCallback | None = None,
                on_expired: HealthCallback | None = None,
                on_event: EventCallback | None = None) -> Session:
        """CreateSession and start its KeepAlive loop (in the background thread)."""
        asession = self._run(self.aio.session(
            lease_ms=lease_ms, grace_ms=grace_ms, drift=drift, on_jeopardy=on_jeopardy,
            on_safe=on_safe, on_expired=on_expired, on_event=on_event))
        return Session(self, asession)

    def check_sequencer(self, sequencer: str) -> bool:
        """CheckSequencer."""
        return self._run(self.aio.check_sequencer(sequencer))

    def cluster(self) -> ClusterView:
        """The leader's view of the cell."""
        return self._run(self.aio.cluster())

    def discover(self) -> ClusterView | None:
        """Learn members and leader from ``GET /v1/cluster``."""
        return self._run(self.aio.discover())

    def add_member(self, member_id: str, url: str, peer_url: str) -> ClusterView:
        """Add a learner (admin)."""
        return self._run(self.aio.add_member(member_id, url, peer_url))

    def promote_member(self, member_id: str) -> ClusterView:
        """Promote a learner (admin)."""
        return self._run(self.aio.promote_member(member_id))

    def remove_member(self, member_id: str) -> ClusterView:
        """Remove a member (admin)."""
        return self._run(self.aio.remove_member(member_id))

    def transfer_leader(self, to: str | None = None) -> ClusterView:
        """Move leadership (admin)."""
        return self._run(self.aio.transfer_leader(to))


class Session:
    """Blocking view of an :class:`AsyncSession` (KeepAlives run in the background)."""

    def __init__(self, cell: Cell, asession: AsyncSession) -> None:
        self.cell = cell
        self.aio = asession

    @property
    def id(self) -> str:
        """The session id."""
        return self.aio.id

    @property
    def health(self) -> Health:
        """Current health."""
        return self.aio.core.health_at(self.aio.core.now())

    @property
    def lease_ms(self) -> int:
        """Granted lease length."""
        return self.aio.lease_ms

    @property
    def grace_ms(self) -> int:
        """Grace period."""
        return self.aio.grace_ms

    def __repr__(self) -> str:
        return f"<Session {self.id[:8]} {self.health}>"

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def on_jeopardy(self, callback: HealthCallback) -> None:
        """Register a jeopardy callback (runs on the background thread)."""
        self.aio.on_jeopardy(callback)

    def on_safe(self, callback: HealthCallback) -> None:
        """Register a safe-again callback."""
        self.aio.on_safe(callback)

    def on_expired(self, callback: HealthCallback) -> None:
        """Register an expiry callback."""
        self.aio.on_expired(callback)

    def on_event(self, callback: EventCallback) -> None:
        """Register a callback for every event of the session."""
        self.aio.on_event(callback)

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Events from now on (subscribed at once); the iterator stops when the session
        ends or ``timeout`` seconds pass without one."""
        inbox: queue.Queue[Event | None] = queue.Queue()

        def on_event(event: Event) -> None:
            inbox.put(event)

        def on_end(change: HealthChange) -> None:
            inbox.put(None)

        self.aio.on_event(on_event)
        self.aio.on_expired(on_end)
        self.aio.on_closed(on_end)
        if not self.aio.core.alive:
            inbox.put(None)
        return self._drain(inbox, timeout, (on_event, on_end))

    def _drain(self, inbox: queue.Queue[Event | None], timeout: float | None,
               callbacks: tuple[Callable[..., object], ...]) -> Iterator[Event]:
        try:
            while True:
                try:
                    item = inbox.get(timeout=timeout)
                except queue.Empty:
                    return
                if item is None:
                    return
                yield item
        finally:
            for callback in callbacks:
                self.aio.remove_callback(callback)

    def wait_health(self, *wanted: Health, timeout: float | None = None) -> Health:
        """Block until the health is one of ``wanted``."""
        return self.cell._run(self.aio.wait_health(*wanted, timeout=timeout))

    def open(self, path: str, *, create: str | None = None, ephemeral: bool = False,
             data: bytes | None = None, events: Sequence[str] = (),
             lock_delay_ms: int | None = None,
             on_event: EventCallback | None = None) -> Handle:
        """Open ``path`` (``create="file"``/``"dir"`` creates it when missing)."""
        ahandle = self.cell._run(self.aio.open(path, create=create, ephemeral=ephemeral,
                                               data=data, events=events,
                                               lock_delay_ms=lock_delay_ms, on_event=on_event))
        return Handle(self, ahandle)

    def lock(self, path: str, *, shared: bool = False, wait_ms: int | None = None,
             lock_delay_ms: int | None = None, create: bool = True) -> LockContext:
        """``with session.lock(path) as lock:`` (see :meth:`AsyncSession.lock`)."""
        return LockContext(self, AsyncLockContext(self.aio, path, shared=shared,
                                                  wait_ms=wait_ms, lock_delay_ms=lock_delay_ms,
                                                  create=create))

    def close(self) -> None:
        """CloseSession."""
        self.cell._run(self.aio.close())


class Handle:
    """Blocking view of an :class:`AsyncHandle`."""

    def __init__(self, session: Session, ahandle: AsyncHandle) -> None:
        self.session = session
        self.aio = ahandle

    @property
    def id(self) -> str:
        """The handle id."""
        return self.aio.id

    @property
    def path(self) -> str:
        """The path it was opened with."""
        return self.aio.path

    @property
    def created(self) -> bool:
        """Whether Open created the node."""
        return self.aio.created

    @property
    def lock_delay_ms(self) -> int:
        """The lock-delay the cell granted at Open."""
        return self.aio.lock_delay_ms

    def __repr__(self) -> str:
        return f"<Handle {self.path} {self.id[:8]}>"

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.session.aio.core.alive:
            self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.session.cell._run(coro)

    def on_event(self, callback: EventCallback) -> None:
        """Call ``callback(event)`` for this handle's events and ``master_failover``."""
        self.aio.on_event(callback)

    def close(self) -> None:
        """Close."""
        self._run(self.aio.close())

    def poison(self) -> None:
        """Poison."""
        self._run(self.aio.poison())

    def get(self) -> Contents:
        """GetContentsAndStat."""
        return self._run(self.aio.get())

    def stat(self) -> Stat:
        """GetStat."""
        return self._run(self.aio.stat())

    def readdir(self) -> tuple[Child, ...]:
        """ReadDir."""
        return self._run(self.aio.readdir())

    def set(self, data: bytes, *, if_generation: int | None = None) -> Stat:
        """SetContents (compare-and-set with ``if_generation``)."""
        return self._run(self.aio.set(data, if_generation=if_generation))

    def delete(self) -> None:
        """Delete the node."""
        self._run(self.aio.delete())

    def acquire(self, *, shared: bool = False, wait_ms: int | None = None) -> Lock:
        """Acquire (``wait_ms=None``: as long as it takes)."""
        async def acquire() -> Lock:
            return Lock(self, await self.aio.acquire(shared=shared, wait_ms=wait_ms))

        return self._run(acquire())

    def try_acquire(self, *, shared: bool = False) -> Lock:
        """TryAcquire."""
        return self.acquire(shared=shared, wait_ms=0)

    def release(self, generation: int | None = None) -> None:
        """Release (only ``generation`` when given)."""
        self._run(self.aio.release(generation))

    def get_sequencer(self) -> LockGrant:
        """GetSequencer."""
        return self._run(self.aio.get_sequencer())

    def set_sequencer(self, sequencer: str | None) -> None:
        """SetSequencer."""
        self._run(self.aio.set_sequencer(sequencer))


class Lock:
    """A held lock (blocking view): ``sequencer``, ``lock_generation``, and ``lost`` /
    ``lost_event`` / :meth:`check` to learn that it may be lost."""

    def __init__(self, handle: Handle, alock: AsyncLock) -> None:
        self.handle = handle
        self.aio = alock
        self.lost_event = threading.Event()
        """Set when the lock is marked lost (``lost`` is exact at any moment)."""
        alock.add_lost_listener(lambda _lock: self.lost_event.set())

    @property
    def path(self) -> str:
        """The lock's path."""
        return self.aio.path

    @property
    def mode(self) -> str:
        """``exclusive`` or ``shared``."""
        return self.aio.mode

    @property
    def sequencer(self) -> str:
        """The fencing token to pass to resource servers."""
        return self.aio.sequencer

    @property
    def lock_generation(self) -> int:
        """The lock generation of this grant."""
        return self.aio.lock_generation

    @property
    def lock_delay_ms(self) -> int:
        """The handle's lock-delay."""
        return self.aio.lock_delay_ms

    @property
    def keeps_through_grace(self) -> bool:
        """Whether the lock may be kept while the session is in jeopardy."""
        return self.aio.keeps_through_grace

    @property
    def lost(self) -> bool:
        """Whether the lock must be considered lost now."""
        return self.aio.lost

    @property
    def lost_reason(self) -> str | None:
        """Why it may be lost, or ``None``."""
        return self.aio.lost_reason

    def check(self) -> None:
        """Raise :class:`LockLost` if the lock may be lost."""
        self.aio.check()

    def wait_lost(self, timeout: float | None = None) -> str | None:
        """Block until the lock may be lost (returns why) or ``timeout`` passes (None)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            reason = self.aio.lost_reason
            if reason is not None:
                return reason
            step = 0.05
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                step = min(step, left)
            self.lost_event.wait(step)

    def release(self) -> None:
        """Release exactly this grant (:class:`LockLost` if it was not held)."""
        self.handle._run(self.aio.release())

    def __repr__(self) -> str:
        return f"<Lock {self.path} {self.mode} generation={self.lock_generation} lost={self.lost}>"


class LockContext:
    """``with session.lock(path) as lock`` (see :meth:`Session.lock`)."""

    def __init__(self, session: Session, actx: AsyncLockContext) -> None:
        self.session = session
        self.aio = actx
        self.lock: Lock | None = None

    def __enter__(self) -> Lock:
        async def enter() -> Lock:
            alock = await self.aio.__aenter__()
            assert self.aio.handle is not None
            return Lock(Handle(self.session, self.aio.handle), alock)

        self.lock = self.session.cell._run(enter())
        return self.lock

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.session.cell._run(finish_lock(self.aio.lock, self.aio.handle, exc))
