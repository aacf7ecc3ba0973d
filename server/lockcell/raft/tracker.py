"""Per-follower replication progress, flow control, and (joint) quorum arithmetic."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable, Mapping

from lockcell.raft.types import ConfState, NodeId


class ProgressState(enum.Enum):
    """How the leader currently replicates to a follower."""

    PROBE = "probe"
    """Find the match point: one append at a time."""
    REPLICATE = "replicate"
    """Stream appends optimistically, bounded by the in-flight window."""
    SNAPSHOT = "snapshot"
    """A snapshot is on its way; send nothing else."""


class Progress:
    """The leader's view of one follower."""

    __slots__ = (
        "active_last_window",
        "inflight",
        "known_commit",
        "learner",
        "match",
        "next",
        "pending_snapshot",
        "probe_sent",
        "recent_active",
        "state",
    )

    def __init__(self, next_index: int, learner: bool) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()
        self.pending_snapshot = 0
        self.recent_active = True
        self.active_last_window = True
        """``recent_active`` as it stood when CheckQuorum last reset it (for status)."""
        self.learner = learner
        self.known_commit = 0

    def is_paused(self, max_inflight: int) -> bool:
        """Whether the leader must hold back further appends."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True

    def maybe_update(self, index: int) -> bool:
        """Record an acknowledgement up to ``index``; True if ``match`` advanced."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease(self, rejected: int, hint: int) -> bool:
        """Move ``next`` back after a rejection; False if the rejection is stale."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, hint + 1), self.match + 1, 1)
        self.probe_sent = False
        return True

    def become_probe(self) -> None:
        """Fall back to probing (after a rejection, a snapshot, or unreachability)."""
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        """Start streaming appends."""
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        """Wait for a snapshot at ``index`` to be installed."""
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.inflight.clear()

    def sent_entries(self, last: int) -> None:
        """Account for an append that ends at ``last``."""
        if self.state is ProgressState.REPLICATE:
            self.next = last + 1
            self.inflight.append(last)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def free_first(self) -> None:
        """Release the oldest in-flight slot (its append or ack may have been lost)."""
        if self.inflight:
            self.inflight.popleft()

    def free_up_to(self, index: int) -> None:
        """Release in-flight slots acknowledged up to ``index``."""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()


def majority_index(voters: Iterable[NodeId], acked: Mapping[NodeId, int]) -> int | None:
    """The largest value acknowledged by a majority of ``voters`` (None if no voters)."""
    values = sorted((acked.get(v, 0) for v in voters), reverse=True)
    if not values:
        return None
    return values[len(values) // 2]


def joint_index(conf: ConfState, acked: Mapping[NodeId, int]) -> int:
    """The largest value a majority of each half of ``conf`` has acknowledged."""
    incoming = majority_index(conf.voters, acked)
    outgoing = majority_index(conf.voters_outgoing, acked)
    candidates = [v for v in (incoming, outgoing) if v is not None]
    return min(candidates) if candidates else 0


class VoteResult(enum.Enum):
    """Outcome of an election tally."""

    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def _tally(voters: frozenset[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    if not voters:
        return VoteResult.WON
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    quorum = len(voters) // 2 + 1
    if granted >= quorum:
        return VoteResult.WON
    if rejected > len(voters) - quorum:
        return VoteResult.LOST
    return VoteResult.PENDING


def vote_result(conf: ConfState, votes: Mapping[NodeId, bool]) -> VoteResult:
    """Tally ``votes``: a joint configuration needs a majority in both halves."""
    if not conf.voters and not conf.voters_outgoing:
        return VoteResult.LOST
    results = [_tally(conf.voters, votes)]
    if conf.voters_outgoing:
        results.append(_tally(conf.voters_outgoing, votes))
    if VoteResult.LOST in results:
        return VoteResult.LOST
    if all(r is VoteResult.WON for r in results):
        return VoteResult.WON
    return VoteResult.PENDING


def quorum_active(conf: ConfState, active: Mapping[NodeId, bool]) -> bool:
    """Whether a quorum (in each half) has been heard from recently."""
    return vote_result(conf, active) is VoteResult.WON
