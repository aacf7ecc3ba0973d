"""Deterministic in-memory cluster for Raft tests: virtual time, a faulty network, crash-restart.

The harness plays the part of ``node/driver.py`` for every member: it persists each ``Ready``
to a :class:`Disk` (the only thing that survives a crash), sends its messages through a
simulated network, applies committed entries to a toy state machine and calls ``advance``.
Everything is driven by one seeded ``random.Random`` and virtual ticks, so a seed replays
exactly (messages of one ``Ready`` are put on the wire in a canonical order, so the replay
does not depend on ``PYTHONHASHSEED`` either).

Safety properties are checked as the run goes (any failure raises :class:`InvariantViolation`
with the seed, the tick and the tail of the trace):

- election safety: at most one leader per term;
- leader completeness: a new leader's log holds every entry committed so far;
- log matching: two logs that agree on (index, term) agree on every entry before it;
- state-machine safety: no two members commit or apply different entries at one index, and
  a snapshot's image is the image of the entries it replaces;
- durability: a member's fsynced term and commit index never go back and it never votes
  twice in one term (what is on its disk, across crashes);
- membership: committed configuration changes are valid; a voter set changes only by
  entering a joint configuration whose outgoing half is the old voter set, or by leaving
  one; every member's configuration is the one its applied log (or snapshot) implies; at
  most one configuration change is pending in a leader's log;
- ReadIndex linearizability: a read's index is at least every index committed before the
  read was requested;
- leader lease: while a leader's ``lease_anchor_tick()`` plus the minimum election timeout
  is in the future, no other member leads a later term (also across restarts: a restarted
  member votes for no one until an election timeout has passed);
- driver liveness: ``has_ready()`` never keeps reporting work that ``ready()`` does not hand
  out (a driver would spin).
"""

from __future__ import annotations

import random
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lockcell.raft.core import Raft, RaftConfig, bootstrap_entries
from lockcell.raft.types import (
    ChangeOp,
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Ready,
    Role,
    Snapshot,
)


class InvariantViolation(AssertionError):
    """A Raft safety property failed; the message names it, ``kind`` and ``info`` say which."""

    def __init__(self, message: str, kind: str = "", info: dict[str, object] | None = None):
        super().__init__(message)
        self.kind = kind
        self.info = info or {}


class BusyLoop(InvariantViolation):
    """``has_ready()`` keeps returning True while ``ready()`` hands out nothing."""


@dataclass
class Disk:
    """What a member has fsynced: survives crashes.

    Like ``node/driver.py``, a hard state that only moves the commit index
    (``Ready.must_sync`` False) is kept unsaved until the next batch that must sync, and is
    lost if the member crashes first.
    """

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: list[Entry] = field(default_factory=list)
    unsaved: HardState | None = None

    def persist(self, rd: Ready) -> None:
        """Make one Ready durable (what the driver's single fsync covers)."""
        if rd.hard_state is not None:
            self.unsaved = rd.hard_state
        if not rd.must_sync:
            return
        if rd.snapshot is not None:
            # A received snapshot replaces the whole log (Raft Fig. 13, step 7): the core
            # keeps no entry of the old log after restoring one.
            self.snapshot = rd.snapshot
            self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first]
            self.entries.extend(rd.entries)
        if self.unsaved is not None:
            self.hard_state, self.unsaved = self.unsaved, None

    def lose_unsaved(self) -> None:
        """A crash: what was not fsynced is gone."""
        self.unsaved = None

    def compact(self, snap: Snapshot) -> None:
        """Adopt a locally created snapshot and drop the entries it covers."""
        self.snapshot = snap
        self.entries = [e for e in self.entries if e.index > snap.meta.index]


@dataclass
class SimNode:
    """One member: its Raft core, its disk and its applied state machine."""

    id: NodeId
    raft: Raft
    disk: Disk
    applied: dict[int, Entry] = field(default_factory=dict)
    snapshot_every: int = 0
    conf_history: list[ConfState] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    alive: bool = True
    boot_time: int = 0
    boot_commit: int = 0
    applied_upto: int = 0
    digest: int = 0
    seen_commit: int = 0
    empty_readies: int = 0
    writes: list[tuple[int, HardState | None, tuple[Entry, ...]]] = field(default_factory=list)
    """A leader's deferred log writes, in order: (due tick, hard state, entries)."""
    written: list[tuple[int, int]] = field(default_factory=list)
    """(index, term) of finished deferred writes, reported to the core before its next Ready."""


@dataclass(order=True)
class _InFlight:
    deliver_at: int
    seq: int
    msg: Message = field(compare=False)


def chain_digest(prev: int, entry: Entry) -> int:
    """A running digest of an applied log: the toy state machine's image."""
    head = f"{prev}|{entry.index}|{entry.term}|{int(entry.kind)}|".encode()
    return zlib.crc32(head + entry.data)


def image_of(snapshot: Snapshot) -> int:
    """The digest a snapshot's data claims (created by :meth:`Cluster.process_ready`)."""
    if snapshot.empty:
        return 0
    text = snapshot.data.decode()
    index, _, digest = text.partition(":")
    assert int(index) == snapshot.meta.index, text
    return int(digest)


def model_conf(conf: ConfState, change: ConfChange) -> ConfState | None:
    """An independent model of the membership rules (DESIGN §2, thesis §4.3).

    Returns the configuration after ``change``, or None when the change is not allowed.
    """
    if not change.changes:
        if not conf.voters_outgoing:
            return None
        return ConfState(voters=conf.voters, learners=conf.learners)
    if conf.voters_outgoing:
        return None
    voters, learners = set(conf.voters), set(conf.learners)
    nodes = [c.node for c in change.changes]
    if len(set(nodes)) != len(nodes) or "" in nodes:
        return None
    for single in change.changes:
        n = single.node
        if single.op is ChangeOp.ADD_VOTER:
            if n in voters:
                return None
            voters.add(n)
            learners.discard(n)
        elif single.op is ChangeOp.ADD_LEARNER:
            if n in voters or n in learners:
                return None
            learners.add(n)
        else:
            if n not in voters and n not in learners:
                return None
            voters.discard(n)
            learners.discard(n)
    if not voters:
        return None
    if voters == set(conf.voters) or not conf.voters:
        return ConfState(voters=frozenset(voters), learners=frozenset(learners))
    return ConfState(voters=frozenset(voters), voters_outgoing=conf.voters,
                     learners=frozenset(learners))


class Cluster:
    """A cluster of SimNodes on a simulated network, stepped in virtual ticks."""

    def __init__(
        self,
        ids: Iterable[NodeId],
        seed: int = 0,
        *,
        bootstrap: bool = True,
        election_ticks: int = 10,
        pre_vote: bool = True,
        check_quorum: bool = True,
        max_inflight: int = 8,
        max_msg_bytes: int = 1 << 20,
        snapshot_every: int = 0,
        retain: int = 5,
        trace: bool = False,
        disks: dict[NodeId, Disk] | None = None,
        report_snapshots: bool = True,
        report_unreachable: bool = True,
        check_lease: bool = True,
        record_messages: bool = False,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.election_ticks = election_ticks
        self.pre_vote = pre_vote
        self.check_quorum = check_quorum
        self.max_inflight = max_inflight
        self.max_msg_bytes = max_msg_bytes
        self.snapshot_every = snapshot_every
        self.retain = retain
        self.report_snapshots = report_snapshots
        self.report_unreachable = report_unreachable
        self.check_lease = check_lease and check_quorum
        self.now = 0
        self.nodes: dict[NodeId, SimNode] = {}
        self.queue: list[_InFlight] = []
        self.local: list[Message] = []
        self._seq = 0
        # network faults
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.max_delay = 0
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.msg_filter: Callable[[Message], bool] | None = None
        self.hold_filter: Callable[[Message], bool] | None = None
        self.held: list[Message] = []
        # driver faults (probabilities per Ready): a crash between the leader's send and its
        # fsync, and a crash between any member's fsync and its send
        self.crash_before_sync = 0.0
        self.crash_after_sync = 0.0
        # driver mode: the chance that a leader hands a batch to a background writer
        # (Ready.may_defer_persist) that finishes 0..defer_ticks later, as node/driver.py does
        self.defer_leader_persist = 0.0
        self.defer_ticks = 2
        # observed history for invariant checks
        self.leaders_by_term: dict[int, NodeId] = {}
        self.applied_by_index: dict[int, Entry] = {}
        self.committed_by_index: dict[int, Entry] = {}
        self.digest_by_index: dict[int, int] = {0: 0}
        self.conf_log: list[tuple[int, ConfState]] = [(0, ConfState())]
        self._conf_frontier = 0
        self.reads: dict[bytes, int] = {}
        self.answered_reads: dict[bytes, int] = {}
        self.record_messages = record_messages
        self.sent: list[Message] = []
        self.on_ready: list[Callable[[SimNode, Ready], None]] = []
        """Observers called after each handled Ready (after ``advance``)."""
        self.timeout_now_sent: dict[tuple[NodeId, int], int] = {}
        """(leader, term) -> tick it last sent TIMEOUT_NOW (leadership transfer)."""
        self.trace_enabled = trace
        self.trace: deque[str] = deque(maxlen=100_000 if trace else 400)
        initial = list(ids)
        for node_id in initial:
            if disks is not None and node_id in disks:
                disk = disks[node_id]
            else:
                disk = Disk()
                if bootstrap:
                    hs, entries = bootstrap_entries(initial)
                    disk.hard_state, disk.entries = hs, list(entries)
            self.nodes[node_id] = self._boot(node_id, disk)

    # ------------------------------------------------------------------ membership of the sim

    def _config(self, node_id: NodeId) -> RaftConfig:
        return RaftConfig(
            id=node_id, election_ticks=self.election_ticks, heartbeat_ticks=1,
            max_inflight=self.max_inflight, max_msg_bytes=self.max_msg_bytes,
            pre_vote=self.pre_vote, check_quorum=self.check_quorum,
            snapshot_retain_entries=self.retain,
        )

    def _boot(self, node_id: NodeId, disk: Disk) -> SimNode:
        raft = Raft(self._config(node_id), random.Random(self.rng.random()), disk.hard_state,
                    disk.snapshot, list(disk.entries))
        node = SimNode(node_id, raft, disk, snapshot_every=self.snapshot_every)
        node.conf_history.append(raft.conf)
        node.boot_time = self.now
        node.boot_commit = raft.log.committed
        # the restored snapshot is the state machine's starting point
        snap = disk.snapshot
        node.applied_upto = snap.meta.index
        node.digest = image_of(snap)
        node.applied = {i: e for i, e in self.applied_by_index.items() if i <= snap.meta.index}
        node.seen_commit = snap.meta.index
        self._observe_commit(node)
        return node

    def add_node(self, node_id: NodeId) -> SimNode:
        """A brand-new, empty member that waits to be added (does not bootstrap)."""
        node = self._boot(node_id, Disk())
        self.nodes[node_id] = node
        self._log(f"add node {node_id}")
        return node

    def crash(self, node_id: NodeId) -> None:
        """Stop a member; what it fsynced stays, everything else is gone."""
        node = self.nodes[node_id]
        node.alive = False
        node.disk.lose_unsaved()
        if node.writes:
            self._log(f"{node_id} loses {len(node.writes)} deferred writes")
        node.writes.clear()
        node.written.clear()
        self._log(f"crash {node_id}")

    def restart(self, node_id: NodeId) -> None:
        """Restart a crashed member from its disk."""
        old = self.nodes[node_id]
        old.alive = False
        old.disk.lose_unsaved()
        old.writes.clear()
        node = self._boot(node_id, old.disk)
        self.nodes[node_id] = node
        self._log(f"restart {node_id} term={node.raft.term} last={node.raft.log.last_index()} "
                  f"commit={node.raft.log.committed} conf={_conf_text(node.raft.conf)}")

    # ------------------------------------------------------------------ network

    def partition(self, *groups: Iterable[NodeId]) -> None:
        """Cut every link between different groups (nodes not named form their own group)."""
        sets = [set(g) for g in groups]
        self.blocked = set()
        for a in self.nodes:
            for b in self.nodes:
                if a == b:
                    continue
                ga = next((i for i, s in enumerate(sets) if a in s), f"solo-{a}")
                gb = next((i for i, s in enumerate(sets) if b in s), f"solo-{b}")
                if ga != gb:
                    self.blocked.add((a, b))
        self._log(f"partition {[sorted(s) for s in sets]}")

    def isolate(self, node_id: NodeId) -> None:
        """Cut ``node_id`` off from everyone."""
        others = [n for n in self.nodes if n != node_id]
        self.partition([node_id], others)

    def block(self, sender: NodeId, to: NodeId) -> None:
        """Cut one direction of one link (asymmetric partition)."""
        self.blocked.add((sender, to))
        self._log(f"block {sender}->{to}")

    def heal(self) -> None:
        """Remove all partitions and message faults; held messages are released."""
        self.blocked = set()
        self.drop_rate = self.dup_rate = 0.0
        self.max_delay = 0
        self.msg_filter = None
        self.hold_filter = None
        self.release()
        self._log("heal")

    def hold(self, pred: Callable[[Message], bool]) -> None:
        """Hold back messages matching ``pred`` until :meth:`release`."""
        self.hold_filter = pred

    def release(self, pred: Callable[[Message], bool] | None = None) -> list[Message]:
        """Put held messages (all, or those matching ``pred``) back on the wire, in order."""
        out = [m for m in self.held if pred is None or pred(m)]
        self.held = [m for m in self.held if not (pred is None or pred(m))]
        for m in out:
            self._put(m, 0)
        return out

    def _enqueue(self, msg: Message) -> None:
        if self.record_messages:
            self.sent.append(msg)
        if msg.type is MessageType.TIMEOUT_NOW:
            self.timeout_now_sent[(msg.sender, msg.term)] = self.now
            self._log(f"{msg.sender} sends TIMEOUT_NOW to {msg.to} (term {msg.term})")
        if msg.to not in self.nodes:
            self._undeliverable(msg)
            return
        if (msg.sender, msg.to) in self.blocked:
            self._undeliverable(msg)
            return
        if self.hold_filter is not None and self.hold_filter(msg):
            self.held.append(msg)
            return
        if self.msg_filter is not None and not self.msg_filter(msg):
            self._lost(msg)
            return
        if self.drop_rate and self.rng.random() < self.drop_rate:
            self._lost(msg)
            return
        copies = 2 if self.dup_rate and self.rng.random() < self.dup_rate else 1
        for _ in range(copies):
            delay = self.rng.randint(0, self.max_delay) if self.max_delay else 0
            self._put(msg, delay)

    def _put(self, msg: Message, delay: int) -> None:
        self._seq += 1
        self.queue.append(_InFlight(self.now + delay, self._seq, msg))

    def _lost(self, msg: Message) -> None:
        # Silently lost on the wire: only a snapshot sender learns about it (a snapshot is
        # streamed, so the driver sees the stream fail).
        if msg.type is MessageType.SNAPSHOT and self.report_snapshots:
            self._report(msg.sender, msg.to, MessageType.SNAPSHOT_STATUS, reject=True)

    def _undeliverable(self, msg: Message) -> None:
        # The link is down: the transport notices (connection refused or timed out).
        if msg.type is MessageType.SNAPSHOT and self.report_snapshots:
            self._report(msg.sender, msg.to, MessageType.SNAPSHOT_STATUS, reject=True)
        elif self.report_unreachable:
            self._report(msg.sender, msg.to, MessageType.UNREACHABLE)

    def _report(self, node: NodeId, peer: NodeId, kind: MessageType, reject: bool = False) -> None:
        self.local.append(Message(kind, to=node, sender=peer, reject=reject))

    # ------------------------------------------------------------------ driving

    def process_ready(self, node: SimNode) -> bool:
        """Run one driver iteration for ``node``: persist, send, apply, advance."""
        raft = node.raft
        self._finish_writes(node, flush=False)
        if node.written:
            for index, term in node.written:
                raft.persisted(index, term)
            node.written.clear()
        if not raft.has_ready():
            return False
        rd = raft.ready()
        self._check_ready(node, rd)
        messages = sorted(rd.messages, key=lambda m: m.to)  # stable: per-link order kept
        if (rd.may_defer_persist and rd.entries and self.defer_leader_persist
                and self.rng.random() < self.defer_leader_persist):
            return self._process_deferred(node, rd, messages)
        self._finish_writes(node, flush=True)
        # Like node/driver.py, a leader sends before its own fsync (thesis §10.2.1).
        early = raft.role is Role.LEADER
        if early:
            for m in messages:
                self._enqueue(m)
            if rd.must_sync and self.crash_before_sync and (
                self.rng.random() < self.crash_before_sync
            ):
                self._log(f"{node.id} crashes after sending, before its fsync")
                self.crash(node.id)
                return True
        self._persist(node, rd)
        if self.crash_after_sync and self.rng.random() < self.crash_after_sync:
            self._log(f"{node.id} crashes after its fsync, before sending")
            self.crash(node.id)
            return True
        if not early:
            for m in messages:
                self._enqueue(m)
        if rd.snapshot is not None:
            self._restore(node, rd.snapshot)
        for entry in rd.committed_entries:
            self._apply(node, entry)
        for rs in rd.read_states:
            self._read_answered(node, rs)
        raft.advance()
        if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
            self._record_leader(node)
        self._observe_commit(node)
        if node.snapshot_every and raft.log.applied - raft.log.snapshot.meta.index >= (
            node.snapshot_every
        ) and raft.log.applied == node.applied_upto:
            data = f"{node.applied_upto}:{node.digest}".encode()
            snap = raft.create_snapshot(data)
            node.disk.compact(snap)
        self._check_conf(node)
        if node.raft.conf != node.conf_history[-1]:
            node.conf_history.append(node.raft.conf)
            self._log(f"{node.id} conf {_conf_text(node.raft.conf)}")
        for observe in self.on_ready:
            observe(node, rd)
        return True

    def _process_deferred(self, node: SimNode, rd: Ready, messages: list[Message]) -> bool:
        """A leader's batch written in the background: send, queue the write, apply what
        is committed (a majority holds it), advance; the write is reported when done."""
        raft = node.raft
        for m in messages:
            self._enqueue(m)
        if self.crash_before_sync and self.rng.random() < self.crash_before_sync:
            self._log(f"{node.id} crashes after sending, before its deferred write")
            self.crash(node.id)
            return True
        if rd.hard_state is not None:
            node.disk.unsaved = rd.hard_state
        hard_state, node.disk.unsaved = node.disk.unsaved, None
        due = self.now + self.rng.randint(0, self.defer_ticks)
        node.writes.append((due, hard_state, rd.entries))
        for entry in rd.committed_entries:
            self._apply(node, entry)
        for rs in rd.read_states:
            self._read_answered(node, rs)
        raft.advance(deferred=True)
        self._observe_commit(node)
        for observe in self.on_ready:
            observe(node, rd)
        return True

    def _finish_writes(self, node: SimNode, flush: bool) -> None:
        """Make due deferred writes durable, in order (all of them with ``flush``: the
        driver waits for them before any Ready that is not deferred)."""
        while node.writes and (flush or node.writes[0][0] <= self.now):
            _, hard_state, entries = node.writes.pop(0)
            disk = node.disk
            disk.entries = [e for e in disk.entries if e.index < entries[0].index]
            disk.entries.extend(e for e in entries if e.index > disk.snapshot.meta.index)
            if hard_state is not None:
                if hard_state.commit < disk.hard_state.commit:
                    self._violation(f"{node.id}: durable commit went back "
                                    f"{disk.hard_state.commit} -> {hard_state.commit}")
                disk.hard_state = hard_state
            node.written.append((entries[-1].index, entries[-1].term))

    def _persist(self, node: SimNode, rd: Ready) -> None:
        old = node.disk.hard_state
        node.disk.persist(rd)
        new = node.disk.hard_state
        if new.term < old.term:
            self._violation(f"{node.id}: durable term went back {old.term} -> {new.term}")
        if new.term == old.term and old.vote is not None and new.vote != old.vote:
            self._violation(
                f"{node.id}: voted twice in term {new.term}: {old.vote} then {new.vote}"
            )
        if new.commit < old.commit and rd.snapshot is None:
            self._violation(f"{node.id}: durable commit went back {old.commit} -> {new.commit}")

    def _check_ready(self, node: SimNode, rd: Ready) -> None:
        empty = not (rd.soft_state or rd.hard_state or rd.entries or rd.snapshot
                     or rd.messages or rd.committed_entries or rd.read_states)
        node.empty_readies = node.empty_readies + 1 if empty else 0
        if node.empty_readies >= 3:
            raise BusyLoop(self._describe_violation(
                f"{node.id}: has_ready() stays True but ready() is empty "
                f"(role {node.raft.role.name}); a driver would spin"), "busy-loop",
                {"node": node.id, "role": node.raft.role})
        if rd.entries:
            idx = [e.index for e in rd.entries]
            if idx != list(range(idx[0], idx[0] + len(idx))):
                self._violation(f"{node.id}: Ready entries not contiguous: {idx}")

    def _restore(self, node: SimNode, snap: Snapshot) -> None:
        index = snap.meta.index
        image = image_of(snap)
        known = self.digest_by_index.get(index)
        if known is None:
            self._violation(f"{node.id} restored a snapshot at {index} nobody applied")
        if image != known:
            self._violation(f"{node.id}: snapshot at {index} is not the image of the log")
        node.applied = {i: e for i, e in self.applied_by_index.items() if i <= index}
        node.applied_upto = index
        node.digest = image
        node.seen_commit = max(node.seen_commit, index)
        self._log(f"{node.id} restores snapshot @{index} t{snap.meta.term}")

    def _apply(self, node: SimNode, entry: Entry) -> None:
        if entry.index != node.applied_upto + 1:
            self._violation(
                f"{node.id} applied {entry.index} after {node.applied_upto} (gap or repeat)"
            )
        node.applied[entry.index] = entry
        node.applied_upto = entry.index
        node.digest = chain_digest(node.digest, entry)
        committed = self.committed_by_index.get(entry.index)
        if committed is not None and committed != entry:
            self._violation(
                f"state machine safety: {node.id} applies {entry} but {committed} was committed"
            )
        seen = self.applied_by_index.get(entry.index)
        if seen is None:
            self.applied_by_index[entry.index] = entry
            self.digest_by_index[entry.index] = node.digest
        elif seen != entry or self.digest_by_index[entry.index] != node.digest:
            self._violation(
                f"state machine safety: index {entry.index} applied as {seen} and {entry}"
            )

    def _observe_commit(self, node: SimNode) -> None:
        log = node.raft.log
        for index in range(max(node.seen_commit, log.offset) + 1, log.committed + 1):
            entry = log.entry(index)
            seen = self.committed_by_index.get(index)
            if seen is None:
                self.committed_by_index[index] = entry
            elif seen != entry:
                self._violation(
                    f"state machine safety: {node.id} committed {entry} at {index}, "
                    f"but {seen} was committed there"
                )
        node.seen_commit = max(node.seen_commit, log.committed)
        self._advance_conf_frontier()

    def _advance_conf_frontier(self) -> None:
        while (entry := self.committed_by_index.get(self._conf_frontier + 1)) is not None:
            self._conf_frontier += 1
            if entry.kind is not EntryKind.CONF_CHANGE:
                continue
            old = self.conf_log[-1][1]
            try:
                change = ConfChange.decode(entry.data)
            except ValueError:
                self._violation(f"committed conf change at {entry.index} does not decode")
            new = model_conf(old, change)
            if new is None:
                self._violation(
                    f"committed conf change {change} at {entry.index} is invalid "
                    f"from {_conf_text(old)}"
                )
            assert new is not None
            voters_changed = old.voters and not old.joint and new.voters != old.voters
            if voters_changed and new.voters_outgoing != old.voters:
                self._violation(f"voter change without joint consensus at {entry.index}")
            self.conf_log.append((entry.index, new))

    def conf_at(self, index: int) -> ConfState | None:
        """The configuration after applying the committed log up to ``index``."""
        if index > self._conf_frontier:
            return None
        for at, conf in reversed(self.conf_log):
            if at <= index:
                return conf
        return ConfState()

    def _check_conf(self, node: SimNode) -> None:
        expect = self.conf_at(max(node.applied_upto, node.boot_commit))
        if expect is not None and node.raft.conf != expect:
            self._violation(
                f"{node.id}: configuration {_conf_text(node.raft.conf)} but its log "
                f"(applied {node.applied_upto}) implies {_conf_text(expect)}"
            )

    def _record_leader(self, node: SimNode) -> None:
        term = node.raft.term
        prev = self.leaders_by_term.get(term)
        if prev is not None and prev != node.id:
            self._violation(f"election safety: {prev} and {node.id} both lead term {term}")
        self.leaders_by_term[term] = node.id
        self._log(f"{node.id} leads term {term} (last {node.raft.log.last_index()})")
        # leader completeness: every committed entry is in the new leader's log
        log = node.raft.log
        for index in range(log.offset + 1, max(self.committed_by_index, default=0) + 1):
            entry = self.committed_by_index.get(index)
            if entry is None:
                continue
            if index > log.last_index() or log.entry(index) != entry:
                self._violation(
                    f"leader completeness: {node.id} (term {term}) lacks committed {entry}"
                )

    def tick(self, n: int = 1) -> None:
        """Advance virtual time by ``n`` ticks, delivering messages as they come due."""
        for _ in range(n):
            self.now += 1
            for node in list(self.nodes.values()):
                if node.alive:
                    node.raft.tick()
            self.settle()
            self.check_invariants()

    def settle(self, limit: int = 10_000) -> None:
        """Deliver due messages and process Ready batches until quiet."""
        for _ in range(limit):
            progressed = False
            for node in list(self.nodes.values()):
                if node.alive and self.process_ready(node):
                    progressed = True
            if self.local:
                local, self.local = self.local, []
                for m in local:
                    target = self.nodes.get(m.to)
                    if target is not None and target.alive:
                        self._log(f"report {m.to}: {MessageType(m.type).name} {m.sender}"
                                  f"{' failed' if m.reject else ''}")
                        target.raft.step(m)
                progressed = True
            due = [f for f in self.queue if f.deliver_at <= self.now]
            if due:
                self.queue = [f for f in self.queue if f.deliver_at > self.now]
                due.sort()
                if self.max_delay:
                    self.rng.shuffle(due)
                for flight in due:
                    self._deliver(flight.msg)
                progressed = True
            if not progressed:
                return
        raise InvariantViolation(self._describe_violation("cluster did not settle"))

    def _deliver(self, msg: Message) -> None:
        target = self.nodes.get(msg.to)
        ok = target is not None and target.alive
        if msg.type is MessageType.SNAPSHOT and self.report_snapshots:
            self._report(msg.sender, msg.to, MessageType.SNAPSHOT_STATUS, reject=not ok)
        if not ok:
            if self.report_unreachable and msg.type is not MessageType.SNAPSHOT:
                self._report(msg.sender, msg.to, MessageType.UNREACHABLE)
            return
        assert target is not None
        if self.trace_enabled:
            self._log(describe(msg))
        target.raft.step(msg)

    # ------------------------------------------------------------------ helpers for tests

    def alive(self) -> list[SimNode]:
        """Live members, in a stable order."""
        return [n for n in self.nodes.values() if n.alive]

    def leader(self) -> SimNode | None:
        """The live leader with the highest term, if any."""
        leaders = [n for n in self.nodes.values() if n.alive and n.raft.role is Role.LEADER]
        return max(leaders, key=lambda n: n.raft.term, default=None)

    def wait_leader(self, max_ticks: int = 300) -> SimNode:
        """Tick until some live node leads and has committed in its term."""
        for _ in range(max_ticks):
            lead = self.leader()
            if lead is not None and lead.raft.log.term(lead.raft.log.committed) == lead.raft.term:
                return lead
            self.tick()
        raise AssertionError(f"no leader after {max_ticks} ticks (seed {self.seed})")

    def propose(self, data: bytes, max_ticks: int = 300) -> int:
        """Propose through the current leader and tick until applied by some member."""
        for _ in range(max_ticks):
            lead = self.wait_leader(max_ticks)
            try:
                index = lead.raft.propose(data)
            except Exception:
                self.tick()
                continue
            term = lead.raft.term
            for _ in range(max_ticks):
                self.settle()
                got = self.applied_by_index.get(index)
                if got is not None:
                    if got.term == term and got.data == data:
                        return index
                    break  # overwritten: retry
                self.tick()
        raise AssertionError(f"proposal {data!r} did not commit (seed {self.seed})")

    def change(self, change: ConfChange, max_ticks: int = 500) -> None:
        """Apply a membership change through the leader and wait until it and any
        automatic leave of the joint configuration are applied by the leader."""
        for _ in range(max_ticks):
            lead = self.wait_leader(max_ticks)
            target = model_conf(lead.raft.conf, change)
            try:
                lead.raft.propose_conf_change(change)
                break
            except Exception:
                self.tick()
        else:
            raise AssertionError(f"could not propose {change}")
        assert target is not None, change
        final = ConfState(voters=target.voters, learners=target.learners)
        for _ in range(max_ticks):
            self.settle()
            lead = self.leader()
            if lead is not None and lead.raft.conf == final:
                return
            self.tick()
        raise AssertionError(f"change {change} did not complete (seed {self.seed})")

    def read(self, node_id: NodeId, context: bytes) -> None:
        """Ask ``node_id`` for a ReadIndex; its answer is checked for linearizability."""
        self.reads[context] = max(self.committed_by_index, default=0)
        self.nodes[node_id].raft.read_index(context)

    def _read_answered(self, node: SimNode, rs: ReadState) -> None:
        node.read_states.append(rs)
        floor = self.reads.get(rs.context)
        self.answered_reads[rs.context] = rs.index
        if floor is not None and rs.index < floor:
            self._violation(
                f"ReadIndex: {node.id} answered read {rs.context!r} at {rs.index}, but "
                f"{floor} was committed before it was asked"
            )

    def check_invariants(self) -> None:
        """Log matching, ≤1 pending conf change per leader, and the leader lease."""
        alive = self.alive()
        for node in alive:
            log = node.raft.log
            if node.raft.role is Role.LEADER:
                pending = [
                    i for i in range(max(log.applied, log.offset) + 1, log.last_index() + 1)
                    if log.entry(i).kind is EntryKind.CONF_CHANGE
                ]
                if len(pending) > 1:
                    self._violation(f"{node.id} has {len(pending)} pending conf changes")
        for i, a in enumerate(alive):
            for b in alive[i + 1 :]:
                self._check_log_matching(a, b)
        if self.check_lease:
            self._check_lease(alive)

    def _check_lease(self, alive: list[SimNode]) -> None:
        for node in alive:
            if node.raft.role is not Role.LEADER:
                continue
            anchor = node.raft.lease_anchor_tick()
            if anchor is None:
                continue
            at = node.boot_time + anchor
            if at > self.now:
                self._violation(f"{node.id}: lease anchor {at} is in the future ({self.now})")
            if self.now >= at + self.election_ticks:
                continue
            for other in alive:
                if other is not node and other.raft.role is Role.LEADER and (
                    other.raft.term > node.raft.term
                ):
                    self._violation(
                        f"leader lease: {node.id} (term {node.raft.term}) holds a lease "
                        f"anchored at tick {at} until {at + self.election_ticks}, but "
                        f"{other.id} leads term {other.raft.term} at tick {self.now}",
                        "lease", holder=node.id, term=node.raft.term, anchor=at,
                        usurper=other.id, usurper_term=other.raft.term,
                    )

    def _check_log_matching(self, a: SimNode, b: SimNode) -> None:
        la, lb = a.raft.log, b.raft.log
        lo = max(la.offset, lb.offset) + 1
        hi = min(la.last_index(), lb.last_index())
        # find highest common index with equal term; everything below must be identical
        for index in range(hi, lo - 1, -1):
            if la.entry(index).term == lb.entry(index).term:
                sa = la.entries[lo - la.offset - 1 : index - la.offset]
                sb = lb.entries[lo - lb.offset - 1 : index - lb.offset]
                if sa != sb:
                    j = next(k for k, (x, y) in enumerate(zip(sa, sb, strict=True)) if x != y)
                    self._violation(
                        f"log matching: {a.id} and {b.id} agree at {index} "
                        f"but differ at {lo + j}"
                    )
                return

    def _describe_violation(self, what: str) -> str:
        tail = "\n".join(list(self.trace)[-80:])
        return f"seed {self.seed}, tick {self.now}: {what}\ntrace (last lines):\n{tail}"

    def _violation(self, what: str, kind: str = "", **info: object) -> None:
        raise InvariantViolation(self._describe_violation(what), kind, info)

    def _log(self, line: str) -> None:
        self.trace.append(f"[{self.now}] {line}")

    def status_text(self) -> str:
        """One line per member, for failure messages."""
        lines = []
        for n in self.nodes.values():
            r = n.raft
            lines.append(
                f"{n.id}: {'up' if n.alive else 'down'} {r.role.name} t{r.term} "
                f"last={r.log.last_index()} commit={r.log.committed} applied={r.log.applied} "
                f"conf={_conf_text(r.conf)}"
            )
        return "\n".join(lines)


def _conf_text(conf: ConfState) -> str:
    text = ",".join(sorted(conf.voters))
    if conf.joint:
        text += "|" + ",".join(sorted(conf.voters_outgoing))
    if conf.learners:
        text += " L:" + ",".join(sorted(conf.learners))
    return "{" + text + "}"


def describe(m: Message) -> str:
    """A one-line rendering of a message for traces."""
    extra = f" n={len(m.entries)}" if m.entries else ""
    if m.snapshot is not None:
        extra += f" snap@{m.snapshot.meta.index}"
    flag = " reject" if m.reject else ""
    return (
        f"{m.sender}->{m.to} {MessageType(m.type).name} t={m.term} i={m.index} "
        f"lt={m.log_term} c={m.commit}{extra}{flag}"
    )
