"""Scenario tests: ReadIndex linearizable reads and the leader lease (thesis ch. 6)."""

from __future__ import annotations

import pytest

from lockcell.raft.core import NotLeaderError
from lockcell.raft.types import Message, MessageType, Role

from .sim import Cluster
from .support import followers, lone_raft, make_leader, reads_for, tick_until


def test_read_index_covers_every_committed_write() -> None:
    """Thesis §6.4 steps 1-4: the leader records its commit index as the read index and
    answers after a heartbeat round confirms it still leads; the index covers every write
    committed before the read, whoever asked."""
    cluster = Cluster(["a", "b", "c"], seed=1)
    last = 0
    for i in range(6):
        last = cluster.propose(f"w{i}".encode())
    lead = cluster.wait_leader()
    cluster.read(lead.id, b"r1")
    assert not reads_for(lead, b"r1")  # not before the heartbeat round is acknowledged
    cluster.settle()
    (rs,) = reads_for(lead, b"r1")
    assert rs.index >= last
    assert lead.raft.log.applied >= rs.index  # servable now


def test_read_index_is_not_answered_without_a_quorum_heartbeat_round() -> None:
    """Thesis §6.4 step 3: a leader cut off from its followers cannot confirm it still
    leads, so it does not answer."""
    cluster = Cluster(["a", "b", "c"], seed=2)
    cluster.propose(b"w")
    lead = cluster.wait_leader()
    cluster.isolate(lead.id)
    cluster.read(lead.id, b"r")
    cluster.tick(cluster.election_ticks)
    assert not reads_for(lead, b"r")


def test_new_leader_answers_reads_only_after_its_no_op_commits() -> None:
    """Thesis §6.4 step 1: a new leader does not know which entries are committed until it
    commits an entry of its own term, so a read waits for its no-op."""
    cluster = Cluster(["a", "b", "c"], seed=3)
    writes = [cluster.propose(f"w{i}".encode()) for i in range(3)]
    old = cluster.wait_leader()
    cluster.crash(old.id)
    cluster.hold(lambda m: m.type is MessageType.APPEND)  # no entry of the new term lands
    new = None
    for _ in range(10 * cluster.election_ticks):
        cluster.tick()
        new = cluster.leader()
        if new is not None:
            break
    assert new is not None and new.raft.role is Role.LEADER
    noop = new.raft.log.last_index()
    cluster.read(new.id, b"r")
    cluster.tick(cluster.election_ticks // 2)  # heartbeats flow, the no-op does not
    assert new.raft.log.term(new.raft.log.committed) != new.raft.term
    assert not reads_for(new, b"r")
    cluster.hold_filter = None
    cluster.release()
    cluster.settle()
    (rs,) = reads_for(new, b"r")
    assert rs.index >= noop >= max(writes)


def test_read_index_across_a_leader_change_is_never_stale() -> None:
    """Thesis §6.4: a deposed leader that still believes it leads must not answer a read
    with its stale commit index -- neither a read it had pending when it was cut off nor
    one asked after the new leader committed newer writes. The new leader answers only
    after committing in its own term."""
    cluster = Cluster(["a", "b", "c", "d", "e"], seed=4)
    cluster.propose(b"before")
    old = cluster.wait_leader()
    cluster.read(old.id, b"pending")  # its heartbeat round never gets out
    cluster.isolate(old.id)
    new = None
    for _ in range(10 * cluster.election_ticks):
        cluster.tick()
        new = cluster.leader()
        if new is not None and new is not old:
            break
    assert new is not None and new is not old
    newer = cluster.propose(b"after")
    assert old.raft.role is Role.LEADER or old.raft.role is Role.FOLLOWER
    if old.raft.role is Role.LEADER:  # still believes it leads: ask it again
        cluster.read(old.id, b"late")
    cluster.tick(3 * cluster.election_ticks)
    assert old.raft.role is not Role.LEADER  # CheckQuorum
    cluster.heal()
    cluster.tick(2 * cluster.election_ticks)
    assert not reads_for(old, b"pending") and not reads_for(old, b"late")
    lead = cluster.wait_leader()
    cluster.read(lead.id, b"fresh")
    cluster.settle()
    (rs,) = reads_for(lead, b"fresh")
    assert rs.index >= newer and lead.raft.log.term(rs.index) == lead.raft.term


def test_follower_read_index_is_forwarded_to_the_leader() -> None:
    """Thesis §6.4 (end): a follower may serve reads: it asks the leader for the current
    read index, then serves once its own state machine has applied that far."""
    cluster = Cluster(["a", "b", "c"], seed=5)
    last = max(cluster.propose(f"w{i}".encode()) for i in range(4))
    lead = cluster.wait_leader()
    follower = followers(cluster, lead)[0]
    cluster.read(follower.id, b"f")
    cluster.settle()
    (rs,) = reads_for(follower, b"f")
    assert rs.index >= last
    assert not reads_for(lead, b"f")
    tick_until(cluster, lambda: follower.raft.log.applied >= rs.index, 3, "follower applies")


def test_read_index_without_a_known_leader_raises() -> None:
    """A member that knows no leader cannot place a read (the caller retries elsewhere)."""
    cluster = Cluster(["a", "b", "c"], seed=6)
    node = cluster.nodes["a"]
    assert node.raft.leader is None
    with pytest.raises(NotLeaderError):
        node.raft.read_index(b"x")


def test_leader_that_steps_down_with_a_read_pending_leaves_no_work_behind() -> None:
    """Ready contract (types.Ready): after a leader steps down, has_ready() must turn False
    once the driver has handled the batch -- otherwise the driver loop spins."""
    raft = lone_raft("a", ["a", "b", "c"])
    make_leader(raft)
    raft.step(Message(MessageType.HEARTBEAT_RESPONSE, to="a", sender="b", term=raft.term,
                      index=1))
    raft.step(Message(MessageType.APPEND_RESPONSE, to="a", sender="b", term=raft.term,
                      index=raft.log.last_index()))
    while raft.has_ready():
        raft.ready()
        raft.advance()
    assert raft.log.term(raft.log.committed) == raft.term
    raft.read_index(b"r")
    raft.step(Message(MessageType.APPEND_RESPONSE, to="a", sender="c", term=raft.term + 1))
    assert raft.role is Role.FOLLOWER
    rd = raft.ready()
    raft.advance()
    assert rd.hard_state is not None and rd.hard_state.term == raft.term
    for _ in range(3):  # whatever is left must drain in a few batches
        if not raft.has_ready():
            break
        raft.ready()
        raft.advance()
    assert not raft.has_ready(), "has_ready() stays True with nothing to hand out"


# ---------------------------------------------------------------------- leader lease


def test_lease_anchor_is_none_for_followers_and_set_for_a_confirmed_leader() -> None:
    """DESIGN §2 leader lease / thesis §6.4.1: only a leader whose heartbeat round a
    quorum acknowledged has a lease; its anchor is the tick that round was sent."""
    cluster = Cluster(["a", "b", "c"], seed=7)
    lead = cluster.wait_leader()
    cluster.tick(2)
    for node in followers(cluster, lead):
        assert node.raft.lease_anchor_tick() is None
    anchor = lead.raft.lease_anchor_tick()
    assert anchor is not None and anchor <= lead.raft.ticks
    assert lead.raft.ticks - anchor <= 1


def test_lease_anchor_advances_only_with_quorum_acknowledged_rounds() -> None:
    """Thesis §6.4.1: the lease is extended only by heartbeat rounds a majority
    acknowledged: with one of four followers answering (2 of 5) it stays put; with two
    (3 of 5) it follows the newest acknowledged round."""
    cluster = Cluster(["a", "b", "c", "d", "e"], seed=8)
    lead = cluster.wait_leader()
    cluster.tick(2)
    others = [n.id for n in followers(cluster, lead)]
    cluster.partition([lead.id, others[0]], others[1:])
    cluster.settle()
    frozen = lead.raft.lease_anchor_tick()
    assert frozen is not None
    for _ in range(cluster.election_ticks - 2):
        cluster.tick()
        if lead.raft.role is not Role.LEADER:
            break
        assert lead.raft.lease_anchor_tick() == frozen
    cluster.partition([lead.id, others[0], others[1]], others[2:])
    cluster.tick(2)
    assert lead.raft.role is Role.LEADER
    anchor = lead.raft.lease_anchor_tick()
    assert anchor is not None and anchor > frozen and lead.raft.ticks - anchor <= 1


def test_lease_anchor_is_none_during_a_transfer() -> None:
    """Thesis §3.10 / §6.4.1: a leadership transfer lets the target campaign without
    waiting for an election timeout, so the leader may not rely on its lease meanwhile."""
    cluster = Cluster(["a", "b", "c"], seed=9)
    lead = cluster.wait_leader()
    cluster.tick(2)
    assert lead.raft.lease_anchor_tick() is not None
    target = followers(cluster, lead)[0]
    cluster.isolate(target.id)  # the transfer cannot complete
    lead.raft.transfer_leader(target.id)
    assert lead.raft.transferee == target.id
    while lead.raft.transferee is not None:
        assert lead.raft.lease_anchor_tick() is None
        cluster.tick()


def test_lease_is_not_claimed_while_a_sent_timeout_now_can_still_elect_the_target() -> None:
    """DESIGN §2 leader lease: "the leader counts as leading ... only while a majority has
    acknowledged it within the minimum election timeout" -- the lease must imply no other
    leader can exist. A TIMEOUT_NOW (thesis §3.10) makes its target campaign at once and
    collect votes even from members that heard the leader recently. So once the leader
    sent one, abandoning the transfer on timeout must not make the lease valid again while
    that TIMEOUT_NOW may still be delivered (here it is delayed in the network)."""
    cluster = Cluster(["a", "b", "c"], seed=10, check_lease=False)
    lead = cluster.wait_leader()
    cluster.tick(2)
    target = followers(cluster, lead)[0]
    cluster.hold(lambda m: m.type is MessageType.TIMEOUT_NOW)
    lead.raft.transfer_leader(target.id)
    cluster.settle()
    assert len(cluster.held) == 1  # the target was caught up: TIMEOUT_NOW sent
    tick_until(cluster, lambda: lead.raft.transferee is None, 2 * cluster.election_ticks,
               "transfer abandoned")
    cluster.tick(1)
    anchor = lead.raft.lease_anchor_tick()
    cluster.hold_filter = None
    cluster.release()
    cluster.settle()
    assert target.raft.role is Role.LEADER  # the delayed TIMEOUT_NOW elected the target
    if anchor is not None:
        lease_until = lead.boot_time + anchor + cluster.election_ticks
        assert cluster.now >= lease_until, (
            f"{lead.id} claimed a lease until tick {lease_until}, but {target.id} leads "
            f"term {target.raft.term} at tick {cluster.now}")


def test_a_restarted_member_keeps_the_lease_it_may_have_acknowledged() -> None:
    """DESIGN §2 leader lease: a majority must not elect anyone for the minimum election
    timeout after acknowledging a leader. A member that acknowledged the newest round and
    then restarted has forgotten that it did; unless it waits an election timeout before
    voting, a member that lost touch with the leader earlier wins its vote at once and
    leads while the old leader still holds its lease (here: it would within one tick)."""
    cluster = Cluster(["a", "b", "c"], seed=11, check_lease=False)
    lead = cluster.wait_leader()
    cluster.tick(2)
    acker, loner = followers(cluster, lead)
    cluster.partition([lead.id, acker.id], [loner.id])
    cluster.tick(3 * cluster.election_ticks)  # the loner is long past its election timeout
    assert lead.raft.role is Role.LEADER
    anchor = lead.raft.lease_anchor_tick()
    assert anchor is not None
    lease_until = lead.boot_time + anchor + cluster.election_ticks
    cluster.partition([lead.id], [acker.id, loner.id])
    cluster.crash(acker.id)
    cluster.restart(acker.id)
    usurper = None
    for _ in range(4 * cluster.election_ticks):
        cluster.tick()
        usurper = next((n for n in cluster.alive()
                        if n.id != lead.id and n.raft.role is Role.LEADER), None)
        if usurper is not None:
            break
    assert usurper is not None, "the two reachable members never elected a leader"
    assert cluster.now >= lease_until, (
        f"{usurper.id} leads term {usurper.raft.term} at tick {cluster.now}, while "
        f"{lead.id}'s lease runs until tick {lease_until}")
