"""Crash failpoints at persistence steps, armed only by the LOCKCELL_FAILPOINTS variable."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

ENV_VAR = "LOCKCELL_FAILPOINTS"
"""``name=probability[,name=probability...][;seed=N]``, e.g.
``wal.after_write=0.02,snapshot.before_rename=0.5;seed=7``."""

FAILPOINTS: tuple[str, ...] = (
    # SegmentWriter.append: one frame per save
    "wal.before_write",  # nothing of the frame written yet
    "wal.after_write",  # frame written, not yet fdatasynced
    "wal.after_fsync",  # frame durable, save not yet returned
    # SegmentWriter.reopen: cutting a torn tail on open
    "wal.before_truncate",
    # SegmentWriter.create
    "segment.before_rename",  # temp file with the header written and fsynced
    "segment.after_create",  # renamed and the directory fsynced, no frame yet
    # FileRaftStorage: old segments deleted after compaction or a log reset
    "segment.before_delete",
    "segment.after_delete",  # after each unlink (oldest first), before the directory fsync
    # write_snapshot (temp file, fsync, rename, directory fsync)
    "snapshot.before_write",
    "snapshot.before_fsync",  # temp file written, not fsynced
    "snapshot.before_rename",  # temp file durable, not renamed
    "snapshot.before_dir_fsync",  # renamed, directory not yet fsynced
    "snapshot.after_dir_fsync",  # installed, older snapshots not yet pruned
)
"""Every failpoint the storage layer calls, in the order of the steps they sit between."""


def _crash(name: str) -> None:
    """Die on the spot, as a power cut of this process would: no cleanup, no flush."""
    os.write(2, f"lockcell: failpoint {name} fired: crashing (SIGKILL)\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class FailpointConfig:
    """Parsed ``LOCKCELL_FAILPOINTS``: a probability per failpoint, and an optional seed."""

    probabilities: Mapping[str, float] = field(default_factory=dict)
    seed: int | None = None


def parse(text: str) -> FailpointConfig:
    """Parse ``name=p,name=p;seed=N`` (whitespace ignored); ``ValueError`` when malformed,
    when a name is not in :data:`FAILPOINTS`, or when p is not in [0, 1]."""
    points, _, options = text.replace(" ", "").partition(";")
    probabilities: dict[str, float] = {}
    for item in filter(None, points.split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"{ENV_VAR}: {item!r} is not name=probability")
        if name not in FAILPOINTS:
            raise ValueError(f"{ENV_VAR}: unknown failpoint {name!r} "
                             f"(known: {', '.join(FAILPOINTS)})")
        try:
            probability = float(value)
        except ValueError:
            raise ValueError(f"{ENV_VAR}: {item!r}: probability is not a number") from None
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"{ENV_VAR}: {item!r}: probability must lie in [0, 1]")
        probabilities[name] = probability
    seed: int | None = None
    for option in filter(None, options.split(";")):
        key, sep, value = option.partition("=")
        if key != "seed" or not sep or not value.lstrip("-").isdigit():
            raise ValueError(f"{ENV_VAR}: unknown option {option!r} (only seed=N)")
        seed = int(value)
    return FailpointConfig(probabilities, seed)


class Failpoints:
    """Armed failpoints: :meth:`hit` crashes with each point's probability."""

    def __init__(self, config: FailpointConfig,
                 crash: Callable[[str], None] = _crash) -> None:
        self.config = config
        self._probabilities = {k: p for k, p in config.probabilities.items() if p > 0.0}
        self._rng = random.Random(config.seed)
        self._crash = crash

    def hit(self, name: str) -> None:
        """Crash at ``name`` with its probability (never when it is not armed)."""
        probability = self._probabilities.get(name)
        if probability is not None and (probability >= 1.0 or self._rng.random() < probability):
            self._crash(name)


def _from_environment() -> Failpoints | None:
    text = os.environ.get(ENV_VAR, "")
    if not text.strip():
        return None
    return Failpoints(parse(text))


_active: Failpoints | None = _from_environment()


def failpoint(name: str) -> None:
    """A persistence step named ``name``: with ``LOCKCELL_FAILPOINTS`` unset, only the
    lookup of one module global; armed, the process is killed with the point's probability."""
    if _active is not None:
        _active.hit(name)


def active() -> Failpoints | None:
    """The armed failpoints (``None`` when the variable was unset at import)."""
    return _active


def arm(spec: str | None, crash: Callable[[str], None] = _crash) -> None:
    """Replace the armed failpoints (``None`` or empty disarms); for tests and tools."""
    global _active
    _active = Failpoints(parse(spec), crash) if spec and spec.strip() else None
