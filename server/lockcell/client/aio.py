"""asyncio client on aiohttp: cell (leader discovery, failover), sessions, handles, locks."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import aiohttp

from . import core
from .core import (
    LEADER_HEADER,
    REQUEST_ID_HEADER,
    Answer,
    Child,
    ClusterView,
    Contents,
    EndpointSet,
    Event,
    EventNotice,
    EventType,
    Health,
    HealthChange,
    HeldLock,
    LockGrant,
    Notice,
    OpenAnswer,
    Request,
    SessionCore,
    SessionGrant,
    Stat,
)
from .errors import (
    Conflict,
    HandleInvalid,
    LockBusy,
    LockcellError,
    LockDelay,
    LockLost,
    SessionExpired,
    Unavailable,
    error_from_answer,
)

log = logging.getLogger("lockcell.client")

HealthCallback = Callable[[HealthChange], object]
EventCallback = Callable[[Event], object]

_TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)
ACQUIRE_CHUNK_MS = 60_000
"""A blocking Acquire without a bound waits in calls of at most this long."""


def lease_clock() -> float:
    """The clock of local leases: ``CLOCK_BOOTTIME`` where there is one (it keeps
    counting while the machine is suspended, unlike ``CLOCK_MONOTONIC`` on Linux), else
    the monotonic clock."""
    return time.clock_gettime(_LEASE_CLOCK) if _LEASE_CLOCK is not None else time.monotonic()


_LEASE_CLOCK: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _maybe_await(result: object) -> None:
    if inspect.isawaitable(result):
        await result


class AsyncCell:
    """A lockcell cell, reached over HTTP: finds the leader and fails over.

    ``endpoints`` is a list of member URLs or comma-separated text; ``None`` means
    ``LOCKCELL_ENDPOINTS`` or the three local default ports. Calls that fail with a
    connection error, a timeout or 503 are retried on other members with backoff for up
    to ``retry_for`` seconds; writes carry one ``X-Request-Id`` across their retries, so
    the cell applies them once. The first attempt may take ``request_timeout`` seconds
    (plus any ``wait_ms``); retries only ``retry_timeout``, so a member stuck forwarding to
    a dead leader does not hold a call up.
    """

    def __init__(self, endpoints: str | Sequence[str] | None = None, *,
                 admin_token: str | None = None, request_timeout: float = 10.0,
                 retry_timeout: float = 2.0, connect_timeout: float = 2.0,
                 retry_for: float = 30.0, rng: random.Random | None = None) -> None:
        self.endpoints = EndpointSet(core.resolve_endpoints(endpoints, os.environ))
        self.admin_token = admin_token
        self.request_timeout = request_timeout
        self.retry_timeout = min(retry_timeout, request_timeout)
        self.connect_timeout = connect_timeout
        self.retry_for = retry_for
        self.rng = rng or random.Random()
        self._http: aiohttp.ClientSession | None = None
        self._sessions: set[AsyncSession] = set()
        self._last_discovery = 0.0
        self._discovery_answered = False
        self._closed = False

    async def __aenter__(self) -> AsyncCell:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self, session_timeout: float = 10.0) -> None:
        """Close every session opened through this cell (giving up on each after
        ``session_timeout`` seconds), then the HTTP connections."""
        if self._closed:
            return
        for session in list(self._sessions):
            with contextlib.suppress(LockcellError):
                await session.close(session_timeout)
        self._closed = True
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            connector = aiohttp.TCPConnector(limit=0, force_close=False)
            self._http = aiohttp.ClientSession(connector=connector)
        return self._http

    # -------------------------------------------------------------- one attempt

    async def send(self, url: str, request: Request, *, timeout: float,
                   request_id: str | None = None) -> Answer:
        """One HTTP attempt (no retries). Raises transport errors as they come."""
        headers = {"Content-Type": "application/json"}
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id
        if request.admin and self.admin_token:
            headers["Authorization"] = f"Bearer {self.admin_token}"
        client_timeout = aiohttp.ClientTimeout(total=timeout,
                                               sock_connect=min(timeout, self.connect_timeout))
        async with self._client().request(request.method, url + request.target,
                                          data=request.encoded_body(), headers=headers,
                                          timeout=client_timeout) as response:
            raw = await response.read()
            return Answer(response.status, core.decode_body(raw),
                          response.headers.get(LEADER_HEADER))

    # -------------------------------------------------------------- with retries

    async def call(self, request: Request | Callable[[], Request], *,
                   retry_for: float | None = None,
                   guard: Callable[[], None] | None = None,
                   request_id: str | None = None) -> Any:
        """Send ``request`` to the leader, retrying elsewhere on connection errors,
        timeouts and 503; returns the answer's body or raises the typed error.

        ``request`` may be a factory (called per attempt, e.g. to shrink ``wait_ms``).
        ``guard`` runs before every attempt and may raise to stop retrying.
        """
        if self._closed:
            raise Unavailable("the cell client is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.retry_for if retry_for is None else retry_for)
        first = request() if callable(request) else request
        if first.write and request_id is None:
            request_id = uuid.uuid4().hex
        attempt = 0
        while True:
            if guard is not None:
                guard()
            current = first if attempt == 0 or not callable(request) else request()
            healthy = attempt == 0 and self.endpoints.failures_in_a_row == 0
            base = self.request_timeout if healthy else self.retry_timeout
            timeout = base + current.wait_ms / 1000.0
            url = await self.target()
            error: LockcellError
            answered = url is None and self._discovery_answered
            if url is None:
                error = Unavailable("no member knows a live leader yet")
            else:
                try:
                    answer = await self.send(url, current, timeout=timeout,
                                             request_id=request_id if current.write else None)
                except _TRANSPORT_ERRORS as exc:
                    self.endpoints.failed(url)
                    error = Unavailable(f"{url}: {_describe(exc)}")
                else:
                    if not core.is_retryable(answer.status):
                        self.endpoints.succeeded(url)
                        self.endpoints.note_leader(answer.leader, time.monotonic())
                        return core.check_answer(current, answer)
                    self.endpoints.failed(url, answer.leader)
                    error = error_from_answer(answer.status, answer.body)
                    answered = True
            attempt += 1
            log.debug("%s %s: attempt %d via %s failed: %s", current.method, current.path,
                      attempt, url, error)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise error
            await asyncio.sleep(min(remaining, core.retry_delay(attempt, self.rng,
                                                                cell_answered=answered)))

    async def discover(self, *, quiet: bool = False) -> ClusterView | None:
        """Ask every known member for ``GET /v1/cluster`` (at once); learn the members and
        the leader to trust. Returns the view naming that leader (or any view)."""
        views = await self._ask_members()
        if not views:
            if quiet:
                return None
            raise Unavailable("no member answered GET /v1/cluster")
        leader = core.choose_leader(views, self.endpoints.failed_lately)
        self.endpoints.revive(url for url, _ in views)
        for _, view in views:
            self.endpoints.learn(m.url for m in view.members)
        if leader is not None:
            self.endpoints.note_leader(leader, time.monotonic())
            for _, view in views:
                if view.leader_url and core.normalize_endpoint(view.leader_url) == leader:
                    return view
        return views[0][1]

    async def _ask_members(self) -> list[tuple[str, ClusterView]]:
        timeout = min(1.0, self.request_timeout)

        async def ask(url: str) -> tuple[str, ClusterView] | None:
            try:
                answer = await self.send(url, core.req_cluster(), timeout=timeout)
                if answer.status == 200:
                    return url, ClusterView.from_json(answer.body)
            except (*_TRANSPORT_ERRORS, LockcellError):
                pass
            return None

        answers = await asyncio.gather(*(ask(url) for url in list(self.endpoints.urls)))
        return [a for a in answers if a is not None]

    async def target(self) -> str | None:
        """The member to send the next call to. After failures (a leader may have died)
        members are asked who leads, so calls do not go to a member still forwarding to
        a dead leader; ``None`` means members answer but none names a live leader yet."""
        endpoints = self.endpoints
        if endpoints.leader is not None or endpoints.failures_in_a_row == 0:
            return endpoints.current()
        now = time.monotonic()
        if now - self._last_discovery >= 0.2:
            self._last_discovery = now
            views = await self._ask_members()
            self._discovery_answered = bool(views)
            if views:
                leader = core.choose_leader(views, endpoints.failed_lately)
                endpoints.revive(url for url, _ in views)
                for _, view in views:
                    endpoints.learn(m.url for m in view.members)
                if leader is not None:
                    endpoints.note_leader(leader, now)
                    return leader
                relay = core.choose_relay(views, endpoints.failed_lately)
                if relay is not None:  # cut off from the leader alone: go through a member
                    endpoints.relay_through(*relay, now)
                    return relay[0]
        if self._discovery_answered and endpoints.leader is None:
            return None
        return endpoints.current()

    # -------------------------------------------------------------- sessions

    async def session(self, *, lease_ms: int | None = None, grace_ms: int | None = None,
                      drift: float = core.DEFAULT_DRIFT,
                      on_jeopardy: HealthCallback | None = None,
                      on_safe: HealthCallback | None = None,
                      on_expired: HealthCallback | None = None,
                      on_event: EventCallback | None = None) -> AsyncSession:
        """CreateSession and start its KeepAlive loop.

        ``grace_ms`` overrides the grace period the cell announces; ``drift`` is the
        clock-rate allowance ε of the local lease.
        """
        sent = lease_clock()
        body = await self.call(core.req_create_session(lease_ms))
        grant = core.parse_session_grant(body)
        session = AsyncSession(self, grant, sent, drift=drift, grace_ms=grace_ms)
        for callback, registry in ((on_jeopardy, session.on_jeopardy),
                                   (on_safe, session.on_safe), (on_expired, session.on_expired)):
            if callback is not None:
                registry(callback)
        if on_event is not None:
            session.on_event(on_event)
        self._sessions.add(session)
        session.start()
        return session

    def _forget(self, session: AsyncSession) -> None:
        self._sessions.discard(session)

    # -------------------------------------------------------------- cell-wide calls

    async def check_sequencer(self, sequencer: str) -> bool:
        """CheckSequencer: whether ``sequencer`` is current."""
        body = await self.call(core.req_check_sequencer(sequencer))
        return bool(isinstance(body, dict) and body.get("valid"))

    async def cluster(self) -> ClusterView:
        """The leader's view of the cell (``GET /v1/cluster``; a member that does not lead
        answers with its own view, so the leader is asked next when it is known)."""
        view = ClusterView.from_json(await self.call(core.req_cluster()))
        if view.self_id is None or view.self_id == view.leader or not view.leader_url:
            return view
        try:
            answer = await self.send(core.normalize_endpoint(view.leader_url),
                                     core.req_cluster(), timeout=self.retry_timeout)
        except _TRANSPORT_ERRORS:
            return view
        if answer.status != 200:
            return view
        return ClusterView.from_json(answer.body)

    async def add_member(self, member_id: str, url: str, peer_url: str) -> ClusterView:
        """Add a learner (admin token required)."""
        return ClusterView.from_json(await self.call(core.req_add_member(member_id, url,
                                                                         peer_url)))

    async def promote_member(self, member_id: str) -> ClusterView:
        """Promote a learner to voter (admin token required)."""
        return ClusterView.from_json(await self.call(core.req_promote_member(member_id)))

    async def remove_member(self, member_id: str) -> ClusterView:
        """Remove a member (admin token required)."""
        return ClusterView.from_json(await self.call(core.req_remove_member(member_id)))

    async def transfer_leader(self, to: str | None = None) -> ClusterView:
        """Move leadership to ``to`` (or the most caught-up voter; admin token required)."""
        return ClusterView.from_json(await self.call(core.req_transfer_leader(to)))


class _Subscriber:
    """An event queue behind an async iterator."""

    def __init__(self, accept: Callable[[Event], bool]) -> None:
        self.accept = accept
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()


class AsyncSession:
    """A session: KeepAlive loop, local lease and health, events, handles and locks.

    Health goes safe → jeopardy (local lease ran out; every member is tried) → safe (a
    KeepAlive got through) or → expired (the grace period ran out, or the cell said so).
    Callbacks run in order on the event loop; they may be coroutine functions.
    """

    def __init__(self, cell: AsyncCell, grant: SessionGrant, sent_at: float, *,
                 drift: float = core.DEFAULT_DRIFT, grace_ms: int | None = None) -> None:
        self.cell = cell
        self.core = SessionCore(grant, sent_at, clock=lease_clock, drift=drift,
                                grace_ms=grace_ms)
        self._handles: dict[str, AsyncHandle] = {}
        self._health_callbacks: dict[Health, list[HealthCallback]] = {
            Health.JEOPARDY: [], Health.SAFE: [], Health.EXPIRED: [], Health.CLOSED: []}
        self._event_callbacks: list[EventCallback] = []
        self._subscribers: list[_Subscriber] = []
        self._notices: asyncio.Queue[Notice | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._inflight_poll: asyncio.Future[Answer] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._ended = asyncio.Event()

    @property
    def id(self) -> str:
        """The session id."""
        return self.core.session_id

    @property
    def health(self) -> Health:
        """Current health (time-based transitions are applied on read)."""
        self._emit(self.core.poll(lease_clock()))
        return self.core.health

    @property
    def lease_ms(self) -> int:
        """The lease length the cell granted."""
        return self.core.lease_ms

    @property
    def grace_ms(self) -> int:
        """The grace period after jeopardy before the session counts as expired."""
        return self.core.grace_ms

    def __repr__(self) -> str:
        return f"<AsyncSession {self.id[:8]} {self.core.health}>"

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # -------------------------------------------------------------- callbacks

    def on_jeopardy(self, callback: HealthCallback) -> None:
        """Call ``callback(change)`` when the local lease runs out."""
        self._health_callbacks[Health.JEOPARDY].append(callback)

    def on_safe(self, callback: HealthCallback) -> None:
        """Call ``callback(change)`` when a KeepAlive gets through after jeopardy."""
        self._health_callbacks[Health.SAFE].append(callback)

    def on_expired(self, callback: HealthCallback) -> None:
        """Call ``callback(change)`` when the session is expired (grace over, or the cell
        said so)."""
        self._health_callbacks[Health.EXPIRED].append(callback)

    def on_closed(self, callback: HealthCallback) -> None:
        """Call ``callback(change)`` when the session was closed by this client."""
        self._health_callbacks[Health.CLOSED].append(callback)

    def on_event(self, callback: EventCallback) -> None:
        """Call ``callback(event)`` for every event of the session."""
        self._event_callbacks.append(callback)

    def remove_callback(self, callback: Callable[..., object]) -> None:
        """Forget ``callback`` wherever it was registered."""
        registries: list[list[Any]] = [*self._health_callbacks.values(),
                                        self._event_callbacks]
        for registry in registries:
            while callback in registry:
                registry.remove(callback)

    def events(self) -> AsyncIterator[Event]:
        """Every event from now on, until the session ends."""
        return self._subscribe(lambda event: True)

    def _subscribe(self, accept: Callable[[Event], bool]) -> AsyncIterator[Event]:
        subscriber = _Subscriber(accept)
        self._subscribers.append(subscriber)
        if not self.core.alive:
            subscriber.queue.put_nowait(None)

        async def iterate() -> AsyncIterator[Event]:
            try:
                while True:
                    event = await subscriber.queue.get()
                    if event is None:
                        return
                    yield event
            finally:
                with contextlib.suppress(ValueError):
                    self._subscribers.remove(subscriber)

        return iterate()

    # -------------------------------------------------------------- notices

    def _emit(self, notices: list[Notice]) -> None:
        for notice in notices:
            if (isinstance(notice, HealthChange) and notice.new is Health.JEOPARDY
                    and self._inflight_poll is not None and not self._inflight_poll.done()):
                self._inflight_poll.cancel()  # switch to probing every member
            if isinstance(notice, EventNotice):
                if notice.event.type == EventType.MASTER_FAILOVER and self.core.locks:
                    self._spawn(self._verify_locks())
                for subscriber in self._subscribers:
                    if subscriber.accept(notice.event):
                        subscriber.queue.put_nowait(notice.event)
            self._notices.put_nowait(notice)
            if isinstance(notice, HealthChange) and notice.new in (Health.EXPIRED,
                                                                   Health.CLOSED):
                for subscriber in self._subscribers:
                    subscriber.queue.put_nowait(None)
                self._wake.set()
                if notice.new is Health.EXPIRED:
                    self._spawn(self._after_expiry())

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _dispatch_forever(self) -> None:
        while True:
            notice = await self._notices.get()
            if notice is None:
                return
            try:
                if isinstance(notice, HealthChange):
                    log.info("session %s: %s -> %s (%s)", self.id[:8], notice.old.value,
                             notice.new.value, notice.reason)
                    for callback in list(self._health_callbacks[notice.new]):
                        await _maybe_await(callback(notice))
                elif isinstance(notice, EventNotice):
                    handle = self._handles.get(notice.event.handle)
                    targets: list[EventCallback] = []
                    if handle is not None:
                        targets.extend(handle._callbacks)
                    elif notice.event.type == EventType.MASTER_FAILOVER:
                        for each in list(self._handles.values()):
                            targets.extend(each._callbacks)
                    targets.extend(self._event_callbacks)
                    for target in targets:
                        await _maybe_await(target(notice.event))
                else:
                    log.warning("session %s: lock on %s generation %d lost: %s", self.id[:8],
                                notice.lock.path, notice.lock.lock_generation, notice.reason)
            except Exception:  # a user callback failed: log it, keep the session going
                log.exception("session %s: callback failed", self.id[:8])

    # -------------------------------------------------------------- background loops

    def start(self) -> None:
        """Start the KeepAlive, watchdog and dispatch tasks (done by ``cell.session()``)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keepalive_forever()),
                       loop.create_task(self._watch_lease_forever()),
                       loop.create_task(self._dispatch_forever())]

    async def _watch_lease_forever(self) -> None:
        while self.core.alive:
            now = lease_clock()
            self._emit(self.core.poll(now))
            wake = self.core.next_wakeup()
            if wake is None:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.001, wake - now + 0.001)):
                    await self._wake.wait()

    async def _keepalive_forever(self) -> None:
        endpoints = self.cell.endpoints
        failures = 0
        while True:
            now = lease_clock()
            self._emit(self.core.poll(now))
            if not self.core.alive:
                return
            plan = self.core.keepalive_plan(now)
            target = await self.cell.target()
            if target is None:  # members answer, none names a live leader: wait a bit
                failures += 1
                self._emit(self.core.on_keepalive_failure(lease_clock()))
                await self._pause(core.backoff_delay(failures, self.cell.rng, cap=0.5))
                continue
            url = target
            sent = lease_clock()
            attempt: asyncio.Future[Answer] = asyncio.ensure_future(self.cell.send(
                url, core.req_keepalive(self.id, plan.wait_ms, plan.ack), timeout=plan.timeout))
            if plan.wait_ms > 0:
                self._inflight_poll = attempt
            try:
                await asyncio.wait({attempt})
            finally:
                self._inflight_poll = None
                if not attempt.done():
                    attempt.cancel()
            now = lease_clock()
            answer: Answer | None = None
            if not attempt.cancelled() and attempt.exception() is None:
                answer = attempt.result()
            if answer is not None and answer.status == 200:
                try:
                    parsed = core.KeepAliveAnswer.from_json(answer.body)
                except LockcellError:
                    parsed = None
                if parsed is not None:
                    failures = 0
                    endpoints.succeeded(url)
                    endpoints.note_leader(answer.leader, time.monotonic())
                    self._emit(self.core.on_keepalive(sent, now, parsed, answer.leader))
                    self._wake.set()
                    continue
            if answer is not None and answer.status in (404, 410):
                error = error_from_answer(answer.status, answer.body)
                self._emit(self.core.on_session_gone(now, f"the cell said: {error}"))
                return
            failures += 1
            endpoints.failed(url, answer.leader if answer is not None else None)
            self._emit(self.core.on_keepalive_failure(now))
            if self.core.alive and not attempt.cancelled():
                cap = 0.5 if self.core.health is Health.JEOPARDY else 1.0
                await self._pause(core.backoff_delay(failures, self.cell.rng, cap=cap))

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._ended.wait()

    async def _verify_locks(self) -> None:
        """After a master failover: are the locks still ours under the same grant?"""
        for lock in list(self.core.locks):
            try:
                body = await self.cell.call(core.req_get_sequencer(self.id, lock.handle),
                                            retry_for=min(5.0, self.grace_ms / 1000.0),
                                            guard=self._guard)
                grant = core.parse_lock_grant(body)
            except (HandleInvalid, Conflict, SessionExpired) as exc:
                self._emit(self.core.lose(lock, f"not held after a master failover ({exc})"))
                continue
            except LockcellError:
                continue
            if grant.sequencer != lock.sequencer:
                self._emit(self.core.lose(lock, "a different grant after a master failover"))

    async def _after_expiry(self) -> None:
        """Expired by the client's clock: the user was told every lock is lost. Tell the
        cell too (best effort, for a while) so the locks go now rather than after the
        cell's own expiry and lock-delay."""
        self._ended.set()
        patience = max(10.0, 2 * self.lease_ms / 1000.0)
        with contextlib.suppress(LockcellError, *_TRANSPORT_ERRORS):
            await self.cell.call(core.req_close_session(self.id), retry_for=patience)
        await self._shutdown()

    async def _shutdown(self) -> None:
        """Stop the background tasks (after the dispatcher delivered what is queued)."""
        self._ended.set()
        self._notices.put_nowait(None)
        current = asyncio.current_task()
        dispatcher = self._tasks[-1] if self._tasks else None
        for task in [*self._tasks, *self._background]:
            if task is not current and task is not dispatcher and not task.done():
                task.cancel()
        if dispatcher is not None and dispatcher is not current:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.shield(dispatcher)
        self.cell._forget(self)

    # -------------------------------------------------------------- calls

    def _guard(self) -> None:
        health = self.health
        if health is Health.EXPIRED:
            raise SessionExpired(f"session {self.id} expired")
        if health is Health.CLOSED:
            raise SessionExpired(f"session {self.id} is closed")

    async def call(self, request: Request | Callable[[], Request], *,
                   request_id: str | None = None, handle: str | None = None,
                   retry_for: float | None = None) -> Any:
        """A session call with retries; keeps health and locks in step with the answer."""
        if retry_for is None:
            # a session call is worth retrying as long as the session may live
            retry_for = max(self.cell.retry_for, self.grace_ms / 1000.0 + self.lease_ms / 1000.0)
        try:
            return await self.cell.call(request, guard=self._guard, request_id=request_id,
                                        retry_for=retry_for)
        except SessionExpired as exc:
            if self.core.alive:
                self._emit(self.core.on_session_gone(lease_clock(), str(exc)))
            raise
        except HandleInvalid as exc:
            if handle is not None:
                self._emit(self.core.handle_gone(handle, f"handle invalid: {exc.message}"))
            raise

    async def open(self, path: str, *, create: str | None = None, ephemeral: bool = False,
                   data: bytes | None = None, events: Sequence[str] = (),
                   lock_delay_ms: int | None = None,
                   on_event: EventCallback | None = None) -> AsyncHandle:
        """Open ``path`` (``create="file"``/``"dir"`` creates it when missing)."""
        if create not in (None, "file", "dir"):
            raise ValueError("create must be 'file', 'dir' or None")
        body = await self.call(core.req_open(self.id, path, create=create, ephemeral=ephemeral,
                                             data=data, events=events,
                                             lock_delay_ms=lock_delay_ms))
        answer = core.parse_open(body)
        handle = AsyncHandle(self, path, answer)
        if on_event is not None:
            handle.on_event(on_event)
        self._handles[handle.id] = handle
        return handle

    def lock(self, path: str, *, shared: bool = False, wait_ms: int | None = None,
             lock_delay_ms: int | None = None, create: bool = True) -> AsyncLockContext:
        """``async with session.lock(path) as lock:`` — open (creating the file if needed),
        acquire, and on exit release that generation and close the handle. Raises
        :class:`LockLost` on exit if the lock may have been lost meanwhile."""
        return AsyncLockContext(self, path, shared=shared, wait_ms=wait_ms,
                                lock_delay_ms=lock_delay_ms, create=create)

    async def wait_health(self, *wanted: Health, timeout: float | None = None) -> Health:
        """Wait until the health is one of ``wanted``; returns it."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            health = self.health
            if health in wanted:
                return health
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError(f"session still {health.value}")
            await asyncio.sleep(0.02)

    async def close(self, timeout: float = 10.0) -> None:
        """CloseSession: releases every lock (without lock-delay) and closes handles.
        Gives up telling the cell after ``timeout`` seconds (the cell then expires the
        session by itself)."""
        if not self.core.alive:
            await self._shutdown()
            return
        try:
            await self.cell.call(core.req_close_session(self.id),
                                 retry_for=min(self.cell.retry_for, timeout))
        except SessionExpired:
            pass
        finally:
            self._emit(self.core.on_closed())
            await self._shutdown()


class AsyncHandle:
    """An open handle: every API call on one node."""

    def __init__(self, session: AsyncSession, path: str, answer: OpenAnswer) -> None:
        self.session = session
        self.path = path
        self.id = answer.handle
        self.created = answer.created
        self.lock_delay_ms = answer.lock_delay_ms
        self.opened_stat = answer.stat
        self._callbacks: list[EventCallback] = []

    def __repr__(self) -> str:
        return f"<AsyncHandle {self.path} {self.id[:8]}>"

    async def __aenter__(self) -> AsyncHandle:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self.session.core.alive:
            await self.close()

    def on_event(self, callback: EventCallback) -> None:
        """Call ``callback(event)`` for this handle's events and ``master_failover``."""
        self._callbacks.append(callback)

    def events(self) -> AsyncIterator[Event]:
        """This handle's events (and ``master_failover``) from now on."""
        return self.session._subscribe(
            lambda e: e.handle == self.id or e.type == EventType.MASTER_FAILOVER)

    async def _call(self, request: Request | Callable[[], Request], *,
                    request_id: str | None = None) -> Any:
        return await self.session.call(request, request_id=request_id, handle=self.id)

    async def close(self) -> None:
        """Close (releases the handle's lock, cancels its queued Acquire)."""
        await self._call(core.req_close(self.session.id, self.id))
        self.session._handles.pop(self.id, None)
        for lock in list(self.session.core.locks):  # closing released them
            if lock.handle == self.id:
                self.session.core.untrack(lock)

    async def poison(self) -> None:
        """Poison: later calls on the handle fail; it stays open."""
        await self._call(core.req_poison(self.session.id, self.id))

    async def get(self) -> Contents:
        """GetContentsAndStat."""
        return core.parse_contents(await self._call(core.req_get_contents(self.session.id,
                                                                          self.id)))

    async def stat(self) -> Stat:
        """GetStat."""
        body = await self._call(core.req_get_stat(self.session.id, self.id))
        return Stat.from_json(body.get("stat") if isinstance(body, dict) else None)

    async def readdir(self) -> tuple[Child, ...]:
        """ReadDir (sorted by name)."""
        return core.parse_children(await self._call(core.req_read_dir(self.session.id,
                                                                      self.id)))

    async def set(self, data: bytes, *, if_generation: int | None = None) -> Stat:
        """SetContents; with ``if_generation`` only if the content generation matches
        (:class:`Conflict` otherwise)."""
        body = await self._call(core.req_set_contents(self.session.id, self.id, data,
                                                      if_generation))
        return Stat.from_json(body.get("stat") if isinstance(body, dict) else None)

    async def delete(self) -> None:
        """Delete the node."""
        await self._call(core.req_delete(self.session.id, self.id))

    async def acquire(self, *, shared: bool = False, wait_ms: int | None = None) -> AsyncLock:
        """Acquire; ``wait_ms=None`` waits as long as it takes (through lock-delay too),
        otherwise :class:`LockBusy` / :class:`LockDelay` after ``wait_ms``."""
        mode = core.LockMode.SHARED if shared else core.LockMode.EXCLUSIVE
        loop = asyncio.get_running_loop()
        deadline = None if wait_ms is None else loop.time() + wait_ms / 1000.0
        request_id = uuid.uuid4().hex
        while True:
            if deadline is None:
                chunk = ACQUIRE_CHUNK_MS
            else:
                chunk = max(0, int((deadline - loop.time()) * 1000))

            def request(until: float = loop.time() + chunk / 1000.0) -> Request:
                left = max(0, min(core.MAX_WAIT_MS, int((until - loop.time()) * 1000)))
                return core.req_acquire(self.session.id, self.id, mode.value, left)

            try:
                body = await self._call(request, request_id=request_id)
            except LockBusy:
                if deadline is not None and loop.time() >= deadline - 0.001:
                    raise
                continue
            except LockDelay as exc:
                pause = max(0.0, exc.until_ms / 1000.0 - time.time()) + 0.01
                if deadline is not None and loop.time() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                continue
            grant = core.parse_lock_grant(body)
            lock = AsyncLock(self, mode.value, grant)
            self.session.core.track(lock)
            return lock

    async def try_acquire(self, *, shared: bool = False) -> AsyncLock:
        """TryAcquire: :class:`LockBusy` / :class:`LockDelay` at once if not free."""
        return await self.acquire(shared=shared, wait_ms=0)

    async def release(self, generation: int | None = None) -> None:
        """Release (only ``generation``, when given: :class:`Conflict` if that grant is
        not the one held)."""
        await self._call(core.req_release(self.session.id, self.id, generation))
        for lock in list(self.session.core.locks):
            if lock.handle == self.id and (generation is None
                                           or lock.lock_generation == generation):
                self.session.core.untrack(lock)

    async def get_sequencer(self) -> LockGrant:
        """GetSequencer of the lock the handle holds."""
        return core.parse_lock_grant(await self._call(core.req_get_sequencer(self.session.id,
                                                                             self.id)))

    async def set_sequencer(self, sequencer: str | None) -> None:
        """SetSequencer: later calls on the handle fail once ``sequencer`` is stale."""
        await self._call(core.req_set_sequencer(self.session.id, self.id, sequencer))


class AsyncLock(HeldLock):
    """A held lock: sequencer, generation, and whether it may be lost."""

    def __init__(self, handle: AsyncHandle, mode: str, grant: LockGrant) -> None:
        super().__init__(handle.session.core, path=handle.path, handle=handle.id, mode=mode,
                         sequencer=grant.sequencer, lock_generation=grant.lock_generation,
                         lock_delay_ms=handle.lock_delay_ms)
        self.owner = handle
        self.lost_event = asyncio.Event()
        self.add_lost_listener(lambda _lock: self.lost_event.set())

    async def wait_lost(self) -> str:
        """Wait until the lock may be lost; returns why."""
        while True:
            reason = self.lost_reason
            if reason is not None:
                return reason
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await self.lost_event.wait()

    async def release(self) -> None:
        """Release exactly this grant (``?generation=N``). Raises :class:`LockLost` if the
        cell says this grant was not held any more."""
        if self.released:
            return
        reason = self.lost_reason
        try:
            await self.owner.release(self.lock_generation)
        except (Conflict, HandleInvalid, SessionExpired) as exc:
            self.mark_lost(f"release refused: {exc}")
            self.owner.session.core.untrack(self)
            raise LockLost(f"lock on {self.path} (generation {self.lock_generation}) was "
                           f"not held: {exc.message}") from exc
        if reason is not None:
            self.mark_released()


class AsyncLockContext:
    """``async with session.lock(path) as lock`` (see :meth:`AsyncSession.lock`)."""

    def __init__(self, session: AsyncSession, path: str, *, shared: bool,
                 wait_ms: int | None, lock_delay_ms: int | None, create: bool) -> None:
        self.session = session
        self.path = path
        self.shared = shared
        self.wait_ms = wait_ms
        self.lock_delay_ms = lock_delay_ms
        self.create = create
        self.lock: AsyncLock | None = None
        self.handle: AsyncHandle | None = None

    async def __aenter__(self) -> AsyncLock:
        self.handle = await self.session.open(
            self.path, create="file" if self.create else None,
            events=(EventType.HANDLE_INVALID.value,), lock_delay_ms=self.lock_delay_ms)
        try:
            self.lock = await self.handle.acquire(shared=self.shared, wait_ms=self.wait_ms)
        except BaseException:
            with contextlib.suppress(LockcellError, *_TRANSPORT_ERRORS):
                await asyncio.shield(self._close_quietly())
            raise
        return self.lock

    async def _close_quietly(self) -> None:
        if self.handle is not None and self.session.core.alive:
            await self.session.call(core.req_close(self.session.id, self.handle.id),
                                    retry_for=5.0)
            self.session._handles.pop(self.handle.id, None)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await finish_lock(self.lock, self.handle, exc)


async def finish_lock(lock: AsyncLock | None, handle: AsyncHandle | None,
                      exc: BaseException | None) -> None:
    """Leave a lock block: release the grant, close the handle, report a loss."""
    if lock is None or handle is None:
        return
    reason = lock.lost_reason
    session = handle.session
    if session.core.alive:
        try:
            await lock.release()
        except LockLost as lost:
            reason = reason or lost.message
        except LockcellError as error:
            log.warning("releasing %s failed: %s", lock.path, error)
        with contextlib.suppress(LockcellError):
            await handle.close()
    else:
        session.core.untrack(lock)
    if reason is not None:
        message = (f"lock on {lock.path} (generation {lock.lock_generation}) may have been "
                   f"lost while held: {reason}")
        if exc is None:
            raise LockLost(message)
        exc.add_note(message)
