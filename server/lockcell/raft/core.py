"""The Raft consensus state machine: pure, deterministic, driven by tick/step/propose and Ready."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from lockcell.raft.confchange import ConfChangeError, apply_conf_change
from lockcell.raft.log import RaftLog
from lockcell.raft.tracker import (
    Progress,
    ProgressState,
    VoteResult,
    joint_index,
    quorum_active,
    vote_result,
)
from lockcell.raft.types import (
    ChangeOp,
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    MemberChange,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)

TRANSFER_CONTEXT = b"transfer"
"""Context of a campaign started by leadership transfer: it may cut a leader lease short."""


class RaftError(Exception):
    """Base of the errors the core raises to its caller."""


class NotLeaderError(RaftError):
    """The call needs the leader; ``leader`` is who this member believes leads (or None)."""

    def __init__(self, leader: NodeId | None) -> None:
        super().__init__(f"not the leader (leader: {leader})")
        self.leader = leader


class ProposalDroppedError(RaftError):
    """The leader cannot take proposals right now (e.g. a leadership transfer is running)."""


class ConfChangeInProgressError(RaftError):
    """Another membership change (or the leader's first no-op) has not been applied yet."""


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Tunables of one member's Raft core. Times are in ticks."""

    id: NodeId
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    max_inflight: int = 64
    max_msg_bytes: int = 1 << 20
    max_apply_bytes: int = 4 << 20
    pre_vote: bool = True
    check_quorum: bool = True
    snapshot_retain_entries: int = 1000


@dataclass(frozen=True, slots=True)
class FollowerStatus:
    """The leader's view of one member."""

    match: int
    next: int
    state: ProgressState
    learner: bool
    recent_active: bool


@dataclass(frozen=True, slots=True)
class RaftStatus:
    """A consistent picture of the core for status pages and tests."""

    id: NodeId
    term: int
    vote: NodeId | None
    leader: NodeId | None
    role: Role
    commit: int
    applied: int
    last_index: int
    conf: ConfState
    progress: dict[NodeId, FollowerStatus] = field(default_factory=dict)
    transferee: NodeId | None = None


@dataclass(slots=True)
class _PendingRead:
    round: int
    index: int
    context: bytes
    requester: NodeId


def bootstrap_entries(
    voters: Sequence[NodeId], context: str = ""
) -> tuple[HardState, tuple[Entry, ...]]:
    """What a brand-new cell persists before its first start: its initial voters at index 1.

    Every initial member must persist the same result, so the cell starts with one log.
    ``context`` travels with the change (the node layer puts member addresses there).
    """
    if not voters:
        raise ValueError("a cell needs at least one initial voter")
    change = ConfChange(
        tuple(MemberChange(ChangeOp.ADD_VOTER, v) for v in sorted(set(voters))), context
    )
    entry = Entry(term=1, index=1, kind=EntryKind.CONF_CHANGE, data=change.encode())
    return HardState(term=1, vote=None, commit=1), (entry,)


class Raft:
    """One member's Raft core. Not thread-safe; one driver owns it.

    Drive it with :meth:`tick` (logical time), :meth:`step` (inbound messages) and the
    proposal calls; collect work with :meth:`ready` and report it done with :meth:`advance`.
    """

    def __init__(
        self,
        config: RaftConfig,
        rng: random.Random,
        hard_state: HardState = HardState(),  # noqa: B008 - frozen value
        snapshot: Snapshot = Snapshot(),  # noqa: B008 - frozen value
        entries: Sequence[Entry] = (),
    ) -> None:
        if config.election_ticks <= config.heartbeat_ticks:
            raise ValueError("election_ticks must exceed heartbeat_ticks")
        self.config = config
        self.id = config.id
        self._rng = rng
        self.log = RaftLog(snapshot, entries, hard_state.commit)
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.leader: NodeId | None = None
        self.leader_commit = 0
        """The highest commit index a leader of this term has told us (readiness checks)."""
        self.role = Role.FOLLOWER
        self.conf = snapshot.meta.conf
        self._conf_applied_index = snapshot.meta.index
        # Committed membership changes are already in force: apply them now, so a
        # restarted member knows its configuration before it replays its log.
        for entry in self._committed_conf_changes(after=0):
            self._adopt_conf(entry)
        self.progress: dict[NodeId, Progress] = {}
        self._votes: dict[NodeId, bool] = {}
        self._pending_conf_index = 0
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._new_election_timeout()
        self._starting = True
        """Until an election timeout has passed since this core was built (or it follows a
        leader, whose own lease rule then applies), it votes for no one unless told to by
        a leadership transfer: a member that restarts may have acknowledged a leader's
        heartbeat just before, and that leader's lease counts on it not voting for a
        minimum election timeout after."""
        self.ticks = 0
        self.transferee: NodeId | None = None
        self._transfer_elapsed = 0
        self._round = 0
        self._round_ticks: dict[int, int] = {}
        self._acked_round: dict[NodeId, int] = {}
        self._pending_reads: list[_PendingRead] = []
        self._reads_before_commit: list[tuple[bytes, NodeId]] = []
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._need_flush = False
        self._need_heartbeat = False
        self._lease_forfeited = False
        self._leaving_at = 0
        self._commit_sent: dict[NodeId, int] = {}
        self._prev_hard = HardState(self.term, self.vote, self.log.committed)
        self._prev_soft = SoftState(None, Role.FOLLOWER)
        self._unadvanced: Ready | None = None
        self._reset_progress()

    # ------------------------------------------------------------------ public API

    def tick(self) -> None:
        """Advance logical time by one tick."""
        self.ticks += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def campaign(self) -> None:
        """Start an election now (as if the election timeout had fired) — unless, with
        CheckQuorum on, this member heard from a live leader within the election timeout:
        the leader's lease counts on members that acknowledged it not electing anyone."""
        if (
            self.config.check_quorum
            and self.leader is not None
            and self.leader != self.id
            and self._election_elapsed < self.config.election_ticks
        ):
            return
        self._hup(transfer=False)

    def propose(self, data: bytes) -> int:
        """Append application data to the log; returns its index (leader only)."""
        self._check_can_propose()
        return self._append_own(EntryKind.NORMAL, data)

    def propose_conf_change(self, change: ConfChange) -> int:
        """Propose a membership change; validated against the current configuration first."""
        self._check_can_propose()
        if self._pending_conf_index > self.log.applied:
            raise ConfChangeInProgressError(
                f"waiting for entry {self._pending_conf_index} to apply "
                f"(applied {self.log.applied})"
            )
        apply_conf_change(self.conf, change)  # raises ConfChangeError without mutating
        index = self._append_own(EntryKind.CONF_CHANGE, change.encode())
        self._pending_conf_index = index
        return index

    def read_index(self, context: bytes) -> None:
        """Request a linearizable read point; answered by a ReadState carrying ``context``."""
        if self.role is Role.LEADER:
            self._leader_read_index(context, self.id)
        elif self.leader is not None:
            self._send(Message(MessageType.READ_INDEX, to=self.leader, sender=self.id,
                               context=context))
        else:
            raise NotLeaderError(None)

    def transfer_leader(self, to: NodeId) -> None:
        """Hand leadership to ``to`` (forwarded to the leader if this member is not it)."""
        if self.role is Role.LEADER:
            self._leader_transfer(to)
        elif self.leader is not None:
            self._send(Message(MessageType.TRANSFER_LEADER, to=self.leader, sender=self.id,
                               context=to.encode()))
        else:
            raise NotLeaderError(None)

    def report_unreachable(self, peer: NodeId) -> None:
        """The driver could not deliver to ``peer``: stop streaming to it optimistically."""
        self.step(Message(MessageType.UNREACHABLE, to=self.id, sender=peer))

    def report_gone(self, peer: NodeId) -> None:
        """The driver saw ``peer``'s process go away: the link it dialled to us closed and
        its address now refuses connections. If it is our leader, campaign as soon as the
        promise not to vote that we gave it ends (an election timeout after we last heard
        from it) instead of after a random extra wait of up to another timeout. The
        promise itself stands, and with it the dead leader's lease; the members that saw
        it go campaign one tick apart, in id order, so they do not split the vote."""
        if self.role is Role.LEADER or peer != self.leader or not self.promotable():
            return
        others = sorted(voter for voter in self.conf.all_voters() if voter != peer)
        rank = others.index(self.id) if self.id in others else len(others)
        self._randomized_timeout = min(self._randomized_timeout,
                                       self.config.election_ticks + rank)

    def report_snapshot(self, peer: NodeId, ok: bool) -> None:
        """The driver finished (or failed) sending a snapshot to ``peer``."""
        self.step(Message(MessageType.SNAPSHOT_STATUS, to=self.id, sender=peer, reject=not ok))

    def create_snapshot(self, data: bytes) -> Snapshot:
        """Adopt a state-machine image taken at the applied index and compact the log."""
        snap = Snapshot(self.snapshot_meta(), data)
        self.adopt_snapshot(snap)
        return snap

    def snapshot_meta(self) -> SnapshotMeta:
        """What a state-machine image taken now describes: the applied index, its term
        and the configuration in force there."""
        index = self.log.applied
        if self._conf_applied_index > index:
            raise ValueError("the log is still being replayed; snapshot after it is applied")
        term = self.log.term(index)
        if term is None:
            raise ValueError(f"cannot snapshot at compacted index {index}")
        return SnapshotMeta(index=index, term=term, conf=self.conf)

    def adopt_snapshot(self, snapshot: Snapshot) -> bool:
        """Adopt an image built (perhaps elsewhere) from :meth:`snapshot_meta` and compact
        the log behind it; False, changing nothing, when a newer snapshot arrived meanwhile."""
        if snapshot.meta.index <= self.log.snapshot.meta.index:
            return False
        if self.log.term(snapshot.meta.index) != snapshot.meta.term:
            raise ValueError(f"snapshot at {snapshot.meta.index} term {snapshot.meta.term} "
                             "does not match the log")
        self.log.compact(snapshot, self.config.snapshot_retain_entries)
        return True

    def lease_anchor_tick(self) -> int | None:
        """Tick at which the newest heartbeat round a quorum acknowledged was sent.

        A quorum will neither elect another leader nor vote for one until a minimum
        election timeout after that moment, so the driver may treat the leader lease as
        valid until then (minus a clock-drift allowance). ``None`` when not leading or
        while a leadership transfer (which overrides leases) is running.
        """
        if self.role is not Role.LEADER or self.transferee is not None:
            return None
        if self._lease_forfeited or self._leaving_at:
            return None  # a TIMEOUT_NOW we sent may elect someone despite any lease
        if not self.config.check_quorum:
            return None  # only CheckQuorum's in-lease vote refusal makes a lease hold
        acked = dict(self._acked_round)
        acked[self.id] = self._round
        quorum_round = joint_index(self.conf, acked)
        if quorum_round <= 0:
            return None
        return self._round_ticks.get(quorum_round)

    def status(self) -> RaftStatus:
        """A snapshot of the core's state."""
        progress = {
            # Heard from in this election timeout or the last one: a reset by CheckQuorum
            # must not make a healthy follower look silent until its next response.
            node: FollowerStatus(p.match, p.next, p.state, p.learner,
                                 p.recent_active or p.active_last_window)
            for node, p in self.progress.items()
        } if self.role is Role.LEADER else {}
        return RaftStatus(
            id=self.id, term=self.term, vote=self.vote, leader=self.leader, role=self.role,
            commit=self.log.committed, applied=self.log.applied,
            last_index=self.log.last_index(), conf=self.conf, progress=progress,
            transferee=self.transferee,
        )

    def promotable(self) -> bool:
        """Whether this member may campaign (a voter in its current configuration)."""
        return self.conf.is_voter(self.id)

    # ------------------------------------------------------------------ Ready / advance

    def has_ready(self) -> bool:
        """Whether :meth:`ready` has work for the driver."""
        if self._unadvanced is not None:
            return False
        return bool(
            self._msgs
            or self._read_states
            or self._need_flush
            or self._need_heartbeat
            or self.log.pending_snapshot is not None
            or self.log.unstable_entries()
            or self.log.has_committed_to_apply()
            or self._hard_state() != self._prev_hard
            or self._soft_state() != self._prev_soft
        )

    def ready(self) -> Ready:
        """Collect the work the driver must do; call :meth:`advance` when it is done."""
        if self._unadvanced is not None:
            raise RuntimeError("ready() called twice without advance()")
        if self._need_flush:
            self._flush_appends()
        if self._need_heartbeat and self.role is Role.LEADER:
            self._broadcast_heartbeat()
        hard = self._hard_state()
        soft = self._soft_state()
        committed = self.log.committed_to_apply(self.config.max_apply_bytes)
        entries = self.log.unstable_entries()
        snapshot = self.log.pending_snapshot
        vote_changed = hard.term != self._prev_hard.term or hard.vote != self._prev_hard.vote
        # Membership takes effect at commit, so knowing that a change committed must
        # survive a crash (a member that forgot it could stay joint and need a removed
        # voter); other commit-index moves may be written lazily.
        commits_conf = any(
            self.log.entry(i).kind is EntryKind.CONF_CHANGE
            for i in range(max(self._prev_hard.commit, self.log.offset) + 1, hard.commit + 1)
        )
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            entries=entries,
            snapshot=snapshot,
            messages=tuple(self._msgs),
            committed_entries=committed,
            read_states=tuple(self._read_states),
            must_sync=bool(entries) or snapshot is not None or vote_changed or commits_conf,
            may_defer_persist=(self.role is Role.LEADER and snapshot is None
                               and not vote_changed and not commits_conf),
        )
        self._prev_hard = hard
        self._prev_soft = soft
        self._msgs = []
        self._read_states = []
        if committed:
            self.log.applying = committed[-1].index
        self._unadvanced = rd
        return rd

    def advance(self, *, deferred: bool = False) -> None:
        """The last Ready is durable, sent and applied.

        With ``deferred`` (allowed when the Ready says ``may_defer_persist``), its
        entries were handed to a background writer instead; :meth:`persisted` reports
        them durable later."""
        rd = self._unadvanced
        if rd is None:
            raise RuntimeError("advance() without ready()")
        if deferred and not rd.may_defer_persist:
            raise RuntimeError("this Ready must be durable before advance()")
        self._unadvanced = None
        entries = rd.entries
        if deferred:
            if entries:
                self.log.handed_out = max(self.log.handed_out, entries[-1].index)
            entries = ()
        if rd.snapshot is not None:
            if self.log.pending_snapshot is rd.snapshot:
                self.log.pending_snapshot = None
            self.log.applied = max(self.log.applied, rd.snapshot.meta.index)
            self.log.applying = max(self.log.applying, self.log.applied)
        if entries:
            last = entries[-1]
            self.log.stable_to(last.index, last.term)
        for entry in rd.committed_entries:
            if entry.kind is EntryKind.CONF_CHANGE and entry.index > self._conf_applied_index:
                self._adopt_conf(entry)
                self._on_conf_applied()
        if rd.committed_entries:
            self.log.applied = max(self.log.applied, rd.committed_entries[-1].index)
        if self.role is Role.LEADER:
            own = self.progress.get(self.id)
            if own is None or own.maybe_update(self.log.stable):
                self._maybe_commit()
            if (
                self.conf.joint
                and self.transferee is None
                and self._pending_conf_index <= self.log.applied
            ):
                self._pending_conf_index = self._append_own(EntryKind.CONF_CHANGE, b"")

    def persisted(self, index: int, term: int) -> None:
        """Entries up to ``index`` (``term`` there), handed out by a deferred
        :meth:`advance`, are durable now: count this member toward their commit."""
        self.log.stable_to(index, term)
        if self.role is Role.LEADER:
            own = self.progress.get(self.id)
            if own is not None and own.maybe_update(self.log.stable):
                self._maybe_commit()

    # ------------------------------------------------------------------ step

    def step(self, m: Message) -> None:
        """Process one inbound (or local) message."""
        if m.type in (MessageType.UNREACHABLE, MessageType.SNAPSHOT_STATUS):
            if self.role is Role.LEADER:
                self._step_leader(m)
            return
        if m.term == 0 and m.type in (MessageType.READ_INDEX, MessageType.TRANSFER_LEADER):
            self._step_role(m)
            return
        if m.term > self.term:
            if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
                forced = m.context == TRANSFER_CONTEXT
                in_lease = (
                    self.config.check_quorum
                    and (self.leader is not None or self._starting)
                    and self._election_elapsed < self.config.election_ticks
                )
                if in_lease and not forced:
                    return  # a leader is alive: do not let a stray candidate disrupt it
            if m.type is MessageType.PRE_VOTE:
                pass  # never change term on a pre-vote request
            elif m.type is MessageType.PRE_VOTE_RESPONSE and not m.reject:
                pass  # a granted pre-vote carries the term we would campaign at
            elif m.type in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT):
                self._become_follower(m.term, m.sender)
            else:
                self._become_follower(m.term, None)
        elif m.term < self.term:
            if m.type in (MessageType.APPEND, MessageType.HEARTBEAT) and (
                self.config.check_quorum or self.config.pre_vote
            ):
                # A stale leader: tell it our term so it steps down.
                self._send(Message(MessageType.APPEND_RESPONSE, to=m.sender, sender=self.id,
                                   term=self.term))
            elif m.type is MessageType.PRE_VOTE:
                self._send(Message(MessageType.PRE_VOTE_RESPONSE, to=m.sender, sender=self.id,
                                   term=self.term, reject=True))
            return
        if m.type in (MessageType.VOTE, MessageType.PRE_VOTE):
            self._handle_vote_request(m)
            return
        self._step_role(m)

    def _step_role(self, m: Message) -> None:
        if self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type is MessageType.PRE_VOTE
        can_vote = (
            self.vote == m.sender
            or (self.vote is None and self.leader is None)
            or (pre and m.term > self.term)
        )
        response = MessageType.PRE_VOTE_RESPONSE if pre else MessageType.VOTE_RESPONSE
        if can_vote and self._candidate_log_suffices(m.index, m.log_term):
            self._send(Message(response, to=m.sender, sender=self.id, term=m.term))
            if not pre:
                self._election_elapsed = 0
                self.vote = m.sender
        else:
            self._send(Message(response, to=m.sender, sender=self.id, term=self.term,
                               reject=True))

    def _candidate_log_suffices(self, last_index: int, last_term: int) -> bool:
        """Whether a candidate's log (ending at ``last_index``/``last_term``) may get our vote.

        A voter applies the up-to-date rule of Raft §5.4.1. A member that its committed
        log makes no voter (a leave removed it) is asked only by a candidate still in
        C_old,new that missed the commit of that leave; its own uncommitted entries must not
        stop that election (it never campaigns itself, so no leader could ever be elected
        once the other members have left), and it only needs the candidate to hold what it
        knows is committed: every later entry was committed by a majority of C_new, which
        the candidate's joint election must win under the plain rule as well.
        """
        if self._committed_conf().is_voter(self.id):
            return self.log.is_up_to_date(last_index, last_term)
        committed = self.log.committed
        committed_term = self.log.term(committed)
        if committed_term is None:
            return self.log.is_up_to_date(last_index, last_term)
        return (last_term, last_index) >= (committed_term, committed)

    def _committed_conf(self) -> ConfState:
        """The configuration with every committed membership change in force (applying
        may lag behind the commit index; the configuration in use follows applying)."""
        conf = self.conf
        for entry in self._committed_conf_changes(max(self._conf_applied_index,
                                                      self.log.applied)):
            conf = _conf_after(conf, entry)
        return conf

    def _committed_conf_changes(self, after: int) -> Iterator[Entry]:
        """The retained membership-change entries in (``after``, commit index], in order."""
        for index in range(max(after, self.log.offset) + 1, self.log.committed + 1):
            entry = self.log.entry(index)
            if entry.kind is EntryKind.CONF_CHANGE:
                yield entry

    # ------------------------------------------------------------------ follower

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is MessageType.APPEND:
            self._election_elapsed = 0
            self.leader = m.sender
            self.leader_commit = max(self.leader_commit, m.leader_commit)
            self._handle_append(m)
        elif t is MessageType.HEARTBEAT:
            self._election_elapsed = 0
            self.leader = m.sender
            self.leader_commit = max(self.leader_commit, m.leader_commit)
            self._handle_heartbeat(m)
        elif t is MessageType.SNAPSHOT:
            self._election_elapsed = 0
            self.leader = m.sender
            self._handle_snapshot(m)
        elif t is MessageType.TIMEOUT_NOW:
            if self.promotable():
                self._hup(transfer=True)
        elif t is MessageType.READ_INDEX:
            if self.leader is not None:
                self._send(Message(MessageType.READ_INDEX, to=self.leader, sender=m.sender,
                                   context=m.context))
        elif t is MessageType.READ_INDEX_RESPONSE:
            self._read_states.append(ReadState(m.index, m.context))
        elif t is MessageType.TRANSFER_LEADER and self.leader is not None:
            self._send(Message(MessageType.TRANSFER_LEADER, to=self.leader, sender=m.sender,
                               context=m.context))

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(MessageType.APPEND_RESPONSE, to=m.sender, sender=self.id,
                               index=self.log.committed))
            return
        last_new = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new is not None:
            self._send(Message(MessageType.APPEND_RESPONSE, to=m.sender, sender=self.id,
                               index=last_new, commit=self.log.committed))
            return
        hint = self.log.find_conflict_by_term(m.index, m.log_term)
        self._send(Message(MessageType.APPEND_RESPONSE, to=m.sender, sender=self.id,
                           index=m.index, reject=True, reject_hint=hint,
                           log_term=self.log.term(hint) or 0))

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(min(m.commit, self.log.last_index()))
        self._send(Message(MessageType.HEARTBEAT_RESPONSE, to=m.sender, sender=self.id,
                           index=m.index, commit=self.log.committed))

    def _handle_snapshot(self, m: Message) -> None:
        snap = m.snapshot
        if snap is None:
            return
        meta = snap.meta
        if meta.index <= self.log.committed:
            self._send(Message(MessageType.APPEND_RESPONSE, to=m.sender, sender=self.id,
                               index=self.log.committed))
            return
        if self.log.match_term(meta.index, meta.term):
            # We already hold this prefix: just learn that it is committed, and
            # acknowledge only what the snapshot vouches for (Figure 13).
            self.log.commit_to(meta.index)
        else:
            self.log.restore(snap)
            self.conf = meta.conf
            self._conf_applied_index = meta.index
            self._reset_progress()
        self._send(Message(MessageType.APPEND_RESPONSE, to=m.sender, sender=self.id,
                           index=meta.index, commit=self.log.committed))

    # ------------------------------------------------------------------ candidate

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if t in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT):
            self._become_follower(m.term, m.sender)
            self._step_follower(m)
            return
        expected = (
            MessageType.PRE_VOTE_RESPONSE
            if self.role is Role.PRE_CANDIDATE
            else MessageType.VOTE_RESPONSE
        )
        if t is not expected:
            return
        if m.sender in self.conf.all_voters():
            self._votes.setdefault(m.sender, not m.reject)
        result = vote_result(self.conf, self._votes)
        if result is VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign_for_real(transfer=False)
            else:
                self._become_leader()
        elif result is VoteResult.LOST:
            self._become_follower(self.term, None)

    # ------------------------------------------------------------------ leader

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t is MessageType.READ_INDEX:
            self._leader_read_index(m.context, m.sender)
            return
        if t is MessageType.TRANSFER_LEADER:
            self._leader_transfer(m.context.decode())
            return
        pr = self.progress.get(m.sender)
        if pr is None:
            return  # not a member (any more): ignore
        if t is MessageType.APPEND_RESPONSE:
            pr.recent_active = True
            pr.known_commit = max(pr.known_commit, m.commit)
            self._handle_append_response(m, pr)
            self._maybe_finish_leaving()
        elif t is MessageType.HEARTBEAT_RESPONSE:
            pr.recent_active = True
            pr.probe_sent = False
            pr.known_commit = max(pr.known_commit, m.commit)
            if (
                pr.state is ProgressState.REPLICATE
                and len(pr.inflight) >= self.config.max_inflight
            ):
                pr.free_first()  # appends or their acks may be lost: probe on
            self._maybe_finish_leaving()
            if m.index > self._acked_round.get(m.sender, 0):
                self._acked_round[m.sender] = m.index
                self._release_reads()
            if pr.match < self.log.last_index():
                self._send_append(m.sender, pr, send_if_empty=True)
        elif t is MessageType.SNAPSHOT_STATUS:
            if pr.state is ProgressState.SNAPSHOT:
                if m.reject:
                    pr.pending_snapshot = 0
                pr.become_probe()
                pr.probe_sent = True  # wait for the next heartbeat response before probing
        elif t is MessageType.UNREACHABLE and pr.state is ProgressState.REPLICATE:
            pr.become_probe()

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.reject:
            hint = m.reject_hint
            if m.log_term > 0:
                hint = self.log.find_conflict_by_term(hint, m.log_term)
            if m.index > pr.match and m.reject_hint < pr.match:
                # The follower's log ends before what it once acknowledged: it lost
                # entries (a damaged disk). Its match only held while they existed, so
                # replicate again from where its log really ends. (Commit never moves back.)
                pr.match = m.reject_hint
                pr.become_probe()
                self._send_append(m.sender, pr, send_if_empty=True)
                return
            if pr.maybe_decrease(m.index, hint):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.sender, pr, send_if_empty=True)
            return
        old_paused = pr.is_paused(self.config.max_inflight)
        updated = pr.maybe_update(m.index)
        if not updated and not (pr.state is ProgressState.PROBE and m.index == pr.match):
            pr.free_up_to(m.index)
            return
        if pr.state is ProgressState.PROBE:
            pr.become_replicate()
        elif pr.state is ProgressState.SNAPSHOT and pr.match >= pr.pending_snapshot:
            pr.become_probe()
            pr.become_replicate()
        else:
            pr.free_up_to(m.index)
        if self._maybe_commit():
            pass  # the flush at the next ready() sends entries and the new commit index
        elif old_paused or pr.next <= self.log.last_index():
            self._send_append(m.sender, pr, send_if_empty=False)
        if m.sender == self.transferee and pr.match == self.log.last_index():
            self._send_timeout_now(m.sender)

    def _leader_read_index(self, context: bytes, requester: NodeId) -> None:
        if self.log.term(self.log.committed) != self.term:
            # Thesis §6.4: serve reads only once an entry of this term is committed.
            self._reads_before_commit.append((context, requester))
            return
        voters = self.conf.all_voters()
        if voters == {self.id}:
            self._answer_read(self.log.committed, context, requester)
            return
        # Reads collected before the next flush share one heartbeat round.
        self._pending_reads.append(
            _PendingRead(self._round + 1, self.log.committed, context, requester)
        )
        self._need_heartbeat = True

    def _answer_read(self, index: int, context: bytes, requester: NodeId) -> None:
        if requester == self.id:
            self._read_states.append(ReadState(index, context))
        else:
            self._send(Message(MessageType.READ_INDEX_RESPONSE, to=requester, sender=self.id,
                               index=index, context=context))

    def _release_reads(self) -> None:
        acked = dict(self._acked_round)
        acked[self.id] = self._round
        quorum_round = joint_index(self.conf, acked)
        if self._pending_reads:
            while self._pending_reads and self._pending_reads[0].round <= quorum_round:
                read = self._pending_reads.pop(0)
                self._answer_read(read.index, read.context, read.requester)
        for old in [r for r in self._round_ticks if r < quorum_round]:
            del self._round_ticks[old]

    def _leader_transfer(self, to: NodeId) -> None:
        pr = self.progress.get(to)
        if pr is None or pr.learner or to not in self.conf.all_voters():
            return
        if to == self.id or self.transferee == to:
            return
        self.transferee = to
        self._transfer_elapsed = 0
        if pr.match == self.log.last_index():
            self._send_timeout_now(to)
        else:
            self._send_append(to, pr, send_if_empty=True)

    def _send_timeout_now(self, to: NodeId) -> None:
        """Tell ``to`` to campaign at once; from now on this leader claims no lease."""
        self._lease_forfeited = True
        self._send(Message(MessageType.TIMEOUT_NOW, to=to, sender=self.id))

    def _maybe_commit(self) -> bool:
        acked = {node: pr.match for node, pr in self.progress.items()}
        index = joint_index(self.conf, acked)
        # Raft §5.4.2: only entries of the current term commit by counting replicas.
        if index > self.log.committed and self.log.term(index) == self.term:
            self.log.commit_to(index)
            self._need_flush = True
            if self._reads_before_commit:
                waiting, self._reads_before_commit = self._reads_before_commit, []
                for context, requester in waiting:
                    self._leader_read_index(context, requester)
            return True
        return False

    # ------------------------------------------------------------------ replication

    def _send_append(self, to: NodeId, pr: Progress, send_if_empty: bool) -> bool:
        """Send what ``to`` needs next; True if a message was sent."""
        if to == self.id or pr.is_paused(self.config.max_inflight):
            return False
        prev_index = pr.next - 1
        prev_term = self.log.term(prev_index)
        if prev_term is None:
            return self._send_snapshot(to, pr)
        entries: list[Entry] = []
        if pr.next <= self.log.last_index():
            entries = self.log.slice(pr.next, self.log.last_index() + 1,
                                     self.config.max_msg_bytes)
        if not entries and not send_if_empty:
            return False
        commit = self.log.committed
        self._send(Message(MessageType.APPEND, to=to, sender=self.id, index=prev_index,
                           log_term=prev_term, entries=tuple(entries), commit=commit,
                           leader_commit=commit))
        self._commit_sent[to] = commit
        pr.sent_entries(entries[-1].index if entries else prev_index)
        return True

    def _send_snapshot(self, to: NodeId, pr: Progress) -> bool:
        if not pr.recent_active:
            return False
        snap = self.log.snapshot
        if snap.empty:
            return False
        self._send(Message(MessageType.SNAPSHOT, to=to, sender=self.id, snapshot=snap))
        pr.become_snapshot(snap.meta.index)
        return True

    def _flush_appends(self) -> None:
        """Send every follower what it needs: batches new entries and pipelines them."""
        self._need_flush = False
        if self.role is not Role.LEADER:
            return
        for node, pr in self.progress.items():
            if node == self.id:
                continue
            sent = False
            while self._send_append(node, pr, send_if_empty=False):
                sent = True
                if pr.state is not ProgressState.REPLICATE:
                    break
            # A commit index with nothing new to carry waits for the next heartbeat: an
            # extra append (and its answer) per commit would double a follower's work when
            # writes come one at a time, and followers need not apply at once (clients
            # reach the leader). Membership changes and a term's first entry are the
            # exception: members must learn those commits promptly.
            known = self._commit_sent.get(node, 0)
            if not sent and known < self._pending_conf_index <= min(pr.match,
                                                                    self.log.committed):
                self._send_append(node, pr, send_if_empty=True)

    def _broadcast_heartbeat(self) -> None:
        self._need_heartbeat = False
        self._round += 1
        self._round_ticks[self._round] = self.ticks
        for node, pr in self.progress.items():
            if node == self.id:
                continue
            commit = min(pr.match, self.log.committed)
            self._send(Message(MessageType.HEARTBEAT, to=node, sender=self.id, commit=commit,
                               index=self._round, leader_commit=self.log.committed))

    def _append_own(self, kind: EntryKind, data: bytes) -> int:
        index = self.log.last_index() + 1
        self.log.append([Entry(term=self.term, index=index, kind=kind, data=data)])
        self._need_flush = True
        return index

    def _check_can_propose(self) -> None:
        if self.role is not Role.LEADER:
            raise NotLeaderError(self.leader)
        if self.transferee is not None:
            raise ProposalDroppedError(f"leadership is moving to {self.transferee}")
        if self.id not in self.progress:
            raise ProposalDroppedError("this leader is being removed from the cell")

    # ------------------------------------------------------------------ time

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_ticks or self.leader is not None:
            self._starting = False  # the timeout passed, or a leader since then counts
        if self.promotable() and self._election_elapsed >= self._randomized_timeout:
            self._election_elapsed = 0
            self._hup(transfer=False)

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self.transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.config.election_ticks:
                self.transferee = None  # thesis §3.10: give up after an election timeout
        if self._election_elapsed >= self.config.election_ticks:
            self._election_elapsed = 0
            if self.config.check_quorum:
                active = {
                    node: (node == self.id or pr.recent_active)
                    for node, pr in self.progress.items()
                }
                if not quorum_active(self.conf, active) and not self._leaving_at:
                    # (A removed leader holds on while it hands over: it commits nothing
                    # and claims no lease, but only it can tell C_new that C_new is final.)
                    self._become_follower(self.term, None)
                    return
                for node, pr in self.progress.items():
                    pr.active_last_window = pr.recent_active
                    pr.recent_active = node == self.id
        if self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()

    def _new_election_timeout(self) -> int:
        return self.config.election_ticks + self._rng.randrange(self.config.election_ticks)

    # ------------------------------------------------------------------ role changes

    def _hup(self, transfer: bool) -> None:
        if self.role is Role.LEADER or not self.promotable():
            return
        # A committed but unapplied membership change may remove us: wait for it.
        after = max(self.log.applying, self._conf_applied_index)
        if next(self._committed_conf_changes(after), None) is not None:
            return
        if self.config.pre_vote and not transfer:
            self._become_pre_candidate()
        else:
            self._campaign_for_real(transfer)

    def _become_pre_candidate(self) -> None:
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self._randomized_timeout = self._new_election_timeout()
        self._votes = {self.id: True}
        self._send_vote_requests(MessageType.PRE_VOTE, self.term + 1, b"")
        if vote_result(self.conf, self._votes) is VoteResult.WON:
            self._campaign_for_real(transfer=False)

    def _campaign_for_real(self, transfer: bool) -> None:
        self._reset(self.term + 1)
        self.role = Role.CANDIDATE
        self.vote = self.id
        self.leader = None
        self._votes = {self.id: True}
        if vote_result(self.conf, self._votes) is VoteResult.WON:
            self._become_leader()
            return
        self._send_vote_requests(MessageType.VOTE, self.term,
                                 TRANSFER_CONTEXT if transfer else b"")

    def _send_vote_requests(self, kind: MessageType, term: int, context: bytes) -> None:
        for node in sorted(self.conf.all_voters()):
            if node == self.id:
                continue
            self._send(Message(kind, to=node, sender=self.id, term=term,
                               index=self.log.last_index(), log_term=self.log.last_term(),
                               context=context))

    def _become_follower(self, term: int, leader: NodeId | None) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader = leader

    def _become_leader(self) -> None:
        self._reset(self.term)
        self._lease_forfeited = False
        self.role = Role.LEADER
        self.leader = self.id
        own = self.progress.get(self.id)
        if own is not None:
            own.match = self.log.stable
            own.become_replicate()
        # The no-op of this term: commits earlier entries and gates reads and conf changes.
        self._pending_conf_index = self._append_own(EntryKind.NORMAL, b"")
        self._broadcast_heartbeat()

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
            self.leader_commit = 0
        self.leader = None
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._new_election_timeout()
        self.transferee = None
        self._votes = {}
        self._pending_reads = []
        self._reads_before_commit = []
        self._acked_round = {}
        self._round_ticks = {}
        self._commit_sent = {}
        self._need_heartbeat = False
        self._leaving_at = 0
        self._transfer_elapsed = 0
        self._reset_progress()

    def _reset_progress(self) -> None:
        last = self.log.last_index()
        self.progress = {}
        for node in self.conf.members():
            pr = Progress(last + 1, learner=not self.conf.is_voter(node))
            if node == self.id:
                pr.match = self.log.stable
            self.progress[node] = pr

    # ------------------------------------------------------------------ membership

    def _adopt_conf(self, entry: Entry) -> None:
        self._conf_applied_index = entry.index
        self.conf = _conf_after(self.conf, entry)

    def _on_conf_applied(self) -> None:
        last = self.log.last_index()
        members = self.conf.members()
        for node in list(self.progress):
            if node not in members:
                del self.progress[node]
                self._acked_round.pop(node, None)
        for node in members:
            pr = self.progress.get(node)
            if pr is None:
                pr = Progress(last + 1, learner=not self.conf.is_voter(node))
                if node == self.id:
                    pr.match = self.log.stable
                self.progress[node] = pr
            else:
                pr.learner = not self.conf.is_voter(node)
        if self.role is not Role.LEADER:
            return
        if self.transferee is not None and self.transferee not in self.conf.all_voters():
            self.transferee = None
        if not self.conf.is_voter(self.id):
            # Removed: keep leading (not counting ourselves) until a majority of the new
            # voters knows the change committed, else they could stay joint and need us.
            self._leaving_at = self._conf_applied_index
            self._need_flush = True
            self._maybe_finish_leaving()
            return
        self._maybe_commit()
        self._need_flush = True

    def _maybe_finish_leaving(self) -> None:
        """A removed leader hands over once a majority of C_new has the final commit."""
        if not self._leaving_at or self.role is not Role.LEADER:
            return
        informed = {n: (1 if pr.known_commit >= self._leaving_at else 0)
                    for n, pr in self.progress.items()}
        if joint_index(self.conf, informed) < 1:
            return
        last = self.log.last_index()
        best = max(
            (n for n in self.conf.voters if n in self.progress),
            key=lambda n: (self.progress[n].match, n),
            default=None,
        )
        if best is not None and self.progress[best].match == last:
            self._send_timeout_now(best)
        self._become_follower(self.term, None)

    # ------------------------------------------------------------------ helpers

    def _send(self, m: Message) -> None:
        if m.term == 0 and m.type not in (MessageType.READ_INDEX, MessageType.TRANSFER_LEADER):
            m = m.with_term(self.term)
        self._msgs.append(m)

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.leader, self.role)


def _conf_after(conf: ConfState, entry: Entry) -> ConfState:
    """``conf`` with the membership change of ``entry`` in force (an invalid change is a
    no-op on every member alike)."""
    try:
        return apply_conf_change(conf, ConfChange.decode(entry.data))
    except (ConfChangeError, ValueError):
        return conf
