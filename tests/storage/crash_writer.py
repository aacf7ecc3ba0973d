"""Crash-test writer: drives a FileRaftStorage through random Raft-like saves until killed.

Run as ``python crash_writer.py DIRECTORY SEED``. It opens the store, prints ``READY``,
then loops forever over random operations (appends, conflicting suffixes, hard-state
changes, local snapshots, leader snapshots). Before each call it prints ``INTENT <json>``
(the logical state the call leads to) and after the call returns ``ACK <json>``; every
line is flushed at once. Entry and snapshot contents are pure functions of (index, term),
so the test can check every byte it reads back. The test imports the helpers below.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from lockcell.raft.types import (
    ConfState,
    Entry,
    EntryKind,
    HardState,
    Snapshot,
    SnapshotMeta,
)
from lockcell.storage.store import FileRaftStorage, RestoredState

SEGMENT_SIZE = 8 * 1024
VOTERS = ("n1", "n2", "n3")


def entry_data(index: int, term: int) -> bytes:
    """The data of the entry at (index, term): 1..220 bytes derived from both."""
    seed = hashlib.blake2b(f"e/{index}/{term}".encode(), digest_size=32).digest()
    length = 1 + (index * 7919 + term * 104729) % 220
    return (seed * (length // 32 + 1))[:length]


def snapshot_data(index: int, term: int) -> bytes:
    """The data of the snapshot at (index, term): up to ~64 KiB."""
    seed = hashlib.blake2b(f"s/{index}/{term}".encode(), digest_size=64).digest()
    return seed * (1 + (index * 31 + term) % 1024)


def make_snapshot(index: int, term: int) -> Snapshot:
    conf = ConfState(voters=frozenset(VOTERS))
    return Snapshot(SnapshotMeta(index=index, term=term, conf=conf), snapshot_data(index, term))


@dataclass
class Model:
    """The logical state of the store: term runs, last index, hard state, snapshot."""

    runs: list[tuple[int, int]] = field(default_factory=list)
    """(first index, term) runs covering (snapshot index, last]; plus the snapshot's own."""
    last: int = 0
    hard_state: tuple[int, str | None, int] = (0, None, 0)
    snap: tuple[int, int] = (0, 0)

    def term_at(self, index: int) -> int | None:
        if index == self.snap[0]:
            return self.snap[1]
        if index < self.snap[0] or index > self.last or not self.runs:
            return None
        position = bisect_right([start for start, _ in self.runs], index) - 1
        return self.runs[position][1] if position >= 0 else None

    def summary(self) -> str:
        return json.dumps(
            {
                "runs": self.runs,
                "last": self.last,
                "hs": list(self.hard_state),
                "snap": list(self.snap),
            },
            separators=(",", ":"),
        )

    @classmethod
    def parse(cls, text: str) -> Model:
        raw = json.loads(text)
        hs = raw["hs"]
        return cls(
            runs=[(int(s), int(t)) for s, t in raw["runs"]],
            last=int(raw["last"]),
            hard_state=(int(hs[0]), hs[1], int(hs[2])),
            snap=(int(raw["snap"][0]), int(raw["snap"][1])),
        )

    @classmethod
    def from_restored(cls, restored: RestoredState) -> Model:
        meta = restored.snapshot.meta
        model = cls(
            last=meta.index + len(restored.entries),
            hard_state=(
                restored.hard_state.term,
                restored.hard_state.vote,
                restored.hard_state.commit,
            ),
            snap=(meta.index, meta.term),
        )
        for entry in restored.entries:
            if not model.runs or model.runs[-1][1] != entry.term:
                model.runs.append((entry.index, entry.term))
        return model

    def copy(self) -> Model:
        return Model(list(self.runs), self.last, self.hard_state, self.snap)

    def append(self, first: int, count: int, term: int) -> None:
        self.runs = [(s, t) for s, t in self.runs if s < first]
        if not self.runs or self.runs[-1][1] != term:
            self.runs.append((first, term))
        self.last = first + count - 1

    def install_snapshot(self, index: int, term: int, *, replace_log: bool) -> None:
        self.snap = (index, term)
        if replace_log:
            self.runs = []
            self.last = index
            return
        kept = [(s, t) for s, t in self.runs if s > index]
        covering = [t for s, t in self.runs if s <= index + 1]
        if index < self.last and covering and (not kept or kept[0][0] != index + 1):
            kept.insert(0, (index + 1, covering[-1]))
        self.runs = kept


def check_restored(restored: RestoredState, model: Model) -> str | None:
    """``None`` if ``restored`` is exactly ``model``'s state, else what differs."""
    meta = restored.snapshot.meta
    if (meta.index, meta.term) != model.snap:
        return f"snapshot {(meta.index, meta.term)} != {model.snap}"
    if meta.index and restored.snapshot.data != snapshot_data(meta.index, meta.term):
        return f"snapshot {meta.index} data differs"
    hs = restored.hard_state
    if (hs.term, hs.vote, hs.commit) != model.hard_state:
        return f"hard state {hs} != {model.hard_state}"
    if meta.index + len(restored.entries) != model.last:
        return f"last index {meta.index + len(restored.entries)} != {model.last}"
    for position, entry in enumerate(restored.entries):
        index = meta.index + 1 + position
        if entry.index != index:
            return f"entry {position} has index {entry.index}, expected {index}"
        term = model.term_at(index)
        if entry.term != term:
            return f"entry {index} has term {entry.term}, expected {term}"
        if entry.kind is not EntryKind.NORMAL or entry.data != entry_data(index, entry.term):
            return f"entry {index} data differs"
    return None


def step(store: FileRaftStorage, model: Model, rng: random.Random) -> None:
    """Run one random operation, printing INTENT before and ACK after it."""
    term, vote, commit = model.hard_state
    snap_index = model.snap[0]
    floor = max(commit, snap_index)
    last_term = model.term_at(model.last) or 0
    current = max(term, last_term)
    intent = model.copy()
    roll = rng.random()
    if roll < 0.55 or model.last == 0:
        count = rng.choice((1, 1, 2, 3, 5, 8, 16, 40))
        first = model.last + 1
        batch = [
            Entry(current, i, data=entry_data(i, current)) for i in range(first, first + count)
        ]
        hard = HardState(current, vote, rng.randint(commit, first + count - 1))
        intent.append(first, count, current)
        intent.hard_state = (hard.term, hard.vote, hard.commit)
        action: Callable[[], None] = partial(store.save, hard, batch)
    elif roll < 0.67 and model.last > floor:
        new_term = current + 1
        first = rng.randint(floor + 1, model.last)
        count = rng.randint(1, 6)
        batch = [
            Entry(new_term, i, data=entry_data(i, new_term)) for i in range(first, first + count)
        ]
        hard = HardState(new_term, rng.choice(VOTERS), commit)
        intent.append(first, count, new_term)
        intent.hard_state = (hard.term, hard.vote, hard.commit)
        action = partial(store.save, hard, batch)
    elif roll < 0.77:
        hard = HardState(
            current + rng.randint(0, 1),
            rng.choice((None, *VOTERS)),
            rng.randint(commit, model.last),
        )
        intent.hard_state = (hard.term, hard.vote, hard.commit)
        action = partial(store.save, hard, [])
    elif roll < 0.89 and commit > snap_index:
        snap_term = model.term_at(commit)
        assert snap_term is not None
        image = make_snapshot(commit, snap_term)
        intent.install_snapshot(commit, snap_term, replace_log=False)
        action = partial(store.save_snapshot, image)
    elif roll < 0.95:
        index = model.last + rng.randint(1, 20)
        image = make_snapshot(index, current)
        intent.install_snapshot(index, current, replace_log=True)
        action = partial(store.save, None, [], image)
    elif model.last > floor:
        index = rng.randint(floor + 1, model.last)
        image = make_snapshot(index, current + 1)
        intent.install_snapshot(index, current + 1, replace_log=True)
        action = partial(store.save, None, [], image)
    else:
        return
    print("INTENT " + intent.summary(), flush=True)
    action()
    print("ACK " + intent.summary(), flush=True)
    model.runs, model.last, model.hard_state, model.snap = (
        intent.runs,
        intent.last,
        intent.hard_state,
        intent.snap,
    )


def main(argv: list[str]) -> int:
    directory, seed = Path(argv[1]), int(argv[2])
    rng = random.Random(seed)
    print("OPENING", flush=True)
    store = FileRaftStorage(directory, segment_size=SEGMENT_SIZE)
    model = Model.from_restored(store.load())
    print(f"READY torn_tails={len(store.recovery_report.torn_tails)}", flush=True)
    while True:
        step(store, model, rng)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
