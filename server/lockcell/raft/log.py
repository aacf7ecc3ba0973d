"""The in-memory Raft log: a compacted prefix, retained entries, and what is not yet durable."""

from __future__ import annotations

from collections.abc import Sequence

from lockcell.raft.types import Entry, Snapshot


class RaftLog:
    """Entries after ``offset`` plus the latest snapshot, tracking commit, apply and stability.

    ``offset``/``offset_term`` name the entry just before the first retained one (the
    compaction point). ``stable`` is the highest index known durable on this member;
    everything above it must be persisted before it is acknowledged. ``handed_out`` is
    the highest index given to storage (durable or still being written by a leader that
    persists in the background), so entries are handed out once.
    """

    __slots__ = (
        "applied",
        "applying",
        "committed",
        "entries",
        "handed_out",
        "offset",
        "offset_term",
        "pending_snapshot",
        "snapshot",
        "stable",
    )

    def __init__(self, snapshot: Snapshot, entries: Sequence[Entry], committed: int) -> None:
        self.snapshot = snapshot
        self.offset = snapshot.meta.index
        self.offset_term = snapshot.meta.term
        self.entries: list[Entry] = []
        expected = self.offset + 1
        for entry in entries:
            if entry.index <= self.offset:
                continue
            if entry.index != expected:
                raise ValueError(f"log not contiguous: expected {expected}, got {entry.index}")
            self.entries.append(entry)
            expected += 1
        self.stable = self.last_index()
        self.handed_out = self.stable
        self.committed = max(min(committed, self.last_index()), self.offset)
        self.applied = self.offset
        self.applying = self.offset
        self.pending_snapshot: Snapshot | None = None

    # -- queries -----------------------------------------------------------------------------

    def first_index(self) -> int:
        """Index of the first retained entry."""
        return self.offset + 1

    def last_index(self) -> int:
        """Index of the last entry (the compaction point when no entries are retained)."""
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        """Term of the last entry."""
        return self.entries[-1].term if self.entries else self.offset_term

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; ``None`` if compacted away or beyond the end."""
        if index == self.offset:
            return self.offset_term
        if index < self.offset or index > self.last_index():
            return None
        return self.entries[index - self.offset - 1].term

    def match_term(self, index: int, term: int) -> bool:
        """Whether the entry at ``index`` has ``term``."""
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: is a log ending at (last_index, last_term) at least as up to date?"""
        mine = self.last_term()
        return last_term > mine or (last_term == mine and last_index >= self.last_index())

    def entry(self, index: int) -> Entry:
        """The retained entry at ``index``."""
        return self.entries[index - self.offset - 1]

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in [lo, hi), at least one, stopping before ``max_bytes`` is exceeded."""
        if lo <= self.offset:
            raise IndexError(f"entry {lo} is compacted (first retained {self.first_index()})")
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        chosen = self.entries[lo - self.offset - 1 : hi - self.offset - 1]
        if max_bytes is None:
            return chosen
        total = 0
        for count, entry in enumerate(chosen):
            total += entry.size()
            if total > max_bytes and count > 0:
                return chosen[:count]
        return chosen

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (or the compaction point)."""
        index = min(index, self.last_index())
        while index > self.offset:
            entry_term = self.term(index)
            if entry_term is not None and entry_term <= term:
                break
            index -= 1
        return index

    def unstable_entries(self) -> tuple[Entry, ...]:
        """Entries not yet known durable nor handed to storage."""
        handed = max(self.stable, self.handed_out)
        if handed >= self.last_index():
            return ()
        start = max(handed, self.offset) + 1
        return tuple(self.entries[start - self.offset - 1 :])

    def has_committed_to_apply(self) -> bool:
        """Whether committed entries wait to be handed out for application."""
        return self.pending_snapshot is None and self.committed > self.applying

    def committed_to_apply(self, max_bytes: int) -> tuple[Entry, ...]:
        """The next committed entries to hand out, bounded by ``max_bytes`` (at least one)."""
        if not self.has_committed_to_apply():
            return ()
        return tuple(self.slice(self.applying + 1, self.committed + 1, max_bytes))

    # -- mutations ---------------------------------------------------------------------------

    def append(self, entries: Sequence[Entry]) -> int:
        """Append entries, replacing any conflicting suffix; returns the new last index."""
        if not entries:
            return self.last_index()
        first = entries[0].index
        if first <= self.committed:
            raise ValueError(f"cannot overwrite committed {first} (commit {self.committed})")
        if first > self.last_index() + 1:
            raise ValueError(f"gap: appending {first} after {self.last_index()}")
        del self.entries[first - self.offset - 1 :]
        self.entries.extend(entries)
        self.stable = min(self.stable, first - 1)
        self.handed_out = min(self.handed_out, first - 1)
        return self.last_index()

    def maybe_append(
        self, prev_index: int, prev_term: int, leader_commit: int, entries: Sequence[Entry]
    ) -> int | None:
        """Follower append (Raft Fig. 2): ``None`` if the previous entry does not match."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new = prev_index + len(entries)
        conflict = 0
        for entry in entries:
            if entry.index <= self.offset:
                continue
            existing = self.term(entry.index)
            if existing != entry.term:
                conflict = entry.index
                break
        if conflict:
            self.append([e for e in entries if e.index >= conflict])
        self.commit_to(min(leader_commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        """Advance the commit index (never backwards, never past the log)."""
        if index > self.committed:
            if index > self.last_index():
                raise ValueError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def stable_to(self, index: int, term: int) -> None:
        """Record that entries up to ``index`` (with ``term`` there) are durable.

        An index compacted away meanwhile counts too: only applied, hence committed,
        entries are compacted, and a committed entry is never replaced."""
        if index > self.stable and (index <= self.offset or self.term(index) == term):
            self.stable = index

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by ``snapshot`` (received from a leader)."""
        self.snapshot = snapshot
        self.offset = snapshot.meta.index
        self.offset_term = snapshot.meta.term
        self.entries = []
        self.committed = snapshot.meta.index
        self.stable = snapshot.meta.index
        self.handed_out = snapshot.meta.index
        self.applying = snapshot.meta.index
        self.pending_snapshot = snapshot

    def compact(self, snapshot: Snapshot, retain: int) -> None:
        """Adopt a locally created snapshot and drop entries, keeping ``retain`` behind it."""
        if snapshot.meta.index > self.applied:
            raise ValueError(f"snapshot {snapshot.meta.index} beyond applied {self.applied}")
        self.snapshot = snapshot
        new_offset = max(self.offset, snapshot.meta.index - retain)
        if new_offset > self.offset:
            term = self.term(new_offset)
            assert term is not None
            del self.entries[: new_offset - self.offset]
            self.offset = new_offset
            self.offset_term = term
