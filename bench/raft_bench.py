"""Committed entries per second of a 3-member in-memory Raft cluster with no I/O at all."""

from __future__ import annotations

import random
import time
from typing import Any

from lockcell.raft.core import Raft, RaftConfig, bootstrap_entries
from lockcell.raft.types import Message, Role


def _cluster(size: int) -> dict[str, Raft]:
    ids = [f"n{i}" for i in range(size)]
    hard, entries = bootstrap_entries(ids)
    return {
        i: Raft(RaftConfig(id=i, max_inflight=256), random.Random(n), hard, entries=entries)
        for n, i in enumerate(ids)
    }


def _pump(nodes: dict[str, Raft]) -> int:
    """Run Ready batches and deliver messages until quiet; returns entries applied."""
    applied = 0
    busy = True
    while busy:
        busy = False
        outbox: list[Message] = []
        for node in nodes.values():
            if node.has_ready():
                rd = node.ready()
                outbox.extend(rd.messages)
                if node.role is Role.LEADER:
                    applied += len(rd.committed_entries)
                node.advance()
                busy = True
        for m in outbox:
            nodes[m.to].step(m)
            busy = True
    return applied


def run(quick: bool = False, size: int = 3, batch: int = 64, payload: int = 100,
        seconds: float | None = None) -> dict[str, Any]:
    """Propose ``batch`` entries per round through the leader; report commits per second."""
    nodes = _cluster(size)
    leader = nodes["n0"]
    # A member votes for no one in its first election timeout: let it pass in silence
    # (campaigns started meanwhile go nowhere), then elect n0.
    for _ in range(leader.config.election_ticks):
        for node in nodes.values():
            node.tick()
    for node in nodes.values():
        if node.has_ready():
            node.ready()
            node.advance()
    leader.campaign()
    _pump(nodes)
    assert leader.role is Role.LEADER
    data = b"x" * payload
    if seconds is None:
        seconds = 1.0 if quick else 3.0
    committed = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(batch):
            leader.propose(data)
        committed += _pump(nodes)
    elapsed = time.perf_counter() - started
    return {"bench": "raft_in_memory", "members": size, "batch": batch,
            "payload_bytes": payload, "committed": committed,
            "committed_per_s": round(committed / elapsed)}


def main() -> None:
    """Print the figures for a few batch sizes."""
    for batch in (1, 16, 256):
        print(run(batch=batch))


if __name__ == "__main__":
    main()
