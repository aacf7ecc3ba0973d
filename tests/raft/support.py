"""Helpers shared by the Raft scenario tests."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from lockcell.raft.core import Raft, RaftConfig, bootstrap_entries
from lockcell.raft.types import (
    ChangeOp,
    ConfChange,
    Entry,
    HardState,
    MemberChange,
    Message,
    MessageType,
    NodeId,
    ReadState,
    Role,
)

from .sim import Cluster, Disk, SimNode


def log_from_terms(voters: Sequence[NodeId], terms: Sequence[int]) -> list[Entry]:
    """A log whose entry i (1-based) has ``terms[i-1]``; index 1 is the bootstrap change.

    Entries with the same index and term are equal across logs built this way, as the Log
    Matching Property requires of real logs.
    """
    _, (boot,) = bootstrap_entries(voters)
    assert terms[0] == boot.term == 1
    return [boot] + [Entry(t, i, data=f"t{t}i{i}".encode()) for i, t in enumerate(terms, 1)
                     if i > 1]


def disk_with(voters: Sequence[NodeId], terms: Sequence[int], term: int,
              commit: int = 1, vote: NodeId | None = None) -> Disk:
    """A member's disk holding the log described by ``terms``."""
    return Disk(HardState(term=term, vote=vote, commit=commit), entries=log_from_terms(
        voters, terms))


def terms_of(node: SimNode) -> list[int]:
    """The terms of a member's retained log, index 1 first (no compaction expected)."""
    log = node.raft.log
    assert log.offset == 0
    return [e.term for e in log.entries]


def followers(cluster: Cluster, lead: SimNode) -> list[SimNode]:
    """Every other live member, in a stable order."""
    return [n for n in cluster.alive() if n.id != lead.id]


def learner(node: NodeId) -> ConfChange:
    return ConfChange((MemberChange(ChangeOp.ADD_LEARNER, node),))


def voter(node: NodeId) -> ConfChange:
    return ConfChange((MemberChange(ChangeOp.ADD_VOTER, node),))


def remove(*nodes: NodeId) -> ConfChange:
    return ConfChange(tuple(MemberChange(ChangeOp.REMOVE, n) for n in nodes))


def sent(cluster: Cluster, kind: MessageType, sender: NodeId | None = None,
         to: NodeId | None = None) -> list[Message]:
    """Messages of ``kind`` put on the wire so far (needs ``record_messages=True``)."""
    return [m for m in cluster.sent if m.type is kind
            and (sender is None or m.sender == sender) and (to is None or m.to == to)]


def reads_for(node: SimNode, context: bytes) -> list[ReadState]:
    return [rs for rs in node.read_states if rs.context == context]


def tick_until(cluster: Cluster, cond: object, max_ticks: int, what: str) -> int:
    """Tick until ``cond()`` holds; returns the ticks taken; fails after ``max_ticks``."""
    assert callable(cond)
    for n in range(max_ticks + 1):
        cluster.settle()
        if cond():
            return n
        if n < max_ticks:
            cluster.tick()
    raise AssertionError(f"{what}: not within {max_ticks} ticks\n{cluster.status_text()}")


def past_the_start(cluster: Cluster) -> None:
    """Let every member run for an election timeout, each cut off from the others. A
    member votes for no one in its first election timeout (it may have acknowledged a
    leader just before it restarted); scenarios that start elections at will begin after."""
    cluster.partition(*([node] for node in cluster.nodes))
    cluster.tick(cluster.election_ticks)
    cluster.heal()


def lone_raft(node: NodeId, voters: Iterable[NodeId], *, term: int = 1,
              entries: Sequence[Entry] | None = None, commit: int = 1,
              **config: object) -> Raft:
    """A single core outside any cluster, for unit-level message tests."""
    if entries is None:
        _, boot = bootstrap_entries(sorted(voters))
        entries = list(boot)
    return Raft(RaftConfig(id=node, **config), random.Random(7),  # type: ignore[arg-type]
                HardState(term=term, commit=commit), entries=entries)


def drain(raft: Raft) -> list[Message]:
    """Run ready/advance until quiet (no persistence): the messages it wanted to send."""
    out: list[Message] = []
    for _ in range(100):
        if not raft.has_ready():
            return out
        rd = raft.ready()
        out.extend(rd.messages)
        raft.advance()
    raise AssertionError("has_ready() never became False")


def make_leader(raft: Raft) -> None:
    """Drive a lone core to leadership by answering its (pre-)vote requests."""
    raft.campaign()
    for _ in range(2):
        for m in drain(raft):
            if m.type in (MessageType.PRE_VOTE, MessageType.VOTE):
                kind = (MessageType.PRE_VOTE_RESPONSE if m.type is MessageType.PRE_VOTE
                        else MessageType.VOTE_RESPONSE)
                raft.step(Message(kind, to=raft.id, sender=m.to, term=m.term))
    assert raft.role is Role.LEADER, raft.role

