"""The cell service: the replicated state plus the leader's memory (leases, events, waiters)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import json
import logging
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from lockcell.node.driver import RaftDriver, Unavailable
from lockcell.raft.types import ConfChange, NodeId, Role
from lockcell.statemachine.cell import CellState
from lockcell.statemachine.commands import (
    Acquire,
    Close,
    CloseSession,
    Command,
    CreateSession,
    ExpireSession,
    Grant,
    GrantLocks,
    Poison,
    Release,
    Tick,
    encode_command,
)
from lockcell.statemachine.errors import CellError, ErrorCode, Failure
from lockcell.statemachine.results import (
    ApplyResult,
    GrantSkipped,
    HandleClosed,
    JsonDict,
    LockDelayArmed,
    LockGranted,
    LockReleased,
    NodeDeleted,
    SessionEnded,
    SessionStarted,
)
from lockcell.statemachine.sequencer import SequencerRef
from lockcell.statemachine.values import EventType, LockMode

log = logging.getLogger("lockcell.cell")

TOMBSTONE_TICK_SECONDS = 60.0
LEASE_WAIT_SECONDS = 1.0
"""How long a KeepAlive waits for a lapsed leader lease before it answers 503."""
MIN_LEASE_MS = 1000
MAX_LEASE_MS = 60000


class CallFailed(Exception):
    """A call answered with a documented API error."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _fail(code: ErrorCode, message: str, **extra: int) -> CallFailed:
    return CallFailed(Failure(code, message, extra.get("lock_delay_until_ms")))


@dataclass(frozen=True, slots=True)
class MemberAddress:
    """Where a member serves clients and peers."""

    url: str
    peer_url: str


@dataclass
class _SessionMemory:
    """Leader memory for one session: lease deadline, event queue, long poll."""

    lease_ms: int
    deadline: float
    events: list[JsonDict] = field(default_factory=list)
    next_seq: int = 1
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    expiring: asyncio.Future[bool] | None = None


@dataclass(eq=False)
class _Waiter:
    """A blocking Acquire queued at the leader (compared by identity)."""

    session: str
    handle: str
    path: str
    mode: LockMode
    future: asyncio.Future[JsonDict]
    wait_ms: int
    granting: bool = False
    queued: bool = True
    """In its lock's queue and the index; cleared when it leaves both."""
    expired: bool = False
    """``wait_ms`` ran out while a grant to it was in the log: that grant decides."""


@dataclass
class _LockQueue:
    waiters: deque[_Waiter] = field(default_factory=deque)
    grant_in_flight: bool = False
    delay_timer: asyncio.TimerHandle | None = None


def _encode_image(image: dict[str, Any]) -> bytes:
    """Snapshot images with orjson: what the json module writes for ASCII text (sorted
    keys, no spaces; other text stays UTF-8), in a tenth of the time: a 1,000,000-file
    image costs its forked child about 4 s instead of 9."""
    return orjson.dumps(image, option=orjson.OPT_SORT_KEYS)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic collection while a snapshot is restored: the image and the state built
    from it are millions of young, acyclic objects for a large cell, which would set off
    repeated full collections that find nothing (a third of the load time at 1,000,000
    files)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class CellService:
    """Serves the Chubby API on top of a :class:`RaftDriver` and a :class:`CellState`.

    Writes become log entries; reads wait for a ReadIndex. KeepAlives, event queues and
    lock waiters are leader memory (DESIGN.md §3): a new leader grants every session a
    fresh lease and a ``master_failover`` event, and waiting clients re-queue.
    """

    def __init__(
        self,
        cell_name: str,
        *,
        default_lease_ms: int = 12000,
        max_lock_delay_ms: int = 60000,
        grace_ms: int = 45000,
        on_members: Callable[[dict[NodeId, MemberAddress]], None] | None = None,
    ) -> None:
        self.cell_name = cell_name
        self.default_lease_ms = default_lease_ms
        self.max_lock_delay_ms = max_lock_delay_ms
        self.grace_ms = grace_ms
        self.state = CellState(cell_name, max_lock_delay_ms=max_lock_delay_ms,
                               default_lease_ms=default_lease_ms, grace_ms=grace_ms)
        self.members: dict[NodeId, MemberAddress] = {}
        self._on_members = on_members
        self.driver: RaftDriver | None = None
        self._sessions: dict[str, _SessionMemory] = {}
        self._expiry_heap: list[tuple[float, str]] = []
        """(lease deadline when queued, session): expiry checks look only at the front."""
        self._lease_back: asyncio.Future[None] | None = None
        """Resolved when the leader lease holds again (KeepAlives wait on it together)."""
        self._queues: dict[str, _LockQueue] = {}
        self._queued: dict[tuple[str, str], deque[_Waiter]] = {}
        """(session, handle) -> its queued Acquires, oldest first: finds the waiter of a
        grant without scanning the queues."""
        self._serving = False
        self._expiry_task: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = {
            "sessions_expired": 0, "keepalives": 0, "events": 0, "lock_delay_blocks": 0,
        }
        self.metrics_hook: Callable[[str, float], None] | None = None
        """Observability: ``keepalive``, ``session_expired``, ``event:<type>``,
        ``lock_delay_block``, ``acquire:<mode>:<result>`` and ``write:<command>`` (seconds)."""

    def _metric(self, name: str, value: float = 1.0) -> None:
        if self.metrics_hook is not None:
            self.metrics_hook(name, value)

    # ------------------------------------------------------------------ wiring

    def attach(self, driver: RaftDriver) -> None:
        """Bind to the driver (after it restored any snapshot into this service)."""
        self.driver = driver

    def start(self) -> None:
        """Start the leader's expiry loop."""
        self._expiry_task = asyncio.get_running_loop().create_task(self._expire_forever())

    async def stop(self) -> None:
        """Stop the expiry loop and answer every waiting call."""
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
        self._drop_leader_memory(Unavailable("member shutting down"))

    @property
    def _driver(self) -> RaftDriver:
        assert self.driver is not None
        return self.driver

    @property
    def serving(self) -> bool:
        """Whether this member leads and has committed in its term (may answer calls)."""
        return self._serving and self._driver.is_leader

    # ------------------------------------------------------------------ Application

    def apply_entry(self, index: int, data: bytes) -> object:
        """Apply one committed command; the leader reacts to its events and effects."""
        result = self.state.apply(index, data)
        if self._serving:
            self._react(result)
        return result

    def apply_conf_change(self, index: int, change: ConfChange) -> None:
        """Track member addresses that ride on membership changes."""
        added: dict[str, Any] = {}
        if change.context:
            with contextlib.suppress(ValueError):
                doc = json.loads(change.context)
                if isinstance(doc, dict):
                    added = doc.get("members", {})
        for member_id, address in added.items():
            if isinstance(address, dict):
                self.members[str(member_id)] = MemberAddress(
                    str(address.get("url", "")), str(address.get("peer_url", ""))
                )
        # A removed voter still votes in the joint configuration, so its address stays
        # known; snapshot images carry only the addresses of the configuration's members.
        if self._on_members is not None:
            self._on_members(dict(self.members))

    def snapshot(self) -> bytes:
        """State-machine image plus the member address book (of current members only).

        Reads and never changes anything: the driver may run it in a forked child."""
        book_members = self.members
        if self.driver is not None:
            current = self.driver.core.conf.members()
            book_members = {m: a for m, a in self.members.items() if m in current}
        book = json.dumps(
            {m: {"url": a.url, "peer_url": a.peer_url} for m, a in sorted(book_members.items())},
            separators=(",", ":"),
        ).encode()
        return struct.pack("<I", len(book)) + book + self.state.snapshot(_encode_image)

    def restore(self, data: bytes) -> None:
        """Adopt a snapshot image written by :meth:`snapshot`."""
        (size,) = struct.unpack_from("<I", data, 0)
        book = json.loads(data[4 : 4 + size])
        with _collector_paused():
            self.state = CellState.restore(data[4 + size :])
        self.members = {
            str(m): MemberAddress(str(a["url"]), str(a["peer_url"])) for m, a in book.items()
        }
        if self._on_members is not None:
            self._on_members(dict(self.members))

    def on_role_change(self, role: Role, leader: NodeId | None, term: int) -> None:
        """Leaving leadership drops leader memory; taking it waits for our no-op."""
        if role is not Role.LEADER:
            self._serving = False
            self._drop_leader_memory(Unavailable("leadership moved", leader))

    def on_applied(self, index: int) -> None:
        """Start serving once the leader's own no-op (and all before it) is applied."""
        driver = self._driver
        if self._serving or not driver.is_leader:
            return
        core = driver.core
        if core.log.term(core.log.committed) != core.term:
            return
        self._serving = True
        self._take_over()

    # ------------------------------------------------------------------ leader memory

    def _take_over(self) -> None:
        """A new leader: fresh full leases and a master_failover event for every session."""
        now = time.monotonic()
        self._sessions = {}
        self._expiry_heap = []
        for info in self.state.live_sessions():
            memory = self._new_memory(info.lease_ms, now + info.lease_ms / 1000.0)
            self._sessions[info.session] = memory
            self._track_expiry(info.session, memory)
            self._queue_event(info.session, {"type": EventType.MASTER_FAILOVER.value,
                                             "handle": "", "path": ""})
        log.info("serving as leader with %d sessions", len(self._sessions))

    def _track_expiry(self, session: str, memory: _SessionMemory) -> None:
        heapq.heappush(self._expiry_heap, (memory.deadline, session))

    def _new_memory(self, lease_ms: int, deadline: float) -> _SessionMemory:
        """Leader memory for a session. Event numbers start above anything an earlier
        leader can have issued (its term was lower), so a client's ``ack`` of an old
        leader's number never drops this leader's events (``master_failover`` first)."""
        return _SessionMemory(lease_ms, deadline, next_seq=(self._driver.core.term << 32) + 1)

    def _drop_leader_memory(self, exc: Exception) -> None:
        for memory in self._sessions.values():
            memory.wake.set()
        self._sessions = {}
        self._expiry_heap = []
        for queue in self._queues.values():
            if queue.delay_timer is not None:
                queue.delay_timer.cancel()
            for waiter in queue.waiters:
                waiter.queued = False
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
        self._queues = {}
        self._queued = {}

    def _queue_event(self, session: str, event: JsonDict) -> None:
        memory = self._sessions.get(session)
        if memory is None:
            return
        event = dict(event, seq=memory.next_seq)
        memory.next_seq += 1
        memory.events.append(event)
        memory.wake.set()
        self.counters["events"] += 1
        self._metric(f"event:{event.get('type')}")

    def _react(self, result: ApplyResult) -> None:
        for event in result.events:
            self._queue_event(event.session, event.event)
        for effect in result.effects:
            if isinstance(effect, SessionStarted):
                started = self._sessions[effect.session] = self._new_memory(
                    effect.lease_ms, time.monotonic() + effect.lease_ms / 1000.0
                )
                self._track_expiry(effect.session, started)
            elif isinstance(effect, SessionEnded):
                memory = self._sessions.pop(effect.session, None)
                if memory is not None:
                    memory.wake.set()
                self._fail_waiters(_fail(ErrorCode.SESSION_EXPIRED, "session ended"),
                                   session=effect.session)
            elif isinstance(effect, HandleClosed):
                self._fail_waiters(_fail(ErrorCode.HANDLE_INVALID, "handle closed"),
                                   handle=effect.handle)
            elif isinstance(effect, NodeDeleted):
                queue = self._queues.pop(effect.path, None)
                if queue is not None:
                    for waiter in queue.waiters:
                        self._unindex(waiter)
                        if not waiter.future.done():
                            waiter.future.set_exception(
                                _fail(ErrorCode.HANDLE_INVALID, "node deleted"))
            elif isinstance(effect, LockGranted):
                self._granted(effect)
            elif isinstance(effect, GrantSkipped):
                self._grant_skipped(effect)
            elif isinstance(effect, (LockReleased, LockDelayArmed)):
                self._schedule_grants(effect.path)

    def _fail_waiters(self, exc: CallFailed, *, session: str | None = None,
                      handle: str | None = None) -> None:
        for path, queue in list(self._queues.items()):
            kept: deque[_Waiter] = deque()
            for waiter in queue.waiters:
                matches = waiter.session == session or waiter.handle == handle
                if matches and not waiter.granting:
                    self._unindex(waiter)
                    if not waiter.future.done():
                        waiter.future.set_exception(exc)
                else:
                    kept.append(waiter)
            queue.waiters = kept
            self._schedule_grants(path)

    # ------------------------------------------------------------------ proposals

    async def _propose(self, command: Command) -> ApplyResult:
        """Append ``command`` (stamped by the leader) and wait for its result."""
        if not self.serving:
            raise Unavailable("not serving", self._driver.leader_id)
        started = time.perf_counter()
        result = await self._driver.propose(lambda stamp: encode_command(command, stamp))
        self._metric(f"write:{type(command).__name__}", time.perf_counter() - started)
        assert isinstance(result, ApplyResult)
        return result

    async def write(self, command: Command) -> JsonDict:
        """Propose a client write; its error becomes :class:`CallFailed`."""
        result = await self._propose(command)
        if result.error is not None:
            raise CallFailed(result.error)
        assert result.value is not None
        return result.value

    async def read(self, query: Callable[[CellState], JsonDict]) -> JsonDict:
        """Run ``query`` on state that reflects every write committed before the call."""
        if not self.serving:
            raise Unavailable("not serving", self._driver.leader_id)
        await self._driver.linearizable_read()
        try:
            return query(self.state)
        except CellError as exc:
            raise CallFailed(exc.failure) from exc

    # ------------------------------------------------------------------ sessions

    def clamp_lease(self, lease_ms: int | None) -> int:
        """The lease a session gets for a requested length."""
        if lease_ms is None:
            return self.default_lease_ms
        return max(MIN_LEASE_MS, min(MAX_LEASE_MS, lease_ms))

    async def create_session(self, lease_ms: int | None, request_id: str | None) -> JsonDict:
        """CreateSession: the leader picks an unguessable id and starts the lease."""
        received = time.monotonic()
        value = await self.write(CreateSession(now_ms=0, session=secrets.token_hex(16),
                                               lease_ms=self.clamp_lease(lease_ms)))
        session = str(value["session"])
        memory = self._sessions.get(session)
        granted = int(value.get("lease_ms", self.clamp_lease(lease_ms)))
        deadline = memory.deadline if memory is not None else received + granted / 1000.0
        return {"session": session, "lease_ms": granted,
                "valid_ms": max(0, int((deadline - received) * 1000)),
                "grace_ms": self.grace_ms}

    def _session_memory(self, session: str) -> _SessionMemory:
        memory = self._sessions.get(session)
        if memory is not None:
            return memory
        try:
            self.state.session_info(session)
        except CellError as exc:
            raise CallFailed(exc.failure) from exc
        raise Unavailable("session not known to this leader yet")

    async def keepalive(self, session: str, wait_ms: int | None, ack: int | None) -> JsonDict:
        """KeepAlive long poll: renews the lease (only under the leader lease) and
        answers early when events are pending or the lease needs renewing."""
        if not self.serving:
            raise Unavailable("not serving", self._driver.leader_id)
        received = time.monotonic()
        memory = self._session_memory(session)
        if memory.expiring is None and received > memory.deadline:
            self._start_expiry(session, memory)  # too late: the lease has run out
        if memory.expiring is not None:
            await asyncio.shield(memory.expiring)
            memory = self._session_memory(session)  # 410 once the expiry applied
        self.counters["keepalives"] += 1
        self._metric("keepalive")
        if ack is not None:
            memory.events = [e for e in memory.events if int(e["seq"]) > ack]
        lease_s = memory.lease_ms / 1000.0
        if not self._driver.holds_lease():
            # Hold the call briefly rather than bounce it: thousands of sessions retrying
            # at once would keep the loop too busy to win the lease back.
            await self._wait_for_lease(min(LEASE_WAIT_SECONDS, lease_s / 4))
            if self._sessions.get(session) is not memory or not self._driver.holds_lease():
                raise Unavailable("leader lease not held; cannot renew")
        memory.deadline = max(memory.deadline, received + lease_s)
        hold = min(max(wait_ms or 0, 0) / 1000.0, lease_s * 0.75)
        if hold > 0 and not memory.events:
            memory.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hold):
                    await memory.wake.wait()
            if self._sessions.get(session) is not memory:
                # the session ended or leadership moved while we held the call
                self._session_memory(session)
                raise Unavailable("leadership moved during keepalive")
        now = time.monotonic()
        if self._driver.holds_lease():
            memory.deadline = max(memory.deadline, now + lease_s)
        return {"lease_ms": memory.lease_ms,
                "valid_ms": max(0, int((memory.deadline - received) * 1000)),
                "events": list(memory.events)}

    async def _wait_for_lease(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the leader lease (checked with the expiry scan)."""
        if self._lease_back is None or self._lease_back.done():
            self._lease_back = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._lease_back)

    async def close_session(self, session: str, request_id: str | None) -> None:
        """CloseSession: releases locks (no lock-delay), closes handles."""
        await self.write(CloseSession(now_ms=0, session=session, request_id=request_id))

    async def _expire_forever(self) -> None:
        last = time.monotonic()
        next_tick = last + TOMBSTONE_TICK_SECONDS
        lapsed_at: float | None = None
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            stalled = now - last > 1.0
            last = now
            lease_back = self._lease_back
            if lease_back is not None and (self._driver.holds_lease() or not self.serving):
                self._lease_back = None
                if not lease_back.done():
                    lease_back.set_result(None)
            if not self.serving:
                lapsed_at = None  # a new term starts with fresh leases
                continue
            if now >= next_tick:
                next_tick = now + TOMBSTONE_TICK_SECONDS
                if self.state.counts().tombstones:
                    # Time enters the state machine only through the log: a Tick lets it
                    # purge session tombstones older than ten minutes on a quiet cell.
                    asyncio.get_running_loop().create_task(self._tick_state())
            if stalled:
                # This process did not run: clients could not renew. Do not punish them.
                for memory in self._sessions.values():
                    memory.deadline = max(memory.deadline, now + memory.lease_ms / 1000.0)
                continue
            if not self._driver.holds_lease():
                # Without the leader lease no KeepAlive can renew: expire nobody meanwhile,
                # and give the time back once the lease holds again.
                if lapsed_at is None:
                    lapsed_at = now
                continue
            if lapsed_at is not None:
                lapse, lapsed_at = now - lapsed_at, None
                for memory in self._sessions.values():
                    memory.deadline += lapse
            # Deadlines only move later, so a session is looked at when the deadline it
            # was queued with passes, and queued again if it has been renewed since.
            heap = self._expiry_heap
            while heap and heap[0][0] < now:
                _, session = heapq.heappop(heap)
                tracked = self._sessions.get(session)
                if tracked is None or tracked.expiring is not None:
                    continue
                if tracked.deadline < now:
                    self._start_expiry(session, tracked)
                else:
                    heapq.heappush(heap, (tracked.deadline, session))

    async def _tick_state(self) -> None:
        with contextlib.suppress(Unavailable):
            await self._propose(Tick(now_ms=0))

    def _start_expiry(self, session: str, memory: _SessionMemory) -> None:
        """Propose ExpireSession; KeepAlives arriving meanwhile wait for its outcome."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        memory.expiring = done

        async def run() -> None:
            expired = False
            try:
                result = await self._propose(ExpireSession(now_ms=0, session=session))
                expired = result.ok
            except Unavailable:
                pass
            finally:
                if expired:
                    self.counters["sessions_expired"] += 1
                    self._metric("session_expired")
                    log.info("session %s expired", session[:8])
                else:
                    memory.expiring = None
                    memory.deadline = time.monotonic() + 1.0  # retry if still serving
                    if self._sessions.get(session) is memory:
                        self._track_expiry(session, memory)
                if not done.done():
                    done.set_result(expired)

        asyncio.get_running_loop().create_task(run())

    # ------------------------------------------------------------------ locks

    async def acquire(self, session: str, handle: str, mode: LockMode, wait_ms: int,
                      request_id: str | None) -> JsonDict:
        """Acquire/TryAcquire (:meth:`_acquire`), timed by outcome for the metrics."""
        started = time.perf_counter()
        outcome = "error"
        try:
            value = await self._acquire(session, handle, mode, wait_ms, request_id)
            outcome = "granted"
            return value
        except CallFailed as exc:
            if exc.failure.code in (ErrorCode.LOCK_BUSY, ErrorCode.LOCK_DELAY):
                outcome = exc.failure.code.value
            raise
        except Unavailable:
            outcome = "unavailable"
            raise
        finally:
            self._metric(f"acquire:{mode.value}:{outcome}", time.perf_counter() - started)

    async def _acquire(self, session: str, handle: str, mode: LockMode, wait_ms: int,
                       request_id: str | None) -> JsonDict:
        """Acquire/TryAcquire: grant now, or queue at the leader for up to ``wait_ms``."""
        deadline = time.monotonic() + wait_ms / 1000.0
        info = self.state.describe_handle(handle)
        queued = (
            info is not None and info.session == session and info.valid
            and info.lock_mode is None and self.waiters_on(info.path) > 0
        )
        if queued:
            # FIFO: earlier waiters go first, so this call neither proposes nor overtakes.
            assert info is not None
            lock = self.state.lock_info(info.path)
            delayed_until = lock.lock_delay_until_ms if lock is not None else 0
            if lock is not None and lock.mode is None and delayed_until > time.time() * 1000:
                failure = Failure(ErrorCode.LOCK_DELAY, "lock-delay after an expired holder",
                                  delayed_until)
            else:
                failure = Failure(ErrorCode.LOCK_BUSY, "lock held, with earlier waiters queued")
        else:
            result = await self._propose(Acquire(now_ms=0, session=session, handle=handle,
                                                 mode=mode, request_id=request_id))
            if result.error is None:
                assert result.value is not None
                return result.value
            failure = result.error
        if failure.code is ErrorCode.LOCK_DELAY:
            self._metric("lock_delay_block")
        if wait_ms <= 0 or failure.code not in (ErrorCode.LOCK_BUSY, ErrorCode.LOCK_DELAY):
            raise CallFailed(failure)
        if failure.code is ErrorCode.LOCK_DELAY:
            self.counters["lock_delay_blocks"] += 1
            until = failure.lock_delay_until_ms or 0
            if until > time.time() * 1000 + wait_ms:
                raise CallFailed(failure)
        info = self.state.describe_handle(handle)
        if info is None or info.session != session:
            raise CallFailed(failure)
        path = info.path
        loop = asyncio.get_running_loop()
        waiter = _Waiter(session, handle, path, mode, loop.create_future(), wait_ms)
        self._queues.setdefault(path, _LockQueue()).waiters.append(waiter)
        self._queued.setdefault((session, handle), deque()).append(waiter)
        self._schedule_grants(path)
        # The grant resolves the waiter's future directly (one loop turn from the commit to
        # this call's answer); a timer ends the wait instead of wait_for's extra hops.
        timer = loop.call_later(max(deadline - time.monotonic(), 0.0), self._wait_ran_out,
                                waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if not waiter.granting:
                self._dequeue(waiter)
            raise
        finally:
            timer.cancel()

    def _wait_ran_out(self, waiter: _Waiter) -> None:
        """``wait_ms`` is over: fail the Acquire, unless a grant to it is in the log."""
        if waiter.future.done():
            return
        if waiter.granting:
            waiter.expired = True
            return
        self._dequeue(waiter)
        waiter.future.set_exception(CallFailed(Failure(
            ErrorCode.LOCK_BUSY, f"lock still held after {waiter.wait_ms} ms")))

    def _dequeue(self, waiter: _Waiter) -> None:
        """Take ``waiter`` out of its lock's queue and the index (if still there)."""
        if not waiter.queued:
            return
        queue = self._queues.get(waiter.path)
        if queue is not None:
            if queue.waiters and queue.waiters[0] is waiter:
                queue.waiters.popleft()
            else:
                with contextlib.suppress(ValueError):
                    queue.waiters.remove(waiter)
        self._unindex(waiter)

    def _unindex(self, waiter: _Waiter) -> None:
        waiter.queued = False
        key = (waiter.session, waiter.handle)
        same = self._queued.get(key)
        if same is None:
            return
        with contextlib.suppress(ValueError):
            same.remove(waiter)
        if not same:
            del self._queued[key]

    def _next_grants(self, path: str) -> list[_Waiter]:
        """The queue heads that may take the lock if it becomes (or is) free."""
        queue = self._queues.get(path)
        if queue is None or not queue.waiters:
            return []
        head = queue.waiters[0]
        if head.mode is LockMode.EXCLUSIVE:
            return [head]
        run: list[_Waiter] = []
        for waiter in queue.waiters:
            if waiter.mode is not LockMode.SHARED:
                break
            if not waiter.future.done():
                run.append(waiter)
        return run

    def _schedule_grants(self, path: str) -> None:
        """If the lock at ``path`` can go to its queue heads now, propose the grant."""
        queue = self._queues.get(path)
        if queue is None or not self.serving:
            return
        # Every way out of the queue dequeues its waiter; one whose call ended while a grant
        # to it was in the log leaves when that grant settles, at the head.
        waiters = queue.waiters
        while waiters and waiters[0].future.done() and not waiters[0].granting:
            self._unindex(waiters.popleft())
        if not queue.waiters:
            if queue.delay_timer is None and not queue.grant_in_flight:
                self._queues.pop(path, None)
            return
        if queue.grant_in_flight:
            return
        lock = self.state.lock_info(path)
        if lock is None:
            return
        now_ms = time.time() * 1000
        if lock.lock_delay_until_ms > now_ms:
            if queue.delay_timer is None:
                delay = (lock.lock_delay_until_ms - now_ms) / 1000.0 + 0.001
                queue.delay_timer = asyncio.get_running_loop().call_later(
                    delay, self._delay_ended, path)
            return
        heads = self._next_grants(path)
        if not heads or any(w.granting for w in heads):
            return  # a grant to them is in the log; its outcome calls us again
        if lock.mode is LockMode.EXCLUSIVE or (
            lock.mode is LockMode.SHARED and heads[0].mode is LockMode.EXCLUSIVE
        ):
            return  # a release will call us again
        self._propose_grants(path, queue, heads)

    def _delay_ended(self, path: str) -> None:
        queue = self._queues.get(path)
        if queue is not None:
            queue.delay_timer = None
        self._schedule_grants(path)

    def _propose_grants(self, path: str, queue: _LockQueue, heads: list[_Waiter]) -> None:
        queue.grant_in_flight = True
        grants = self._start_granting(heads)

        async def run() -> None:
            try:
                await self._propose(GrantLocks(now_ms=0, grants=grants))
            except Unavailable:
                pass
            finally:
                queue.grant_in_flight = False
                self._grants_settled(heads)
                self._schedule_grants(path)

        asyncio.get_running_loop().create_task(run())

    def _heads_for_release(self, handle: str) -> list[_Waiter]:
        """The waiters to grant in the same entry as a Release/Close of ``handle``."""
        info = self.state.describe_handle(handle)
        if info is None or info.lock_mode is None:
            return []
        queue = self._queues.get(info.path)
        if queue is None or queue.grant_in_flight:
            return []
        lock = self.state.lock_info(info.path)
        if lock is None or len(lock.holders) > 1 or lock.lock_delay_until_ms > time.time() * 1000:
            return []
        heads = self._next_grants(info.path)
        return [] if any(w.granting for w in heads) else heads

    async def _release_granting(self, handle: str,
                                make: Callable[[tuple[Grant, ...]], Command]) -> None:
        """Write a Release/Close that also grants the lock to its queue's heads; while it is
        in the log those waiters count as being granted (their wait cannot run out)."""
        heads = self._heads_for_release(handle)
        grants = self._start_granting(heads)
        try:
            await self.write(make(grants))
        finally:
            if heads:
                self._grants_settled(heads)
                self._schedule_grants(heads[0].path)

    @staticmethod
    def _start_granting(heads: list[_Waiter]) -> tuple[Grant, ...]:
        """Mark ``heads`` as being granted (a grant to them goes into the log) and return
        the grants that entry carries."""
        for waiter in heads:
            waiter.granting = True
        return tuple(Grant(session=w.session, handle=w.handle, mode=w.mode) for w in heads)

    def _grants_settled(self, heads: list[_Waiter]) -> None:
        """A grant to ``heads`` was applied or lost: waits that ran out meanwhile end now."""
        for waiter in heads:
            waiter.granting = False
            if waiter.expired:
                self._wait_ran_out(waiter)
            elif waiter.future.done():  # its call ended while the grant was in the log
                self._dequeue(waiter)

    async def release(self, session: str, handle: str, generation: int | None,
                      request_id: str | None) -> None:
        """Release: the release and the grant to the next waiter(s) are one log entry."""
        await self._release_granting(handle, lambda grants: Release(
            now_ms=0, session=session, handle=handle, generation=generation,
            request_id=request_id, grant_next=grants))

    async def poison(self, session: str, handle: str, request_id: str | None) -> None:
        """Poison: later calls on the handle fail, and so does its queued Acquire."""
        await self.write(Poison(now_ms=0, session=session, handle=handle,
                                request_id=request_id))
        self._fail_waiters(_fail(ErrorCode.HANDLE_INVALID, "handle poisoned"), handle=handle)

    async def close(self, session: str, handle: str, request_id: str | None) -> None:
        """Close: releases the handle's lock (granting to waiters in the same entry)."""
        await self._release_granting(handle, lambda grants: Close(
            now_ms=0, session=session, handle=handle, request_id=request_id,
            grant_next=grants))

    def _find_waiter(self, session: str, handle: str) -> _Waiter | None:
        same = self._queued.get((session, handle))
        return same[0] if same else None

    def _granted(self, effect: LockGranted) -> None:
        waiter = self._find_waiter(effect.session, effect.handle)
        if waiter is None:
            return
        self._dequeue(waiter)
        if waiter.future.done():
            return
        sequencer = SequencerRef(effect.path, effect.mode, effect.lock_generation,
                                 effect.instance).encode()
        waiter.future.set_result({"sequencer": sequencer,
                                  "lock_generation": effect.lock_generation})

    def _grant_skipped(self, effect: GrantSkipped) -> None:
        waiter = self._find_waiter(effect.session, effect.handle)
        if waiter is None:
            return
        if effect.failure.code in (ErrorCode.LOCK_BUSY, ErrorCode.LOCK_DELAY):
            return  # still queued; a later release grants it
        self._dequeue(waiter)
        if not waiter.future.done():
            waiter.future.set_exception(CallFailed(effect.failure))

    # ------------------------------------------------------------------ views

    def waiters_on(self, path: str) -> int:
        """How many blocking Acquires wait on ``path`` (leader memory)."""
        queue = self._queues.get(path)
        return len(queue.waiters) if queue is not None else 0

    def has_waiters(self) -> bool:
        """Whether any blocking Acquire may be queued (False: every lock has none)."""
        return bool(self._queues)

    def total_waiters(self) -> int:
        """All queued Acquires."""
        return sum(len(q.waiters) for q in self._queues.values())

    def session_count(self) -> int:
        """Sessions with a lease at this leader."""
        return len(self._sessions)
