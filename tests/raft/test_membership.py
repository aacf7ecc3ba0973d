"""Scenario tests: membership changes -- learners, joint consensus, removal (thesis ch. 4)."""

from __future__ import annotations

import pytest

from lockcell.raft.confchange import ConfChangeError, apply_conf_change
from lockcell.raft.core import ConfChangeInProgressError
from lockcell.raft.types import (
    ChangeOp,
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    MemberChange,
    Message,
    MessageType,
    Ready,
    Role,
)

from .sim import Cluster, SimNode
from .support import followers, learner, lone_raft, remove, sent, tick_until, voter

V = frozenset


def _catch_up(cluster: Cluster, node: SimNode, max_ticks: int = 30) -> None:
    def done() -> bool:
        lead = cluster.leader()
        return lead is not None and node.raft.log.applied == lead.raft.log.committed == (
            lead.raft.log.last_index())

    tick_until(cluster, done, max_ticks, f"{node.id} catches up")


def test_learner_catches_up_without_voting_or_counting_then_is_promoted_via_joint() -> None:
    """Thesis §4.2.1: a new server joins as a non-voting learner and catches up first; it
    neither votes nor counts toward commitment. Promoting it changes the voter set, so it
    goes through the joint configuration C_old,new (§4.3) and then C_new."""
    cluster = Cluster(["a", "b", "c"], seed=1, record_messages=True)
    for i in range(8):
        cluster.propose(f"w{i}".encode())
    d = cluster.add_node("d")
    cluster.change(learner("d"))
    _catch_up(cluster, d)
    e = cluster.add_node("e")
    cluster.change(learner("e"))
    _catch_up(cluster, e)
    lead = cluster.wait_leader()
    assert lead.raft.conf == ConfState(voters=V("abc"), learners=V("de"))
    assert d.conf_history[-1] == lead.raft.conf
    # d never campaigns, even cut off for a long time, and nobody asks for its vote
    cluster.isolate("d")
    cluster.tick(5 * cluster.election_ticks)
    assert d.raft.role is Role.FOLLOWER and not d.raft.promotable()
    cluster.heal()
    votes = (MessageType.PRE_VOTE, MessageType.VOTE)
    assert not [m for m in cluster.sent if m.type in votes and {"d", "e"} & {m.sender, m.to}]
    # learners acknowledge but do not count: with two voters down, the leader and both
    # learners (3 of 5 members) hold the entry, yet it does not commit
    lead = cluster.wait_leader()
    down = [n.id for n in followers(cluster, lead) if n.id not in ("d", "e")]
    for x in down:
        cluster.crash(x)
    index = lead.raft.propose(b"needs-a-voter")
    cluster.tick(3)
    assert d.raft.log.last_index() >= index and e.raft.log.last_index() >= index
    assert lead.raft.log.committed < index
    cluster.restart(down[0])
    tick_until(cluster, lambda: lead.raft.log.committed >= index, 10, "commit with a voter")
    cluster.restart(down[1])
    cluster.change(remove("e"))
    # promotion: C_old = {a,b,c} -> C_old,new = {a,b,c,d | a,b,c} -> C_new = {a,b,c,d}
    cluster.change(voter("d"))
    joint = ConfState(voters=V("abcd"), voters_outgoing=V("abc"))
    final = ConfState(voters=V("abcd"))
    committed = [conf for _, conf in cluster.conf_log]
    assert committed[-3:] == [ConfState(voters=V("abc"), learners=V("d")), joint, final]
    lead = cluster.wait_leader()
    assert lead.conf_history[-2:] == [joint, final]
    for node in (cluster.nodes[x] for x in "abcd"):
        tick_until(cluster, lambda n=node: n.raft.conf == final, 20, f"{node.id} adopts C_new")


def test_learner_only_changes_apply_directly() -> None:
    """DESIGN §2 / thesis §4.2.1: adding or removing a learner does not change any
    majority, so it takes effect directly, without a joint configuration."""
    cluster = Cluster(["a", "b", "c"], seed=2)
    cluster.add_node("l")
    cluster.change(learner("l"))
    cluster.change(remove("l"))
    for node in (cluster.nodes[x] for x in "abc"):
        assert not any(c.joint for c in node.conf_history)
        assert node.raft.conf == ConfState(voters=V("abc"))


def _joint_setup() -> tuple[Cluster, SimNode, list[str]]:
    cluster = Cluster(["a", "b", "c"], seed=3)
    for new in ("d", "e"):
        cluster.add_node(new)
        cluster.change(learner(new))
    for new in ("d", "e"):
        _catch_up(cluster, cluster.nodes[new])
    lead = cluster.wait_leader()
    old = sorted(x for x in "abc" if x != lead.id)
    return cluster, lead, old


def test_joint_consensus_needs_both_majorities() -> None:
    """Thesis §4.3: in C_old,new, agreement (for elections and commitment) requires
    separate majorities from both C_old and C_new. Replace two of three voters: while
    joint, the new majority {leader, d, e} alone cannot commit anything -- not even the
    leave entry; as soon as one old voter is back, everything commits and the cell leaves
    to C_new."""
    cluster, lead, old = _joint_setup()
    change = ConfChange((MemberChange(ChangeOp.ADD_VOTER, "d"),
                         MemberChange(ChangeOp.ADD_VOTER, "e"),
                         *(MemberChange(ChangeOp.REMOVE, x) for x in old)))
    joint = ConfState(voters=V({lead.id, "d", "e"}), voters_outgoing=V("abc"))
    # once the leader is joint, the two outgoing-only voters are cut off
    cluster.msg_filter = lambda m: not (lead.raft.conf.joint and (
        m.to in old or m.sender in old))
    lead.raft.propose_conf_change(change)
    tick_until(cluster, lambda: lead.raft.conf == joint, 10, "leader enters C_old,new")
    index = lead.raft.propose(b"while-joint")
    cluster.tick(3 * cluster.election_ticks // 2)
    assert lead.raft.role is Role.LEADER and lead.raft.conf == joint
    for x in ("d", "e"):
        assert cluster.nodes[x].raft.log.last_index() >= index  # the new majority has it
    assert lead.raft.log.committed < index  # ... but the old majority does not
    assert index not in cluster.committed_by_index
    cluster.msg_filter = None
    cluster.blocked = {(old[1], n) for n in cluster.nodes} | {(n, old[1]) for n in cluster.nodes}
    tick_until(cluster, lambda: lead.raft.conf == ConfState(voters=V({lead.id, "d", "e"})),
               20, "leader leaves to C_new")
    assert cluster.committed_by_index[index].data == b"while-joint"
    assert lead.conf_history[-2:] == [joint, ConfState(voters=V({lead.id, "d", "e"}))]


def test_removing_the_leader_it_leads_through_joint_then_steps_down() -> None:
    """Thesis §4.2.2: a leader removed from the configuration keeps managing the cluster
    through C_old,new (it still accepts and commits entries, without counting itself in
    C_new), and steps down once C_new is committed; a remaining voter takes over."""
    cluster = Cluster(["a", "b", "c"], seed=4)
    lead = cluster.wait_leader()
    rest = V(x for x in "abc" if x != lead.id)
    seen: list[tuple[bool, Role]] = []
    tried: list[int] = []

    def observe(node: SimNode, rd: Ready) -> None:
        if node is not lead:
            return
        seen.append((node.raft.conf.joint, node.raft.role))
        if node.raft.conf.joint and node.raft.role is Role.LEADER and not tried:
            tried.append(node.raft.propose(b"proposed-while-joint"))

    cluster.on_ready.append(observe)
    lead.raft.propose_conf_change(remove(lead.id))
    tick_until(cluster, lambda: lead.raft.conf == ConfState(voters=rest), 20, "C_new applied")
    assert all(role is Role.LEADER for joint, role in seen if joint)
    assert (True, Role.LEADER) in seen
    assert lead.raft.role is Role.FOLLOWER and not lead.raft.promotable()
    new = cluster.wait_leader()
    assert new.id in rest
    assert cluster.committed_by_index[tried[0]].data == b"proposed-while-joint"
    cluster.tick(10 * cluster.election_ticks)
    assert lead.raft.role is Role.FOLLOWER  # never campaigns again
    cluster.propose(b"cell-goes-on")


@pytest.mark.parametrize("pre_vote", [True, False])
def test_removed_server_that_keeps_campaigning_does_not_disrupt(pre_vote: bool) -> None:
    """Thesis §4.2.3: a removed server that never learns of its removal times out and
    campaigns with ever-higher terms. Servers ignore RequestVote within the minimum
    election timeout of hearing from a current leader, so the cell neither raises its term
    nor loses its leader (with or without PreVote)."""
    cluster = Cluster(["a", "b", "c"], seed=5, pre_vote=pre_vote, record_messages=True)
    lead = cluster.wait_leader()
    gone = followers(cluster, lead)[0]
    # from the moment the leader enters C_old,new, nothing reaches the removed server
    cluster.msg_filter = lambda m: not (m.to == gone.id and lead.raft.conf.joint)
    lead.raft.propose_conf_change(remove(gone.id))
    rest = V(x for x in "abc" if x != gone.id)
    tick_until(cluster, lambda: lead.raft.conf == ConfState(voters=rest), 20, "C_new")
    cluster.msg_filter = lambda m: m.to != gone.id  # it never hears from the cell again
    term = lead.raft.term
    assert gone.raft.promotable()  # it still believes it is a voter
    for i in range(10):
        cluster.tick(2 * cluster.election_ticks)
        cluster.propose(f"w{i}".encode())
    requests = MessageType.PRE_VOTE if pre_vote else MessageType.VOTE
    assert len(sent(cluster, requests, sender=gone.id)) >= 5  # it kept campaigning
    assert cluster.leader() is lead and lead.raft.term == term
    assert all(cluster.nodes[x].raft.term == term for x in rest)
    if not pre_vote:
        assert gone.raft.term > term


def test_new_leader_refuses_conf_changes_until_its_no_op_applies() -> None:
    """Thesis §4.1 / DESIGN §2: a leader commits a no-op of its own term before any
    configuration change (it may not yet know the latest committed configuration)."""
    cluster = Cluster(["a", "b", "c"], seed=6)
    old = cluster.wait_leader()
    cluster.crash(old.id)
    cluster.hold(lambda m: m.type is MessageType.APPEND)
    new = None
    for _ in range(10 * cluster.election_ticks):
        cluster.tick()
        new = cluster.leader()
        if new is not None:
            break
    assert new is not None
    last = new.raft.log.last_index()
    with pytest.raises(ConfChangeInProgressError):
        new.raft.propose_conf_change(learner("z"))
    assert new.raft.log.last_index() == last
    cluster.hold_filter = None
    cluster.release()
    tick_until(cluster, lambda: new.raft.log.applied >= last, 5, "no-op applied")
    new.raft.propose_conf_change(learner("z"))


def test_at_most_one_membership_change_in_flight() -> None:
    """Thesis §4.1 / DESIGN §2: a new change is refused until the previous one is applied,
    and while C_old,new is in force until the automatic leave is applied."""
    cluster = Cluster(["a", "b", "c"], seed=7)
    cluster.add_node("d")
    cluster.add_node("e")
    lead = cluster.wait_leader()
    cluster.hold(lambda m: m.type is MessageType.APPEND)
    lead.raft.propose_conf_change(learner("d"))
    with pytest.raises(ConfChangeInProgressError):
        lead.raft.propose_conf_change(learner("e"))
    cluster.hold_filter = None
    cluster.release()
    tick_until(cluster, lambda: "d" in lead.raft.conf.learners, 5, "learner d")
    refused: list[str] = []

    def observe(node: SimNode, rd: Ready) -> None:
        if node is lead and node.raft.conf.joint and not refused:
            try:
                node.raft.propose_conf_change(learner("e"))
                refused.append("accepted")
            except ConfChangeInProgressError:
                refused.append("refused")

    cluster.on_ready.append(observe)
    lead.raft.propose_conf_change(voter("d"))
    tick_until(cluster, lambda: lead.raft.conf == ConfState(voters=V("abcd")), 20, "C_new")
    assert refused == ["refused"]


INVALID = {
    "add existing voter": ConfChange((MemberChange(ChangeOp.ADD_VOTER, "b"),)),
    "demote voter": ConfChange((MemberChange(ChangeOp.ADD_LEARNER, "b"),)),
    "re-add learner": ConfChange((MemberChange(ChangeOp.ADD_LEARNER, "l"),)),
    "remove stranger": ConfChange((MemberChange(ChangeOp.REMOVE, "zz"),)),
    "empty id": ConfChange((MemberChange(ChangeOp.ADD_LEARNER, ""),)),
    "same node twice": ConfChange((MemberChange(ChangeOp.ADD_LEARNER, "q"),
                                   MemberChange(ChangeOp.REMOVE, "q"))),
    "no voter left": ConfChange(tuple(MemberChange(ChangeOp.REMOVE, x) for x in "abc")),
    "leave when not joint": ConfChange(()),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_change_is_rejected_without_mutation(name: str) -> None:
    """DESIGN §2: invalid changes are rejected (ConfChangeError) before anything is
    appended; the configuration, the log and the in-flight gate are untouched, so a valid
    change is accepted right after."""
    cluster = Cluster(["a", "b", "c"], seed=8)
    cluster.add_node("l")
    cluster.change(learner("l"))
    lead = cluster.wait_leader()
    before = (lead.raft.conf, lead.raft.log.last_index(), lead.raft.status().commit)
    with pytest.raises(ConfChangeError):
        lead.raft.propose_conf_change(INVALID[name])
    assert (lead.raft.conf, lead.raft.log.last_index(), lead.raft.status().commit) == before
    lead.raft.propose_conf_change(learner("m"))  # not blocked by the rejected one


def test_apply_conf_change_rejects_a_change_while_joint() -> None:
    """Thesis §4.3: a joint configuration must be left before the next change."""
    joint = ConfState(voters=V("abd"), voters_outgoing=V("abc"))
    with pytest.raises(ConfChangeError):
        apply_conf_change(joint, learner("x"))
    assert apply_conf_change(joint, ConfChange(())) == ConfState(voters=V("abd"))


def test_replace_a_voter_of_a_three_node_cell() -> None:
    """Thesis §4.2-4.3 (and DESIGN §2 member identity): add the replacement as a learner,
    let it catch up, then promote it and remove the old voter in one change through
    C_old,new; afterwards the old member can go and the cell keeps a quorum."""
    cluster = Cluster(["a", "b", "c"], seed=9)
    for i in range(5):
        cluster.propose(f"w{i}".encode())
    d = cluster.add_node("d")
    cluster.change(learner("d"))
    _catch_up(cluster, d)
    lead = cluster.wait_leader()
    victim = followers(cluster, lead)[0].id
    cluster.change(ConfChange((MemberChange(ChangeOp.ADD_VOTER, "d"),
                               MemberChange(ChangeOp.REMOVE, victim))))
    final = ConfState(voters=V({*"abcd"} - {victim}))
    joint = ConfState(voters=final.voters, voters_outgoing=V("abc"))
    assert lead.conf_history[-2:] == [joint, final]
    cluster.crash(victim)
    other = next(x for x in final.voters if x not in (lead.id, "d"))
    cluster.crash(other)  # leader + d are a majority of C_new
    index = cluster.propose(b"after-replace")
    assert cluster.nodes["d"].raft.log.last_index() >= index


def test_empty_member_that_is_not_bootstrapped_waits() -> None:
    """DESIGN §2 member identity: a server with an empty data directory that was not told
    to bootstrap waits -- never campaigns, never votes itself into a cell -- until it is
    added as a learner; then it catches up like any learner."""
    cluster = Cluster(["a", "b", "c"], seed=10, record_messages=True)
    z = cluster.add_node("z")
    cluster.tick(10 * cluster.election_ticks)
    assert z.raft.term == 0 and z.raft.role is Role.FOLLOWER and not z.raft.promotable()
    assert not sent(cluster, MessageType.PRE_VOTE, sender="z")
    assert not sent(cluster, MessageType.VOTE, sender="z")
    cluster.change(learner("z"))
    _catch_up(cluster, z)
    assert z.raft.conf.learners == {"z"}


def test_cell_of_unbootstrapped_members_never_elects() -> None:
    """DESIGN §2: bootstrap is explicit; empty members alone never form a cell."""
    cluster = Cluster(["a", "b", "c"], seed=11, bootstrap=False, record_messages=True)
    cluster.tick(20 * cluster.election_ticks)
    assert cluster.leader() is None and not cluster.sent
    assert all(n.raft.term == 0 for n in cluster.alive())


def test_cell_survives_removing_its_leader_when_the_final_commit_notice_is_lost() -> None:
    """Thesis §4.2.2: the removed leader manages the cell until C_new is committed, and
    "the servers in C_new" then elect a leader among themselves. Configurations take effect
    when applied here (not when appended, as in the thesis), so a C_new voter that missed
    the commit of the leave would stay in C_old,new and need the removed member's vote: the
    removed leader therefore keeps leading, without counting itself, until a majority of
    C_new has acknowledged that commit. Scale a 2-member cell to 1 by removing its leader;
    the messages that tell the survivor the leave committed are lost for a while. The
    removed leader must hold on through the loss, hand over once it gets through, and
    after it is shut down the survivor, the only voter of C_new, leads."""
    cluster = Cluster(["a", "b"], seed=12)
    lead = cluster.wait_leader()
    survivor = cluster.nodes["b" if lead.id == "a" else "a"]
    leave_index: list[int] = []

    def observe(node: SimNode, rd: Ready) -> None:
        if node is lead and node.raft.conf.joint and not leave_index:
            leave_index.append(node.raft.log.last_index())  # the automatic leave

    cluster.on_ready.append(observe)
    cluster.msg_filter = lambda m: not (
        m.sender == lead.id and leave_index and lead.raft.log.committed >= leave_index[0])
    lead.raft.propose_conf_change(remove(lead.id))
    tick_until(cluster, lambda: lead.raft.conf == ConfState(voters=V({survivor.id})), 10,
               "the leader applies C_new")
    assert survivor.raft.log.last_index() >= leave_index[0]  # the survivor holds C_new
    cluster.tick(cluster.election_ticks // 2)
    assert lead.raft.role is Role.LEADER, "the removed leader gave up before C_new knew"
    assert survivor.raft.conf.joint
    cluster.msg_filter = None
    tick_until(cluster, lambda: lead.raft.role is not Role.LEADER,
               5 * cluster.election_ticks, "the removed leader hands over")
    assert survivor.raft.log.committed >= leave_index[0]
    cluster.crash(lead.id)
    tick_until(cluster, lambda: survivor.raft.role is Role.LEADER,
               30 * cluster.election_ticks, "the only voter of C_new leads")


def test_survivor_still_joint_is_elected_with_the_vote_of_a_removed_member_with_a_longer_log(
) -> None:
    """The leader being removed commits the leave and, in the moment before it applies
    it, appends entries the survivor never gets; the survivor, which also missed the
    leave's commit, stays in C_old,new and campaigns, deposing the removed leader. The
    removed member's log is longer, so by the plain up-to-date rule it would refuse its
    vote for ever, and it never campaigns itself: no leader could ever be elected. A member
    that its committed log makes no voter votes instead for any candidate whose log holds
    everything it knows to be committed (the C_new half of the candidate's election
    protects the rest), so the survivor is elected, commits with the removed member's
    acknowledgement, leaves the joint configuration, and then leads alone."""
    cluster = Cluster(["a", "b"], seed=7, pre_vote=False, check_quorum=False)
    lead = cluster.wait_leader()
    survivor = cluster.nodes["b" if lead.id == "a" else "a"]
    leave_index: list[int] = []
    extra: list[int] = []

    def observe(node: SimNode, rd: Ready) -> None:
        if node is lead and node.raft.conf.joint and not leave_index:
            leave_index.append(node.raft.log.last_index())  # the automatic leave

    def deliver(m: Message) -> bool:
        if not leave_index:
            return True
        if (m.to == lead.id and m.type is MessageType.APPEND_RESPONSE and not m.reject
                and m.index >= leave_index[0] and not extra):
            # The acknowledgement that commits the leave: just before the leader steps it
            # (and so before it applies C_new), clients' writes reach it.
            extra.extend(lead.raft.propose(f"unseen-{i}".encode()) for i in range(3))
        if m.sender != lead.id:
            return True
        return lead.raft.log.committed < leave_index[0] and not extra

    cluster.on_ready.append(observe)
    cluster.msg_filter = deliver
    lead.raft.propose_conf_change(remove(lead.id))
    tick_until(cluster, lambda: lead.raft.conf == ConfState(voters=V({survivor.id})), 10,
               "the leader applies C_new")
    assert extra and lead.raft.log.last_index() >= extra[-1] > survivor.raft.log.last_index()
    assert survivor.raft.conf.joint and survivor.raft.log.last_index() >= leave_index[0]
    assert not lead.raft.log.is_up_to_date(survivor.raft.log.last_index(),
                                           survivor.raft.log.last_term())
    # Still nothing from the removed leader reaches the survivor, which times out and
    # campaigns; its vote request at a higher term deposes the removed leader.
    cluster.msg_filter = lambda m: m.sender != lead.id or m.type is MessageType.VOTE_RESPONSE
    tick_until(cluster, lambda: lead.raft.role is not Role.LEADER,
               10 * cluster.election_ticks, "the survivor's campaign deposes the leader")
    cluster.msg_filter = None
    tick_until(cluster, lambda: survivor.raft.role is Role.LEADER and not survivor.raft.conf.joint,
               30 * cluster.election_ticks, "the survivor is elected and leaves C_old,new")
    cluster.crash(lead.id)
    index = survivor.raft.propose(b"alone")
    tick_until(cluster, lambda: survivor.raft.log.committed >= index, 10,
               "the only voter of C_new commits alone")


def test_a_member_a_committed_change_made_a_voter_votes_by_the_plain_rule_before_applying_it(
) -> None:
    """Only a member that its committed log makes no voter relaxes the up-to-date rule:
    applying may lag behind the commit index, and a member whose committed (not yet
    applied) change made it a voter still refuses a candidate whose log is behind its own."""
    node = lone_raft("c", ["a", "b"], check_quorum=False)
    first = node.log.last_index()
    entries = (
        Entry(term=1, index=first + 1, kind=EntryKind.CONF_CHANGE, data=voter("c").encode()),
        Entry(term=1, index=first + 2, data=b"not committed"),
    )
    node.step(Message(MessageType.APPEND, to="c", sender="a", term=1, index=first,
                      log_term=1, entries=entries, commit=first + 1,
                      leader_commit=first + 1))
    assert node.log.committed == first + 1 and not node.conf.is_voter("c")
    node.step(Message(MessageType.VOTE, to="c", sender="b", term=2, index=first + 1,
                      log_term=1))
    votes = [m for m in node.ready().messages if m.type is MessageType.VOTE_RESPONSE]
    assert len(votes) == 1 and votes[0].reject, votes
