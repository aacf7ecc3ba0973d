"""Machine probe: what one process waking another costs, on other CPUs and on one CPU.

Every lock handover crosses four processes (client -> leader -> follower -> leader ->
client), and each crossing wakes a sleeping process. On a virtual machine whose idle CPUs
halt, such a wake-up can cost more than the Python work around it; this probe measures it
so the other figures can be read against it. Two processes bounce one byte over a socket
pair, blocking in ``recv`` as the servers block in ``epoll``. Run::

    python -m bench.wakeup_bench [--round-trips N] [--json]

It forks, so run it as its own process (``run`` does).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from typing import Any

from bench.results import percentile

PLACEMENTS = ("other CPU", "same CPU", "unpinned")


def _cpus_for(placement: str) -> tuple[set[int], set[int]] | None:
    """CPU sets for (parent, child), None when unpinned; raises when not possible here."""
    if placement == "unpinned":
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if placement == "same CPU":
        return {allowed[0]}, {allowed[0]}
    if len(allowed) < 2:
        raise RuntimeError("one CPU only")
    return {allowed[0]}, {allowed[1]}


def measure(placement: str, round_trips: int) -> dict[str, Any]:
    """Round trips between this process and a forked echo child placed as asked."""
    cpus = _cpus_for(placement)
    ours, theirs = socket.socketpair()
    original = os.sched_getaffinity(0)
    child = os.fork()
    if child == 0:  # the echo side: block, wake, answer, until the parent hangs up
        try:
            ours.close()
            if cpus is not None:
                os.sched_setaffinity(0, cpus[1])
            while data := theirs.recv(64):
                theirs.send(data)
        finally:
            os._exit(0)  # never return into the parent's code
    theirs.close()
    if cpus is not None:
        os.sched_setaffinity(0, cpus[0])
    try:
        warm_up = min(1000, round_trips)
        for _ in range(warm_up):  # warm up both sides
            ours.send(b"x")
            ours.recv(64)
        samples = []
        cpu_before = time.process_time()
        started = time.perf_counter()
        for _ in range(round_trips):
            sent = time.perf_counter()
            ours.send(b"x")
            ours.recv(64)
            samples.append(time.perf_counter() - sent)
        elapsed = time.perf_counter() - started
        our_cpu = time.process_time() - cpu_before
    finally:
        ours.close()
        os.sched_setaffinity(0, original)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    os.waitpid(child, 0)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = (children.ru_utime + children.ru_stime
                 - children_before.ru_utime - children_before.ru_stime)
    samples.sort()
    return {
        "placement": placement,
        "round_trips": round_trips,
        "round_trips_per_s": round(round_trips / elapsed, 1),
        "p50_us": round(1e6 * percentile(samples, 50), 1),
        "p99_us": round(1e6 * percentile(samples, 99), 1),
        "caller_cpu_us": round(1e6 * our_cpu / round_trips, 1),
        "echo_cpu_us": round(1e6 * child_cpu / (round_trips + warm_up), 1),
    }


def run(round_trips: int) -> list[dict[str, Any]]:
    """Every placement possible on this machine, each in a fresh process."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench.wakeup_bench", "--json", "--round-trips",
         str(round_trips)],
        capture_output=True, text=True, check=True, timeout=300,
    )
    rows: list[dict[str, Any]] = json.loads(completed.stdout)
    return rows


def main() -> None:
    """Command line: print the rows (as JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for placement in PLACEMENTS:
        try:
            rows.append(measure(placement, args.round_trips))
        except (RuntimeError, OSError) as exc:
            rows.append({"placement": placement, "skipped": str(exc)})
    if args.json:
        print(json.dumps(rows))
        return
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
