"""The one driver loop where the Raft core meets storage, transport and the state machine."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from lockcell.raft.core import (
    ConfChangeInProgressError,
    NotLeaderError,
    ProposalDroppedError,
    Raft,
    RaftConfig,
    RaftError,
    RaftStatus,
)
from lockcell.raft.types import (
    ConfChange,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    NodeId,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from lockcell.storage.aio import AioSyncer, open_syncer
from lockcell.storage.store import RaftStorage, UnsyncedWrites

from . import imaging

log = logging.getLogger("lockcell.node")


_FROM_LEADER = frozenset({MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT})


class Unavailable(Exception):
    """The cell cannot serve this call right now (no leader, lost leadership, timeout)."""

    def __init__(self, message: str, leader: NodeId | None = None) -> None:
        super().__init__(message)
        self.leader = leader


class Application(Protocol):
    """What the driver applies committed entries to."""

    def apply_entry(self, index: int, data: bytes) -> object:
        """Apply one committed application entry; returns the result for its proposer."""

    def apply_conf_change(self, index: int, change: ConfChange) -> None:
        """Observe a committed membership change (e.g. to learn member addresses)."""

    def snapshot(self) -> bytes:
        """A deterministic image of everything applied so far."""

    def restore(self, data: bytes) -> None:
        """Replace the state by a snapshot image."""

    def on_role_change(self, role: Role, leader: NodeId | None, term: int) -> None:
        """Leadership changed (called from the driver loop)."""

    def on_applied(self, index: int) -> None:
        """A batch up to ``index`` was applied (leader-side follow-ups may be proposed)."""


class Transport(Protocol):
    """How the driver reaches its peers."""

    def send(self, messages: tuple[Message, ...]) -> None:
        """Queue messages; never blocks."""


@dataclass(frozen=True, slots=True)
class DriverConfig:
    """Timing and batching of the driver loop."""

    tick_ms: int = 100
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_inflight: int = 64
    snapshot_every: int = 20_000
    """Fewest applied entries between two snapshots (each member adds up to half again, at
    random, so members do not all snapshot at once)."""
    snapshot_log_ratio: float = 0.25
    """...and the entries applied since must also add up to this share of the last image's
    size, so a large state is not re-imaged every few seconds."""
    snapshot_retain: int = 2_000
    snapshot_in_child: bool = True
    """Build images in a forked child (see :mod:`.imaging`) instead of on the event loop."""
    snapshot_retry_s: float = 1.0
    """After a failed image, wait this long before the next try, doubling after each
    failure in a row up to 64 times as long, so a full disk or a failing state machine
    does not fork a child per batch."""
    clock_drift: float = 0.01
    lease_margin_ms: float = 50.0
    leader_inline_write_ms: float = 5.0
    """A leader writes its log in its own loop, right after replicating a batch, while its
    log writes take less than this on average: handing a fast write to the WAL thread and
    back costs more than it overlaps. Slower writes move to the WAL thread (and back once
    they average under half of this), so a slow disk does not stall the loop. 0: always
    on the WAL thread. (A busy machine's local disk averages 1-2 ms per write here,
    counting the wait for a CPU after it.)"""
    leader_async_sync: bool = False
    """Where Linux AIO is available (:mod:`lockcell.storage.aio`), a leader writes each
    batch in its loop and lets the kernel run the fdatasync, so the loop never waits for
    the disk and no thread hands the result back (the limit above then does not apply).
    Off by default: on a CPU-bound machine it trades write throughput for handover
    latency (bench/RESULTS.md, 2026-11-27: contended handovers +7 %, 100-byte writes
    -10 %), since batches get smaller when the loop never waits."""


@dataclass
class _Proposal:
    make: Callable[[int], bytes]
    future: asyncio.Future[object]


@dataclass
class _ReadBatch:
    futures: list[asyncio.Future[None]] = field(default_factory=list)
    index: int | None = None


class RaftDriver:
    """Owns a :class:`Raft` core and runs persist → send → apply → advance.

    Everything that touches the core happens on this loop's task: callers queue
    proposals, reads and messages, and the loop drains them between Ready batches, so
    proposals that arrive during an fsync are committed together (group commit).
    """

    def __init__(
        self,
        node_id: NodeId,
        storage: RaftStorage,
        app: Application,
        config: DriverConfig,
        rng: random.Random | None = None,
    ) -> None:
        self.id = node_id
        self.config = config
        self.storage = storage
        self.app = app
        self.transport: Transport | None = None
        restored = storage.load()
        self.core = Raft(
            RaftConfig(
                id=node_id,
                election_ticks=config.election_ticks,
                heartbeat_ticks=config.heartbeat_ticks,
                max_inflight=config.max_inflight,
                snapshot_retain_entries=config.snapshot_retain,
            ),
            rng or random.Random(),
            restored.hard_state,
            restored.snapshot,
            restored.entries,
        )
        if not restored.snapshot.empty:
            app.restore(restored.snapshot.data)
        self._rng = rng or random.Random()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"wal-{node_id}")
        self._imaging_io = ThreadPoolExecutor(max_workers=1,
                                              thread_name_prefix=f"snapshot-{node_id}")
        self._imaging: asyncio.Task[None] | None = None
        self._image_child: imaging.ImageChild | None = None
        self._built: Snapshot | None = None
        """A staged snapshot waiting for the loop to adopt it between Ready batches."""
        self._applied_bytes = 0
        self._applied_bytes_at_snapshot = 0
        self._last_image_size = len(restored.snapshot.data)
        self._snapshot_gap = self._next_snapshot_gap()
        self._snapshot_started = 0.0
        self._snapshot_failures_in_row = 0
        self._snapshot_retry_at = 0.0
        self._inbox: list[Message] = []
        self._proposals: list[_Proposal] = []
        self._waiting: dict[int, tuple[int, asyncio.Future[object]]] = {}
        self._reads: list[asyncio.Future[None]] = []
        self._read_batches: dict[bytes, _ReadBatch] = {}
        self._applied_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._actions: list[Callable[[], None]] = []
        self._pending_ticks = 0
        self._wake = asyncio.Event()
        self._read_ids = itertools.count(1)
        self._tick_times: dict[int, float] = {0: time.monotonic()}
        self._task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopped = False
        self._unsaved_hard_state: HardState | None = None
        self._saving: asyncio.Future[float] | None = None
        """The leader's log write running on the WAL thread while the loop goes on."""
        self._save_backlog: list[tuple[HardState | None, tuple[Entry, ...]]] = []
        """Leader batches handed out while a write runs: the next write takes them all."""
        self._save_failure: BaseException | None = None
        self._write_seconds = 0.0
        """Moving average of this member's log writes (write plus fdatasync)."""
        self._leader_writes_inline = config.leader_inline_write_ms > 0
        self._syncer: AioSyncer | None = None
        """Runs the leader's fdatasyncs on the kernel's AIO workers (None: not available,
        or turned off)."""
        self.last_stamp_ms = 0
        self.last_leader_contact = 0.0
        """Monotonic time a message from the current leader was last processed."""
        self.leader_since: float | None = None
        self.metrics_hook: Callable[[str, float], None] | None = None
        self.snapshot_hook: Callable[[], None] | None = None
        """Called on the loop after a snapshot was installed or restored (the state has
        settled: the member tells its garbage collector)."""
        self.event_hook: Callable[[str, dict[str, Any]], None] | None = None
        """Observability: ``("role", {role, leader, term})`` on every soft-state change and
        ``("conf_change", {index, term, change, conf})`` as a membership change applies."""

    # ------------------------------------------------------------------ lifecycle

    def start(self, transport: Transport) -> None:
        """Start the loop and the ticker on the running event loop."""
        self.transport = transport
        loop = asyncio.get_running_loop()
        if self.config.leader_async_sync and isinstance(self.storage, UnsyncedWrites):
            self._syncer = open_syncer(loop)
        self._metric("wal_aio", float(self._syncer is not None))
        self._task = loop.create_task(self._run(), name=f"raft-driver-{self.id}")
        self._ticker = loop.create_task(self._tick_forever(), name=f"raft-ticker-{self.id}")

    async def stop(self) -> None:
        """Stop the loop; pending calls fail with :class:`Unavailable`."""
        self._stopped = True
        if self._image_child is not None:
            self._image_child.kill()
        for task in (self._ticker, self._task, self._imaging):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._fail_all(Unavailable("member shutting down"))
        with contextlib.suppress(Exception):
            await self._await_saves()
        if self._syncer is not None:
            self._syncer.close()
        self._imaging_io.shutdown(wait=True)
        self._io.shutdown(wait=True)
        self.storage.close()

    # ------------------------------------------------------------------ inputs

    def receive(self, messages: list[Message]) -> None:
        """Queue inbound Raft messages from the transport."""
        self._inbox.extend(messages)
        self._wake.set()

    def propose(self, make: Callable[[int], bytes]) -> asyncio.Future[object]:
        """Propose an entry built by ``make(stamp_ms)``; resolves with its apply result.

        The stamp is the leader's clock, never lower than any earlier stamp, taken when
        the entry enters the log (time enters the state machine only this way).
        """
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._proposals.append(_Proposal(make, future))
        self._wake.set()
        return future

    def linearizable_read(self) -> asyncio.Future[None]:
        """Resolves once the applied state reflects every write committed before the call."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reads.append(future)
        self._wake.set()
        return future

    def wait_applied(self, index: int) -> asyncio.Future[None]:
        """Resolves once entries up to ``index`` are applied here."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.core.log.applied >= index:
            future.set_result(None)
        else:
            self._applied_waiters.append((index, future))
        return future

    def call(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the loop with the core (conf changes, transfers, reports)."""
        self._actions.append(action)
        self._wake.set()

    def propose_conf_change(self, change: ConfChange) -> asyncio.Future[int]:
        """Propose a membership change; resolves with its log index once applied."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def act() -> None:
            try:
                index = self.core.propose_conf_change(change)
            except (RaftError, ValueError) as exc:
                future.set_exception(exc)
                return
            applied = self.wait_applied(index)
            term = self.core.term

            def done(_: asyncio.Future[None]) -> None:
                if future.done():
                    return
                if applied.exception() is not None:
                    future.set_exception(Unavailable(str(applied.exception())))
                elif self.core.log.term(index) not in (term, None):
                    future.set_exception(Unavailable("membership change lost to a new leader"))
                else:
                    future.set_result(index)

            applied.add_done_callback(done)

        self.call(act)
        return future

    # ------------------------------------------------------------------ queries

    @property
    def is_leader(self) -> bool:
        """Whether this member leads."""
        return self.core.role is Role.LEADER

    @property
    def leader_id(self) -> NodeId | None:
        """Who this member believes leads."""
        return self.core.leader

    def status(self) -> RaftStatus:
        """The core's status."""
        return self.core.status()

    def lease_deadline(self) -> float | None:
        """Monotonic time until which this leader's lease holds (None: no lease).

        The round a quorum acknowledged was sent at ``sent_at``; each member of that quorum
        received it later and votes for no one until ``election_ticks`` of its own ticks
        have passed since. Its first tick may come at once (ticks are not in phase across
        members), and the ticks after it at least ``tick_ms`` apart: the promise lasts
        ``election_ticks - 1`` ticks of the member's clock, less the allowed rate drift.
        """
        anchor = self.core.lease_anchor_tick()
        if anchor is None:
            return None
        sent_at = self._tick_times.get(anchor)
        if sent_at is None:
            return None
        span = (self.config.election_ticks - 1) * self.config.tick_ms / 1000.0
        return sent_at + span * (1.0 - self.config.clock_drift) - (
            self.config.lease_margin_ms / 1000.0
        )

    def in_contact_with_leader(self) -> bool:
        """Whether this member leads, or heard from its leader within an election timeout
        of wall time (ticks do not advance while the process is stopped)."""
        if self.core.role is Role.LEADER:
            return True
        span = self.config.election_ticks * self.config.tick_ms / 1000.0
        return time.monotonic() - self.last_leader_contact < span

    def holds_lease(self) -> bool:
        """Whether the leader lease is valid now."""
        deadline = self.lease_deadline()
        return deadline is not None and time.monotonic() < deadline

    # ------------------------------------------------------------------ the loop

    async def _tick_forever(self) -> None:
        """One tick per ``tick_ms``, never two closer together on the monotonic clock: a
        follower counts its promise not to vote (which the leader lease rests on) in
        ticks, so ticks caught up in a burst after a stall would cut it short. A stalled
        loop loses the ticks it missed instead."""
        interval = self.config.tick_ms / 1000.0
        last = time.monotonic()
        while True:
            due = last + interval
            now = time.monotonic()
            while now < due:
                await asyncio.sleep(due - now)
                now = time.monotonic()
            self._metric("loop_lag_seconds", now - due)
            last = now
            self._pending_ticks += 1
            self._wake.set()

    async def _run(self) -> None:
        while not self._stopped:
            await self._wake.wait()
            self._wake.clear()
            try:
                if self._save_failure is not None:
                    raise self._save_failure
                self._drain()
                if self._built is not None:
                    await self._install_snapshot()
                while self.core.has_ready():
                    rd = self.core.ready()
                    deferred = await self._handle_ready(rd)
                    self.core.advance(deferred=deferred)
                    if (self._after_advance(rd) and self._imaging is None
                            and time.monotonic() >= self._snapshot_retry_at):
                        self._start_snapshot()
                    self._drain()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("driver loop failed; this member stops serving")
                self._fail_all(Unavailable("member failed"))
                raise

    def _drain(self) -> None:
        core = self.core
        while self._pending_ticks:
            self._pending_ticks -= 1
            core.tick()
            self._tick_times[core.ticks] = time.monotonic()
            stale = core.ticks - 4 * self.config.election_ticks
            self._tick_times.pop(stale, None)
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            for m in inbox:
                core.step(m)
                if m.type in _FROM_LEADER and m.sender == core.leader:
                    self.last_leader_contact = time.monotonic()
        if self._actions:
            actions, self._actions = self._actions, []
            for action in actions:
                action()
        if self._proposals:
            proposals, self._proposals = self._proposals, []
            for p in proposals:
                if p.future.done():
                    continue
                try:
                    stamp = max(self.last_stamp_ms, int(time.time() * 1000))
                    index = core.propose(p.make(stamp))
                    self.last_stamp_ms = stamp
                except NotLeaderError as exc:
                    p.future.set_exception(Unavailable("not the leader", exc.leader))
                    self._metric("proposal:not_leader")
                    continue
                except (ProposalDroppedError, ConfChangeInProgressError) as exc:
                    p.future.set_exception(Unavailable(str(exc), core.leader))
                    self._metric("proposal:dropped")
                    continue
                self._waiting[index] = (core.term, p.future)
        if self._reads:
            reads, self._reads = self._reads, []
            context = next(self._read_ids).to_bytes(8, "big")
            try:
                core.read_index(context)
            except NotLeaderError as exc:
                for f in reads:
                    if not f.done():
                        f.set_exception(Unavailable("no leader", exc.leader))
                return
            self._read_batches[context] = _ReadBatch(reads)

    async def _handle_ready(self, rd: Ready) -> bool:
        """Persist, send and apply one Ready; True when its entries are still being
        written in the background (a leader's: see :meth:`_handle_leader_ready`)."""
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.role, rd.soft_state.leader)
        transport = self.transport
        leading = self.core.role is Role.LEADER
        if rd.hard_state is not None:
            self._unsaved_hard_state = rd.hard_state
        if (leading and rd.may_defer_persist and transport is not None
                and (self._syncer is not None or not self._leader_writes_inline)):
            self._handle_leader_ready(rd, transport)
            return bool(rd.entries)
        await self._await_saves()
        if leading and transport is not None:
            transport.send(rd.messages)  # thesis §10.2.1: replicate while our own fsync runs
        committed = rd.committed_entries
        # A follower can do nothing useful before it may answer, and a leader whose writes
        # are fast does better without two thread hand-offs on every commit's path: both
        # write in the loop (never a snapshot: those are large).
        inline = rd.snapshot is None and (not leading or self._leader_writes_inline)
        if rd.must_sync and not inline and rd.snapshot is None and committed:
            # While the WAL thread writes, entries committed and already durable here need
            # not wait for it: applying them first answers their callers one fsync sooner
            # while new proposals keep arriving. Membership changes keep the strict order.
            # (Written in the loop, the answers could not leave before the write ends, and
            # a follower applies after acknowledging: both keep the apply off that path.)
            durable = self.core.log.stable
            early = 0
            for entry in committed:
                if entry.index > durable or entry.kind is EntryKind.CONF_CHANGE:
                    break
                early += 1
            for entry in committed[:early]:
                self._apply(entry)
            committed = committed[early:]
        if rd.must_sync:
            hard_state, self._unsaved_hard_state = self._unsaved_hard_state, None
            if inline:
                took = self._timed_save(hard_state, rd.entries, rd.snapshot)
            else:
                took = await asyncio.get_running_loop().run_in_executor(
                    self._io, self._timed_save, hard_state, rd.entries, rd.snapshot
                )
            if rd.snapshot is None:
                self._note_write(took)
            self._metric("append_batch", float(len(rd.entries)))
        if not leading and transport is not None:
            transport.send(rd.messages)
        if rd.snapshot is not None:
            started = time.perf_counter()
            self.app.restore(rd.snapshot.data)
            self._metric("snapshot_restore_seconds", time.perf_counter() - started)
            if self.snapshot_hook is not None:
                self.snapshot_hook()
        for entry in committed:
            self._apply(entry)
        self._note_read_states(rd)
        return False

    def _handle_leader_ready(self, rd: Ready, transport: Transport) -> None:
        """A leader's batch: replicate, start writing its entries without waiting for the
        disk (the loop keeps replicating and committing while the fsync runs; followers'
        acknowledgements can commit before it ends) and apply what is committed, which a
        majority already holds durably."""
        transport.send(rd.messages)
        if rd.entries:
            hard_state, self._unsaved_hard_state = self._unsaved_hard_state, None
            self._save_backlog.append((hard_state, rd.entries))
            if self._saving is None:
                self._start_save()
        for entry in rd.committed_entries:
            self._apply(entry)
        self._note_read_states(rd)

    def _start_save(self) -> None:
        """Write every batch in the backlog with one fsync: written in the loop and synced
        by AIO where it is available, else both on the WAL thread."""
        batches, self._save_backlog = self._save_backlog, []
        hard_state = next((h for h, _ in reversed(batches) if h is not None), None)
        entries = tuple(e for _, batch in batches for e in batch)
        loop = asyncio.get_running_loop()
        if self._syncer is None:
            saving = loop.run_in_executor(self._io, self._timed_save, hard_state, entries, None)
            self._saving = saving
            saving.add_done_callback(functools.partial(self._thread_save_ended, entries))
            return
        # The sync's completion calls _save_ended directly (no future hops on the commit
        # path); _saving only lets _await_saves wait for it.
        self._saving = waiting = loop.create_future()
        started = time.perf_counter()
        storage = cast(UnsyncedWrites, self.storage)

        def ended(outcome: float | BaseException) -> None:
            waiting.set_result(0.0)
            self._save_ended(entries, outcome)

        try:
            fd = storage.write(hard_state, entries)
        except Exception as exc:
            ended(exc)
            return
        if fd is None:
            ended(time.perf_counter() - started)
            return

        def synced(failure: OSError | None) -> None:
            if failure is None:
                storage.synced()
            ended(failure or time.perf_counter() - started)

        self._syncer.sync(fd, synced)

    def _thread_save_ended(self, entries: tuple[Entry, ...],
                           future: asyncio.Future[float]) -> None:
        if future.cancelled():
            self._save_ended(entries, RuntimeError("log write cancelled"))
        else:
            self._save_ended(entries, future.exception() or future.result())

    def _save_ended(self, entries: tuple[Entry, ...], outcome: float | BaseException) -> None:
        """A background write of ``entries`` is over after ``outcome`` seconds, or failed
        with it: report them durable (a failure stops this member) and start the next."""
        self._saving = None
        if isinstance(outcome, BaseException):
            self._save_failure = outcome
            self._save_backlog.clear()
            self._wake.set()
            return
        self._note_write(outcome)
        self._metric("append_batch", float(len(entries)))
        last = entries[-1]
        self.call(lambda: self.core.persisted(last.index, last.term))
        if self._save_backlog and not self._stopped:
            self._start_save()

    def _timed_save(self, hard_state: HardState | None, entries: tuple[Entry, ...],
                    snapshot: Snapshot | None) -> float:
        """Write to the log (on whichever thread calls it); returns the seconds it took."""
        started = time.perf_counter()
        self.storage.save(hard_state, entries, snapshot)
        return time.perf_counter() - started

    def _note_write(self, seconds: float) -> None:
        """Account one log write, and choose where the leader writes its next ones."""
        self._metric("fsync_seconds", seconds)
        self._write_seconds += (seconds - self._write_seconds) * 0.1
        if self._syncer is not None:
            return  # the leader writes in its loop and never waits for the sync
        limit = self.config.leader_inline_write_ms / 1000.0
        if self._leader_writes_inline and self._write_seconds > limit:
            self._leader_writes_inline = False
        elif not self._leader_writes_inline and self._write_seconds < limit / 2 and limit:
            self._leader_writes_inline = True
        else:
            return
        self._metric("leader_writes_in_loop", float(self._leader_writes_inline))
        log.debug("log writes average %.1f ms: a leader writes %s", self._write_seconds * 1000,
                  "in its loop" if self._leader_writes_inline else "on the WAL thread")

    async def _await_saves(self) -> None:
        """Wait until every background log write is durable (or raise its failure)."""
        while self._saving is not None:
            await asyncio.wait({self._saving})
            await asyncio.sleep(0)  # let the done callback run
        if self._save_failure is not None:
            raise self._save_failure

    def _note_read_states(self, rd: Ready) -> None:
        for state in rd.read_states:
            batch = self._read_batches.get(state.context)
            if batch is not None:
                batch.index = state.index

    def _apply(self, entry: Entry) -> None:
        result: object = None
        failure: BaseException | None = None
        self._applied_bytes += len(entry.data)
        if entry.kind is EntryKind.CONF_CHANGE:
            with contextlib.suppress(ValueError):
                change = ConfChange.decode(entry.data)
                self.app.apply_conf_change(entry.index, change)
                if self.event_hook is not None:
                    self.event_hook("conf_change", {"index": entry.index, "term": entry.term,
                                                    "change": change, "conf": self.core.conf})
        elif entry.data:
            try:
                result = self.app.apply_entry(entry.index, entry.data)
            except Exception as exc:  # the state machine must not stop the replica
                log.exception("apply of entry %d failed", entry.index)
                failure = exc
        waiting = self._waiting.pop(entry.index, None)
        if waiting is not None:
            term, future = waiting
            if future.done():
                return
            if term != entry.term:
                future.set_exception(Unavailable("entry replaced by a new leader"))
                self._metric("proposal:lost")
            elif failure is not None:
                future.set_exception(failure)
                self._metric("proposal:failed")
            else:
                future.set_result(result)
                self._metric("proposal:committed")

    def _after_advance(self, rd: Ready) -> bool:
        """Resolve waiters after a batch; True when it is time for a snapshot."""
        applied = self.core.log.applied
        if rd.committed_entries or rd.snapshot is not None:
            if self._applied_waiters:
                still: list[tuple[int, asyncio.Future[None]]] = []
                for index, future in self._applied_waiters:
                    if index <= applied:
                        if not future.done():
                            future.set_result(None)
                    else:
                        still.append((index, future))
                self._applied_waiters = still
            self.app.on_applied(applied)
        for context, batch in list(self._read_batches.items()):
            if batch.index is not None and batch.index <= applied:
                del self._read_batches[context]
                for f in batch.futures:
                    if not f.done():
                        f.set_result(None)
        if applied - self.core.log.snapshot.meta.index < self._snapshot_gap:
            return False
        grown = self._applied_bytes - self._applied_bytes_at_snapshot
        return grown >= self._last_image_size * self.config.snapshot_log_ratio

    def _next_snapshot_gap(self) -> int:
        every = self.config.snapshot_every
        return every + self._rng.randrange(every // 2 + 1)

    def _start_snapshot(self) -> None:
        """Image the state machine exactly at the applied index: fork a child that
        serialises its copy-on-write view (or, when forking is impossible, serialise here),
        and let a task collect and stage the image off the loop."""
        self._snapshot_started = time.perf_counter()
        meta = self.core.snapshot_meta()
        self._applied_bytes_at_snapshot = self._applied_bytes
        child: imaging.ImageChild | None = None
        data: bytes | None = None
        if self.config.snapshot_in_child and imaging.can_fork():
            try:
                child = imaging.fork_image(self.app.snapshot)
            except OSError as exc:
                log.warning("cannot fork to build a snapshot (%s); building it inline", exc)
        if child is None:
            data = self.app.snapshot()
        self._image_child = child
        self._imaging = asyncio.get_running_loop().create_task(
            self._stage_snapshot(meta, child, data), name=f"raft-snapshot-{self.id}")

    async def _stage_snapshot(self, meta: SnapshotMeta, child: imaging.ImageChild | None,
                              data: bytes | None) -> None:
        """Collect the child's image, write and fsync it as a staged file on the snapshot
        thread, then hand it to the loop to install between Ready batches."""
        loop = asyncio.get_running_loop()
        try:
            if child is not None:
                try:
                    data = await loop.run_in_executor(self._imaging_io, child.collect)
                finally:
                    self._image_child = None
            assert data is not None
            snap = Snapshot(meta, data)
            await loop.run_in_executor(self._imaging_io, self.storage.stage_snapshot, snap)
        except asyncio.CancelledError:
            raise
        except Exception:
            if not self._stopped:
                self._metric("snapshot_failures")
                delay = self.config.snapshot_retry_s * 2 ** min(self._snapshot_failures_in_row, 6)
                self._snapshot_failures_in_row += 1
                self._snapshot_retry_at = time.monotonic() + delay
                log.exception("building a snapshot failed; the next one is tried in %.1f s",
                              delay)
            self._imaging = None
            return
        self._snapshot_failures_in_row = 0
        self._built = snap
        self._last_image_size = len(data)
        self._snapshot_gap = self._next_snapshot_gap()
        self._wake.set()

    async def _install_snapshot(self) -> None:
        """Adopt a staged snapshot into the core and install its file (on the WAL thread,
        ordered with log writes); called by the loop between Ready batches."""
        snap, self._built = self._built, None
        assert snap is not None
        try:
            await self._await_saves()
            self.core.adopt_snapshot(snap)
            await asyncio.get_running_loop().run_in_executor(
                self._io, functools.partial(self.storage.save_snapshot, snap, staged=True))
        finally:
            self._imaging = None
        self._metric("snapshot_seconds", time.perf_counter() - self._snapshot_started)
        self._metric("snapshot_bytes", float(len(snap.data)))
        if self.snapshot_hook is not None:
            self.snapshot_hook()

    def _on_soft_state(self, role: Role, leader: NodeId | None) -> None:
        if self.event_hook is not None:
            self.event_hook("role", {"role": role, "leader": leader, "term": self.core.term})
        if role is not Role.LEADER:
            self.leader_since = None
            lost = Unavailable("leadership lost", leader)
            for _, future in self._waiting.values():
                if not future.done():
                    future.set_exception(lost)
                    self._metric("proposal:lost")
            self._waiting.clear()
        elif self.leader_since is None:
            self.leader_since = time.monotonic()
        for batch in self._read_batches.values():
            for f in batch.futures:
                if not f.done():
                    f.set_exception(Unavailable("leadership changed during read", leader))
        self._read_batches.clear()
        self.app.on_role_change(role, leader, self.core.term)

    def _metric(self, name: str, value: float = 1.0) -> None:
        if self.metrics_hook is not None:
            self.metrics_hook(name, value)

    def _fail_all(self, exc: Unavailable) -> None:
        for _, future in self._waiting.values():
            if not future.done():
                future.set_exception(exc)
        self._waiting.clear()
        for p in self._proposals:
            if not p.future.done():
                p.future.set_exception(exc)
        self._proposals.clear()
        for f in self._reads:
            if not f.done():
                f.set_exception(exc)
        self._reads.clear()
        for batch in self._read_batches.values():
            for f in batch.futures:
                if not f.done():
                    f.set_exception(exc)
        self._read_batches.clear()

