"""Scenario tests: elections, log replication and the commit rule.

Papers cited: Ongaro & Ousterhout 2014, "In Search of an Understandable Consensus
Algorithm (Extended Version)" ("paper"), and Ongaro 2014, "Consensus: Bridging Theory and
Practice" ("thesis").
"""

from __future__ import annotations

import pytest

from lockcell.raft.types import Entry, Message, MessageType, Role

from .sim import Cluster
from .support import (
    disk_with,
    drain,
    followers,
    learner,
    log_from_terms,
    lone_raft,
    make_leader,
    past_the_start,
    sent,
    terms_of,
    tick_until,
)

# Figure 7 of the paper: the leader's log (index 1..10) and the followers' logs a-f, as
# the terms of their entries. Index 1 (term 1) is our bootstrap entry.
FIG7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIG7 = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


def test_figure7_leader_of_term_8_brings_every_follower_log_in_line() -> None:
    """Paper §5.3, Figure 7: when the leader of term 8 comes to power, followers may miss
    entries (a, b), have extra uncommitted entries (c, d), or both (e, f). The leader
    forces their logs to duplicate its own: conflicting entries are overwritten, missing
    ones filled in, and everyone ends up with the leader's log plus its term-8 no-op."""
    voters = ["L", *FIG7]
    disks = {"L": disk_with(voters, FIG7_LEADER, term=7)}
    for name, terms in FIG7.items():
        disks[name] = disk_with(voters, terms, term=7)
    cluster = Cluster(voters, seed=7, disks=disks, record_messages=True)
    past_the_start(cluster)
    lead = cluster.nodes["L"]
    lead.raft.campaign()
    cluster.settle()
    # a, b, e, f grant (their logs are not more up-to-date); c and d refuse (§5.4.1).
    assert lead.raft.role is Role.LEADER and lead.raft.term == 8
    granted = {m.sender for m in sent(cluster, MessageType.VOTE_RESPONSE, to="L")
               if not m.reject}
    assert granted == {"a", "b", "e", "f"}

    expected = [*FIG7_LEADER, 8]  # the leader's log plus its no-op at index 11
    tick_until(cluster, lambda: all(terms_of(n) == expected for n in cluster.alive()),
               5 * cluster.election_ticks, "every log equals the leader's")
    leader_log = list(lead.raft.log.entries)
    for name in FIG7:
        node = cluster.nodes[name]
        assert list(node.raft.log.entries) == leader_log, name
    # d's two term-7 entries and f's terms 2-3 are gone for good; everything commits.
    tick_until(cluster, lambda: all(n.raft.log.committed == 11 for n in cluster.alive()),
               3, "all commit through the no-op")
    assert [cluster.applied_by_index[i] for i in range(1, 12)] == leader_log


def test_figure7_follower_f_is_repaired_with_few_rejections() -> None:
    """Paper §5.3 (end): the follower's rejection carries the conflicting term so the
    leader can skip a whole term per round trip instead of one entry per round trip."""
    voters = ["L", "f", "x"]
    disks = {"L": disk_with(voters, FIG7_LEADER, term=7),
             "f": disk_with(voters, FIG7["f"], term=7),
             "x": disk_with(voters, FIG7_LEADER, term=7)}
    cluster = Cluster(voters, seed=3, disks=disks, record_messages=True)
    past_the_start(cluster)
    cluster.nodes["L"].raft.campaign()
    cluster.settle()
    assert cluster.nodes["L"].raft.role is Role.LEADER
    tick_until(cluster, lambda: terms_of(cluster.nodes["f"]) == [*FIG7_LEADER, 8], 20,
               "f repaired")
    rejects = [m for m in sent(cluster, MessageType.APPEND_RESPONSE, sender="f") if m.reject]
    # f differs from index 4 on (terms 2 and 3); one entry per round trip would need 8.
    assert 1 <= len(rejects) <= 3


def _fig8_cluster() -> Cluster:
    ids = ["s1", "s2", "s3", "s4", "s5"]
    # No timeouts or leases get in the way: elections happen only when the test says.
    return Cluster(ids, seed=8, election_ticks=1000, pre_vote=False, check_quorum=False,
                   max_msg_bytes=30)  # one entry per append


def _campaign_until_leader(cluster: Cluster, node_id: str, tries: int = 3) -> None:
    node = cluster.nodes[node_id]
    for _ in range(tries):
        node.raft.campaign()
        cluster.settle()
        if node.raft.role is Role.LEADER:
            return
    raise AssertionError(f"{node_id} did not win\n{cluster.status_text()}")


def _fig8_until_c(cluster: Cluster) -> Entry:
    """Figure 8 (a)-(c). Returns X, the term-2 entry at index 3."""
    n = cluster.nodes
    # (a) S1 leads term 2 (its no-op at 2 commits everywhere), then replicates X only to S2.
    _campaign_until_leader(cluster, "s1")
    assert n["s1"].raft.term == 2 and n["s1"].raft.log.committed == 2
    cluster.msg_filter = lambda m: not (m.type is MessageType.APPEND and m.sender == "s1"
                                        and m.to in ("s3", "s4", "s5"))
    x_index = n["s1"].raft.propose(b"X")
    cluster.settle()
    assert x_index == 3 and n["s2"].raft.log.last_index() == 3
    x = n["s1"].raft.log.entry(3)
    # (b) S1 crashes; S5 is elected for term 3 by S3, S4 and itself and writes index 3
    # (its own no-op, term 3) before crashing too.
    cluster.crash("s1")
    cluster.msg_filter = lambda m: not (m.type is MessageType.APPEND and m.sender == "s5")
    _campaign_until_leader(cluster, "s5")
    assert n["s5"].raft.term == 3 and n["s5"].raft.log.entry(3).term == 3
    cluster.crash("s5")
    # (c) S1 restarts and is elected for term 4 (S2, S3, S4 vote). It replicates X to S3,
    # so X (term 2) is now on S1, S2 and S3 -- a majority -- but S1's term-4 no-op
    # reaches only S2.
    cluster.restart("s1")

    def c_filter(m: Message) -> bool:
        if m.type is not MessageType.APPEND or m.sender != "s1":
            return True
        if m.to == "s3":  # X may pass (and probes s3 will reject), the no-op may not
            return all(e.term < 4 for e in m.entries) or (
                m.index > n["s3"].raft.log.last_index())
        return m.to == "s2"

    cluster.msg_filter = c_filter
    _campaign_until_leader(cluster, "s1")
    assert n["s1"].raft.term == 4
    cluster.tick(3)
    return x


def test_figure8_old_term_entry_is_not_committed_by_counting_replicas() -> None:
    """Paper §5.4.2, Figure 8 (c)-(d): an entry from an earlier term stored on a majority
    is not committed by counting replicas -- it can still be overwritten by a future
    leader, as S5 does in (d). Only entries of the leader's current term are committed by
    counting; earlier ones commit indirectly (Log Matching)."""
    cluster = _fig8_cluster()
    n = cluster.nodes
    x = _fig8_until_c(cluster)
    holders = [s for s in ("s1", "s2", "s3") if n[s].raft.log.entry(3) == x]
    assert holders == ["s1", "s2", "s3"]  # X is on a majority ...
    assert n["s1"].raft.status().progress["s3"].match == 3
    assert n["s1"].raft.log.committed == 2  # ... and still not committed
    assert 3 not in cluster.committed_by_index
    # (d) S1 crashes; S5 restarts and is elected for term 5 by S3, S4 and itself, and
    # overwrites X everywhere with its term-3 entry.
    cluster.crash("s1")
    cluster.restart("s5")
    cluster.msg_filter = None
    _campaign_until_leader(cluster, "s5")
    assert n["s5"].raft.term == 5
    tick_until(cluster, lambda: all(n[s].raft.log.committed >= 4 for s in ("s2", "s3", "s4")),
               10, "S5's log commits")
    for s in ("s2", "s3", "s4", "s5"):
        assert n[s].raft.log.entry(3).term == 3
    assert cluster.applied_by_index[3].term == 3
    assert all(e != x for e in cluster.applied_by_index.values())


def test_figure8_current_term_entry_commits_the_earlier_one() -> None:
    """Paper §5.4.2, Figure 8 (e): once S1 replicates an entry of its current term (its
    no-op) to a majority, that entry and X before it are committed, and S5 can no longer
    win an election."""
    cluster = _fig8_cluster()
    n = cluster.nodes
    x = _fig8_until_c(cluster)
    cluster.msg_filter = lambda m: not (m.type is MessageType.APPEND and m.to in ("s4", "s5"))
    cluster.tick(3)
    assert n["s1"].raft.log.committed == 4
    assert cluster.committed_by_index[3] == x
    cluster.crash("s1")
    cluster.restart("s5")
    cluster.msg_filter = None
    for _ in range(3):
        n["s5"].raft.campaign()
        cluster.settle()
        assert n["s5"].raft.role is not Role.LEADER  # S2 and S3 hold (4, term 4)
    assert all(n[s].raft.log.entry(3) == x for s in ("s2", "s3"))


def test_split_vote_neither_wins_then_a_later_term_elects_one() -> None:
    """Paper §5.2: two candidates start at once and split the votes; neither gets a
    majority, the term ends without a leader, and randomized election timeouts make a
    later term elect exactly one."""
    cluster = Cluster(["a", "b", "c", "d"], seed=11)
    past_the_start(cluster)
    n = cluster.nodes
    # c hears only a's request for its vote, d only b's (pre-votes pass for both).
    cluster.msg_filter = lambda m: not (
        m.type is MessageType.VOTE and (m.sender, m.to) in {("a", "d"), ("b", "c")})
    n["a"].raft.campaign()
    n["b"].raft.campaign()
    cluster.settle()
    assert n["a"].raft.role is Role.CANDIDATE and n["b"].raft.role is Role.CANDIDATE
    assert n["a"].raft.term == n["b"].raft.term == 2
    assert n["c"].raft.vote == "a" and n["d"].raft.vote == "b"
    assert cluster.leader() is None
    cluster.msg_filter = None
    lead = cluster.wait_leader(max_ticks=10 * cluster.election_ticks)
    assert lead.raft.term > 2
    assert 2 not in cluster.leaders_by_term
    assert sum(1 for x in cluster.alive() if x.raft.role is Role.LEADER) == 1


def test_prevote_partitioned_node_rejoins_without_raising_the_term() -> None:
    """Thesis §9.6: with PreVote, a server cut off from the cell keeps failing its
    pre-election and never increments its term, so when it rejoins it does not force
    the leader to step down."""
    cluster = Cluster(["a", "b", "c"], seed=5, pre_vote=True)
    lead = cluster.wait_leader()
    term = lead.raft.term
    lost = followers(cluster, lead)[0]
    cluster.isolate(lost.id)
    cluster.tick(10 * cluster.election_ticks)
    assert lost.raft.term == term  # campaigned (pre-vote) many times, never raised the term
    assert lost.raft.role in (Role.PRE_CANDIDATE, Role.FOLLOWER)
    cluster.heal()
    cluster.tick(3 * cluster.election_ticks)
    assert cluster.leader() is lead and lead.raft.term == term
    assert lost.raft.leader == lead.id and lost.raft.term == term
    assert max(cluster.leaders_by_term) == term


def test_without_prevote_the_rejoining_node_disrupts_the_leader() -> None:
    """Thesis §9.6 (contrast): without PreVote the isolated server raises its term on
    every timeout; when it rejoins, its higher term makes the leader step down."""
    cluster = Cluster(["a", "b", "c"], seed=5, pre_vote=False)
    lead = cluster.wait_leader()
    term = lead.raft.term
    lost = followers(cluster, lead)[0]
    cluster.isolate(lost.id)
    cluster.tick(10 * cluster.election_ticks)
    assert lost.raft.term > term + 3
    cluster.heal()
    cluster.tick(3 * cluster.election_ticks)
    assert lead.raft.term > term  # the old leader was deposed by the rejoining term
    assert max(cluster.leaders_by_term) > term


def test_check_quorum_leader_steps_down_when_it_loses_its_quorum() -> None:
    """Thesis §6.2: with CheckQuorum, a leader that has not heard from a majority within an
    election timeout steps down (within two timeouts of losing contact), and the majority
    side elects a new leader."""
    cluster = Cluster(["a", "b", "c", "d", "e"], seed=9)
    lead = cluster.wait_leader()
    cluster.isolate(lead.id)
    took = tick_until(cluster, lambda: lead.raft.role is not Role.LEADER,
                      2 * cluster.election_ticks + 1, "old leader steps down")
    assert took >= 1
    new = cluster.wait_leader()
    assert new is not lead and new.raft.term > lead.raft.term - 1


def test_without_check_quorum_an_isolated_leader_keeps_leading() -> None:
    """Thesis §6.2 (contrast): without CheckQuorum nothing tells a minority leader it lost
    its followers."""
    cluster = Cluster(["a", "b", "c"], seed=9, check_quorum=False)
    lead = cluster.wait_leader()
    cluster.isolate(lead.id)
    cluster.tick(10 * cluster.election_ticks)
    assert lead.raft.role is Role.LEADER
    others = [n for n in cluster.alive() if n is not lead]
    assert any(n.raft.role is Role.LEADER and n.raft.term > lead.raft.term for n in others)


def test_restart_restores_term_vote_log_and_configuration() -> None:
    """Paper Figure 2 ("persistent state") and thesis §4.1: currentTerm, votedFor and the
    log survive a restart; the configuration comes back with them (committed membership
    changes are in force before the log is replayed)."""
    cluster = Cluster(["a", "b", "c"], seed=21)
    cluster.add_node("d")
    cluster.change(learner("d"))
    for i in range(5):
        cluster.propose(f"w{i}".encode())
    lead = cluster.leader()
    assert lead is not None
    node = followers(cluster, lead)[0]
    cluster.settle()
    before = (node.raft.term, node.raft.vote, list(node.raft.log.entries), node.raft.conf)
    cluster.crash(node.id)
    cluster.restart(node.id)
    after = cluster.nodes[node.id].raft
    assert (after.term, after.vote, list(after.log.entries), after.conf) == before
    assert after.conf.learners == {"d"}
    assert after.role is Role.FOLLOWER and after.log.applied == 0
    cluster.tick(2)
    assert cluster.nodes[node.id].raft.log.applied == lead.raft.log.committed


def test_log_from_terms_is_consistent() -> None:
    """The helper builds logs in which equal (index, term) means equal entries."""
    a = log_from_terms(["x"], [1, 2, 2])
    b = log_from_terms(["x"], [1, 2, 3])
    assert a[1] == b[1] and a[2] != b[2]


@pytest.mark.parametrize("max_inflight", [1, 4])
def test_follower_whose_in_flight_appends_were_all_lost_catches_up(max_inflight: int) -> None:
    """Paper §5.3: "If followers crash or run slowly, or if network packets are lost, the
    leader retries AppendEntries RPCs indefinitely ... until all followers eventually store
    all log entries." Lose every append sent to one follower while the leader streams a
    full window to it (silently, as when the follower's process dies with them in its
    socket buffer); once the network is fine again, the follower must catch up."""
    cluster = Cluster(["a", "b", "c"], seed=13, max_inflight=max_inflight)
    lead = cluster.wait_leader()
    cluster.propose(b"first")  # the follower is now streamed to (REPLICATE)
    slow = followers(cluster, lead)[0]
    cluster.msg_filter = lambda m: not (m.type is MessageType.APPEND and m.to == slow.id)
    for i in range(max_inflight + 2):
        cluster.propose(f"w{i}".encode())
    cluster.msg_filter = None
    tick_until(cluster, lambda: slow.raft.log.applied == lead.raft.log.committed,
               10 * cluster.election_ticks, f"{slow.id} catches up")


def test_status_shows_answering_followers_active_at_every_tick() -> None:
    """The leader's status must not flap: CheckQuorum resets its activity marks each election
    timeout, yet a follower that keeps answering (a little later, as a real network does)
    shows active at every tick, and one that falls silent shows inactive within two election
    timeouts while the leader, still heard by a majority, keeps leading."""
    raft = lone_raft("a", ["a", "b", "c"], election_ticks=10, heartbeat_ticks=1,
                     check_quorum=True)
    make_leader(raft)
    in_flight: list[Message] = []
    inactive_at = None
    for tick in range(1, 41):
        raft.tick()
        sent = drain(raft)
        progress = raft.status().progress
        assert progress["b"].recent_active, f"answering follower inactive at tick {tick}"
        if inactive_at is None and not progress["c"].recent_active:
            inactive_at = tick
        for m in in_flight:  # b's answers to the previous tick's heartbeats arrive now
            raft.step(m)
        in_flight = [Message(MessageType.HEARTBEAT_RESPONSE, to="a", sender="b", term=m.term,
                             commit=m.commit)
                     for m in sent if m.type is MessageType.HEARTBEAT and m.to == "b"]
    assert inactive_at is not None and inactive_at <= 2 * 10 + 1
    assert raft.role is Role.LEADER


@pytest.mark.parametrize("seed", range(12))
def test_members_that_saw_their_leader_go_elect_one_as_their_promise_ends(seed: int) -> None:
    """A member told that its leader's process is gone campaigns exactly an election
    timeout after it last heard from it (without the report: after a random 1-2 timeouts),
    and the members do so one tick apart in id order, so the first wins without a split
    vote. The dead leader's lease still holds until then (the simulation checks it)."""
    cluster = Cluster(["a", "b", "c"], seed=seed)
    lead = cluster.wait_leader()
    cluster.tick(3)  # a heartbeat each tick: the followers heard from it this tick
    cluster.crash(lead.id)
    for node in cluster.alive():
        node.raft.report_gone(lead.id)
    took = tick_until(cluster, lambda: cluster.leader() is not None,
                      3 * cluster.election_ticks, "a new leader")
    assert took == cluster.election_ticks
    new = cluster.leader()
    assert new is not None and new.id == min(n.id for n in cluster.alive())
    assert new.raft.term == lead.raft.term + 1


def test_a_report_that_a_live_leader_is_gone_changes_nothing() -> None:
    """A wrong report (say a firewall that resets connections) must not cost the leader
    its place: the member keeps hearing it, so its election timer never runs out."""
    cluster = Cluster(["a", "b", "c"], seed=4)
    lead = cluster.wait_leader()
    cluster.tick(2)
    term = lead.raft.term
    for node in followers(cluster, lead):
        node.raft.report_gone(lead.id)
        node.raft.report_gone("nobody")
    cluster.tick(3 * cluster.election_ticks)
    assert cluster.leader() is lead and lead.raft.term == term
    assert all(n.raft.term == term for n in cluster.alive())


def test_a_report_about_a_follower_does_not_hurry_anyone() -> None:
    """Only the leader's going matters: a member told a fellow follower is gone keeps its
    random election timeout once the leader falls silent too."""
    cluster = Cluster(["a", "b", "c", "d", "e"], seed=6)
    lead = cluster.wait_leader()
    cluster.tick(2)
    rest = followers(cluster, lead)
    cluster.crash(rest[0].id)
    before = {n.id: n.raft._randomized_timeout for n in rest[1:]}
    for node in rest[1:]:
        node.raft.report_gone(rest[0].id)
    assert {n.id: n.raft._randomized_timeout for n in rest[1:]} == before
