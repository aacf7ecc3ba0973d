"""A pure model of a cell plus its StatefulSet, to drive the planner step by step in tests.

It plays Kubernetes (pods exist below the StatefulSet's replicas, volumes persist), the
servers (an empty volume mints a new id; pod 0 bootstraps when told to) and the cell's Raft
configuration (learners catch up, joint consensus resolves a tick later, a leader exists
only while a majority of voters is up). Faults: a pod's process down/up, a wiped volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lockcell_operator.model import (
    ClusterView,
    JointConfig,
    Member,
    Observation,
    PodState,
    ReclaimPolicy,
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
)

CELL = "c"


def urls(pod: str) -> tuple[str, str]:
    host = f"{pod}.{CELL}-peers.ns.svc.cluster.local"
    return f"http://{host}:7001", f"http://{host}:7101"


@dataclass
class SimMember:
    id: str
    pod: str
    role: str
    match: int = 0


@dataclass
class CellSim:
    desired: int
    reclaim: ReclaimPolicy = "Retain"
    sts: int | None = None
    bootstrapping: bool = False
    # pod → member id kept in its data volume ("" = a volume without an id yet).
    volumes: dict[str, str] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    config: dict[str, SimMember] = field(default_factory=dict)
    joint: JointConfig | None = None
    leader: str | None = None
    term: int = 0
    commit: int = 0
    minted: int = 0
    removed: set[str] = field(default_factory=set)
    history: list[Step] = field(default_factory=list)
    # Pods created by the last StatefulSet change: their server starts on the next tick.
    starting: set[str] = field(default_factory=set)
    joint_ticks: int = 0

    # --- Kubernetes and the servers -------------------------------------------------------
    def pods(self) -> list[str]:
        return [f"{CELL}-{i}" for i in range(self.sts or 0)]

    def _start_pods(self) -> None:
        """Pods below the StatefulSet's replicas get a volume; an empty one mints an id."""
        for pod in self.pods():
            if pod in self.down or pod in self.starting:
                continue
            if not self.volumes.get(pod):
                self.minted += 1
                new_id = f"{pod}-i{self.minted}"
                self.volumes[pod] = new_id
                if self.bootstrapping and pod == f"{CELL}-0" and not self.config:
                    self.config[new_id] = SimMember(new_id, pod, "voter", self.commit)
                    self.leader = new_id
                    self.term += 1

    def reported(self, pod: str) -> str | None:
        if pod not in self.pods() or pod in self.down or pod in self.starting:
            return None
        return self.volumes.get(pod) or None

    def healthy(self) -> set[str]:
        return {i for p in self.pods() if (i := self.reported(p))}

    # --- Raft ------------------------------------------------------------------------------
    def voters(self) -> list[str]:
        return [m.id for m in self.config.values() if m.role == "voter"]

    def has_quorum(self) -> bool:
        voters = self.voters()
        if not voters:
            return False
        healthy = self.healthy()
        up = sum(1 for v in voters if v in healthy)
        if up < quorum(len(voters)):
            return False
        if self.joint is not None:
            old_up = sum(1 for v in self.joint.old if v in healthy)
            if old_up < quorum(len(self.joint.old)):
                return False
        return True

    def tick(self) -> None:
        """Time passes: servers start, learners catch up, joint resolves, elections."""
        self._start_pods()
        self.starting.clear()
        self.commit += 7
        healthy = self.healthy()
        if self.joint is not None:
            self.joint_ticks += 1
            if self.joint_ticks >= 2 and self.has_quorum():
                self.joint = None  # auto-leave once C_new is committed
                self.joint_ticks = 0
        for m in self.config.values():
            if m.id in healthy:
                m.match = self.commit if m.role == "voter" else min(self.commit, m.match + 60)
        if self.leader is not None and (
            self.leader not in healthy or self.leader not in self.voters() or not self.has_quorum()
        ):
            self.leader = None
        if self.leader is None and self.has_quorum():
            for v in sorted(self.voters()):
                if v in healthy:
                    self.leader = v
                    self.term += 1
                    break

    # --- what the operator sees -------------------------------------------------------------
    def observation(self) -> Observation:
        pods = []
        for i, pod in enumerate(self.pods()):
            member_id = self.reported(pod)
            client, peer = urls(pod)
            pods.append(
                PodState(
                    name=pod,
                    ordinal=i,
                    ready=member_id is not None and member_id in self.config,
                    member_id=member_id,
                    client_url=client,
                    peer_url=peer,
                )
            )
        cluster = None
        if self.leader is not None:
            members = []
            for m in self.config.values():
                client, peer = urls(m.pod)
                role = "voter" if m.role == "voter" else "learner"
                members.append(Member(m.id, client, peer, role, m.match))  # type: ignore[arg-type]
            cluster = ClusterView(
                leader=self.leader,
                term=self.term,
                commit_index=self.commit,
                members=tuple(members),
                joint=self.joint,
            )
        return Observation(
            cell=CELL,
            desired_replicas=self.desired,
            statefulset_replicas=self.sts,
            bootstrapping=self.bootstrapping,
            pods=tuple(pods),
            cluster=cluster,
            volumes=tuple(sorted(self.volumes)),
            reclaim_policy=self.reclaim,
        )

    # --- carrying out a step -----------------------------------------------------------------
    def apply(self, step: Step) -> None:
        self.history.append(step)
        match step:
            case Bootstrap(replicas=n, bootstrap=flag):
                assert self.sts is None
                self.sts, self.bootstrapping = n, flag
                self.starting.update(self.pods())
            case EndBootstrap():
                self.bootstrapping = False
            case ScaleStatefulSet(replicas=n):
                assert self.sts is not None
                if n > self.sts:
                    self.starting.add(f"{CELL}-{self.sts}")
                self.sts = n
            case AddLearner(pod=pod, id=member_id):
                assert member_id not in self.config
                self.config[member_id] = SimMember(member_id, pod, "learner", 0)
            case Promote(id=member_id):
                old = tuple(self.voters())
                self.config[member_id].role = "voter"
                self.joint = JointConfig(old=old, new=tuple(self.voters()))
            case RemoveMember(id=member_id):
                was_voter = self.config[member_id].role == "voter"
                old = tuple(self.voters())
                del self.config[member_id]
                self.removed.add(member_id)
                if was_voter:
                    self.joint = JointConfig(old=old, new=tuple(self.voters()))
                if self.leader == member_id:
                    self.leader = None
            case TransferLeader(to=member_id):
                assert self.config[member_id].role == "voter"
                self.leader = member_id
                self.term += 1
            case DeletePVC(pod=pod):
                del self.volumes[pod]
            case Wait() | Done():
                pass

    # --- faults --------------------------------------------------------------------------------
    def crash(self, pod: str) -> None:
        self.down.add(pod)

    def restart(self, pod: str) -> None:
        self.down.discard(pod)

    def elect(self, pod: str) -> None:
        """Leadership moves (an election) to the member on `pod`, if it can lead."""
        member_id = self.reported(pod)
        if (
            member_id is not None
            and member_id in self.voters()
            and self.has_quorum()
            and self.leader is not None
        ):
            self.leader = member_id
            self.term += 1

    def wipe(self, pod: str) -> None:
        """The pod comes back with an empty volume (a new member id)."""
        if pod in self.volumes:
            self.volumes[pod] = ""
