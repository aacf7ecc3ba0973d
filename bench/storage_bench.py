"""Storage benchmark: durable appends/s and entries/s by batch size, lockcell WAL vs sqlite3.

Every batch is made durable before the next starts (one ``save`` = one group commit), with
the hard state updated in the same call, as the node's driver loop does. Run::

    python -m bench.storage_bench [--quick] [--json] [--dir DIR] [--duration SECONDS]

``--dir`` should be on the file system the data will live on (fsync cost is what is being
measured; a tmpfs makes every figure meaningless). ``run(quick)`` returns the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from lockcell.raft.types import Entry, HardState
from lockcell.storage.store import FileRaftStorage

BATCH_SIZES = (1, 8, 64, 512)
ENTRY_BYTES = 100


class _Log(Protocol):
    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None: ...

    def load_count(self) -> int: ...

    def close(self) -> None: ...


class _WalLog:
    """The lockcell segmented WAL."""

    def __init__(self, directory: Path, *, preallocate: bool) -> None:
        self._directory = directory
        self._preallocate = preallocate
        self._store = FileRaftStorage(directory, preallocate=preallocate)

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        self._store.save(hard_state, entries)

    def load_count(self) -> int:
        self._store.close()
        self._store = FileRaftStorage(self._directory, preallocate=self._preallocate)
        return len(self._store.load().entries)

    def close(self) -> None:
        self._store.close()


class _SqliteLog:
    """The same contract on sqlite3: WAL journal, synchronous=FULL, one transaction a save."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / "raft.sqlite"
        self._conn = self._connect()
        self._conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS log (
                idx INTEGER PRIMARY KEY, term INTEGER NOT NULL,
                kind INTEGER NOT NULL, data BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS hard_state (
                id INTEGER PRIMARY KEY CHECK (id = 0), term INTEGER NOT NULL,
                vote TEXT, commit_index INTEGER NOT NULL);
            """
        )
        self._last = 0

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def save(self, hard_state: HardState | None, entries: Sequence[Entry]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            if entries:
                if entries[0].index <= self._last:
                    conn.execute("DELETE FROM log WHERE idx >= ?", (entries[0].index,))
                conn.executemany(
                    "INSERT INTO log (idx, term, kind, data) VALUES (?, ?, ?, ?)",
                    [(e.index, e.term, int(e.kind), e.data) for e in entries],
                )
                self._last = entries[-1].index
            if hard_state is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO hard_state VALUES (0, ?, ?, ?)",
                    (hard_state.term, hard_state.vote, hard_state.commit),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def load_count(self) -> int:
        self._conn.close()
        self._conn = self._connect()
        rows = self._conn.execute("SELECT term, idx, kind, data FROM log ORDER BY idx")
        return len([Entry(term, idx, data=bytes(data)) for term, idx, _kind, data in rows])

    def close(self) -> None:
        self._conn.close()


BACKENDS: dict[str, Callable[[Path], _Log]] = {
    "lockcell-wal": lambda d: _WalLog(d, preallocate=True),
    "lockcell-wal-noprealloc": lambda d: _WalLog(d, preallocate=False),
    "sqlite3-wal-full": _SqliteLog,
}


def _measure(
    backend: str, make: Callable[[Path], _Log], batch: int, duration: float, root: Path
) -> list[dict[str, object]]:
    directory = Path(tempfile.mkdtemp(prefix=f"{backend}-{batch}-", dir=root))
    log = make(directory)
    payload = os.urandom(ENTRY_BYTES)
    latencies: list[float] = []
    index = 0
    try:
        started = time.perf_counter()
        deadline = started + duration
        while True:
            entries = [Entry(1, index + k + 1, data=payload) for k in range(batch)]
            before = time.perf_counter()
            log.save(HardState(term=1, vote="n1", commit=index), entries)
            after = time.perf_counter()
            latencies.append(after - before)
            index += batch
            if after >= deadline and len(latencies) >= 3:
                break
        elapsed = time.perf_counter() - started
        load_started = time.perf_counter()
        loaded = log.load_count()
        load_seconds = time.perf_counter() - load_started
    finally:
        log.close()
        shutil.rmtree(directory, ignore_errors=True)
    if loaded != index:
        raise AssertionError(f"{backend}: wrote {index} entries, loaded {loaded}")
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return [
        {
            "backend": backend,
            "op": "append",
            "batch_size": batch,
            "entry_bytes": ENTRY_BYTES,
            "batches": len(latencies),
            "entries": index,
            "seconds": round(elapsed, 3),
            "appends_per_s": round(len(latencies) / elapsed, 1),
            "entries_per_s": round(index / elapsed, 1),
            "mib_per_s": round(index * ENTRY_BYTES / elapsed / 2**20, 2),
            "p50_ms": round(statistics.median(latencies) * 1000, 3),
            "p99_ms": round(p99 * 1000, 3),
        },
        {
            "backend": backend,
            "op": "load",
            "batch_size": batch,
            "entries": loaded,
            "seconds": round(load_seconds, 3),
            "entries_per_s": round(loaded / load_seconds, 1) if load_seconds > 0 else 0.0,
        },
    ]


def run(
    quick: bool, *, directory: Path | None = None, duration: float | None = None
) -> list[dict[str, object]]:
    """Measure every backend at every batch size; one ``append`` and one ``load`` row each."""
    seconds = duration if duration is not None else (0.25 if quick else 2.0)
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="lockcell-storage-bench-", dir=directory))
    rows: list[dict[str, object]] = []
    try:
        for batch in BATCH_SIZES:
            for backend, make in BACKENDS.items():
                rows.extend(_measure(backend, make, batch, seconds, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def _print_table(rows: Sequence[dict[str, object]]) -> None:
    print(
        f"{'backend':<24} {'batch':>5} {'appends/s':>10} {'entries/s':>11} "
        f"{'MiB/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'load entries/s':>15}"
    )
    loads = {(r["backend"], r["batch_size"]): r for r in rows if r["op"] == "load"}
    for row in rows:
        if row["op"] != "append":
            continue
        load = loads.get((row["backend"], row["batch_size"]), {})
        print(
            f"{row['backend']!s:<24} {row['batch_size']!s:>5} {row['appends_per_s']!s:>10} "
            f"{row['entries_per_s']!s:>11} {row['mib_per_s']!s:>7} {row['p50_ms']!s:>7} "
            f"{row['p99_ms']!s:>7} {load.get('entries_per_s', '-')!s:>15}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage_bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs (0.25 s each)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--dir", type=Path, default=None, help="where to create the stores")
    parser.add_argument("--duration", type=float, default=None, help="seconds per measurement")
    args = parser.parse_args(argv)
    rows = run(args.quick, directory=args.dir, duration=args.duration)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        _print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
