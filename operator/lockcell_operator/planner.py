"""Membership planner (pure): observed cell + StatefulSet → the next single step to take."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .model import ClusterView, Member, Observation, PodState, host_label, ordinal_of, quorum

DEFAULT_CATCH_UP_LAG = 100

WaitReason = Literal[
    "BootstrapPending",
    "NoLeader",
    "JointConsensus",
    "LearnerCatchingUp",
    "PodStarting",
    "QuorumAtRisk",
    "NoTransferTarget",
    "UnexpectedState",
]


@dataclass(frozen=True)
class Bootstrap:
    """Create the StatefulSet with `replicas` pods; `bootstrap`: pod 0 starts a new cell."""

    replicas: int
    bootstrap: bool


@dataclass(frozen=True)
class EndBootstrap:
    """The cell has formed: turn the bootstrap flag off in the StatefulSet's template."""


@dataclass(frozen=True)
class Wait:
    reason: WaitReason
    message: str


@dataclass(frozen=True)
class ScaleStatefulSet:
    replicas: int


@dataclass(frozen=True)
class AddLearner:
    pod: str
    id: str
    peer_url: str
    url: str


@dataclass(frozen=True)
class Promote:
    id: str


@dataclass(frozen=True)
class TransferLeader:
    to: str


@dataclass(frozen=True)
class RemoveMember:
    id: str


@dataclass(frozen=True)
class DeletePVC:
    pod: str


@dataclass(frozen=True)
class Done:
    """Nothing to change: membership and StatefulSet are as desired."""


Step = (
    Bootstrap
    | EndBootstrap
    | Wait
    | ScaleStatefulSet
    | AddLearner
    | Promote
    | TransferLeader
    | RemoveMember
    | DeletePVC
    | Done
)

MEMBERSHIP_STEPS = (AddLearner, Promote, RemoveMember)


def step_kind(step: Step) -> str:
    return type(step).__name__


def describe(step: Step) -> str:
    """One human sentence for Events and conditions."""
    match step:
        case Bootstrap(replicas=n, bootstrap=True):
            return f"creating the StatefulSet with {n} pod; pod 0 bootstraps a new cell"
        case Bootstrap(replicas=n):
            return f"creating the StatefulSet with {n} pods over existing volumes"
        case EndBootstrap():
            return "the cell has formed; turning bootstrap off"
        case Wait(message=message):
            return message
        case ScaleStatefulSet(replicas=n):
            return f"scaling the StatefulSet to {n}"
        case AddLearner(pod=pod, id=member_id):
            return f"adding {pod} ({member_id}) as a learner"
        case Promote(id=member_id):
            return f"promoting learner {member_id} to voter"
        case TransferLeader(to=member_id):
            return f"moving leadership to {member_id}"
        case RemoveMember(id=member_id):
            return f"removing member {member_id}"
        case DeletePVC(pod=pod):
            return f"deleting the volume of {pod} (reclaimPolicy Delete)"
        case Done():
            return "membership is as desired"
    raise AssertionError(step)  # pragma: no cover


# --- helpers ---------------------------------------------------------------------------------
def member_home(member: Member, pods: Iterable[PodState]) -> str | None:
    """The pod a member lives on: the pod reporting its id, else the pod whose advertised
    URLs the member has, else the host of its URLs (a pod's DNS name starts with its name).

    A pod that does not answer (a probe timed out) still has its URLs, so a member is never
    taken for homeless, and never for another pod's, because its process answered late.
    """
    pods = tuple(pods)
    for p in pods:
        if p.member_id == member.id:
            return p.name
    for p in pods:
        if (p.peer_url and p.peer_url == member.peer_url) or (p.client_url
                                                             and p.client_url == member.url):
            return p.name
    return host_label(member.peer_url) or host_label(member.url)


def healthy_ids(obs: Observation) -> frozenset[str]:
    """Members whose process answers with their id (a server up on that data directory)."""
    return frozenset(p.member_id for p in obs.pods if p.member_id)


def removal_blocker(cluster: ClusterView, victim: str, healthy: frozenset[str]) -> str | None:
    """Why removing `victim` now could cost the cell its quorum (None when it is safe).

    The change goes through joint consensus, so both the current voters and the voters
    after the change must keep a healthy majority.
    """
    voters = [m.id for m in cluster.voters]
    if victim not in voters:
        return None
    remaining = [v for v in voters if v != victim]
    if not remaining:
        return f"{victim} is the last voter"
    now = sum(1 for v in voters if v in healthy)
    after = sum(1 for v in remaining if v in healthy)
    if now < quorum(len(voters)):
        return (
            f"only {now} of {len(voters)} voters are healthy (quorum {quorum(len(voters))}); "
            f"not removing {victim} until quorum is safe"
        )
    if after < quorum(len(remaining)):
        return (
            f"removing {victim} would leave {after} healthy of {len(remaining)} voters, "
            f"below quorum {quorum(len(remaining))}"
        )
    return None


def promotion_blocker(cluster: ClusterView, learner: str, healthy: frozenset[str]) -> str | None:
    voters = [m.id for m in cluster.voters]
    now = sum(1 for v in voters if v in healthy)
    after = now + (1 if learner in healthy else 0)
    if now < quorum(len(voters)) or after < quorum(len(voters) + 1):
        return (
            f"only {now} of {len(voters)} voters are healthy; "
            f"not promoting {learner} until quorum is safe"
        )
    return None


def caught_up(cluster: ClusterView, member: Member, lag: int) -> bool:
    """The learner stores the leader's log up to within `lag` entries of the commit index.

    A match index of 0 means the leader has not yet stored anything on it (it may not even
    reach it): never caught up, also while a young cell's whole log is shorter than `lag` -
    promoting such a learner would make the cell's next commits wait for a member that may
    never answer.
    """
    return member.match_index > 0 and cluster.commit_index - member.match_index <= lag


# --- the planner -----------------------------------------------------------------------------
def plan(obs: Observation, *, catch_up_lag: int = DEFAULT_CATCH_UP_LAG) -> Step:
    """The next single step towards `obs.desired_replicas` voters.

    Re-run from a fresh observation on every pass; it keeps no state of its own, so a restarted
    operator resumes wherever the cell and the StatefulSet are. Rules, in order:

    1. No StatefulSet: create it (`Bootstrap`): one pod told to bootstrap when the cell is
       brand-new (no data volumes), else the desired number of pods, none bootstrapping.
    2. While the template still says bootstrap: wait for pod 0 to form the cell, then
       `EndBootstrap` so that no pod can ever bootstrap a second cell from an empty disk.
    3. No leader, or a joint configuration in flight: `Wait`.
    4. A learner: promote it once caught up (it has replicated something, and its
       match_index is within `catch_up_lag` of commit_index), wait while it catches up,
       remove it when it is no longer wanted.
    5. A voter whose pod came back with an empty volume (the pod now reports a new id that is
       already a voter): remove the old id.
    6. A wanted pod that reports an id the cell does not know: `AddLearner`.
    7. Scale down, one member at a time: shrink the StatefulSet by one as soon as its top pod
       hosts no member; with reclaimPolicy Delete, delete the volumes of pods that are gone for
       good (`DeletePVC`); then take the highest voter beyond the desired count: move
       leadership away from it first, then remove it, but never when that leaves fewer healthy
       voters than a quorum (of the old and of the new configuration). When the highest must
       wait, a lower one beyond the desired count whose removal is safe goes first.
    8. Wait until every pod of the StatefulSet is a member; then grow it by one.
    9. `Done`.
    """
    cell = obs.cell
    desired = obs.desired_replicas
    sts = obs.statefulset_replicas

    # 1. No StatefulSet yet.
    if sts is None:
        if obs.volumes:
            return Bootstrap(replicas=desired, bootstrap=False)
        return Bootstrap(replicas=1, bootstrap=True)

    cluster = obs.cluster
    formed = cluster is not None and cluster.leader is not None and bool(cluster.voters)

    # 2. Bootstrap in progress.
    if obs.bootstrapping:
        if formed:
            return EndBootstrap()
        return Wait("BootstrapPending", f"waiting for pod {cell}-0 to bootstrap the cell")

    # 3. No leader, or a change in flight.
    if cluster is None or cluster.leader is None or not formed:
        reachable = sum(1 for p in obs.pods if p.member_id)
        return Wait(
            "NoLeader",
            f"no leader: {reachable} of {len(obs.pods)} pods answer; the cell may have lost "
            "quorum; nothing is changed until a leader is back",
        )
    if cluster.joint is not None:
        return Wait(
            "JointConsensus",
            "a membership change is in joint consensus (old "
            f"{','.join(cluster.joint.old)} → new {','.join(cluster.joint.new)})",
        )

    healthy = healthy_ids(obs)
    homes = {m.id: member_home(m, obs.pods) for m in cluster.members}

    def ordinal(pod: str | None) -> int | None:
        return ordinal_of(cell, pod) if pod is not None else None

    def wanted(pod: str | None) -> bool:
        o = ordinal(pod)
        return o is not None and o < desired

    # 4. Learners (the cell has at most one at a time when the operator drives it).
    learners = sorted(cluster.learners, key=lambda m: (ordinal(homes[m.id]) or 0, m.id))
    for learner in learners:
        home = homes[learner.id]
        home_pod = obs.pod(home) if home is not None else None
        replaced = (
            home_pod is not None
            and home_pod.member_id is not None
            and home_pod.member_id != learner.id
        )
        if not wanted(home) or replaced:
            return RemoveMember(learner.id)
        if learner.id not in healthy:
            return Wait(
                "LearnerCatchingUp", f"learner {learner.id} on {home} is not answering"
            )
        if not caught_up(cluster, learner, catch_up_lag):
            return Wait(
                "LearnerCatchingUp",
                f"learner {learner.id} on {home} is catching up "
                f"(match {learner.match_index} of commit {cluster.commit_index})",
            )
        blocker = promotion_blocker(cluster, learner.id, healthy)
        if blocker is not None:
            return Wait("QuorumAtRisk", blocker)
        return Promote(learner.id)

    voter_ids = {m.id for m in cluster.voters}

    # 5. Voters replaced by a new incarnation on the same pod (empty volume).
    for voter in sorted(cluster.voters, key=lambda m: (ordinal(homes[m.id]) or 0, m.id)):
        home = homes[voter.id]
        pod = obs.pod(home) if home is not None else None
        if (
            pod is not None
            and pod.member_id is not None
            and pod.member_id != voter.id
            and pod.member_id in voter_ids
            and voter.id != cluster.leader
        ):
            blocker = removal_blocker(cluster, voter.id, healthy)
            if blocker is not None:
                return Wait("QuorumAtRisk", blocker)
            return RemoveMember(voter.id)

    # 6. Add wanted pods that report an id the cell does not know (new pods, and pods back
    #    with an empty volume, whose old incarnation may be what blocks a removal below).
    known = {m.id for m in cluster.members}
    for pod in sorted(obs.pods, key=lambda p: p.ordinal):
        if pod.member_id is None or pod.member_id in known or not wanted(pod.name):
            continue
        if pod.ordinal >= sts:
            continue
        return AddLearner(pod=pod.name, id=pod.member_id, peer_url=pod.peer_url, url=pod.client_url)

    housed = {home for home in homes.values() if home is not None}

    # 7. Scale down, one member at a time: shrink the StatefulSet as soon as its top pod hosts
    #    no member; then reclaim volumes; then remove the highest voter beyond the desired count.
    if sts > desired and f"{cell}-{sts - 1}" not in housed:
        return ScaleStatefulSet(sts - 1)
    if obs.reclaim_policy == "Delete":
        live = {p.name for p in obs.pods}
        for volume in sorted(obs.volumes, key=lambda v: (ordinal(v) or 0, v)):
            o = ordinal(volume)
            if o is None or o < max(sts, desired) or volume in live or volume in housed:
                continue
            return DeletePVC(volume)
    extra = sorted(
        (m for m in cluster.voters
         if ordinal(homes[m.id]) is not None and not wanted(homes[m.id])),
        key=lambda m: (ordinal(homes[m.id]) or 0, m.id),
        reverse=True,
    )
    # The highest first; when its removal must wait (quorum, or it leads and nobody can take
    # over), a lower extra voter whose removal is safe goes first: often a dead one, whose
    # removal is what makes the others safe to remove.
    held: Wait | None = None
    for victim in extra:
        blocker = removal_blocker(cluster, victim.id, healthy)
        if blocker is not None:
            held = held or Wait("QuorumAtRisk", blocker)
            continue
        if victim.id == cluster.leader:
            targets = [
                m for m in cluster.voters
                if m.id != victim.id and m.id in healthy and wanted(homes[m.id])
            ]
            if not targets:
                held = held or Wait(
                    "NoTransferTarget",
                    f"leader {victim.id} is to be removed but no healthy voter can take over",
                )
                continue
            target = max(
                targets,
                key=lambda m: (m.match_index, -(ordinal(homes[m.id]) or 0)),
            )
            return TransferLeader(to=target.id)
        return RemoveMember(victim.id)
    if held is not None:
        return held

    # 8. Every pod of the StatefulSet must be a member before it grows by one more.
    if sts > desired:
        top = f"{cell}-{sts - 1}"
        return Wait("UnexpectedState", f"{top} still hosts a member; not shrinking")
    for i in range(sts):
        name = f"{cell}-{i}"
        if name not in housed:
            return Wait("PodStarting", f"waiting for {name} to start and report its id")
    if sts < desired:
        return ScaleStatefulSet(sts + 1)

    return Done()
