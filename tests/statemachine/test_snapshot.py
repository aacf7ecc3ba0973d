"""Snapshots: deterministic bytes, faithful restore (tombstones, dedupe, counters, delays)."""

from __future__ import annotations

import json

import pytest

from lockcell.statemachine import (
    Acquire,
    CellState,
    Delete,
    ErrorCode,
    EventType,
    ExpireSession,
    LockMode,
    NodeKind,
    SetContents,
    SetSequencer,
    Tick,
)

from .support import ROOT, Harness


def _populate(harness: Harness) -> dict[str, str]:
    """A cell exercising every kind of replicated record; returns names for later steps."""
    a, b, c = harness.new_session(), harness.new_session(lease_ms=3000), harness.new_session()
    directory = harness.open(a, f"{ROOT}/d", create=NodeKind.DIR,
                             events=(EventType.CHILD_ADDED, EventType.CHILD_REMOVED))
    data = harness.open(a, f"{ROOT}/d/f", create=NodeKind.FILE, data=b"\x00bin\xff",
                        request_id="open-f")
    harness.open(b, f"{ROOT}/d/eph", create=NodeKind.FILE, ephemeral=True)
    lock = harness.open(a, f"{ROOT}/lock", create=NodeKind.FILE, lock_delay_ms=15000)
    shared_a = harness.open(a, f"{ROOT}/shared", create=NodeKind.FILE)
    shared_b = harness.open(b, f"{ROOT}/shared")
    harness.acquire(a, shared_a, LockMode.SHARED)
    harness.acquire(b, shared_b, LockMode.SHARED)
    sequencer = harness.acquire(a, shared_a, LockMode.SHARED)["sequencer"]
    delayed = harness.open(b, f"{ROOT}/delayed", create=NodeKind.FILE, lock_delay_ms=20000)
    harness.acquire(b, delayed)
    fenced = harness.open(c, f"{ROOT}/fenced", create=NodeKind.FILE)
    harness.ok(SetSequencer(now_ms=harness.now, session=c, handle=fenced, sequencer=sequencer))
    harness.ok(SetContents(now_ms=harness.now, session=a, handle=data, data=b"v2",
                           request_id="write-1"))
    expired = harness.new_session()
    harness.ok(ExpireSession(now_ms=harness.now, session=expired))
    return {"a": a, "b": b, "c": c, "directory": directory, "data": data, "lock": lock,
            "delayed": delayed, "fenced": fenced, "shared_a": shared_a}


def test_snapshot_is_deterministic_json() -> None:
    first, second = Harness(), Harness()
    _populate(first)
    _populate(second)
    image = first.state.snapshot()
    assert image == second.state.snapshot()
    assert image == first.state.snapshot()
    decoded = json.loads(image)
    assert decoded["format"] == 1
    assert image == json.dumps(decoded, sort_keys=True, separators=(",", ":")).encode()


def test_restore_round_trips_byte_for_byte() -> None:
    harness = Harness()
    _populate(harness)
    image = harness.state.snapshot()
    restored = CellState.restore(image)
    assert restored.snapshot() == image
    assert restored.counts() == harness.state.counts()
    assert restored.now_ms == harness.state.now_ms
    assert restored.config == harness.state.config


def test_restored_cell_behaves_identically() -> None:
    original = Harness()
    names = _populate(original)
    copy = original.restored()
    a, b, c = names["a"], names["b"], names["c"]

    def both(step: str) -> None:
        for harness in (original, copy):
            harness.results.clear()
            if step == "expire_b":
                harness.apply(ExpireSession(now_ms=harness.now, session=b))
            elif step == "acquire_delayed":
                handle = harness.open(c, f"{ROOT}/delayed")
                harness.apply(Acquire(now_ms=harness.now, session=c, handle=handle,
                                      mode=LockMode.EXCLUSIVE))
            elif step == "write_fenced":
                harness.apply(SetContents(now_ms=harness.now, session=c, handle=names["fenced"],
                                          data=b"x"))
            elif step == "retry_write":
                harness.apply(SetContents(now_ms=harness.now, session=a, handle=names["data"],
                                          data=b"ignored", request_id="write-1"))
            elif step == "later":
                harness.advance(10 * 60 * 1000)
                harness.apply(Tick(now_ms=harness.now))
            elif step == "new_node":
                harness.open(a, f"{ROOT}/d/new", create=NodeKind.FILE)
        assert original.results == copy.results, step
        assert original.state.snapshot() == copy.state.snapshot(), step

    for step in ("retry_write", "write_fenced", "expire_b", "acquire_delayed", "new_node",
                 "later", "acquire_delayed"):
        both(step)
    # Spot-check what the steps proved.
    retry = original.apply(SetContents(now_ms=original.now, session=a, handle=names["data"],
                                       data=b"again", request_id="write-1"))
    assert retry.duplicate


def test_restored_tombstones_and_lock_delays_still_apply() -> None:
    harness = Harness()
    names = _populate(harness)
    harness.ok(ExpireSession(now_ms=harness.now, session=names["b"]))
    copy = harness.restored()
    copy.fail(copy.open_command(names["b"], ROOT), ErrorCode.SESSION_EXPIRED)
    handle = copy.open(names["c"], f"{ROOT}/delayed")
    failure = copy.fail(Acquire(now_ms=copy.now, session=names["c"], handle=handle,
                                mode=LockMode.EXCLUSIVE), ErrorCode.LOCK_DELAY)
    assert failure.lock_delay_until_ms == harness.now + 20000


def test_restored_cell_keeps_counting_instances_upwards() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, f"{ROOT}/n", create=NodeKind.FILE)
    instance = harness.stat(sid, handle)["instance"]
    harness.ok(Delete(now_ms=harness.now, session=sid, handle=handle))
    copy = harness.restored()
    value = copy.ok(copy.open_command(sid, f"{ROOT}/n", create=NodeKind.FILE))
    assert value["stat"]["instance"] > instance


@pytest.mark.parametrize(
    "image",
    [b"", b"not json", b"[]", b'{"format": 2}', b'{"format": 1}',
     b'{"format":1,"config":{"cell_name":"x"},"now_ms":0,"instance_counter":0,'
     b'"content_generation_high":0,"lock_generation_high":0,"nodes":[],"handles":[],'
     b'"sessions":[],"tombstones":[]}'],
)
def test_malformed_snapshots_raise_value_error(image: bytes) -> None:
    with pytest.raises(ValueError):
        CellState.restore(image)


def test_snapshot_keeps_configuration() -> None:
    state = CellState("other", max_lock_delay_ms=5000, default_lease_ms=2000, grace_ms=1000,
                      tombstone_ms=700000, request_ids_per_session=1500)
    restored = CellState.restore(state.snapshot())
    assert restored.config == state.config
    assert restored.cell_name == "other"


@pytest.mark.parametrize(
    ("field", "value"),
    [("kind", "socket"), ("data", "not base64!"), ("lock_mode", "sideways"),
     ("holders", 7), ("instance", "many"), ("path", None)],
)
def test_a_garbled_node_in_a_snapshot_raises_value_error(field: str, value: object) -> None:
    harness = Harness()
    sid = harness.new_session()
    harness.open(sid, f"{ROOT}/n", create=NodeKind.FILE)
    image = json.loads(harness.state.snapshot())
    node = next(n for n in image["nodes"] if n["path"] == f"{ROOT}/n")
    node[field] = value
    with pytest.raises(ValueError):
        CellState.restore(json.dumps(image).encode())



def test_an_image_with_whitespace_or_keys_in_another_order_loads_alike() -> None:
    harness = Harness()
    sid = harness.new_session()
    harness.open(sid, f"{ROOT}/d", create=NodeKind.DIR)
    harness.open(sid, f"{ROOT}/d/f", create=NodeKind.FILE)
    image = harness.state.snapshot()
    doc = json.loads(image)
    spaced = json.dumps(doc, indent=2, sort_keys=True).encode()
    assert CellState.restore(spaced).snapshot() == image
    config_last = {k: v for k, v in doc.items() if k != "config"} | {"config": doc["config"]}
    with pytest.raises(ValueError):  # nodes are built as they are read: config comes first
        CellState.restore(json.dumps(config_last).encode())


@pytest.mark.parametrize("tail", [b"x", b"{}", b",", b"]"])
def test_bytes_after_the_image_raise_value_error(tail: bytes) -> None:
    image = Harness().state.snapshot()
    with pytest.raises(ValueError):
        CellState.restore(image + tail)
    assert CellState.restore(image + b" \n").snapshot() == image
