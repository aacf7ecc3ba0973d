"""Status builder: phase, conditions, members, and what the scale subresource reads."""

from __future__ import annotations

from typing import Any

from op_cellsim import CELL, urls

from lockcell_operator.model import ClusterView, Member, Observation, PodState
from lockcell_operator.planner import (
    AddLearner,
    Bootstrap,
    Done,
    EndBootstrap,
    ScaleStatefulSet,
    Wait,
)
from lockcell_operator.status import build_status, phase_of

T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"


def obs(n: int = 3, *, down: set[int] | None = None, leader: int | None = 0,
        learner: bool = False) -> Observation:
    down = down or set()
    members = [Member(f"m{i}", *urls(f"{CELL}-{i}"), "voter", 10) for i in range(n)]
    if learner:
        members.append(Member("m9", *urls(f"{CELL}-{n}"), "learner", 1))
    pods = [PodState(f"{CELL}-{i}", i, i not in down, None if i in down else f"m{i}",
                     *urls(f"{CELL}-{i}")) for i in range(n)]
    cluster = ClusterView(f"m{leader}", 7, 10, tuple(members)) if leader is not None else None
    return Observation(cell=CELL, desired_replicas=n, statefulset_replicas=n, pods=tuple(pods),
                       cluster=cluster, volumes=tuple(p.name for p in pods))


def conds(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def build(o: Observation, step: Any, previous: dict[str, Any] | None = None,
          now: str = T0, error: str | None = None) -> dict[str, Any]:
    return build_status(o, step, generation=4, selector="a=b", now=now, previous=previous,
                        error=error)


def test_running_cell() -> None:
    s = build(obs(3, leader=1), Done())
    assert s["phase"] == "Running"
    assert s["observedGeneration"] == 4
    assert s["replicas"] == 3 and s["readyReplicas"] == 3
    assert s["selector"] == "a=b"
    assert s["leader"] == "c-1" and s["term"] == 7
    assert s["members"] == [
        {"name": f"c-{i}", "id": f"m{i}", "role": "voter", "healthy": True} for i in range(3)]
    c = conds(s)
    assert (c["Available"]["status"], c["Available"]["reason"]) == ("True", "QuorumHealthy")
    assert (c["Progressing"]["status"], c["Progressing"]["reason"]) == ("False", "Reconciled")
    assert c["Degraded"]["status"] == "False"
    assert all(x["lastTransitionTime"] == T0 and x["observedGeneration"] == 4
               for x in s["conditions"])


def test_scaling_and_learners() -> None:
    s = build(obs(3, learner=True), AddLearner("c-3", "m9", "p", "u"))
    assert s["phase"] == "Scaling"
    assert conds(s)["Progressing"]["reason"] == "AddLearner"
    assert {"name": "c-3", "id": "m9", "role": "learner", "healthy": False} in s["members"]
    s = build(obs(3), ScaleStatefulSet(4))
    assert s["phase"] == "Scaling" and conds(s)["Progressing"]["status"] == "True"
    wait = Wait("LearnerCatchingUp", "learner m9 on c-3 is catching up")
    s = build(obs(3), wait)
    assert conds(s)["Progressing"]["message"] == "learner m9 on c-3 is catching up"


def test_degraded_when_a_voter_is_down_and_when_quorum_is_at_risk() -> None:
    s = build(obs(3, down={2}), Done())
    assert s["phase"] == "Degraded"
    c = conds(s)
    assert c["Available"]["status"] == "True"
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("True", "MembersUnhealthy")
    assert "c-2 (m2)" in c["Degraded"]["message"]
    wait = Wait("QuorumAtRisk", "removing m2 would leave 1 healthy of 2 voters")
    s = build(obs(3, down={1}), wait)
    c = conds(s)
    assert s["phase"] == "Degraded"
    assert (c["Degraded"]["reason"], c["Degraded"]["message"]) == ("QuorumAtRisk", wait.message)
    assert c["Progressing"]["reason"] == "QuorumAtRisk"
    s = build(obs(3, down={1, 2}), Done())
    assert conds(s)["Available"]["reason"] == "QuorumLost"


def test_no_leader_keeps_last_members_with_fresh_health() -> None:
    before = build(obs(3), Done())
    o = obs(3, down={1, 2}, leader=None)
    s = build(o, Wait("NoLeader", "no leader"), previous=before, now=T1)
    assert s["phase"] == "Degraded"
    assert s["leader"] is None and s["term"] == 7
    assert [m["healthy"] for m in s["members"]] == [True, False, False]
    c = conds(s)
    assert (c["Available"]["status"], c["Available"]["reason"]) == ("False", "NoLeader")
    assert c["Available"]["lastTransitionTime"] == T1
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("True", "NoLeader")


def test_creating_and_failed() -> None:
    empty = Observation(cell=CELL, desired_replicas=3, statefulset_replicas=None)
    assert phase_of(empty, Bootstrap(1, True)) == "Creating"
    assert phase_of(obs(1), EndBootstrap()) == "Creating"
    booting = Observation(cell=CELL, desired_replicas=3, statefulset_replicas=1,
                          bootstrapping=True)
    assert phase_of(booting, Wait("BootstrapPending", "x")) == "Creating"
    s = build(obs(3), Done(), error="boom")
    assert s["phase"] == "Failed"
    assert conds(s)["Progressing"]["reason"] == "ReconcileError"


def test_transition_time_moves_only_when_status_flips() -> None:
    first = build(obs(3), Done(), now=T0)
    same = build(obs(3), Done(), previous=first, now=T1)
    assert all(c["lastTransitionTime"] == T0 for c in same["conditions"])
    flipped = build(obs(3, down={2}), Done(), previous=same, now=T1)
    c = conds(flipped)
    assert c["Degraded"]["lastTransitionTime"] == T1
    assert c["Available"]["lastTransitionTime"] == T0


def test_events_announce_actions_and_each_new_wait_once() -> None:
    from lockcell_operator.handlers import event_for

    waiting = build(obs(3), Wait("QuorumAtRisk", "removing m2 would leave 1 healthy"))
    done = build(obs(3), Done())
    assert event_for(AddLearner("c-3", "m9", "p", "u"), done) == (
        "Normal", "AddLearner", "adding c-3 (m9) as a learner")
    assert event_for(ScaleStatefulSet(4), None) == (
        "Normal", "ScaleStatefulSet", "scaling the StatefulSet to 4")
    step = Wait("QuorumAtRisk", "removing m2 would leave 1 healthy")
    assert event_for(step, done) == ("Warning", "QuorumAtRisk", step.message)
    assert event_for(step, waiting) is None  # already said
    catching_up = Wait("LearnerCatchingUp", "match 5 of 9")
    assert event_for(catching_up, waiting) == ("Normal", "LearnerCatchingUp", "match 5 of 9")
    assert event_for(Done(), waiting) == ("Normal", "Reconciled", "membership is as desired")
    assert event_for(Done(), done) is None
