"""The replicated records of a cell (config, nodes, handles, sessions, tombstones, counters)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from .paths import LOCAL_CELL, is_valid_component, root_path
from .sequencer import SequencerRef
from .values import EventType, LockMode, NodeKind, SessionEndReason

MAX_CONTENTS_BYTES = 256 * 1024
"""Largest file contents accepted (§3)."""

MIN_LEASE_MS = 1000
MAX_LEASE_MS = 60000
MAX_LOCK_DELAY_MS = 60000
DEFAULT_LOCK_DELAY_MS = 60000
MIN_TOMBSTONE_MS = 10 * 60 * 1000
MIN_REQUEST_IDS_PER_SESSION = 1000


def content_checksum(data: bytes) -> str:
    """The ``checksum`` of contents in stat: 64-bit BLAKE2b, hex."""
    return hashlib.blake2b(data, digest_size=8).hexdigest()


EMPTY_CHECKSUM = content_checksum(b"")

_K = TypeVar("_K")
_V = TypeVar("_V")

NOTHING: Mapping[Any, Any] = MappingProxyType({})
"""The one empty mapping every node without holders, children, handles or watchers shares
(most files have none of them, and an empty dict costs 64 bytes: four per node). It is
read-only, so filling it by mistake fails instead of filling every node's."""


def _nothing() -> Mapping[Any, Any]:
    return NOTHING


def _with(mapping: Mapping[_K, _V], key: _K, value: _V) -> dict[_K, _V]:
    """``mapping`` (a dict of its own from the first entry on) with ``key`` set."""
    grown = mapping if isinstance(mapping, dict) else {}
    grown[key] = value
    return grown


def _without(mapping: Mapping[_K, _V], key: _K) -> Mapping[_K, _V]:
    """``mapping`` without ``key`` (which it holds); :data:`NOTHING` once it is empty."""
    assert isinstance(mapping, dict), "an empty mapping has no key to remove"
    del mapping[key]
    return mapping if mapping else NOTHING


@dataclass(frozen=True, slots=True)
class CellConfig:
    """Per-cell settings; part of the replicated state (they go into snapshots)."""

    cell_name: str
    max_lock_delay_ms: int = MAX_LOCK_DELAY_MS
    default_lease_ms: int = 12000
    grace_ms: int = 45000
    tombstone_ms: int = MIN_TOMBSTONE_MS
    request_ids_per_session: int = MIN_REQUEST_IDS_PER_SESSION

    def __post_init__(self) -> None:
        if not is_valid_component(self.cell_name) or self.cell_name == LOCAL_CELL:
            raise ValueError(f"invalid cell name {self.cell_name!r}")
        if not 0 <= self.max_lock_delay_ms <= MAX_LOCK_DELAY_MS:
            raise ValueError("max_lock_delay_ms must be within 0-60000")
        if not MIN_LEASE_MS <= self.default_lease_ms <= MAX_LEASE_MS:
            raise ValueError("default_lease_ms must be within 1000-60000")
        if self.grace_ms < 0:
            raise ValueError("grace_ms must not be negative")
        if self.tombstone_ms < MIN_TOMBSTONE_MS:
            raise ValueError("tombstone_ms must be at least ten minutes")
        if self.request_ids_per_session < MIN_REQUEST_IDS_PER_SESSION:
            raise ValueError("request_ids_per_session must be at least 1000")

    @property
    def root(self) -> str:
        """The path of the cell's root directory."""
        return root_path(self.cell_name)


@dataclass(slots=True, eq=False)
class Handle:
    """An open handle: bound to one node instance, owned by one session."""

    handle_id: str
    session_id: str
    path: str
    instance: int
    event_mask: int
    lock_delay_ms: int
    poisoned: bool = False
    lock_mode: LockMode | None = None
    lock_generation: int = 0
    sequencer: SequencerRef | None = None


@dataclass(slots=True, eq=False)
class Node:
    """A file or directory, which is also a reader/writer lock.

    ``holders``, ``children``, ``handles`` and ``watchers`` are insertion-ordered dicts
    (never sets) so that every iteration, and so the order of events, is the same on every
    replica; while empty they are the shared :data:`NOTHING`, so they change only through
    the methods below. ``handles`` are the open handles bound to this instance;
    ``watchers`` indexes them by the events they asked for. Use :meth:`attach` /
    :meth:`detach` to keep both.
    """

    path: str
    parent: str
    name: str
    kind: NodeKind
    ephemeral: bool
    instance: int
    content_generation: int
    lock_generation: int
    acl_generation: int = 0
    data: bytes = b""
    checksum: str = EMPTY_CHECKSUM
    lock_mode: LockMode | None = None
    lock_delay_until_ms: int = 0
    holders: Mapping[str, None] = field(default_factory=_nothing)
    children: Mapping[str, None] = field(default_factory=_nothing)
    handles: Mapping[str, Handle] = field(default_factory=_nothing)
    watchers: Mapping[EventType, Mapping[str, Handle]] = field(default_factory=_nothing)

    def add_holder(self, handle_id: str) -> None:
        """Record that ``handle_id`` holds this lock."""
        self.holders = _with(self.holders, handle_id, None)

    def remove_holder(self, handle_id: str) -> None:
        """Record that ``handle_id`` no longer holds this lock."""
        self.holders = _without(self.holders, handle_id)

    def add_child(self, name: str) -> None:
        """Record a child named ``name`` (this is a directory)."""
        self.children = _with(self.children, name, None)

    def remove_child(self, name: str) -> None:
        """Forget the child named ``name``."""
        self.children = _without(self.children, name)

    def attach(self, handle: Handle) -> None:
        """Bind an open handle to this node (and to the watcher lists of its events)."""
        self.handles = _with(self.handles, handle.handle_id, handle)
        if handle.event_mask:
            for event in EventType:
                if handle.event_mask & event.bit:
                    watching = _with(self.watchers.get(event, NOTHING), handle.handle_id,
                                     handle)
                    self.watchers = _with(self.watchers, event, watching)

    def detach(self, handle: Handle) -> None:
        """Unbind a handle that is being closed."""
        self.handles = _without(self.handles, handle.handle_id)
        if handle.event_mask:
            for event in EventType:
                if handle.event_mask & event.bit:
                    watching = _without(self.watchers[event], handle.handle_id)
                    if not watching:
                        self.watchers = _without(self.watchers, event)

    def stat(self) -> dict[str, Any]:
        """The ``stat`` object of §4 (``waiters`` is leader memory: always 0 here)."""
        return {
            "kind": self.kind.value,
            "instance": self.instance,
            "content_generation": self.content_generation,
            "lock_generation": self.lock_generation,
            "acl_generation": self.acl_generation,
            "checksum": self.checksum,
            "length": len(self.data),
            "children": len(self.children),
            "ephemeral": self.ephemeral,
            "lock": {
                "mode": None if self.lock_mode is None else self.lock_mode.value,
                "holders": len(self.holders),
                "waiters": 0,
                "lock_delay_until_ms": self.lock_delay_until_ms,
            },
        }


@dataclass(slots=True, eq=False)
class Session:
    """A live session: its handles and its remembered answers by request id (oldest first)."""

    session_id: str
    lease_ms: int
    created_ms: int
    handles: dict[str, Handle] = field(default_factory=dict)
    requests: dict[str, str] = field(default_factory=dict)
    ending: bool = False


@dataclass(slots=True, eq=False)
class Tombstone:
    """What is left of an ended session until ``purge_at_ms`` (so calls get 410, not 404)."""

    session_id: str
    reason: SessionEndReason
    ended_ms: int
    purge_at_ms: int


@dataclass(slots=True, eq=False)
class CellData:
    """Everything replicated about a cell; :mod:`.snapshot` writes and reads exactly this.

    ``instance_counter`` numbers node instances cell-wide; the two ``*_high`` marks are the
    largest content and lock generations ever given out, so a re-created node starts above
    every generation its name had before. ``tombstones`` is in purge order.
    """

    config: CellConfig
    now_ms: int = 0
    instance_counter: int = 0
    content_generation_high: int = 0
    lock_generation_high: int = 0
    nodes: dict[str, Node] = field(default_factory=dict)
    handles: dict[str, Handle] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    tombstones: dict[str, Tombstone] = field(default_factory=dict)
    locks_exclusive: int = 0
    locks_shared: int = 0
    shared_holders: int = 0
