"""Membership planner: hand-written cases and hypothesis properties over a simulated cell."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from op_cellsim import CELL, CellSim, urls

from lockcell_operator.model import (
    ClusterView,
    JointConfig,
    Member,
    Observation,
    PodState,
    host_label,
    ordinal_of,
    quorum,
)
from lockcell_operator.planner import (
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
    member_home,
    plan,
    removal_blocker,
)


def member(pod: str, member_id: str, role: str = "voter", match: int = 100) -> Member:
    client, peer = urls(pod)
    return Member(member_id, client, peer, role, match)  # type: ignore[arg-type]


def pod(i: int, member_id: str | None, ready: bool = True) -> PodState:
    name = f"{CELL}-{i}"
    client, peer = urls(name)
    return PodState(name, i, ready, member_id, client, peer)


def steady(n: int, *, desired: int, leader: int = 0, down: frozenset[int] = frozenset(),
           extra: tuple[Member, ...] = (), joint: JointConfig | None = None,
           commit: int = 100, volumes: tuple[str, ...] | None = None,
           reclaim: str = "Retain") -> Observation:
    """n voters c-0..c-(n-1) with ids m0.., StatefulSet at n, `down` pods not answering."""
    members = tuple(member(f"{CELL}-{i}", f"m{i}") for i in range(n)) + extra
    return Observation(
        cell=CELL,
        desired_replicas=desired,
        statefulset_replicas=n,
        pods=tuple(pod(i, None if i in down else f"m{i}", i not in down) for i in range(n)),
        cluster=ClusterView(f"m{leader}", 3, commit, members, joint),
        volumes=volumes if volumes is not None else tuple(f"{CELL}-{i}" for i in range(n)),
        reclaim_policy=reclaim,  # type: ignore[arg-type]
    )


# --- helpers ---------------------------------------------------------------------------------
def test_quorum_and_url_helpers() -> None:
    assert [quorum(n) for n in range(1, 10)] == [1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert host_label("http://c-1.c-peers.ns.svc.cluster.local:7101") == "c-1"
    assert host_label("http://10.0.0.1:7001") == "10"
    assert host_label("http://[::1]:7001") is None
    assert ordinal_of("c", "c-12") == 12
    assert ordinal_of("c", "c-01") is None
    assert ordinal_of("c", "cc-1") is None
    assert ordinal_of("c", "c-x") is None


# --- creation and bootstrap ------------------------------------------------------------------
def test_brand_new_cell_bootstraps_one_pod() -> None:
    obs = Observation(cell=CELL, desired_replicas=3, statefulset_replicas=None)
    assert plan(obs) == Bootstrap(replicas=1, bootstrap=True)


def test_existing_volumes_never_bootstrap() -> None:
    obs = Observation(cell=CELL, desired_replicas=3, statefulset_replicas=None,
                      volumes=("c-0", "c-1", "c-2"))
    assert plan(obs) == Bootstrap(replicas=3, bootstrap=False)


def test_waits_for_pod0_then_ends_bootstrap() -> None:
    obs = Observation(cell=CELL, desired_replicas=3, statefulset_replicas=1, bootstrapping=True,
                      pods=(pod(0, "m0", False),), volumes=("c-0",))
    step = plan(obs)
    assert isinstance(step, Wait) and step.reason == "BootstrapPending"
    formed = Observation(cell=CELL, desired_replicas=3, statefulset_replicas=1,
                         bootstrapping=True, pods=(pod(0, "m0"),),
                         cluster=ClusterView("m0", 1, 1, (member("c-0", "m0"),)),
                         volumes=("c-0",))
    assert plan(formed) == EndBootstrap()


# --- scale up --------------------------------------------------------------------------------
def test_scale_up_grows_statefulset_by_one() -> None:
    assert plan(steady(3, desired=5)) == ScaleStatefulSet(4)


def test_new_pod_is_waited_for_then_added_as_learner() -> None:
    obs = steady(3, desired=5)
    obs4 = Observation(**{**obs.__dict__, "statefulset_replicas": 4,
                          "pods": (*obs.pods, pod(3, None, False))})
    step = plan(obs4)
    assert isinstance(step, Wait) and step.reason == "PodStarting"
    obs4 = Observation(**{**obs4.__dict__, "pods": (*obs.pods, pod(3, "m3", False))})
    client, peer = urls("c-3")
    assert plan(obs4) == AddLearner(pod="c-3", id="m3", peer_url=peer, url=client)


def test_learner_promoted_only_when_caught_up() -> None:
    lagging = steady(4, desired=5, extra=(), commit=1000)
    members = (*lagging.cluster.members[:3], member("c-3", "m3", "learner", 500))  # type: ignore[union-attr]
    obs = Observation(**{**lagging.__dict__,
                         "cluster": ClusterView("m0", 3, 1000, members)})
    step = plan(obs)
    assert isinstance(step, Wait) and step.reason == "LearnerCatchingUp"
    assert "500" in step.message and "1000" in step.message
    members = (*members[:3], member("c-3", "m3", "learner", 950))
    obs = Observation(**{**obs.__dict__, "cluster": ClusterView("m0", 3, 1000, members)})
    assert plan(obs) == Promote("m3")
    assert plan(obs, catch_up_lag=10) == Wait(
        "LearnerCatchingUp", "learner m3 on c-3 is catching up (match 950 of commit 1000)")


def test_learner_that_replicated_nothing_is_not_promoted_in_a_young_cell() -> None:
    young = steady(2, desired=3, commit=5)
    members = (*young.cluster.members, member("c-2", "m2", "learner", 0))  # type: ignore[union-attr]
    obs = Observation(**{**young.__dict__, "statefulset_replicas": 3,
                         "pods": (*young.pods, pod(2, "m2")),
                         "cluster": ClusterView("m0", 3, 5, members)})
    step = plan(obs)
    assert isinstance(step, Wait) and step.reason == "LearnerCatchingUp", step
    members = (*members[:2], member("c-2", "m2", "learner", 4))
    assert plan(Observation(**{**obs.__dict__, "cluster": ClusterView("m0", 3, 5, members)})) \
        == Promote("m2")


def test_member_home_by_url_when_the_pod_does_not_answer() -> None:
    # Pods that advertise loopback URLs (no pod name in the host): a member whose pod's probe
    # failed is still found on its pod by the URLs the pod advertises.
    loop = {f"c-{i}": (f"http://127.0.0.1:{4000 + i}", f"http://127.0.0.1:{5000 + i}")
            for i in range(5)}
    members = tuple(Member(f"m{i}", *loop[f"c-{i}"], "voter", 100) for i in range(5))
    pods = tuple(PodState(f"c-{i}", i, i != 4, None if i == 4 else f"m{i}", *loop[f"c-{i}"])
                 for i in range(5))
    assert member_home(members[4], pods) == "c-4"
    assert member_home(members[1], pods) == "c-1"
    obs = Observation(cell=CELL, desired_replicas=3, statefulset_replicas=5, pods=pods,
                      cluster=ClusterView("m0", 3, 100, members),
                      volumes=tuple(f"c-{i}" for i in range(5)))
    # Without the URLs, c-4's member would look homeless and c-4 would be shrunk away while
    # it still hosts a voter; with them, that voter is removed first.
    assert plan(obs) == RemoveMember("m4")


def test_joint_consensus_waits() -> None:
    obs = steady(4, desired=5, joint=JointConfig(("m0", "m1", "m2"), ("m0", "m1", "m2", "m3")))
    step = plan(obs)
    assert isinstance(step, Wait) and step.reason == "JointConsensus"


def test_no_leader_waits_and_says_so() -> None:
    obs = steady(3, desired=1, down=frozenset({1, 2}))
    obs = Observation(**{**obs.__dict__, "cluster": None})
    step = plan(obs)
    assert isinstance(step, Wait) and step.reason == "NoLeader"
    assert "1 of 3 pods answer" in step.message


# --- scale down ------------------------------------------------------------------------------
def test_scale_down_removes_highest_then_shrinks_then_deletes_volume() -> None:
    assert plan(steady(5, desired=3)) == RemoveMember("m4")
    # m4 gone from the configuration: shrink the StatefulSet.
    obs = steady(4, desired=3)
    obs = Observation(**{**obs.__dict__, "statefulset_replicas": 5,
                         "pods": (*obs.pods, pod(4, "m4", False))})
    assert plan(obs) == ScaleStatefulSet(4)
    # Shrunk, pod gone, volume left: Retain keeps it, Delete deletes it.
    obs = steady(4, desired=3, volumes=("c-0", "c-1", "c-2", "c-3", "c-4"))
    assert plan(obs) == RemoveMember("m3")
    obs = steady(3, desired=3, volumes=("c-0", "c-1", "c-2", "c-3", "c-4"))
    assert plan(obs) == Done()
    obs = steady(3, desired=3, volumes=("c-0", "c-1", "c-2", "c-3", "c-4"), reclaim="Delete")
    assert plan(obs) == DeletePVC("c-3")


def test_leader_is_moved_off_before_removal() -> None:
    obs = steady(5, desired=3, leader=4)
    step = plan(obs)
    assert isinstance(step, TransferLeader)
    assert step.to in {"m0", "m1", "m2"}


def test_refuses_removal_that_loses_quorum() -> None:
    # 3 voters, c-1 down, scale to 2: removing c-2 would leave 1 healthy of 2 (quorum 2).
    step = plan(steady(3, desired=2, down=frozenset({1})))
    assert isinstance(step, Wait) and step.reason == "QuorumAtRisk"
    assert "below quorum 2" in step.message
    # 5 voters, two down: removing a down one is fine, a healthy one is not.
    assert plan(steady(5, desired=4, down=frozenset({4, 3}))) == RemoveMember("m4")
    step = plan(steady(5, desired=4, down=frozenset({1, 2})))
    assert isinstance(step, Wait) and step.reason == "QuorumAtRisk"


def test_two_of_three_down_refuses_even_with_a_stale_leader_view() -> None:
    step = plan(steady(3, desired=1, down=frozenset({1, 2})))
    assert isinstance(step, Wait) and step.reason == "QuorumAtRisk"
    assert "only 1 of 3 voters are healthy" in step.message


def test_a_safe_lower_removal_goes_first_when_the_highest_must_wait() -> None:
    # 3 voters, c-1 lost its volume (m1 is dead for good, c-1 now reports n1), scale to 1:
    # removing m2 first would leave {m0, m1} with one healthy; removing m1 first is safe.
    base = steady(3, desired=1)
    pods = (pod(0, "m0"), pod(1, "n1", False), pod(2, "m2"))
    assert plan(Observation(**{**base.__dict__, "pods": pods})) == RemoveMember("m1")
    # The leader sits on the highest pod and the only wanted member is down: a lower extra
    # voter is removed meanwhile instead of waiting on the leader.
    obs = steady(4, desired=1, leader=3, down=frozenset({0}))
    assert plan(obs) == RemoveMember("m2")


def test_removal_blocker_counts_both_configurations() -> None:
    view = ClusterView("a", 1, 1, tuple(member(f"c-{i}", x) for i, x in enumerate("abc")))
    assert removal_blocker(view, "c", frozenset("abc")) is None
    assert removal_blocker(view, "c", frozenset("ab")) is None
    assert removal_blocker(view, "c", frozenset("ac")) is not None
    assert removal_blocker(view, "c", frozenset("a")) is not None
    single = ClusterView("a", 1, 1, (member("c-0", "a"),))
    assert removal_blocker(single, "a", frozenset("a")) == "a is the last voter"


def test_learner_of_removed_pod_is_dropped_first() -> None:
    obs = steady(4, desired=3)
    members = (*obs.cluster.members[:3], member("c-3", "m3", "learner", 10))  # type: ignore[union-attr]
    obs = Observation(**{**obs.__dict__, "cluster": ClusterView("m0", 3, 100, members)})
    assert plan(obs) == RemoveMember("m3")


# --- empty volumes ---------------------------------------------------------------------------
def test_empty_volume_pod_new_id_added_promoted_then_old_removed() -> None:
    base = steady(3, desired=3)
    # c-2 came back with an empty volume and reports n2; m2 is a voter that never answers.
    pods = (pod(0, "m0"), pod(1, "m1"), pod(2, "n2", False))
    obs = Observation(**{**base.__dict__, "pods": pods})
    client, peer = urls("c-2")
    assert plan(obs) == AddLearner(pod="c-2", id="n2", peer_url=peer, url=client)
    members = (*base.cluster.members, member("c-2", "n2", "learner", 100))  # type: ignore[union-attr]
    obs = Observation(**{**obs.__dict__, "cluster": ClusterView("m0", 3, 100, members)})
    assert plan(obs) == Promote("n2")
    members = (*base.cluster.members, member("c-2", "n2", "voter", 100))  # type: ignore[union-attr]
    obs = Observation(**{**obs.__dict__, "cluster": ClusterView("m0", 3, 100, members)})
    assert plan(obs) == RemoveMember("m2")


def test_describe_covers_every_step() -> None:
    steps: list[Step] = [
        Bootstrap(1, True), Bootstrap(3, False), EndBootstrap(), Wait("NoLeader", "x"),
        ScaleStatefulSet(2), AddLearner("c-1", "i", "p", "u"), Promote("i"), TransferLeader("i"),
        RemoveMember("i"), DeletePVC("c-3"), Done(),
    ]
    texts = [describe(s) for s in steps]
    assert all(texts) and len(set(texts)) == len(texts)


# --- properties over the simulated cell ------------------------------------------------------
MEMBERSHIP = (AddLearner, Promote, RemoveMember, TransferLeader)


def check_step(sim: CellSim, obs: Observation, step: Step) -> None:
    """The safety rules every planned step must obey, judged on what the planner saw."""
    cluster = obs.cluster
    healthy = {p.member_id for p in obs.pods if p.member_id}
    if isinstance(step, MEMBERSHIP):
        assert cluster is not None and cluster.leader is not None, step
        assert cluster.joint is None, f"{step} during joint consensus"
    if isinstance(step, Bootstrap):
        assert obs.statefulset_replicas is None
        assert step.bootstrap == (not obs.volumes)
        assert step.replicas == (1 if step.bootstrap else obs.desired_replicas)
    if isinstance(step, ScaleStatefulSet):
        sts = obs.statefulset_replicas
        assert sts is not None and abs(step.replicas - sts) == 1, step
        assert 1 <= step.replicas <= 9
        if step.replicas < sts:
            # remove before shrink: nobody in the configuration lives on the dropped pod.
            top = f"{CELL}-{sts - 1}"
            assert cluster is not None
            assert all(sim.config[m.id].pod != top for m in cluster.members), step
            assert step.replicas >= obs.desired_replicas
        else:
            assert step.replicas <= obs.desired_replicas
            assert cluster is not None and not cluster.learners and cluster.joint is None
    if isinstance(step, AddLearner):
        assert cluster is not None and not cluster.learners, "one learner at a time"
        assert step.id not in {m.id for m in cluster.members}
        assert ordinal_of(CELL, step.pod) is not None
        assert ordinal_of(CELL, step.pod) < obs.desired_replicas  # type: ignore[operator]
        assert (step.url, step.peer_url) == urls(step.pod)
    if isinstance(step, Promote):
        assert cluster is not None
        m = cluster.member(step.id)
        assert m is not None and m.role == "learner", "add before promote"
        assert cluster.commit_index - m.match_index <= 100, "promoted before caught up"
        voters = [v.id for v in cluster.voters]
        now = sum(1 for v in voters if v in healthy)
        assert now >= quorum(len(voters))
        assert now + 1 >= quorum(len(voters) + 1)
    if isinstance(step, RemoveMember):
        assert cluster is not None
        m = cluster.member(step.id)
        assert m is not None
        assert step.id != cluster.leader, "never removes the leader"
        if m.role == "voter":
            voters = [v.id for v in cluster.voters]
            rest = [v for v in voters if v != step.id]
            assert rest
            assert sum(1 for v in voters if v in healthy) >= quorum(len(voters))
            assert sum(1 for v in rest if v in healthy) >= quorum(len(rest)), "below quorum"
            home = sim.config[step.id].pod
            now_on_pod = next((p.member_id for p in obs.pods if p.name == home), None)
            if now_on_pod is not None and now_on_pod != step.id:
                # An empty-volume replacement: the new id must already be a voter.
                nm = cluster.member(now_on_pod)
                assert nm is None or nm.role == "voter", "old id removed before new id voted"
                event("replaced member removed")
    if isinstance(step, TransferLeader):
        assert cluster is not None
        target = cluster.member(step.to)
        assert target is not None and target.role == "voter" and step.to in healthy
        assert ordinal_of(CELL, sim.config[step.to].pod) < obs.desired_replicas  # type: ignore[operator]
    if isinstance(step, DeletePVC):
        assert obs.reclaim_policy == "Delete"
        o = ordinal_of(CELL, step.pod)
        assert o is not None and o >= obs.desired_replicas
        assert obs.statefulset_replicas is not None and o >= obs.statefulset_replicas
        assert step.pod not in {p.name for p in obs.pods}
        assert all(m.pod != step.pod for m in sim.config.values())


def run(sim: CellSim, passes: int) -> Step:
    step: Step = Wait("NoLeader", "not run")
    for _ in range(passes):
        sim.tick()
        obs = sim.observation()
        step = plan(obs)
        check_step(sim, obs, step)
        event(step.reason if isinstance(step, Wait) else type(step).__name__)
        before = {k: v.role for k, v in sim.config.items()}
        sim.apply(step)
        after = {k: v.role for k, v in sim.config.items()}
        changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
        assert len(changed) <= 1, f"{step} changed {changed}"
        if isinstance(step, Done):
            return step
    return step


def converged(sim: CellSim) -> None:
    want = {f"{CELL}-{i}" for i in range(sim.desired)}
    assert sim.sts == sim.desired
    assert sim.joint is None
    assert all(m.role == "voter" for m in sim.config.values())
    assert {m.pod for m in sim.config.values()} == want
    assert {m.id for m in sim.config.values()} == {sim.volumes[p] for p in want}
    assert not sim.bootstrapping
    if sim.reclaim == "Delete":
        assert set(sim.volumes) == want


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.sampled_from(["Retain", "Delete"]))
def test_property_creates_any_size_one_pod_at_a_time(desired: int, reclaim: str) -> None:
    sim = CellSim(desired=desired, reclaim=reclaim)  # type: ignore[arg-type]
    assert isinstance(run(sim, 20 * desired + 20), Done)
    converged(sim)
    sizes = [s.replicas for s in sim.history if isinstance(s, ScaleStatefulSet)]
    assert sizes == list(range(2, desired + 1))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.sampled_from(["Retain", "Delete"]))
def test_property_rescale_converges(first: int, second: int, reclaim: str) -> None:
    sim = CellSim(desired=first, reclaim=reclaim)  # type: ignore[arg-type]
    assert isinstance(run(sim, 20 * first + 20), Done)
    sim.desired = second
    assert isinstance(run(sim, 20 * max(first, second) + 20), Done)
    converged(sim)


Event = tuple[str, int]
events = st.lists(
    st.tuples(
        st.sampled_from(
            ["pass"] * 6 + ["crash", "restart", "restart", "wipe", "scale", "elect", "elect"]
        ),
        st.integers(0, 8),
    ),
    min_size=5,
    max_size=150,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 9), st.sampled_from(["Retain", "Delete"]), events)
def test_property_safe_under_faults_and_converges_after(
    desired: int, reclaim: str, script: list[Event]
) -> None:
    sim = CellSim(desired=desired, reclaim=reclaim)  # type: ignore[arg-type]
    assert isinstance(run(sim, 20 * desired + 20), Done)
    for kind, arg in script:
        pod = f"{CELL}-{arg}"
        if kind == "pass":
            run(sim, 1)
        elif kind == "crash":
            sim.crash(pod)
        elif kind == "restart":
            sim.restart(pod)
        elif kind == "wipe":
            sim.wipe(pod)
        elif kind == "scale":
            sim.desired = arg + 1
        elif kind == "elect":
            sim.elect(pod)
    # Faults end: every pod's process comes back.
    sim.down.clear()
    sim.tick()
    if not sim.has_quorum():
        # Too many voters lost their data for good: the cell cannot recover on its own
        # (and the operator must not pretend it can); it only waits.
        event("unrecoverable")
        for _ in range(10):
            sim.tick()
            obs = sim.observation()
            step = plan(obs)
            check_step(sim, obs, step)
            assert isinstance(step, Wait), step
        return
    final = run(sim, 40 * 9 + 40)
    assert isinstance(final, Done), final
    converged(sim)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(2, 9),
    st.integers(1, 8),
    st.sets(st.integers(0, 8), max_size=5),
    st.integers(0, 8),
)
def test_property_scale_down_with_members_down_never_loses_quorum(
    size: int, target: int, crashed: set[int], leader: int
) -> None:
    sim = CellSim(desired=size, reclaim="Delete")
    assert isinstance(run(sim, 20 * size + 20), Done)
    sim.elect(f"{CELL}-{leader}")
    for i in crashed:
        sim.crash(f"{CELL}-{i}")
    sim.desired = min(target, size)
    step = run(sim, 40 * size)
    healthy_voters = len(sim.healthy() & set(sim.voters()))
    if sim.has_quorum():
        # Either done, or waiting because the next removal would cost the quorum.
        if isinstance(step, Wait):
            event(step.reason)
            assert step.reason in {
                "QuorumAtRisk", "NoTransferTarget", "JointConsensus", "LearnerCatchingUp"
            }
    else:
        assert healthy_voters < quorum(len(sim.voters()))
    # Whatever happened, bring everybody back: it finishes the job.
    sim.down.clear()
    assert isinstance(run(sim, 40 * size + 40), Done)
    converged(sim)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9])
def test_replay_from_any_point_is_restart_safe(n: int) -> None:
    """Planning twice from the same observation gives the same step (no hidden state)."""
    sim = CellSim(desired=n)
    for _ in range(20 * n + 20):
        sim.tick()
        obs = sim.observation()
        step = plan(obs)
        assert plan(obs) == step
        sim.apply(step)
        if isinstance(step, Done):
            break
    converged(sim)
