"""Scenario tests: snapshots, log compaction and InstallSnapshot (paper §7, thesis ch. 5)."""

from __future__ import annotations

import pytest

from lockcell.raft.tracker import ProgressState
from lockcell.raft.types import (
    ConfState,
    Entry,
    Message,
    MessageType,
    Snapshot,
    SnapshotMeta,
)

from .sim import Cluster, image_of
from .support import drain, followers, learner, log_from_terms, lone_raft, sent, tick_until


def _lagging_cluster(**kw: object) -> tuple[Cluster, str, str]:
    cluster = Cluster(["a", "b", "c"], seed=1, snapshot_every=5, retain=2,
                      record_messages=True, **kw)  # type: ignore[arg-type]
    lead = cluster.wait_leader()
    lag = followers(cluster, lead)[0].id
    cluster.isolate(lag)
    for i in range(30):
        cluster.propose(f"w{i}".encode())
    lead = cluster.wait_leader()
    assert lead.raft.log.offset > cluster.nodes[lag].raft.log.last_index()  # compacted
    return cluster, lead.id, lag


def test_lagging_follower_gets_a_snapshot_and_catches_up() -> None:
    """Paper §7 / thesis §5.1: when the entries a follower needs were compacted away, the
    leader sends InstallSnapshot; the follower discards its log, restores the state
    machine from the snapshot (with the configuration stored in it) and then catches up
    with ordinary appends."""
    cluster, lead_id, lag_id = _lagging_cluster()
    cluster.heal()
    lead = cluster.nodes[lead_id]
    lag = cluster.nodes[lag_id]
    tick_until(cluster, lambda: lag.raft.log.applied == lead.raft.log.committed
               == lead.raft.log.last_index(), 20, "follower caught up")
    (snap_msg,) = [m for m in sent(cluster, MessageType.SNAPSHOT, to=lag_id)][:1]
    snap = snap_msg.snapshot
    assert snap is not None and snap.meta.conf == ConfState(voters=frozenset("abc"))
    assert lag.disk.snapshot.meta.index >= snap.meta.index
    assert lag.raft.log.offset >= snap.meta.index
    assert lag.digest == cluster.digest_by_index[lag.applied_upto]
    assert image_of(snap) == cluster.digest_by_index[snap.meta.index]
    assert lead.raft.status().progress[lag_id].state is ProgressState.REPLICATE
    cluster.propose(b"after")


def test_failed_snapshot_send_is_reported_and_retried() -> None:
    """Thesis §5.1 with the driver contract (SNAPSHOT_STATUS): when the driver reports a
    failed snapshot send, the leader stops waiting, probes again and re-sends."""
    cluster, lead_id, lag_id = _lagging_cluster()
    cluster.heal()
    dropped: list[Message] = []

    def drop_first_snapshot(m: Message) -> bool:
        if m.type is MessageType.SNAPSHOT and not dropped:
            dropped.append(m)
            return False
        return True

    cluster.msg_filter = drop_first_snapshot
    lead = cluster.nodes[lead_id]
    lag = cluster.nodes[lag_id]
    tick_until(cluster, lambda: lag.raft.log.applied == lead.raft.log.committed, 30,
               "caught up after a failed snapshot")
    assert len(dropped) == 1
    assert len(sent(cluster, MessageType.SNAPSHOT, to=lag_id)) >= 2


def test_snapshot_status_moves_progress_out_of_snapshot_state() -> None:
    """While a snapshot is in flight the leader sends nothing else to that follower; the
    driver's report (success or failure) returns it to probing."""
    cluster, lead_id, lag_id = _lagging_cluster(report_snapshots=False)
    lead = cluster.nodes[lead_id]
    cluster.heal()
    cluster.msg_filter = lambda m: m.type is not MessageType.SNAPSHOT
    cluster.tick(2)
    pr = lead.raft.status().progress[lag_id]
    assert pr.state is ProgressState.SNAPSHOT
    cluster.tick(3)
    assert lead.raft.status().progress[lag_id].state is ProgressState.SNAPSHOT  # waits
    lead.raft.report_snapshot(lag_id, ok=False)
    assert lead.raft.status().progress[lag_id].state is ProgressState.PROBE
    cluster.msg_filter = None
    lag = cluster.nodes[lag_id]
    tick_until(cluster, lambda: lag.raft.log.applied == lead.raft.log.committed, 20,
               "caught up")


def test_snapshot_already_covered_by_the_follower_is_acknowledged_harmlessly() -> None:
    """Paper Figure 13: a snapshot at or below the follower's commit index is stale; the
    follower keeps its log and reports how far it has committed."""
    raft = lone_raft("c", ["a", "b", "c"], term=2,
                     entries=log_from_terms(["a", "b", "c"], [1, 1, 2, 2]), commit=4)
    snap = Snapshot(SnapshotMeta(3, 2, ConfState(voters=frozenset("abc"))), b"3:0")
    raft.step(Message(MessageType.SNAPSHOT, to="c", sender="a", term=2, snapshot=snap))
    (resp,) = drain(raft)
    assert resp.type is MessageType.APPEND_RESPONSE and resp.index == 4 and not resp.reject
    assert raft.log.last_index() == 4 and raft.log.offset == 0


def test_follower_holding_the_snapshot_point_acknowledges_no_more_than_it_verified() -> None:
    """Paper Figure 13 step 6: "If existing log entry has same index and term as snapshot's
    last included entry, retain log entries following it and reply" -- the leader then
    knows the follower matches up to lastIncludedIndex, not beyond. Entries after it may be
    a stale leader's and differ from the leader's log; acknowledging them lets the leader
    count (and send a commit index covering) entries the follower does not have."""
    voters = ["a", "b", "c"]
    # follower c: 1..5 agree with the leader; 6 is a stale entry of term 2
    log = [*log_from_terms(voters, [1, 1, 1, 1, 1]), Entry(2, 6, data=b"stale")]
    raft = lone_raft("c", voters, term=2, entries=log, commit=3)
    snap = Snapshot(SnapshotMeta(5, 1, ConfState(voters=frozenset(voters))), b"5:0")
    raft.step(Message(MessageType.SNAPSHOT, to="c", sender="a", term=3, snapshot=snap))
    acks = [m for m in drain(raft) if m.type is MessageType.APPEND_RESPONSE]
    assert acks and not acks[0].reject
    assert raft.log.committed == 5
    assert acks[0].index <= 5, f"acknowledged {acks[0].index}: entry 6 was never verified"


def test_create_snapshot_refuses_while_the_log_is_replayed() -> None:
    """A restarted member has its committed configuration in force before it replays its
    log (thesis §4.1); a snapshot taken before the replay catches up would carry a
    configuration newer than its image, so it is refused."""
    cluster = Cluster(["a", "b", "c"], seed=2)
    cluster.add_node("d")
    cluster.change(learner("d"))
    lead = cluster.wait_leader()
    node = followers(cluster, lead)[0]
    cluster.settle()
    cluster.crash(node.id)
    cluster.restart(node.id)
    fresh = cluster.nodes[node.id].raft
    assert fresh.log.applied < fresh.log.committed
    with pytest.raises(ValueError):
        fresh.create_snapshot(b"too-early")
