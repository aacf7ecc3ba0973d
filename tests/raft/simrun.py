"""One randomized simulation run per seed (used by test_simulation.py and for replay).

A run builds a cell of 1, 3 or 5 members with randomized tunables, then for a few hundred
virtual ticks mixes client work (proposals, ReadIndex reads from any member, leadership
transfers, explicit campaigns, snapshots/compaction) with faults (message loss,
duplication, delay and reordering, symmetric and asymmetric partitions, crash-restart
losing what was not fsynced, crashes between a leader's send and its fsync and between a
member's fsync and its send) and random membership changes (add learner, promote, remove
voter or learner, replace a voter, invalid changes). The cluster checks its safety
invariants after every tick. Then every fault is healed and crashed members restart, and
the run requires, within a bounded number of ticks, a leader that has committed in its
term, a new proposal committed, and every live member of the configuration caught up.

Replay one seed with its full message trace:
    LOCKCELL_SIM_SEED=123 .venv/bin/pytest -q tests/raft/test_simulation.py
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from lockcell.raft.confchange import ConfChangeError
from lockcell.raft.core import ConfChangeInProgressError, NotLeaderError, ProposalDroppedError
from lockcell.raft.tracker import ProgressState
from lockcell.raft.types import ChangeOp, ConfChange, MemberChange

from .sim import Cluster, SimNode

CHAOS_TICKS = 250
HEAL_BOUND_ELECTIONS = 30
"""After healing, a leader must commit within this many minimum election timeouts."""

REPLAY = "LOCKCELL_SIM_SEED={seed} .venv/bin/pytest -q tests/raft/test_simulation.py"

PROPOSE_ERRORS = (NotLeaderError, ProposalDroppedError, ConfChangeInProgressError,
                  ConfChangeError)


class LivenessFailure(AssertionError):
    """The healed cluster did not elect, commit or catch up within the bound."""


@dataclass
class RunStats:
    proposals: int = 0
    reads: int = 0
    changes: int = 0
    crashes: int = 0
    ticks: int = 0
    notes: list[str] = field(default_factory=list)


def build(seed: int, trace: bool = False) -> tuple[Cluster, random.Random]:
    """The cluster for ``seed`` and the workload's own RNG."""
    rng = random.Random(seed * 7919 + 1)
    n = rng.choice([1, 3, 3, 3, 5, 5])
    cluster = Cluster(
        [f"n{i}" for i in range(n)],
        seed,
        election_ticks=rng.choice([6, 10]),
        pre_vote=rng.random() < 0.8,
        check_quorum=True,
        max_inflight=rng.choice([1, 2, 4, 64]),
        max_msg_bytes=rng.choice([40, 120, 1 << 20]),
        snapshot_every=rng.choice([0, 0, 3, 8, 20]),
        retain=rng.choice([0, 1, 4]),
        report_unreachable=rng.random() < 0.7,
        trace=trace,
    )
    cluster.crash_after_sync = rng.choice([0.0, 0.0, 0.002])
    cluster.crash_before_sync = rng.choice([0.0, 0.0, 0.004])
    # drawn from its own stream so that seeds keep the schedules they had before
    cluster.defer_leader_persist = random.Random(seed * 104729 + 3).choice([0.0, 0.5, 1.0])
    return cluster, rng


def run(seed: int, trace: bool = False) -> RunStats:
    """Run one seed; raises InvariantViolation/LivenessFailure on a failed property (with
    the cluster attached as ``exc.cluster``)."""
    cluster, rng = build(seed, trace)
    stats = RunStats()
    try:
        chaos(cluster, rng, stats, seed)
        heal_and_check(cluster, seed)
    except AssertionError as exc:
        exc.cluster = cluster  # type: ignore[attr-defined]  # for the replay's full trace
        raise
    stats.ticks = cluster.now
    return stats


def chaos(cluster: Cluster, rng: random.Random, stats: RunStats, seed: int) -> None:
    """The fault-and-workload phase: CHAOS_TICKS ticks of random events."""
    next_id = 0
    for _ in range(CHAOS_TICKS):
        _faults(cluster, rng, stats)
        lead = cluster.leader()
        r = rng.random()
        if lead is not None and r < 0.35:
            try:
                lead.raft.propose(f"s{seed}-{stats.proposals}".encode())
                stats.proposals += 1
            except PROPOSE_ERRORS:
                pass
        elif r < 0.42:
            node = rng.choice(cluster.alive() or [None])
            if node is not None:
                try:
                    cluster.read(node.id, f"r{stats.reads}".encode())
                    stats.reads += 1
                except NotLeaderError:
                    pass
        elif lead is not None and r < 0.455:
            next_id = _membership(cluster, rng, lead, next_id, stats)
        elif lead is not None and r < 0.465:
            voters = sorted(lead.raft.conf.all_voters() | lead.raft.conf.learners)
            if voters:
                target = rng.choice(voters)
                cluster._log(f"{lead.id} asked to transfer leadership to {target}")
                lead.raft.transfer_leader(target)
        elif r < 0.468:
            node = rng.choice(cluster.alive() or [None])
            if node is not None:
                cluster._log(f"{node.id} asked to campaign")
                node.raft.campaign()
        cluster.tick()


def _faults(cluster: Cluster, rng: random.Random, stats: RunStats) -> None:
    ids = list(cluster.nodes)
    r = rng.random()
    if r < 0.03:
        cluster.drop_rate = rng.choice([0.0, 0.0, 0.05, 0.2])
        cluster.dup_rate = rng.choice([0.0, 0.05])
        cluster.max_delay = rng.choice([0, 0, 1, 3])
    elif r < 0.045 and len(ids) > 1:
        shuffled = ids[:]
        rng.shuffle(shuffled)
        cut = rng.randrange(1, len(shuffled))
        cluster.partition(shuffled[:cut], shuffled[cut:])
    elif r < 0.055 and len(ids) > 1:
        a, b = rng.sample(ids, 2)
        cluster.block(a, b)  # asymmetric: a cannot reach b, b still reaches a
    elif r < 0.085:
        cluster.blocked = set()
        cluster._log("partitions healed")
    elif r < 0.095:
        alive = cluster.alive()
        if alive:
            cluster.crash(rng.choice(alive).id)
            stats.crashes += 1
    if rng.random() < 0.06:
        dead = [n for n in cluster.nodes.values() if not n.alive]
        if dead:
            cluster.restart(rng.choice(dead).id)


def _membership(cluster: Cluster, rng: random.Random, lead: SimNode, next_id: int,
                stats: RunStats) -> int:
    conf = lead.raft.conf
    voters = sorted(conf.voters)
    learners = sorted(conf.learners)
    options = ["learner"]
    if learners:
        options += ["promote", "drop-learner", "replace"]
    if len(voters) > 1:
        options += ["remove"]
    options += ["invalid"]
    op = rng.choice(options)
    change: ConfChange
    if op == "learner":
        if len(cluster.nodes) >= 9:
            return next_id
        new = f"x{next_id}"
        next_id += 1
        cluster.add_node(new)
        change = ConfChange((MemberChange(ChangeOp.ADD_LEARNER, new),))
    elif op == "promote":
        change = ConfChange((MemberChange(ChangeOp.ADD_VOTER, rng.choice(learners)),))
    elif op == "drop-learner":
        change = ConfChange((MemberChange(ChangeOp.REMOVE, rng.choice(learners)),))
    elif op == "replace":
        change = ConfChange((MemberChange(ChangeOp.ADD_VOTER, rng.choice(learners)),
                             MemberChange(ChangeOp.REMOVE, rng.choice(voters))))
    elif op == "remove":
        change = ConfChange((MemberChange(ChangeOp.REMOVE, rng.choice(voters)),))
    else:
        change = rng.choice([
            ConfChange((MemberChange(ChangeOp.REMOVE, "nobody"),)),
            ConfChange((MemberChange(ChangeOp.ADD_VOTER, voters[0]),)),
            ConfChange(tuple(MemberChange(ChangeOp.REMOVE, v) for v in voters)),
            ConfChange(()),
        ])
    before = (lead.raft.conf, lead.raft.log.last_index())
    cluster._log(f"{lead.id} asked to change membership: {op} {_change_text(change)}")
    try:
        lead.raft.propose_conf_change(change)
        stats.changes += 1
        if op == "invalid":
            cluster._violation(f"invalid change {change} accepted from {before[0]}")
    except ConfChangeError:
        if op != "invalid" and not lead.raft.conf.joint:
            cluster._violation(f"valid change {change} rejected from {lead.raft.conf}")
        if (lead.raft.conf, lead.raft.log.last_index()) != before:
            cluster._violation(f"rejected change {change} mutated the leader")
    except (ConfChangeInProgressError, ProposalDroppedError):
        if (lead.raft.conf, lead.raft.log.last_index()) != before:
            cluster._violation(f"refused change {change} mutated the leader")
    return next_id


def _change_text(change: ConfChange) -> str:
    return " ".join(f"{c.op.name}:{c.node}" for c in change.changes) or "LEAVE"


def heal_and_check(cluster: Cluster, seed: int) -> None:
    """Heal everything, then require election, a commit, and every member caught up."""
    cluster.heal()
    cluster.crash_after_sync = cluster.crash_before_sync = 0.0
    for node in list(cluster.nodes.values()):
        if not node.alive:
            cluster.restart(node.id)
    bound = HEAL_BOUND_ELECTIONS * cluster.election_ticks
    index = _commit_one(cluster, bound, f"final-{seed}".encode())
    if index is None:
        raise LivenessFailure(cluster._describe_violation(
            f"no proposal committed within {bound} ticks of healing\n"
            f"{cluster.status_text()}\n{progress_text(cluster)}"))
    deadline = cluster.now + bound
    while cluster.now < deadline:
        if cluster.leader() is not None and not lagging(cluster, index):
            return
        cluster.tick()
    behind = ", ".join(n.id for n in lagging(cluster, index)) or "(no leader)"
    raise LivenessFailure(cluster._describe_violation(
        f"members {behind} did not apply {index} within {bound} ticks of healing\n"
        f"{cluster.status_text()}\n{progress_text(cluster)}"))


def _commit_one(cluster: Cluster, bound: int, data: bytes) -> int | None:
    """Propose ``data`` until it commits; re-proposes to each new leader (a deposed
    leader's uncommitted entry may be lost). Returns the index that committed."""
    deadline = cluster.now + bound
    proposed: dict[int, int] = {}  # index -> term
    asked: set[tuple[str, int]] = set()
    while cluster.now < deadline:
        for index, term in proposed.items():
            got = cluster.applied_by_index.get(index)
            if got is not None and got.data == data and got.term == term:
                return index
        lead = cluster.leader()
        if lead is not None and (lead.id, lead.raft.term) not in asked:
            try:
                index = lead.raft.propose(data)
                proposed[index] = lead.raft.term
                asked.add((lead.id, lead.raft.term))
                cluster.settle()
                continue
            except PROPOSE_ERRORS:
                pass
        cluster.tick()
    return None


def lagging(cluster: Cluster, index: int) -> list[SimNode]:
    """Live members of the leader's configuration that have not applied ``index``."""
    lead = cluster.leader()
    if lead is None:
        return []
    members = lead.raft.conf.members()
    return [n for n in cluster.alive() if n.id in members and n.applied_upto < index]


def progress_text(cluster: Cluster) -> str:
    lead = cluster.leader()
    if lead is None:
        return "no leader"
    return "\n".join(
        f"  {lead.id}->{node}: {pr.state.name} match={pr.match} next={pr.next} "
        f"inflight={len(pr.inflight)} probe_sent={pr.probe_sent} active={pr.recent_active}"
        for node, pr in sorted(lead.raft.progress.items())
    ) + "".join(f"\n  {node}: stalled (window full, behind, nothing on the wire)"
                for node in wedged_followers(cluster))


def wedged_followers(cluster: Cluster) -> list[str]:
    """Followers a leader streams to whose whole in-flight window was lost: REPLICATE,
    window full, behind, and nothing on the wire between them (a stall the simulation
    once found; reported in a liveness failure's text)."""
    lead = cluster.leader()
    if lead is None:
        return []
    on_wire = {(f.msg.sender, f.msg.to) for f in cluster.queue}
    out = []
    for node, pr in lead.raft.progress.items():
        if node == lead.id or pr.state is not ProgressState.REPLICATE:
            continue
        if len(pr.inflight) < lead.raft.config.max_inflight:
            continue
        if pr.match >= lead.raft.log.last_index():
            continue
        if (lead.id, node) in on_wire or (node, lead.id) in on_wire:
            continue
        out.append(node)
    return out
