"""Randomized simulation of the Raft core over many seeds (see simrun.py for one run).

Every seed runs a few hundred virtual ticks of proposals, reads, transfers and membership
changes under message loss, duplication, delay/reordering, symmetric and asymmetric
partitions, crash-restart (losing what was not fsynced, including crashes between a
leader's send and its fsync and between a member's fsync and its send) and snapshots with
log compaction. The cluster (sim.py) checks election safety, leader completeness, log
matching, state-machine safety, durability, membership rules, ReadIndex linearizability
and the leader lease after every tick; after healing, a leader must be elected, a
proposal must commit and every member must catch up within a bounded number of ticks.

- ``LOCKCELL_SIM_SEEDS`` (default 500): how many seeds (``make soak`` uses 20000).
- ``LOCKCELL_SIM_SEED=<n>``: replay only seed ``n`` with a full message trace.

Seeds are spread over parametrized chunks (about 50 seeds each) so pytest-xdist can run
them in parallel. A failing seed prints its trace and the command to replay it.

Every failing seed fails its chunk: the bugs this simulation found are fixed (each has a
scenario test), so no failure is excused.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from . import simrun

SEEDS = int(os.environ.get("LOCKCELL_SIM_SEEDS", "500"))
ONE_SEED = os.environ.get("LOCKCELL_SIM_SEED")
PER_CHUNK = 50
CHUNKS = 1 if ONE_SEED else max(1, -(-SEEDS // PER_CHUNK))


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_simulation(chunk: int, record_property: pytest.RecordProperty,
                    tmp_path: Path) -> None:
    """Safety at every step and liveness after healing, for every seed of this chunk."""
    if ONE_SEED is not None:
        _replay(int(ONE_SEED), tmp_path)
        return
    seeds = range(chunk, SEEDS, CHUNKS)
    started = time.perf_counter()
    failed: list[tuple[int, AssertionError]] = []
    for seed in seeds:
        try:
            simrun.run(seed)
        except AssertionError as exc:
            failed.append((seed, exc))
    elapsed = time.perf_counter() - started
    record_property("sim_seeds", len(seeds))
    record_property("sim_seconds", elapsed)
    if failed:
        seed, exc = failed[0]
        others = ", ".join(str(s) for s, _ in failed[1:])
        pytest.fail(
            f"{len(failed)} seed(s) failed{f' (also: {others})' if others else ''}.\n"
            f"Replay: {simrun.REPLAY.format(seed=seed)}\n\n{exc}", pytrace=False)


def _replay(seed: int, tmp_path: Path) -> None:
    failure: AssertionError | None = None
    try:
        stats = simrun.run(seed, trace=True)
    except AssertionError as exc:
        failure = exc
    if failure is None:
        print(f"seed {seed}: ok ({stats.ticks} ticks, {stats.proposals} proposals, "
              f"{stats.reads} reads, {stats.changes} membership changes, "
              f"{stats.crashes} crashes)")
        return
    trace = tmp_path / f"seed-{seed}.trace"
    cluster = getattr(failure, "cluster", None)
    if cluster is not None:
        trace.write_text("\n".join(cluster.trace) + "\n")
    pytest.fail(f"seed {seed} failed.\nFull trace: {trace}\n"
                f"Replay: {simrun.REPLAY.format(seed=seed)}\n\n{failure}", pytrace=False)
