"""Status builder (pure): an observation and the planned step → the Cell's `status`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .model import Observation, quorum
from .planner import (
    AddLearner,
    Bootstrap,
    DeletePVC,
    Done,
    EndBootstrap,
    Promote,
    RemoveMember,
    ScaleStatefulSet,
    Step,
    TransferLeader,
    Wait,
    describe,
    healthy_ids,
    member_home,
)

Phase = Literal["Creating", "Running", "Scaling", "Degraded", "Failed"]
ConditionStatus = Literal["True", "False", "Unknown"]
CONDITION_TYPES = ("Available", "Progressing", "Degraded")


@dataclass(frozen=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str
    message: str


def _cell_health(obs: Observation) -> tuple[int, int, bool]:
    """(healthy voters, voters, leader known) from the observation."""
    cluster = obs.cluster
    if cluster is None or cluster.leader is None:
        return 0, 0, False
    healthy = healthy_ids(obs)
    voters = [m.id for m in cluster.voters]
    return sum(1 for v in voters if v in healthy), len(voters), True


def phase_of(obs: Observation, step: Step, error: str | None = None) -> Phase:
    if error is not None:
        return "Failed"
    if isinstance(step, Bootstrap | EndBootstrap) or obs.bootstrapping:
        return "Creating"
    if isinstance(step, Wait) and step.reason == "BootstrapPending":
        return "Creating"
    healthy, voters, leader = _cell_health(obs)
    if not leader or healthy < voters:
        return "Degraded"
    if isinstance(step, Wait) and step.reason == "QuorumAtRisk":
        return "Degraded"
    if isinstance(step, Done):
        return "Running"
    return "Scaling"


def conditions_of(obs: Observation, step: Step, error: str | None = None) -> list[Condition]:
    healthy, voters, leader = _cell_health(obs)
    if not leader:
        available = Condition(
            "Available", "False", "NoLeader", "no member reports a leader that answers"
        )
    elif healthy < quorum(voters):
        available = Condition(
            "Available",
            "False",
            "QuorumLost",
            f"{healthy} of {voters} voters healthy, quorum is {quorum(voters)}",
        )
    else:
        available = Condition(
            "Available", "True", "QuorumHealthy", f"{healthy} of {voters} voters healthy"
        )

    if error is not None:
        progressing = Condition("Progressing", "False", "ReconcileError", error)
    elif isinstance(step, Done):
        progressing = Condition("Progressing", "False", "Reconciled", describe(step))
    elif isinstance(step, Wait):
        progressing = Condition("Progressing", "True", step.reason, step.message)
    else:
        progressing = Condition("Progressing", "True", type(step).__name__, describe(step))

    if error is not None:
        degraded = Condition("Degraded", "True", "ReconcileError", error)
    elif not leader and not obs.bootstrapping and obs.statefulset_replicas is not None:
        degraded = Condition("Degraded", "True", "NoLeader", "the cell has no leader")
    elif isinstance(step, Wait) and step.reason == "QuorumAtRisk":
        degraded = Condition("Degraded", "True", "QuorumAtRisk", step.message)
    elif leader and healthy < voters:
        down = _unhealthy_members(obs)
        degraded = Condition(
            "Degraded",
            "True",
            "MembersUnhealthy",
            f"{voters - healthy} of {voters} voters not answering: {', '.join(down)}",
        )
    else:
        degraded = Condition("Degraded", "False", "AsExpected", "all voters answer")
    return [available, progressing, degraded]


def _unhealthy_members(obs: Observation) -> list[str]:
    if obs.cluster is None:
        return []
    healthy = healthy_ids(obs)
    out = []
    for m in obs.cluster.voters:
        if m.id not in healthy:
            home = member_home(m, obs.pods)
            out.append(f"{home or '?'} ({m.id})")
    return out


def _merge_conditions(
    new: Sequence[Condition],
    previous: Sequence[Mapping[str, Any]],
    now: str,
    generation: int,
) -> list[dict[str, Any]]:
    """Keep lastTransitionTime unless the status of a condition changed."""
    before = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
    out = []
    for c in new:
        old = before.get(c.type)
        changed = old is None or old.get("status") != c.status
        when = now if changed or not old or not old.get("lastTransitionTime") else str(
            old["lastTransitionTime"]
        )
        out.append(
            {
                "type": c.type,
                "status": c.status,
                "reason": c.reason,
                "message": c.message,
                "lastTransitionTime": when,
                "observedGeneration": generation,
            }
        )
    return out


def members_of(
    obs: Observation, previous: Sequence[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """status.members; when no leader answers, the last known list with health refreshed."""
    healthy = healthy_ids(obs)
    if obs.cluster is not None and obs.cluster.leader is not None:
        rows = []
        for m in obs.cluster.members:
            rows.append(
                {
                    "name": member_home(m, obs.pods) or "",
                    "id": m.id,
                    "role": m.role,
                    "healthy": m.id in healthy,
                }
            )
        return sorted(rows, key=lambda r: (str(r["name"]), str(r["id"])))
    rows = []
    for row in previous:
        if isinstance(row, Mapping) and isinstance(row.get("id"), str):
            rows.append({**row, "healthy": row["id"] in healthy})
    return rows


def build_status(
    obs: Observation,
    step: Step,
    *,
    generation: int,
    selector: str,
    now: str,
    previous: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """The whole `status` object (every key present, so a merge patch replaces stale values).

    `now` is the RFC 3339 time to stamp changed conditions with; `previous` is the current
    status, used for lastTransitionTime and for members while no leader answers.
    """
    previous = previous or {}
    cluster = obs.cluster
    leader_pod: str | None = None
    term: int | None = None
    if cluster is not None and cluster.leader is not None:
        leader_member = cluster.member(cluster.leader)
        if leader_member is not None:
            leader_pod = member_home(leader_member, obs.pods)
        term = cluster.term
    prev_conditions = previous.get("conditions") or []
    prev_members = previous.get("members") or []
    return {
        "observedGeneration": generation,
        "replicas": len(obs.pods),
        "readyReplicas": sum(1 for p in obs.pods if p.ready),
        "selector": selector,
        "leader": leader_pod,
        "term": term if term is not None else previous.get("term"),
        "members": members_of(obs, prev_members if isinstance(prev_members, list) else []),
        "phase": phase_of(obs, step, error),
        "conditions": _merge_conditions(
            conditions_of(obs, step, error),
            prev_conditions if isinstance(prev_conditions, list) else [],
            now,
            generation,
        ),
    }


def is_membership_step(step: Step) -> bool:
    return isinstance(step, AddLearner | Promote | RemoveMember | TransferLeader)


def is_scaling_step(step: Step) -> bool:
    return isinstance(step, ScaleStatefulSet | DeletePVC)
