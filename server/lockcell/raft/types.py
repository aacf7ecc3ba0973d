"""Value types exchanged between the Raft core, its driver, storage and transport."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

NodeId = str
"""A member's Raft id: minted once per data directory, never reused."""


class EntryKind(enum.IntEnum):
    """What a log entry carries."""

    NORMAL = 0
    """Application data (empty data is the leader's no-op)."""
    CONF_CHANGE = 1
    """An encoded :class:`ConfChange`."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry."""

    term: int
    index: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size(self) -> int:
        """Approximate encoded size, used for batching limits."""
        return len(self.data) + 24


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before a node answers: current term, vote and commit index."""

    term: int = 0
    vote: NodeId | None = None
    commit: int = 0


class ChangeOp(enum.IntEnum):
    """One membership operation."""

    ADD_VOTER = 0
    """Add a voter, or promote a learner to voter."""
    ADD_LEARNER = 1
    """Add a non-voting learner (a voter cannot be demoted this way)."""
    REMOVE = 2
    """Remove a voter or learner."""


@dataclass(frozen=True, slots=True)
class MemberChange:
    """A single membership operation on one node."""

    op: ChangeOp
    node: NodeId


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A membership change proposal.

    Changes that alter the voter set enter a joint configuration (C_old,new) that the
    leader leaves automatically once it is committed. An empty change list leaves a
    joint configuration explicitly. ``context`` is opaque to Raft; the node layer uses it
    to replicate the new members' addresses with the change itself.
    """

    changes: tuple[MemberChange, ...] = ()
    context: str = ""

    def encode(self) -> bytes:
        """Encode as compact JSON."""
        doc: dict[str, object] = {"c": [[c.op.value, c.node] for c in self.changes]}
        if self.context:
            doc["x"] = self.context
        return json.dumps(doc, separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        """Decode what :meth:`encode` wrote; raises ``ValueError`` on malformed input."""
        if not data:
            return ConfChange(())
        try:
            doc = json.loads(data)
            pairs = doc["c"]
            if not isinstance(pairs, list):
                raise ValueError("changes must be a list")
            context = doc.get("x", "")
            changes: list[MemberChange] = []
            for op, node in pairs:
                if type(op) is not int or type(node) is not str or not node:
                    raise ValueError(f"bad member change {op!r}:{node!r}")
                changes.append(MemberChange(ChangeOp(op), node))
        except (KeyError, TypeError, AttributeError, UnicodeDecodeError, OverflowError,
                RecursionError) as exc:
            raise ValueError(f"malformed membership change: {exc}") from exc
        if not isinstance(context, str):
            raise ValueError("malformed membership change context")
        return ConfChange(tuple(changes), context)


@dataclass(frozen=True, slots=True)
class ConfState:
    """A cluster configuration.

    ``voters_outgoing`` is non-empty only in a joint configuration; then both the
    incoming ``voters`` and the outgoing set must reach a majority.
    """

    voters: frozenset[NodeId] = frozenset()
    voters_outgoing: frozenset[NodeId] = frozenset()
    learners: frozenset[NodeId] = frozenset()

    @property
    def joint(self) -> bool:
        """Whether this is a joint configuration."""
        return bool(self.voters_outgoing)

    def all_voters(self) -> frozenset[NodeId]:
        """Every node that votes in at least one half of the configuration."""
        return self.voters | self.voters_outgoing

    def members(self) -> frozenset[NodeId]:
        """Every node in the configuration, voting or not."""
        return self.voters | self.voters_outgoing | self.learners

    def is_voter(self, node: NodeId) -> bool:
        """Whether ``node`` votes in either half."""
        return node in self.voters or node in self.voters_outgoing


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a snapshot sits in the log and the configuration at that point."""

    index: int = 0
    term: int = 0
    conf: ConfState = field(default_factory=ConfState)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state-machine image covering the log up to and including ``meta.index``."""

    meta: SnapshotMeta = field(default_factory=SnapshotMeta)
    data: bytes = b""

    @property
    def empty(self) -> bool:
        """Whether this is the zero snapshot (nothing compacted yet)."""
        return self.meta.index == 0


class MessageType(enum.IntEnum):
    """Raft message kinds exchanged between members."""

    APPEND = 1
    APPEND_RESPONSE = 2
    VOTE = 3
    VOTE_RESPONSE = 4
    PRE_VOTE = 5
    PRE_VOTE_RESPONSE = 6
    HEARTBEAT = 7
    HEARTBEAT_RESPONSE = 8
    SNAPSHOT = 9
    TIMEOUT_NOW = 10
    READ_INDEX = 11
    READ_INDEX_RESPONSE = 12
    TRANSFER_LEADER = 13
    SNAPSHOT_STATUS = 14
    """Local only: the driver reports the outcome of sending a snapshot."""
    UNREACHABLE = 15
    """Local only: the driver reports that a peer could not be reached."""


@dataclass(frozen=True, slots=True)
class Message:
    """A Raft message. Fields not used by a message type keep their defaults."""

    type: MessageType
    to: NodeId
    sender: NodeId
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: tuple[Entry, ...] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    snapshot: Snapshot | None = None
    context: bytes = b""
    leader_commit: int = 0
    """On APPEND and HEARTBEAT: the leader's own commit index (``commit`` may be capped at
    what the follower is known to hold); a follower uses it to tell whether it caught up."""

    def with_term(self, term: int) -> Message:
        """This message at ``term`` (every message a core sends passes here, and
        ``dataclasses.replace`` costs several times a plain construction)."""
        return Message(self.type, self.to, self.sender, term, self.log_term, self.index,
                       self.entries, self.commit, self.reject, self.reject_hint,
                       self.snapshot, self.context, self.leader_commit)


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the applied index reaches ``index``."""

    index: int
    context: bytes


class Role(enum.Enum):
    """A member's Raft role."""

    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the driver is told about when it changes."""

    leader: NodeId | None
    role: Role


@dataclass(frozen=True, slots=True)
class Ready:
    """Work the driver must do, in order: persist, send, apply, then ``advance``.

    - ``hard_state`` (when changed), ``snapshot`` (when one was received) and
      ``entries`` must be durable (one fsync) before any of ``messages`` is sent,
      except that a leader may send its ``messages`` before its own fsync completes:
      it counts itself toward a commit only once they are durable.
    - ``committed_entries`` are safe to apply once this batch is durable (those at or
      below the log's stable index before this batch are safe at once). A leader's
      committed entries are safe at once: a majority holds them durably.
    - With ``may_defer_persist``, the driver may instead hand ``hard_state`` and
      ``entries`` to a background writer, send, apply, call ``advance(deferred=True)``
      and report the write with :meth:`Raft.persisted` when it is durable; writes
      must reach the disk in the order they were handed out, and all of them must be
      durable before the driver persists any later Ready that is not deferred.
    - ``read_states`` can be served when the applied index reaches their index.
    """

    soft_state: SoftState | None = None
    hard_state: HardState | None = None
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    messages: tuple[Message, ...] = ()
    committed_entries: tuple[Entry, ...] = ()
    read_states: tuple[ReadState, ...] = ()
    must_sync: bool = False
    """Whether this batch needs an fsync before its messages go out: entries, a snapshot,
    or a new term or vote. A hard state that only moves the commit index may be written
    lazily (a restarted member re-learns its commit index from the leader)."""
    may_defer_persist: bool = False
    """A leader's batch of its own new entries (no snapshot, no new term or vote, no
    membership commit) whose durability may complete after ``advance``."""
