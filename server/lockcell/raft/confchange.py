"""Membership arithmetic: validating a ConfChange and computing the configuration it yields."""

from __future__ import annotations

from lockcell.raft.types import ChangeOp, ConfChange, ConfState


class ConfChangeError(ValueError):
    """A membership change that is not allowed from the current configuration."""


def apply_conf_change(conf: ConfState, change: ConfChange) -> ConfState:
    """The configuration after ``change``; raises :class:`ConfChangeError` if invalid.

    - An empty change leaves a joint configuration.
    - A change that alters the voter set of a non-empty configuration enters a joint
      configuration (C_old,new); the very first voters of an empty cell are set directly.
    - A change touching only learners applies directly.
    Validation happens before anything is computed into the result, so an invalid change
    leaves nothing half-applied.
    """
    if not change.changes:
        if not conf.joint:
            raise ConfChangeError("not in a joint configuration: nothing to leave")
        return ConfState(voters=conf.voters, learners=conf.learners)
    if conf.joint:
        raise ConfChangeError("a joint configuration must be left before the next change")
    voters = set(conf.voters)
    learners = set(conf.learners)
    touched: set[str] = set()
    for single in change.changes:
        node = single.node
        if not node:
            raise ConfChangeError("empty member id")
        if node in touched:
            raise ConfChangeError(f"member {node} changed twice in one change")
        touched.add(node)
        if single.op is ChangeOp.ADD_VOTER:
            if node in voters:
                raise ConfChangeError(f"{node} is already a voter")
            voters.add(node)
            learners.discard(node)
        elif single.op is ChangeOp.ADD_LEARNER:
            if node in voters:
                raise ConfChangeError(f"{node} is a voter; demotion is not supported")
            if node in learners:
                raise ConfChangeError(f"{node} is already a learner")
            learners.add(node)
        else:
            if node not in voters and node not in learners:
                raise ConfChangeError(f"{node} is not a member")
            voters.discard(node)
            learners.discard(node)
    if not voters:
        raise ConfChangeError("a configuration needs at least one voter")
    new_voters = frozenset(voters)
    if new_voters == conf.voters or not conf.voters:
        return ConfState(voters=new_voters, learners=frozenset(learners))
    return ConfState(
        voters=new_voters, voters_outgoing=conf.voters, learners=frozenset(learners)
    )
