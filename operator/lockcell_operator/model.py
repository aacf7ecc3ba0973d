"""Frozen value types shared by the operator's pure functions: pods, members, the cell's view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["voter", "learner"]
ReclaimPolicy = Literal["Retain", "Delete"]


def quorum(voters: int) -> int:
    """The number of voters a Raft configuration of `voters` members needs to agree."""
    return voters // 2 + 1


@dataclass(frozen=True)
class Member:
    """One entry of `members` in `GET /v1/cluster` (DESIGN §4)."""

    id: str
    url: str
    peer_url: str
    role: Role
    match_index: int = 0


@dataclass(frozen=True)
class JointConfig:
    """The `joint` object of `GET /v1/cluster`: both voter sets while a change is in flight."""

    old: tuple[str, ...]
    new: tuple[str, ...]


@dataclass(frozen=True)
class ClusterView:
    """The leader's answer to `GET /v1/cluster`."""

    leader: str | None
    term: int
    commit_index: int
    members: tuple[Member, ...]
    joint: JointConfig | None = None

    def member(self, member_id: str) -> Member | None:
        for m in self.members:
            if m.id == member_id:
                return m
        return None

    @property
    def voters(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.role == "voter")

    @property
    def learners(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.role == "learner")


@dataclass(frozen=True)
class PodState:
    """What the operator sees of one pod of the cell's StatefulSet."""

    name: str
    ordinal: int
    ready: bool = False
    # The member id the pod's server reports (`GET /healthz` → {"id"}); None when unreachable.
    member_id: str | None = None
    # The URLs the pod advertises (the operator sets them, so it knows them).
    client_url: str = ""
    peer_url: str = ""


@dataclass(frozen=True)
class Observation:
    """Everything the planner may look at; re-observed from scratch on every pass."""

    cell: str
    desired_replicas: int
    # None when the StatefulSet does not exist.
    statefulset_replicas: int | None
    # True while the StatefulSet's template still tells pod 0 to bootstrap a new cell.
    bootstrapping: bool = False
    pods: tuple[PodState, ...] = ()
    # The leader's view; None when no pod could name a leader that answers.
    cluster: ClusterView | None = None
    # Pod names whose data volume (PVC `data-<pod>`) exists.
    volumes: tuple[str, ...] = ()
    reclaim_policy: ReclaimPolicy = "Retain"

    def pod(self, name: str) -> PodState | None:
        for p in self.pods:
            if p.name == name:
                return p
        return None


def pod_name(cell: str, ordinal: int) -> str:
    """The stable name of the StatefulSet's pod with this ordinal."""
    return f"{cell}-{ordinal}"


def ordinal_of(cell: str, pod: str) -> int | None:
    """The ordinal of `pod` when it is one of `cell`'s pods, else None."""
    prefix = f"{cell}-"
    if not pod.startswith(prefix):
        return None
    rest = pod[len(prefix):]
    if not rest.isdigit() or (len(rest) > 1 and rest.startswith("0")):
        return None
    return int(rest)


def host_label(url: str) -> str | None:
    """The first DNS label of a URL's host (`http://demo-1.demo-peers.ns.svc:7101` → `demo-1`)."""
    rest = url.split("://", 1)[-1]
    host = rest.split("/", 1)[0].split("@")[-1]
    if host.startswith("["):
        return None
    host = host.split(":", 1)[0]
    label = host.split(".", 1)[0]
    return label or None
