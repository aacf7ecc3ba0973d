"""A leader that writes its log in the background: commit, hand-out and reporting rules."""

from __future__ import annotations

import pytest

from lockcell.raft.core import Raft
from lockcell.raft.log import RaftLog
from lockcell.raft.types import Entry, Message, MessageType, Ready, Snapshot, SnapshotMeta

from .support import lone_raft, make_leader

VOTERS = ("a", "b", "c")


def _leader(voters: tuple[str, ...] = VOTERS) -> Raft:
    """A leader whose earlier batches are all durable (its no-op committed by acks)."""
    raft = lone_raft("a", voters)
    make_leader(raft)
    _settle(raft)
    for peer in voters[1:]:
        _ack(raft, peer, raft.log.last_index())
    _settle(raft)
    assert raft.log.committed == raft.log.last_index()
    return raft


def _settle(raft: Raft) -> list[Ready]:
    """ready/advance (synchronously durable) until quiet."""
    readies = []
    while raft.has_ready():
        rd = raft.ready()
        readies.append(rd)
        raft.advance()
    return readies


def _ack(raft: Raft, peer: str, index: int) -> None:
    raft.step(Message(MessageType.APPEND_RESPONSE, to=raft.id, sender=peer, term=raft.term,
                      index=index))


def _propose_deferred(raft: Raft, data: bytes) -> Ready:
    index = raft.propose(data)
    rd = raft.ready()
    assert rd.may_defer_persist
    assert [e.index for e in rd.entries] == [index]
    raft.advance(deferred=True)
    return rd


def test_followers_commit_a_batch_the_leader_is_still_writing() -> None:
    raft = _leader()
    rd = _propose_deferred(raft, b"x")
    entry = rd.entries[0]
    assert not raft.has_ready() or not raft.ready().entries  # handed out once
    assert raft.log.stable < entry.index
    _ack(raft, "b", entry.index)
    _ack(raft, "c", entry.index)
    assert raft.log.committed == entry.index  # two followers hold it: a majority
    readies = _settle(raft)
    assert [e.index for r in readies for e in r.committed_entries] == [entry.index]
    raft.persisted(entry.index, entry.term)
    assert raft.log.stable == entry.index
    assert raft.progress["a"].match == entry.index


def test_the_leader_counts_itself_only_once_its_write_is_durable() -> None:
    raft = _leader()
    rd = _propose_deferred(raft, b"x")
    entry = rd.entries[0]
    _ack(raft, "b", entry.index)
    assert raft.log.committed < entry.index  # b alone is no majority of three
    raft.persisted(entry.index, entry.term)
    assert raft.log.committed == entry.index


def test_a_lone_voter_commits_only_after_its_write() -> None:
    raft = _leader(("a",))
    rd = _propose_deferred(raft, b"x")
    entry = rd.entries[0]
    assert not any(r.committed_entries for r in _settle(raft))
    raft.persisted(entry.index, entry.term)
    committed = [e for r in _settle(raft) for e in r.committed_entries]
    assert [e.index for e in committed] == [entry.index]


def test_batches_handed_out_in_turn_are_not_handed_out_again() -> None:
    raft = _leader()
    first = _propose_deferred(raft, b"1").entries[0]
    second = _propose_deferred(raft, b"2").entries[0]
    assert second.index == first.index + 1
    raft.persisted(second.index, second.term)  # one write covered both
    assert raft.log.stable == second.index
    assert not raft.log.unstable_entries()


def test_only_a_leaders_own_batch_may_be_deferred() -> None:
    follower = lone_raft("b", VOTERS)
    follower.step(Message(MessageType.APPEND, to="b", sender="a", term=2, log_term=1, index=1,
                          entries=(Entry(2, 2, data=b"x"),), commit=1))
    rd = follower.ready()
    assert rd.entries and not rd.may_defer_persist
    with pytest.raises(RuntimeError):
        follower.advance(deferred=True)


def test_a_new_term_is_never_deferred() -> None:
    raft = _leader()
    _propose_deferred(raft, b"x")
    raft.step(Message(MessageType.HEARTBEAT, to="a", sender="b", term=raft.term + 1))
    rd = raft.ready()
    assert rd.hard_state is not None and rd.hard_state.term == raft.term
    assert not rd.may_defer_persist


def test_a_report_for_a_replaced_entry_is_ignored() -> None:
    log = RaftLog(Snapshot(), [Entry(1, 1), Entry(1, 2), Entry(1, 3)], committed=1)
    log.stable = 1
    log.handed_out = 3
    log.append([Entry(2, 2)])  # a new leader replaced 2..3
    assert log.handed_out == 1 and log.unstable_entries() == (Entry(2, 2),)
    log.stable_to(3, 1)
    log.stable_to(2, 1)
    assert log.stable == 1
    log.stable_to(2, 2)
    assert log.stable == 2


def test_a_report_for_an_entry_compacted_meanwhile_counts() -> None:
    log = RaftLog(Snapshot(), [Entry(1, 1), Entry(1, 2), Entry(1, 3)], committed=3)
    log.stable = 1
    log.applied = 3
    log.compact(Snapshot(SnapshotMeta(index=3, term=1)), 0)
    log.stable_to(2, 1)
    assert log.stable == 2

