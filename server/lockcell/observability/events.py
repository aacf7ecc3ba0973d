"""A small in-memory ring of a member's recent cluster events (leader and membership changes)
for the status page. It is this member's own memory: it starts empty at every start."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lockcell.raft.confchange import ConfChangeError, apply_conf_change
from lockcell.raft.types import ChangeOp, ConfChange, ConfState, Role

DEFAULT_CAPACITY = 50

_OPS = {ChangeOp.ADD_VOTER: "add voter", ChangeOp.ADD_LEARNER: "add learner",
        ChangeOp.REMOVE: "remove"}


@dataclass(frozen=True, slots=True)
class ClusterEvent:
    """One thing that happened, as this member saw it."""

    at: float
    """Wall-clock time (seconds since the epoch) this member saw it."""
    kind: str
    """``leader`` (the known leader changed), ``role`` (this member's own role changed) or
    ``membership`` (a configuration change was applied here)."""
    term: int
    text: str
    index: int | None = None
    """Log index of a membership change."""


class ClusterEventLog:
    """The last ``capacity`` events, newest last; fed by the driver's event hook."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY,
                 clock: Callable[[], float] = time.time, replayed_until: int = 0) -> None:
        self._events: deque[ClusterEvent] = deque(maxlen=capacity)
        self._clock = clock
        self._leader: str | None = None
        self._role: Role | None = None
        self._conf: ConfState | None = None
        self.replayed_until = replayed_until
        """Log entries up to this index were committed before this process started: their
        membership changes are replayed history, and said to be."""

    def __len__(self) -> int:
        return len(self._events)

    def events(self) -> list[ClusterEvent]:
        """The recorded events, oldest first."""
        return list(self._events)

    def record(self, kind: str, info: Mapping[str, Any]) -> None:
        """Record a driver event: ``("role", {role, leader, term})`` on every soft-state
        change, ``("conf_change", {index, change, conf})`` when a membership change applies
        (``conf`` is the configuration before it)."""
        if kind == "role":
            self._record_role(info)
        elif kind == "conf_change":
            self._record_conf_change(info)

    def _add(self, kind: str, term: int, text: str, index: int | None = None) -> None:
        self._events.append(ClusterEvent(self._clock(), kind, term, text, index))

    def _record_role(self, info: Mapping[str, Any]) -> None:
        role = info.get("role")
        leader = info.get("leader")
        term = int(info.get("term") or 0)
        if isinstance(role, Role) and role is not self._role:
            if role is not Role.FOLLOWER or self._role is not None:
                self._add("role", term, f"this member became {role.value.replace('_', '-')}")
            self._role = role
        if leader != self._leader:
            if leader is None:
                self._add("leader", term, f"leader {self._leader} lost; no leader known")
            else:
                self._add("leader", term, f"{leader} is the leader")
            self._leader = None if leader is None else str(leader)

    def _record_conf_change(self, info: Mapping[str, Any]) -> None:
        change = info.get("change")
        before = info.get("conf")
        index = info.get("index")
        term = int(info.get("term") or 0)
        if not isinstance(change, ConfChange):
            return
        # The core adopts a batch's membership changes after the whole batch is applied, so
        # for the second change of a batch the configuration before it is our own result
        # of the first; the core's is right for the first change we see.
        candidates = [c for c in (self._conf, before) if isinstance(c, ConfState)]
        text, after = describe_conf_change(change, candidates)
        if after is not None:
            self._conf = after
        if isinstance(index, int) and index <= self.replayed_until:
            text += " (replayed from the log at start)"
        self._add("membership", term, text, index if isinstance(index, int) else None)


def describe_conf_change(change: ConfChange,
                         before: Sequence[ConfState] = ()) -> tuple[str, ConfState | None]:
    """One line for a membership change, with the configuration it leads to from the first
    of ``before`` it applies to (none: the change alone); and that configuration."""
    if change.changes:
        what = ", ".join(f"{_OPS.get(c.op, str(c.op))} {c.node}" for c in change.changes)
    else:
        what = "leave the joint configuration"
    for conf in before:
        try:
            after = apply_conf_change(conf, change)
        except (ConfChangeError, ValueError):
            continue
        return f"{what}; {describe_conf(after)}", after
    return what, None


def describe_conf(after: ConfState) -> str:
    """Voters, learners and the joint state of a configuration, in words."""
    voters = ", ".join(sorted(after.voters)) or "none"
    text = f"voters: {voters}"
    if after.learners:
        text += f"; learners: {', '.join(sorted(after.learners))}"
    if after.joint:
        text += f" (joint with old voters {', '.join(sorted(after.voters_outgoing))})"
    return text
