"""Nodes keep no empty dicts: without holders, children, handles or watchers they share one."""

from __future__ import annotations

import tracemalloc
from collections.abc import Mapping
from typing import Any

import pytest

from lockcell.statemachine import Close, Delete, EventType, LockMode, NodeKind, Release
from lockcell.statemachine.state import NOTHING, Node

from .support import ROOT, Harness


def _node(harness: Harness, path: str) -> Node:
    return harness.state._data.nodes[path]


def _mappings(node: Node) -> tuple[Mapping[Any, Any], ...]:
    return (node.holders, node.children, node.handles, node.watchers)


def test_a_node_shares_the_empty_mapping_again_once_its_last_user_is_gone() -> None:
    harness = Harness()
    a, b = harness.new_session(), harness.new_session()
    directory = harness.open(a, f"{ROOT}/d", create=NodeKind.DIR,
                             events=(EventType.CHILD_ADDED,))
    plain = harness.open(a, f"{ROOT}/d/f", create=NodeKind.FILE)
    harness.ok(Close(now_ms=harness.now, session=a, handle=plain))
    assert all(m is NOTHING for m in _mappings(_node(harness, f"{ROOT}/d/f")))

    watched = harness.open(a, f"{ROOT}/d/f",
                           events=(EventType.CONTENTS_MODIFIED, EventType.LOCK_ACQUIRED))
    other = harness.open(b, f"{ROOT}/d/f", events=(EventType.CONTENTS_MODIFIED,))
    harness.acquire(a, watched, LockMode.SHARED)
    harness.acquire(b, other, LockMode.SHARED)
    node = _node(harness, f"{ROOT}/d/f")
    assert list(node.holders) == [watched, other]
    assert list(node.handles) == [watched, other]
    assert list(node.watchers) == [EventType.CONTENTS_MODIFIED, EventType.LOCK_ACQUIRED]
    assert list(node.watchers[EventType.CONTENTS_MODIFIED]) == [watched, other]

    harness.ok(Release(now_ms=harness.now, session=a, handle=watched))
    harness.ok(Close(now_ms=harness.now, session=a, handle=watched))
    assert list(node.holders) == [other]
    assert list(node.watchers) == [EventType.CONTENTS_MODIFIED]
    harness.ok(Release(now_ms=harness.now, session=b, handle=other))
    harness.ok(Close(now_ms=harness.now, session=b, handle=other))
    assert all(m is NOTHING for m in _mappings(node))

    parent = _node(harness, f"{ROOT}/d")
    assert list(parent.children) == ["f"]
    harness.ok(Delete(now_ms=harness.now, session=a, handle=harness.open(a, f"{ROOT}/d/f")))
    assert parent.children is NOTHING
    assert list(parent.handles) == [directory]


def test_a_restored_node_without_holders_or_children_shares_the_empty_mapping() -> None:
    harness = Harness()
    a = harness.new_session()
    locked = harness.open(a, f"{ROOT}/locked", create=NodeKind.FILE)
    harness.acquire(a, locked)
    harness.open(a, f"{ROOT}/d", create=NodeKind.DIR)
    harness.ok(Close(now_ms=harness.now, session=a,
                     handle=harness.open(a, f"{ROOT}/d/plain", create=NodeKind.FILE)))
    restored = harness.restored()
    assert all(m is NOTHING for m in _mappings(_node(restored, f"{ROOT}/d/plain")))
    assert list(_node(restored, f"{ROOT}/locked").holders) == [locked]
    assert list(_node(restored, f"{ROOT}/d").children) == ["plain"]
    assert restored.state.snapshot() == harness.state.snapshot()


def test_the_shared_empty_mapping_cannot_be_filled() -> None:
    with pytest.raises(TypeError):
        NOTHING["x"] = None  # type: ignore[index]


def test_an_empty_file_costs_under_500_bytes_of_state() -> None:
    """A file keeps no dict it does not use: with four per node (and the handle table that
    its creating Open grew and its Close emptied) a file cost about 800 bytes; sharing
    one read-only empty mapping brings it to about 420."""
    harness = Harness()
    session = harness.new_session()
    harness.ok(Close(now_ms=harness.now, session=session,
                     handle=harness.open(session, f"{ROOT}/d", create=NodeKind.DIR)))
    count = 5000
    entries = []
    for i in range(count):
        opened = harness.open_command(session, f"{ROOT}/d/file-{i:015d}", create=NodeKind.FILE)
        entries.append(opened.encode())
        entries.append(Close(now_ms=harness.now, session=session, handle=opened.handle).encode())
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index, entry in enumerate(entries, harness.index + 1):
            assert harness.state.apply(index, entry).error is None
        per_file = (tracemalloc.get_traced_memory()[0] - before) / count
    finally:
        tracemalloc.stop()
    assert len(_node(harness, f"{ROOT}/d").children) == count
    assert per_file < 500, f"{per_file:.0f} bytes per file"
