"""A lock holder for the fencing test: takes a lock, then keeps writing to a resource.

It writes with its sequencer whatever happens to its session (like a process that
checked its lock and was then paused), printing one JSON line per attempt.

    python holder.py ENDPOINTS LOCK_PATH RESOURCE_URL
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request

from lockcell.client import SEQUENCER_HEADER, Cell


def write(url: str, sequencer: str, data: bytes) -> int:
    request = urllib.request.Request(url, data=data, method="PUT",
                                     headers={SEQUENCER_HEADER: sequencer})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def main() -> None:
    endpoints, path, resource = sys.argv[1:4]
    cell = Cell(endpoints)
    session = cell.session(lease_ms=1000)
    handle = session.open(path, create="file", lock_delay_ms=0)
    lock = handle.acquire(wait_ms=10_000)
    print(json.dumps({"acquired": lock.lock_generation}), flush=True)
    n = 0
    while True:
        n += 1
        status = write(resource, lock.sequencer, f"holder {n}".encode())
        print(json.dumps({"write": n, "status": status, "lost": lock.lost}), flush=True)
        time.sleep(0.1)


if __name__ == "__main__":
    main()
