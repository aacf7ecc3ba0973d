"""Scenario tests: stale-term messages and messages from unknown members (paper §5.1)."""

from __future__ import annotations

import dataclasses

import pytest

from lockcell.raft.core import Raft
from lockcell.raft.types import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Role,
    Snapshot,
    SnapshotMeta,
)

from .sim import Cluster
from .support import drain, lone_raft, make_leader, tick_until

ALL_TYPES = list(MessageType)
TERMLESS = (MessageType.READ_INDEX, MessageType.TRANSFER_LEADER,  # forwarded requests
            MessageType.SNAPSHOT_STATUS, MessageType.UNREACHABLE)  # local driver reports
TERMED = [k for k in ALL_TYPES if k not in TERMLESS]


def _role(role: Role) -> Raft:
    raft = lone_raft("a", ["a", "b", "c"], term=5, pre_vote=True)
    if role is Role.LEADER:
        make_leader(raft)
        drain(raft)
    elif role is Role.PRE_CANDIDATE:
        raft.campaign()
    elif role is Role.CANDIDATE:
        raft.campaign()
        for m in drain(raft):
            if m.type is MessageType.PRE_VOTE:
                raft.step(Message(MessageType.PRE_VOTE_RESPONSE, to="a", sender=m.to,
                                  term=m.term))
                break
    assert raft.role is role
    drain(raft)
    return raft


def _message(kind: MessageType, sender: str, term: int) -> Message:
    snap = Snapshot(SnapshotMeta(9, term, frozenset_conf()), b"9:0")
    return Message(kind, to="a", sender=sender, term=term, log_term=term, index=9,
                   entries=(Entry(term, 10, data=b"x"),) if kind is MessageType.APPEND else (),
                   commit=9, reject_hint=3,
                   snapshot=snap if kind is MessageType.SNAPSHOT else None,
                   context=b"b" if kind is MessageType.TRANSFER_LEADER else b"ctx")


def frozenset_conf() -> ConfState:  # a configuration naming only strangers
    return ConfState(voters=frozenset({"zz"}))


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name)
@pytest.mark.parametrize("kind", TERMED, ids=lambda k: k.name)
def test_stale_term_message_changes_nothing(role: Role, kind: MessageType) -> None:
    """Paper §5.1: "If a server receives a request with a stale term number, it rejects the
    request" -- whatever its type, a message from an earlier term neither crashes the core
    nor changes its term, vote, role or log; a stale leader's append is answered with the
    current term so that leader steps down."""
    raft = _role(role)
    before = (raft.term, raft.vote, raft.role, list(raft.log.entries), raft.log.committed)
    raft.step(_message(kind, "b", raft.term - 2))
    out = drain(raft)
    assert (raft.term, raft.vote, raft.role, list(raft.log.entries),
            raft.log.committed) == before
    if kind in (MessageType.APPEND, MessageType.HEARTBEAT):
        assert [(m.type, m.to, m.term) for m in out if m.type is MessageType.APPEND_RESPONSE] \
            == [(MessageType.APPEND_RESPONSE, "b", raft.term)]


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name)
@pytest.mark.parametrize("kind", ALL_TYPES, ids=lambda k: k.name)
def test_message_from_an_unknown_member_does_not_crash(role: Role, kind: MessageType) -> None:
    """A member that is not (or no longer) in the configuration may still reach us --
    responses, votes, reads, reports. None of it crashes the core, and none of it counts
    toward a leader's commit index or lease."""
    raft = _role(role)
    commit = raft.log.committed
    lease = raft.lease_anchor_tick()
    for term in (raft.term, raft.term + 1):
        if kind in (MessageType.APPEND, MessageType.HEARTBEAT, MessageType.SNAPSHOT) and (
            term == raft.term and role is Role.LEADER
        ):
            continue  # a second leader of our own term cannot exist
        msg = _message(kind, "zz", term)
        if kind in (MessageType.APPEND_RESPONSE, MessageType.HEARTBEAT_RESPONSE):
            msg = Message(kind, to="a", sender="zz", term=term, index=raft.log.last_index())
        raft.step(msg)
        drain(raft)
        if raft.role is Role.LEADER:
            assert raft.log.committed == commit
            assert raft.lease_anchor_tick() == lease
            assert "zz" not in raft.status().progress


def test_stale_leader_steps_down_when_answered_with_a_newer_term() -> None:
    """Paper §5.1: "If a candidate or leader discovers that its term is out of date, it
    immediately reverts to follower state"."""
    cluster = Cluster(["a", "b", "c"], seed=3)
    lead = cluster.wait_leader()
    cluster.isolate(lead.id)
    tick_until(cluster, lambda: any(n.raft.role is Role.LEADER and n is not lead
                                    for n in cluster.alive()),
               2 * cluster.election_ticks, "the majority elects")
    assert lead.raft.role is Role.LEADER  # CheckQuorum has not acted yet
    new = cluster.leader()
    assert new is not None and new is not lead and new.raft.term > lead.raft.term
    cluster.heal()
    cluster.tick(1)
    assert lead.raft.role is Role.FOLLOWER and lead.raft.term == new.raft.term


def test_with_term_changes_the_term_and_keeps_every_other_field() -> None:
    """``Message.with_term`` spells out the fields; a field added to Message and missed
    there would be dropped from every message a core sends."""
    snap = Snapshot(SnapshotMeta(index=3, term=2, conf=ConfState(voters=frozenset({"a"}))),
                    b"image")
    values = {"type": MessageType.APPEND, "to": "b", "sender": "a", "term": 0, "log_term": 4,
              "index": 9, "entries": (Entry(term=4, index=10, data=b"x"),), "commit": 8,
              "reject": True, "reject_hint": 7, "snapshot": snap, "context": b"ctx",
              "leader_commit": 11}
    names = {f.name for f in dataclasses.fields(Message)}
    assert set(values) == names, f"give the new fields a value here: {names - set(values)}"
    message = Message(**values)  # type: ignore[arg-type]
    for f in dataclasses.fields(Message):
        assert getattr(message, f.name) != f.default or f.name == "term", f.name
    assert message.with_term(6) == dataclasses.replace(message, term=6)
