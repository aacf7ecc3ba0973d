"""Fencing for resource servers: refuse requests carrying a sequencer older than one seen."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from .core import SequencerInfo, parse_sequencer
from .errors import InvalidArgument, LockcellError

SEQUENCER_HEADER = "X-Lockcell-Sequencer"
"""A conventional HTTP header for passing a sequencer to a resource server."""


class StaleSequencer(LockcellError):
    """The sequencer is older than one this resource has seen (or the cell says it is not
    current): the caller's lock was lost and someone else holds it now."""

    code = "stale_sequencer"
    status = 409


class FencedResource:
    """Keeps the highest lock generation seen per lock (path) and refuses older sequencers.

    Lock generations grow with every grant of a name (also across re-creation), so a
    request carrying generation *g* after one carrying *g' > g* comes from a holder that
    lost the lock. Optionally every sequencer is also confirmed with the cell's
    CheckSequencer (``check`` / ``acheck``, e.g. ``cell.check_sequencer``), which also
    catches a holder whose lock was lost before anyone newer reached this resource.

    Use :meth:`guard` (or :meth:`guard_async`) around the protected operation: it admits
    the sequencer and keeps other admissions out until the operation is done, so an older
    holder cannot slip a write in after a newer one was admitted.
    """

    def __init__(self, *, check: Callable[[str], bool] | None = None,
                 acheck: Callable[[str], Awaitable[bool]] | None = None,
                 require_exclusive: bool = False) -> None:
        self._check = check
        self._acheck = acheck
        self.require_exclusive = require_exclusive
        self._highest: dict[str, int] = {}
        self._table_lock = threading.Lock()
        self._thread_guard = threading.RLock()
        self._async_guard: asyncio.Lock | None = None

    def highest(self, path: str) -> int | None:
        """The highest lock generation admitted for ``path``."""
        with self._table_lock:
            return self._highest.get(path)

    def snapshot(self) -> dict[str, int]:
        """Path → highest generation (persist it to survive restarts of the resource)."""
        with self._table_lock:
            return dict(self._highest)

    def restore(self, table: dict[str, int]) -> None:
        """Adopt a saved table (keeping whichever generation is higher)."""
        with self._table_lock:
            for path, generation in table.items():
                self._highest[path] = max(generation, self._highest.get(path, generation))

    # -------------------------------------------------------------- the rule

    def inspect(self, sequencer: str) -> SequencerInfo:
        """Parse and compare with the table, without recording (raises when refused)."""
        info = parse_sequencer(sequencer)
        if info is None:
            raise InvalidArgument("not a lockcell sequencer")
        if self.require_exclusive and info.mode != "exclusive":
            raise InvalidArgument("this resource needs an exclusive lock's sequencer")
        with self._table_lock:
            seen = self._highest.get(info.path)
        if seen is not None and info.lock_generation < seen:
            raise StaleSequencer(f"lock generation {info.lock_generation} of {info.path} is "
                                 f"older than {seen}, already seen here")
        return info

    def _record(self, info: SequencerInfo) -> None:
        with self._table_lock:
            seen = self._highest.get(info.path)
            if seen is not None and info.lock_generation < seen:
                raise StaleSequencer(f"lock generation {info.lock_generation} of {info.path} "
                                     f"is older than {seen}, already seen here")
            self._highest[info.path] = max(info.lock_generation, seen or 0)

    def admit(self, sequencer: str) -> SequencerInfo:
        """Refuse (:class:`StaleSequencer`) an older sequencer, confirm with ``check`` if
        given, and remember its generation."""
        info = self.inspect(sequencer)
        if self._check is not None and not self._check(sequencer):
            raise StaleSequencer(f"the cell says generation {info.lock_generation} of "
                                 f"{info.path} is not current")
        self._record(info)
        return info

    async def admit_async(self, sequencer: str) -> SequencerInfo:
        """:meth:`admit`, confirming with ``acheck`` (or ``check``) if given."""
        info = self.inspect(sequencer)
        if self._acheck is not None:
            current = await self._acheck(sequencer)
        elif self._check is not None:
            current = self._check(sequencer)
        else:
            current = True
        if not current:
            raise StaleSequencer(f"the cell says generation {info.lock_generation} of "
                                 f"{info.path} is not current")
        self._record(info)
        return info

    @contextlib.contextmanager
    def guard(self, sequencer: str) -> Iterator[SequencerInfo]:
        """``with resource.guard(seq):`` admit, then run the operation exclusively."""
        with self._thread_guard:
            yield self.admit(sequencer)

    @contextlib.asynccontextmanager
    async def guard_async(self, sequencer: str) -> AsyncIterator[SequencerInfo]:
        """``async with resource.guard_async(seq):`` admit, then run the operation
        exclusively (among async callers of this resource)."""
        if self._async_guard is None:
            self._async_guard = asyncio.Lock()
        async with self._async_guard:
            yield await self.admit_async(sequencer)
