"""Random but reproducible command streams over a small universe, for property tests.

Also runnable as a script (``python scenario.py COUNT SEED...``) that prints, per seed, a
digest of the results and final snapshot, so tests can compare runs under different hash
seeds.
"""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Callable

from lockcell.statemachine import (
    Acquire,
    ApplyResult,
    CellState,
    Close,
    CloseSession,
    Command,
    CreateSession,
    CreateSpec,
    Delete,
    EventType,
    ExpireSession,
    Grant,
    GrantLocks,
    HandleClosed,
    LockMode,
    NodeKind,
    Open,
    Poison,
    Release,
    SequencerRef,
    SessionEnded,
    SessionStarted,
    SetContents,
    SetSequencer,
    Tick,
)

CELL = "test"
SESSIONS = tuple(f"s{number:031d}" for number in range(1, 9))
HANDLES = tuple(f"h{number:031d}" for number in range(1, 13))
CANONICAL_PATHS = ("/ls/test", "/ls/test/a", "/ls/test/a/b", "/ls/test/c", "/ls/test/a/d")
PATHS = (*CANONICAL_PATHS, "/ls/local/a", "/ls/local/c", "/ls/other/x", "/ls/test/a/../b", "x")
DATA = (b"", b"x", b"hello world")
REQUEST_IDS = (None,) * 12 + tuple(f"r{number}" for number in range(6))
STEPS = (-3000, 0, 1, 1, 250, 250, 1000, 5000, 20000, 61000, 700000)


class EntryGenerator:
    """Makes the next log entry, steered by what earlier results revealed.

    It remembers which session each handle id was opened for and the sequencers seen in
    answers, so most commands are meaningful while some are deliberately wrong.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = 1_000_000
        self.owner: dict[str, str] = {}
        self.sequencers: list[str] = []
        self.live: list[str] = []
        self.open_handles: dict[str, str] = {}
        self.last: Command | None = None

    def observe(self, result: ApplyResult) -> None:
        """Learn live sessions and sequencers from a result."""
        for effect in result.effects:
            if isinstance(effect, SessionStarted):
                self.live.append(effect.session)
            elif isinstance(effect, SessionEnded):
                self.live.remove(effect.session)
                for handle in effect.handles:
                    self.open_handles.pop(handle, None)
            elif isinstance(effect, HandleClosed):
                self.open_handles.pop(effect.handle, None)
        if isinstance(self.last, Open) and result.ok and not result.duplicate:
            self.open_handles[self.last.handle] = self.last.session
        value = result.value or {}
        found = [value.get("sequencer")]
        found += [grant.get("sequencer") for grant in value.get("grants", ())]
        for sequencer in found:
            if isinstance(sequencer, str):
                self.sequencers = [*self.sequencers[-9:], sequencer]

    def next_entry(self) -> bytes:
        """The next entry: mostly commands, some no-ops and garbage."""
        rng = self.rng
        self.now = max(0, self.now + rng.choice(STEPS))
        roll = rng.random()
        if roll < 0.02:
            return b""
        if roll < 0.04:
            return rng.randbytes(rng.randint(1, 20))
        if not self.live and roll < 0.5:
            self.last = CreateSession(now_ms=self.now, session=rng.choice(SESSIONS))
        else:
            self.last = self._command()
        return self.last.encode()

    def _session(self) -> str:
        if self.live and self.rng.random() < 0.9:
            return self.rng.choice(self.live)
        return self.rng.choice(SESSIONS)

    def _session_and_handle(self) -> tuple[str, str]:
        roll = self.rng.random()
        if self.open_handles and roll < 0.7:
            handle = self.rng.choice(sorted(self.open_handles))
            return self.open_handles[handle], handle
        handle = self.rng.choice(HANDLES)
        if handle in self.owner and roll < 0.9:
            return self.owner[handle], handle
        return self._session(), handle

    def _grants(self) -> tuple[Grant, ...]:
        grants = []
        for _ in range(self.rng.choice((0, 0, 1, 2))):
            session, handle = self._session_and_handle()
            grants.append(Grant(session=session, handle=handle,
                                mode=self.rng.choice(tuple(LockMode))))
        return tuple(grants)

    def _sequencer(self) -> str | None:
        rng = self.rng
        roll = rng.random()
        if roll < 0.1:
            return None
        if roll < 0.2:
            return "lc1:garbage"
        if roll < 0.8 and self.sequencers:
            return rng.choice(self.sequencers)
        return SequencerRef(rng.choice(CANONICAL_PATHS), rng.choice(tuple(LockMode)),
                            rng.randint(0, 6), rng.randint(1, 12)).encode()

    def _open(self) -> Command:
        rng = self.rng
        session = self._session()
        handle = rng.choice(HANDLES)
        self.owner[handle] = session
        create = None
        if rng.random() < 0.7:
            kind = NodeKind.DIR if rng.random() < 0.4 else NodeKind.FILE
            create = CreateSpec(kind=kind, ephemeral=rng.random() < 0.4,
                                data=b"" if kind is NodeKind.DIR else rng.choice(DATA))
        return Open(
            now_ms=self.now, session=session, handle=handle,
            path="/ls/test/a" if rng.random() < 0.4 else rng.choice(PATHS),
            create=create,
            events=tuple(rng.sample(tuple(EventType), rng.randint(0, 6))),
            lock_delay_ms=rng.choice((None, 0, 1000, 30000)),
            request_id=rng.choice(REQUEST_IDS),
        )

    def _command(self) -> Command:
        rng = self.rng
        now = self.now
        session, handle = self._session_and_handle()
        request_id = rng.choice(REQUEST_IDS)
        builders: list[tuple[int, Callable[[], Command]]] = [
            (5, lambda: CreateSession(now_ms=now, session=rng.choice(SESSIONS),
                                      lease_ms=rng.choice((None, 500, 5000)))),
            (1, lambda: CloseSession(now_ms=now, session=session, request_id=request_id,
                                     grant_next=self._grants())),
            (3, lambda: ExpireSession(now_ms=now, session=session, grant_next=self._grants())),
            (14, self._open),
            (5, lambda: Close(now_ms=now, session=session, handle=handle,
                              request_id=request_id, grant_next=self._grants())),
            (1, lambda: Poison(now_ms=now, session=session, handle=handle)),
            (5, lambda: SetContents(now_ms=now, session=session, handle=handle,
                                    data=rng.choice(DATA),
                                    if_generation=rng.choice((None, None, 2, 3)),
                                    request_id=request_id)),
            (3, lambda: Delete(now_ms=now, session=session, handle=handle,
                               request_id=request_id)),
            (10, lambda: Acquire(now_ms=now, session=session, handle=handle,
                                 mode=rng.choice(tuple(LockMode)), request_id=request_id)),
            (7, lambda: Release(now_ms=now, session=session, handle=handle,
                                generation=rng.choice((None, None, 1, 2, 3)),
                                grant_next=self._grants(), request_id=request_id)),
            (2, lambda: GrantLocks(now_ms=now, grants=self._grants())),
            (3, lambda: SetSequencer(now_ms=now, session=session, handle=handle,
                                     sequencer=self._sequencer())),
            (1, lambda: Tick(now_ms=now)),
        ]
        weights = [weight for weight, _ in builders]
        build = rng.choices([builder for _, builder in builders], weights=weights)[0]
        return build()


def generate(
    rng: random.Random, count: int, state: CellState
) -> tuple[list[bytes], list[ApplyResult]]:
    """Generate ``count`` entries against ``state``, applying each; entries and results."""
    generator = EntryGenerator(rng)
    entries: list[bytes] = []
    results: list[ApplyResult] = []
    for index in range(1, count + 1):
        entry = generator.next_entry()
        result = state.apply(index, entry)
        generator.observe(result)
        entries.append(entry)
        results.append(result)
    return entries, results


def apply_all(state: CellState, entries: list[bytes], first_index: int = 1) -> list[ApplyResult]:
    """Apply ``entries`` in order, numbering them from ``first_index``."""
    return [state.apply(index, entry) for index, entry in enumerate(entries, first_index)]


def digest(seed: int, count: int) -> str:
    """A digest of every result and the final snapshot of one seeded run."""
    state = CellState(CELL)
    results = generate(random.Random(seed), count, state)[1]
    hasher = hashlib.sha256()
    for result in results:
        hasher.update(repr(result).encode())
    hasher.update(state.snapshot())
    return hasher.hexdigest()


if __name__ == "__main__":
    count = int(sys.argv[1])
    for seed in sys.argv[2:]:
        print(digest(int(seed), count))
