"""Scenario tests: leadership transfer (thesis §3.10)."""

from __future__ import annotations

import pytest

from lockcell.raft.core import ProposalDroppedError
from lockcell.raft.types import MessageType, Role

from .sim import Cluster
from .support import followers, learner, sent, tick_until


def test_transfer_to_a_caught_up_follower_sends_timeout_now_and_it_wins_at_once() -> None:
    """Thesis §3.10 steps 2-3: once the target is up to date the leader sends TimeoutNow;
    the target starts an election immediately (no election timeout, no pre-vote) and wins
    the next term, even though every member heard the old leader recently."""
    cluster = Cluster(["a", "b", "c"], seed=1, record_messages=True)
    cluster.propose(b"w")
    lead = cluster.wait_leader()
    term = lead.raft.term
    target = followers(cluster, lead)[0]
    lead.raft.transfer_leader(target.id)
    cluster.settle()
    assert [m.to for m in sent(cluster, MessageType.TIMEOUT_NOW)] == [target.id]
    assert target.raft.role is Role.LEADER and target.raft.term == term + 1
    assert lead.raft.role is Role.FOLLOWER and lead.raft.leader == target.id
    assert not sent(cluster, MessageType.PRE_VOTE, sender=target.id)
    cluster.propose(b"after")


def test_transferee_catches_up_before_timeout_now() -> None:
    """Thesis §3.10 step 2: the leader first brings the target's log up to date; only then
    does it send TimeoutNow, so the target can win (its log is as up to date as any)."""
    cluster = Cluster(["a", "b", "c"], seed=2, record_messages=True)
    lead = cluster.wait_leader()
    target = followers(cluster, lead)[0]
    cluster.hold(lambda m: m.type is MessageType.APPEND and m.to == target.id)
    for i in range(5):
        cluster.propose(f"w{i}".encode())
    assert target.raft.log.last_index() < lead.raft.log.last_index()
    lead.raft.transfer_leader(target.id)
    cluster.tick(2)
    assert lead.raft.transferee == target.id
    assert not sent(cluster, MessageType.TIMEOUT_NOW)  # the target is behind
    cluster.hold_filter = None
    cluster.release()
    cluster.settle()
    (tn,) = sent(cluster, MessageType.TIMEOUT_NOW)
    assert tn.to == target.id
    assert target.raft.role is Role.LEADER
    assert all(target.raft.log.entry(i) == e for i, e in cluster.applied_by_index.items())


def test_proposals_are_refused_while_transferring() -> None:
    """Thesis §3.10: during a transfer the leader stops accepting client requests (they
    would be lost or have to be redirected); reads may still be placed."""
    cluster = Cluster(["a", "b", "c"], seed=3)
    lead = cluster.wait_leader()
    target = followers(cluster, lead)[0]
    cluster.isolate(target.id)
    lead.raft.transfer_leader(target.id)
    assert lead.raft.transferee == target.id
    last = lead.raft.log.last_index()
    with pytest.raises(ProposalDroppedError):
        lead.raft.propose(b"x")
    with pytest.raises(ProposalDroppedError):
        lead.raft.propose_conf_change(learner("z"))
    assert lead.raft.log.last_index() == last
    lead.raft.read_index(b"still-ok")


@pytest.mark.parametrize("who", ["learner", "unknown", "self"])
def test_transfer_to_a_non_voter_is_ignored(who: str) -> None:
    """Thesis §3.10 / DESIGN §2: only a voter can become leader; a transfer to a learner,
    to a stranger or to the leader itself is ignored and the leader carries on."""
    cluster = Cluster(["a", "b", "c"], seed=4, record_messages=True)
    cluster.add_node("l")
    cluster.change(learner("l"))
    lead = cluster.wait_leader()
    to = {"learner": "l", "unknown": "nobody", "self": lead.id}[who]
    lead.raft.transfer_leader(to)
    assert lead.raft.transferee is None
    cluster.tick(3)
    assert not sent(cluster, MessageType.TIMEOUT_NOW)
    assert cluster.leader() is lead
    lead.raft.propose(b"accepted")


def test_transfer_request_from_a_follower_is_forwarded() -> None:
    """A transfer asked of a follower is forwarded to the leader (TRANSFER_LEADER)."""
    cluster = Cluster(["a", "b", "c"], seed=5)
    lead = cluster.wait_leader()
    fol = followers(cluster, lead)
    fol[0].raft.transfer_leader(fol[1].id)
    cluster.settle()
    assert cluster.leader() is fol[1]


def test_transfer_times_out_and_the_leader_resumes() -> None:
    """Thesis §3.10: "If the transfer does not complete after an election timeout, the
    prior leader aborts the transfer and resumes accepting client requests"."""
    cluster = Cluster(["a", "b", "c"], seed=6)
    lead = cluster.wait_leader()
    target = followers(cluster, lead)[0]
    cluster.isolate(target.id)
    lead.raft.transfer_leader(target.id)
    tick_until(cluster, lambda: lead.raft.transferee is None, cluster.election_ticks + 1,
               "transfer aborted")
    assert lead.raft.role is Role.LEADER
    lead.raft.propose(b"resumed")


def test_transfer_gets_a_full_election_timeout() -> None:
    """Thesis §3.10: the prior leader aborts only "after an election timeout". A transfer
    started late in the leader's CheckQuorum period must still get the full timeout to
    bring the target up to date."""
    cluster = Cluster(["a", "b", "c"], seed=7)
    lead = cluster.wait_leader()
    target = followers(cluster, lead)[0]
    cluster.tick(cluster.election_ticks - 1)
    cluster.isolate(target.id)
    lead.raft.transfer_leader(target.id)
    lasted = tick_until(cluster, lambda: lead.raft.transferee is None,
                        2 * cluster.election_ticks, "transfer aborted")
    assert lasted >= cluster.election_ticks, f"transfer abandoned after {lasted} tick(s)"
