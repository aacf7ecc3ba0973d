"""Deterministic in-memory cluster for Raft tests: virtual time, a faulty network, crash-restart."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from lockcell.raft.confchange import apply_conf_change
from lockcell.raft.core import Raft, RaftConfig, bootstrap_entries
from lockcell.raft.types import (
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Message,
    MessageType,
    NodeId,
    Ready,
    Role,
    Snapshot,
)


class InvariantViolation(AssertionError):
    """A Raft safety property failed; the message names it."""


@dataclass
class Disk:
    """What a member has fsynced: survives crashes."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot = field(default_factory=Snapshot)
    entries: list[Entry] = field(default_factory=list)

    def persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            self.snapshot = rd.snapshot
            self.entries = [e for e in self.entries if e.index > rd.snapshot.meta.index]
            # a received snapshot replaces a log that does not contain it
            if not self.entries or self.entries[0].index != rd.snapshot.meta.index + 1:
                self.entries = []
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first]
            self.entries.extend(rd.entries)
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state


@dataclass
class SimNode:
    """One member: its Raft core, its disk and its applied state machine (a list)."""

    id: NodeId
    raft: Raft
    disk: Disk
    applied: dict[int, Entry] = field(default_factory=dict)
    snapshot_every: int = 0
    conf_history: list[ConfState] = field(default_factory=list)
    alive: bool = True


@dataclass(order=True)
class _InFlight:
    deliver_at: int
    seq: int
    msg: Message = field(compare=False)


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
        self.now = 0
        self.nodes: dict[NodeId, SimNode] = {}
        self.queue: list[_InFlight] = []
        self._seq = 0
        # network faults
        self.drop_rate = 0.0
        self.dup_rate = 0.0
        self.max_delay = 0
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.msg_filter: Callable[[Message], bool] | None = None
        # observed history for invariant checks
        self.leaders_by_term: dict[int, NodeId] = {}
        self.applied_by_index: dict[int, Entry] = {}
        self.trace_enabled = trace
        self.trace: list[str] = []
        initial = list(ids)
        for node_id in initial:
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
                    disk.snapshot, disk.entries)
        node = SimNode(node_id, raft, disk, snapshot_every=self.snapshot_every)
        node.conf_history.append(raft.conf)
        # the restored snapshot is the state machine's starting point
        return node

    def add_node(self, node_id: NodeId) -> SimNode:
        """A brand-new, empty member that waits to be added (does not bootstrap)."""
        node = self._boot(node_id, Disk())
        self.nodes[node_id] = node
        return node

    def crash(self, node_id: NodeId) -> None:
        """Stop a member; what it fsynced stays, everything else is gone."""
        node = self.nodes[node_id]
        node.alive = False
        self._log(f"crash {node_id}")

    def restart(self, node_id: NodeId) -> None:
        """Restart a crashed member from its disk."""
        old = self.nodes[node_id]
        node = self._boot(node_id, old.disk)
        node.applied = {i: e for i, e in old.applied.items() if i <= old.disk.snapshot.meta.index}
        self.nodes[node_id] = node
        self._log(f"restart {node_id}")

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

    def heal(self) -> None:
        """Remove all partitions and message faults."""
        self.blocked = set()
        self.drop_rate = self.dup_rate = 0.0
        self.max_delay = 0
        self.msg_filter = None
        self._log("heal")

    def _enqueue(self, msg: Message) -> None:
        if (msg.sender, msg.to) in self.blocked or msg.to not in self.nodes:
            return
        if self.msg_filter is not None and not self.msg_filter(msg):
            return
        if self.drop_rate and self.rng.random() < self.drop_rate:
            return
        copies = 2 if self.dup_rate and self.rng.random() < self.dup_rate else 1
        for _ in range(copies):
            delay = self.rng.randint(0, self.max_delay) if self.max_delay else 0
            self._seq += 1
            self.queue.append(_InFlight(self.now + delay, self._seq, msg))

    # ------------------------------------------------------------------ driving

    def process_ready(self, node: SimNode) -> bool:
        raft = node.raft
        if not raft.has_ready():
            return False
        rd = raft.ready()
        node.disk.persist(rd)
        for m in rd.messages:
            self._enqueue(m)
        if rd.snapshot is not None:
            snap_index = rd.snapshot.meta.index
            node.applied = {i: e for i, e in self.applied_by_index.items() if i <= snap_index}
        for entry in rd.committed_entries:
            self._apply(node, entry)
        raft.advance()
        if rd.soft_state is not None and rd.soft_state.role is Role.LEADER:
            self._record_leader(node)
        if node.snapshot_every and raft.log.applied - raft.log.snapshot.meta.index >= (
            node.snapshot_every
        ):
            snap = raft.create_snapshot(f"image@{raft.log.applied}".encode())
            node.disk.snapshot = snap
            node.disk.entries = [e for e in node.disk.entries if e.index > snap.meta.index]
        if node.raft.conf != node.conf_history[-1]:
            self._check_conf_transition(node, node.conf_history[-1], node.raft.conf)
            node.conf_history.append(node.raft.conf)
        return True

    def _apply(self, node: SimNode, entry: Entry) -> None:
        if entry.index in node.applied and node.applied[entry.index] != entry:
            self._violation(f"{node.id} applied two entries at {entry.index}")
        node.applied[entry.index] = entry
        seen = self.applied_by_index.get(entry.index)
        if seen is None:
            self.applied_by_index[entry.index] = entry
        elif seen != entry:
            self._violation(
                f"state machine safety: index {entry.index} applied as {seen} and {entry}"
            )

    def _record_leader(self, node: SimNode) -> None:
        term = node.raft.term
        prev = self.leaders_by_term.get(term)
        if prev is not None and prev != node.id:
            self._violation(f"election safety: {prev} and {node.id} both lead term {term}")
        self.leaders_by_term[term] = node.id
        self._log(f"{node.id} leads term {term}")
        # leader completeness: every applied entry up to its last index is in its log
        log = node.raft.log
        for index, entry in self.applied_by_index.items():
            if index <= log.offset:
                continue
            if index > log.last_index() or log.entry(index) != entry:
                self._violation(
                    f"leader completeness: {node.id} (term {term}) lacks committed {entry}"
                )

    def _check_conf_transition(self, node: SimNode, old: ConfState, new: ConfState) -> None:
        if old.voters == new.voters and not old.joint and not new.joint:
            return
        if not old.voters and not old.joint:
            return  # bootstrap or joining via snapshot
        if new.joint and new.voters_outgoing == old.voters and not old.joint:
            return  # entered joint
        if old.joint and not new.joint and new.voters == old.voters:
            return  # left joint
        if node.raft.log.snapshot.meta.conf == new:
            return  # jumped by snapshot
        self._violation(f"{node.id}: voter change without joint consensus: {old} -> {new}")

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
            due = [f for f in self.queue if f.deliver_at <= self.now]
            if due:
                self.queue = [f for f in self.queue if f.deliver_at > self.now]
                if self.max_delay:
                    self.rng.shuffle(due)
                else:
                    due.sort()
                for flight in due:
                    target = self.nodes.get(flight.msg.to)
                    if target is not None and target.alive:
                        if self.trace_enabled:
                            self._log(_describe(flight.msg))
                        target.raft.step(flight.msg)
                progressed = True
            if not progressed:
                return
        raise RuntimeError("cluster did not settle")

    # ------------------------------------------------------------------ helpers for tests

    def leader(self) -> SimNode | None:
        """The live leader with the highest term, if any."""
        leaders = [n for n in self.nodes.values() if n.alive and n.raft.role is Role.LEADER]
        return max(leaders, key=lambda n: n.raft.term, default=None)

    def wait_leader(self, max_ticks: int = 300) -> SimNode:
        """Tick until some live node leads; fail after ``max_ticks``."""
        for _ in range(max_ticks):
            lead = self.leader()
            if lead is not None and lead.raft.log.term(lead.raft.log.committed) == lead.raft.term:
                return lead
            self.tick()
        raise AssertionError(f"no leader after {max_ticks} ticks (seed {self.seed})")

    def propose(self, data: bytes, max_ticks: int = 300) -> int:
        """Propose through the current leader and tick until applied everywhere alive."""
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
            try:
                lead.raft.propose_conf_change(change)
                break
            except Exception:
                self.tick()
        else:
            raise AssertionError(f"could not propose {change}")
        target = apply_conf_change(lead.raft.conf, change)
        final = ConfState(voters=target.voters, learners=target.learners)
        for _ in range(max_ticks):
            self.tick()
            lead = self.leader()
            if lead is not None and lead.raft.conf == final:
                return
        raise AssertionError(f"change {change} did not complete (seed {self.seed})")

    def check_invariants(self) -> None:
        """Log matching and at most one pending configuration change in any leader's log."""
        alive = [n for n in self.nodes.values() if n.alive]
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

    def _check_log_matching(self, a: SimNode, b: SimNode) -> None:
        la, lb = a.raft.log, b.raft.log
        lo = max(la.offset, lb.offset) + 1
        hi = min(la.last_index(), lb.last_index())
        # find highest common index with equal term; everything below must be identical
        for index in range(hi, lo - 1, -1):
            if la.entry(index).term == lb.entry(index).term:
                for j in range(lo, index + 1):
                    if la.entry(j) != lb.entry(j):
                        self._violation(
                            f"log matching: {a.id} and {b.id} agree at {index} "
                            f"but differ at {j}"
                        )
                return

    def _violation(self, what: str) -> None:
        tail = "\n".join(self.trace[-60:])
        raise InvariantViolation(f"seed {self.seed}, tick {self.now}: {what}\ntrace:\n{tail}")

    def _log(self, line: str) -> None:
        self.trace.append(f"[{self.now}] {line}")
        if len(self.trace) > 5000:
            del self.trace[:1000]


def _describe(m: Message) -> str:
    extra = f" n={len(m.entries)}" if m.entries else ""
    flag = " reject" if m.reject else ""
    return (
        f"{m.sender}->{m.to} {MessageType(m.type).name} t={m.term} i={m.index} "
        f"lt={m.log_term} c={m.commit}{extra}{flag}"
    )
