"""Nodes and handles: Open, Close, Poison, SetContents, Delete, ephemerals, instances, reads."""

from __future__ import annotations

import base64

import pytest

from lockcell.statemachine import (
    MAX_CONTENTS_BYTES,
    CellError,
    Close,
    CreateSpec,
    Delete,
    ErrorCode,
    HandleClosed,
    LockMode,
    NodeDeleted,
    NodeKind,
    Open,
    Poison,
    SetContents,
)
from lockcell.statemachine.state import content_checksum

from .support import CELL, ROOT, Harness, handle_id

STAT_KEYS = {
    "kind", "instance", "content_generation", "lock_generation", "acl_generation",
    "checksum", "length", "children", "ephemeral", "lock",
}


def _error(call: object) -> ErrorCode:
    assert callable(call)
    with pytest.raises(CellError) as caught:
        call()
    return caught.value.code


def test_root_always_exists_as_a_directory() -> None:
    harness = Harness()
    sid = harness.new_session()
    value = harness.ok(harness.open_command(sid, ROOT))
    assert value["created"] is False
    stat = value["stat"]
    assert set(stat) == STAT_KEYS
    assert stat["kind"] == "dir" and stat["children"] == 0 and stat["ephemeral"] is False
    assert stat["lock"] == {"mode": None, "holders": 0, "waiters": 0, "lock_delay_until_ms": 0}
    # Opening the root "with create dir" is fine; as a file is a kind conflict.
    harness.open(sid, ROOT, create=NodeKind.DIR)
    harness.fail(harness.open_command(sid, ROOT, create=NodeKind.FILE), ErrorCode.CONFLICT)
    harness.fail(
        Delete(now_ms=harness.now, session=sid, handle=value["handle"]),
        ErrorCode.INVALID_ARGUMENT,
    )


def test_open_answer_shape_and_status() -> None:
    harness = Harness()
    sid = harness.new_session()
    command = harness.open_command(sid, f"{ROOT}/f", create=NodeKind.FILE, data=b"hello")
    value = harness.ok(command)
    assert set(value) == {"handle", "created", "lock_delay_ms", "stat"}
    assert value["handle"] == command.handle
    assert value["created"] is True
    assert value["lock_delay_ms"] == 60000
    stat = value["stat"]
    assert stat["kind"] == "file"
    assert stat["length"] == 5
    assert stat["checksum"] == content_checksum(b"hello")
    assert harness.state.get_contents(sid, value["handle"]) == b"hello"


def test_open_existing_leaves_data_untouched() -> None:
    harness = Harness()
    sid = harness.new_session()
    first = harness.ok(harness.open_command(sid, f"{ROOT}/f", create=NodeKind.FILE, data=b"one"))
    again = harness.ok(harness.open_command(sid, f"{ROOT}/f", create=NodeKind.FILE, data=b"two"))
    assert again["created"] is False
    assert again["stat"] == first["stat"]
    assert harness.state.get_contents(sid, again["handle"]) == b"one"
    plain = harness.ok(harness.open_command(sid, f"{ROOT}/f"))
    assert plain["created"] is False


def test_open_errors() -> None:
    harness = Harness()
    sid = harness.new_session()
    harness.open(sid, f"{ROOT}/file", create=NodeKind.FILE)
    harness.open(sid, f"{ROOT}/dir", create=NodeKind.DIR)
    cases = [
        (harness.open_command(sid, f"{ROOT}/missing"), ErrorCode.NOT_FOUND),
        (harness.open_command(sid, f"{ROOT}/no/child", create=NodeKind.FILE),
         ErrorCode.NOT_FOUND),
        (harness.open_command(sid, f"{ROOT}/file/child", create=NodeKind.FILE),
         ErrorCode.NOT_FOUND),
        (harness.open_command(sid, f"{ROOT}/file", create=NodeKind.DIR), ErrorCode.CONFLICT),
        (harness.open_command(sid, f"{ROOT}/dir", create=NodeKind.FILE), ErrorCode.CONFLICT),
        (harness.open_command(sid, f"{ROOT}/d2", create=NodeKind.DIR, data=b"x"),
         ErrorCode.INVALID_ARGUMENT),
        (harness.open_command(sid, f"{ROOT}/big", create=NodeKind.FILE,
                              data=b"x" * (MAX_CONTENTS_BYTES + 1)), ErrorCode.TOO_LARGE),
        (harness.open_command(sid, "/ls/othercell/a"), ErrorCode.NOT_FOUND),
        (harness.open_command(sid, f"{ROOT}/a/../b"), ErrorCode.INVALID_ARGUMENT),
        (harness.open_command(sid, f"{ROOT}/./b"), ErrorCode.INVALID_ARGUMENT),
        (harness.open_command(sid, "relative/path"), ErrorCode.INVALID_ARGUMENT),
        (harness.open_command(sid, ROOT, lock_delay_ms=-1), ErrorCode.INVALID_ARGUMENT),
        (harness.open_command(sid, ROOT, lock_delay_ms=60001), ErrorCode.INVALID_ARGUMENT),
    ]
    for command, code in cases:
        harness.fail(command, code)


def test_open_limit_is_exactly_256_kib() -> None:
    harness = Harness()
    sid = harness.new_session()
    value = harness.ok(harness.open_command(sid, f"{ROOT}/big", create=NodeKind.FILE,
                                            data=b"x" * MAX_CONTENTS_BYTES))
    assert value["stat"]["length"] == MAX_CONTENTS_BYTES


def test_handle_ids_must_be_well_formed_and_unique() -> None:
    harness = Harness()
    sid = harness.new_session()
    taken = harness.open(sid, ROOT)
    harness.fail(Open(now_ms=harness.now, session=sid, path=ROOT, handle=taken),
                 ErrorCode.CONFLICT)
    harness.fail(Open(now_ms=harness.now, session=sid, path=ROOT, handle="tooshort"),
                 ErrorCode.INVALID_ARGUMENT)
    harness.fail(Open(now_ms=harness.now, session=sid, path=ROOT, handle="h" * 31 + "!"),
                 ErrorCode.INVALID_ARGUMENT)


def test_local_alias_opens_the_cell() -> None:
    harness = Harness()
    sid = harness.new_session()
    created = harness.ok(harness.open_command(sid, "/ls/local/x", create=NodeKind.FILE))
    assert created["created"] is True
    again = harness.ok(harness.open_command(sid, f"/ls/{CELL}/x"))
    assert again["stat"]["instance"] == created["stat"]["instance"]
    described = harness.state.describe_handle(created["handle"])
    assert described is not None and described.path == f"{ROOT}/x"


@pytest.mark.parametrize(
    ("requested", "cell_max", "granted"),
    [(None, 60000, 60000), (0, 60000, 0), (1500, 60000, 1500), (None, 10000, 10000),
     (30000, 10000, 10000), (5000, 10000, 5000), (60000, 0, 0)],
)
def test_lock_delay_is_granted_within_the_cells_maximum(
    requested: int | None, cell_max: int, granted: int
) -> None:
    harness = Harness(max_lock_delay_ms=cell_max)
    sid = harness.new_session()
    value = harness.ok(harness.open_command(sid, ROOT, lock_delay_ms=requested))
    assert value["lock_delay_ms"] == granted


def test_set_contents_generations_checksum_and_cas() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, f"{ROOT}/f", create=NodeKind.FILE)
    generation = harness.stat(sid, handle)["content_generation"]
    value = harness.ok(SetContents(now_ms=harness.now, session=sid, handle=handle, data=b"v1"))
    assert set(value) == {"stat"}
    assert value["stat"]["content_generation"] == generation + 1
    assert value["stat"]["checksum"] == content_checksum(b"v1")
    # The same bytes again still count as a write.
    value = harness.ok(SetContents(now_ms=harness.now, session=sid, handle=handle, data=b"v1"))
    assert value["stat"]["content_generation"] == generation + 2
    harness.fail(
        SetContents(now_ms=harness.now, session=sid, handle=handle, data=b"v2",
                    if_generation=generation + 1),
        ErrorCode.CONFLICT,
    )
    value = harness.ok(SetContents(now_ms=harness.now, session=sid, handle=handle, data=b"v2",
                                   if_generation=generation + 2))
    assert value["stat"]["content_generation"] == generation + 3
    assert harness.state.get_contents_and_stat(sid, handle) == {
        "data": base64.b64encode(b"v2").decode(),
        "stat": value["stat"],
    }
    harness.fail(SetContents(now_ms=harness.now, session=sid, handle=handle,
                             data=b"x" * (MAX_CONTENTS_BYTES + 1)), ErrorCode.TOO_LARGE)
    value = harness.ok(SetContents(now_ms=harness.now, session=sid, handle=handle, data=b""))
    assert value["stat"]["length"] == 0


def test_set_contents_of_a_directory_is_a_conflict() -> None:
    harness = Harness()
    sid = harness.new_session()
    root = harness.open(sid, ROOT)
    harness.fail(SetContents(now_ms=harness.now, session=sid, handle=root, data=b"x"),
                 ErrorCode.CONFLICT)


def test_delete_rules() -> None:
    harness = Harness()
    owner = harness.new_session()
    other = harness.new_session()
    directory = harness.open(owner, f"{ROOT}/d", create=NodeKind.DIR)
    child = harness.open(owner, f"{ROOT}/d/c", create=NodeKind.FILE)
    harness.fail(Delete(now_ms=harness.now, session=owner, handle=directory), ErrorCode.CONFLICT)
    locked_by_other = harness.open(other, f"{ROOT}/d/c")
    harness.acquire(other, locked_by_other, LockMode.SHARED)
    harness.fail(Delete(now_ms=harness.now, session=owner, handle=child), ErrorCode.CONFLICT)
    harness.ok(Close(now_ms=harness.now, session=other, handle=locked_by_other))
    # Locked by the deleting session itself: allowed, and the lock goes with the node.
    harness.acquire(owner, child)
    instance = harness.stat(owner, child)["instance"]
    result = harness.apply(Delete(now_ms=harness.now, session=owner, handle=child))
    assert result.ok and result.value == {}
    assert result.effects == (NodeDeleted(f"{ROOT}/d/c", instance),)
    assert harness.state.counts().locks_exclusive == 0
    harness.ok(Delete(now_ms=harness.now, session=owner, handle=directory))
    assert _error(lambda: harness.state.get_stat(owner, directory)) is ErrorCode.HANDLE_INVALID
    harness.fail(Delete(now_ms=harness.now, session=owner, handle=directory),
                 ErrorCode.HANDLE_INVALID)


def test_recreated_node_has_a_larger_instance_and_old_handles_stay_invalid() -> None:
    harness = Harness()
    sid = harness.new_session()
    old = harness.ok(harness.open_command(sid, f"{ROOT}/n", create=NodeKind.FILE, data=b"a"))
    harness.ok(SetContents(now_ms=harness.now, session=sid, handle=old["handle"], data=b"b"))
    harness.acquire(sid, old["handle"])
    harness.acquire(sid, old["handle"])  # same mode again: no new grant
    old_stat = harness.stat(sid, old["handle"])
    harness.ok(Delete(now_ms=harness.now, session=sid, handle=old["handle"]))
    new = harness.ok(harness.open_command(sid, f"{ROOT}/n", create=NodeKind.FILE))
    assert new["created"] is True
    assert new["stat"]["instance"] > old_stat["instance"]
    # Generations keep growing per name across re-creation.
    assert new["stat"]["content_generation"] > old_stat["content_generation"]
    value = harness.acquire(sid, new["handle"])
    assert value["lock_generation"] > old_stat["lock_generation"]
    for query in (harness.state.get_stat, harness.state.get_contents_and_stat,
                  harness.state.read_dir, harness.state.get_sequencer):
        assert _error(lambda q=query: q(sid, old["handle"])) is ErrorCode.HANDLE_INVALID
    harness.fail(SetContents(now_ms=harness.now, session=sid, handle=old["handle"], data=b"x"),
                 ErrorCode.HANDLE_INVALID)
    described = harness.state.describe_handle(old["handle"])
    assert described is not None and described.valid is False
    # Closing the stale handle works and leaves the new node alone.
    harness.ok(Close(now_ms=harness.now, session=sid, handle=old["handle"]))
    assert harness.stat(sid, new["handle"])["lock"]["holders"] == 1


def test_close_is_idempotent_for_own_handles_and_not_found_for_others() -> None:
    harness = Harness()
    sid = harness.new_session()
    other = harness.new_session()
    handle = harness.open(sid, ROOT)
    foreign = harness.open(other, ROOT)
    result = harness.apply(Close(now_ms=harness.now, session=sid, handle=handle))
    assert result.ok and result.effects == (HandleClosed(sid, handle),)
    assert harness.ok(Close(now_ms=harness.now, session=sid, handle=handle)) == {"grants": []}
    assert harness.state.describe_handle(handle) is None
    harness.fail(Close(now_ms=harness.now, session=sid, handle=foreign), ErrorCode.NOT_FOUND)
    assert _error(lambda: harness.state.get_stat(sid, foreign)) is ErrorCode.NOT_FOUND
    assert _error(lambda: harness.state.get_stat(sid, handle)) is ErrorCode.HANDLE_INVALID
    assert _error(lambda: harness.state.get_stat(sid, handle_id(999))) is ErrorCode.HANDLE_INVALID


def test_close_releases_the_handles_lock() -> None:
    harness = Harness()
    sid = harness.new_session()
    other = harness.new_session()
    mine = harness.open(sid, f"{ROOT}/l", create=NodeKind.FILE)
    harness.acquire(sid, mine)
    harness.ok(Close(now_ms=harness.now, session=sid, handle=mine))
    theirs = harness.open(other, f"{ROOT}/l")
    harness.acquire(other, theirs)


def test_poison_fails_later_calls_but_not_close() -> None:
    harness = Harness()
    sid = harness.new_session()
    other = harness.new_session()
    handle = harness.open(sid, f"{ROOT}/p", create=NodeKind.FILE)
    harness.acquire(sid, handle)
    foreign = harness.open(other, f"{ROOT}/p")
    harness.fail(Poison(now_ms=harness.now, session=other, handle=handle), ErrorCode.NOT_FOUND)
    assert harness.ok(Poison(now_ms=harness.now, session=sid, handle=handle)) == {}
    assert harness.ok(Poison(now_ms=harness.now, session=sid, handle=handle)) == {}
    harness.fail(SetContents(now_ms=harness.now, session=sid, handle=handle, data=b"x"),
                 ErrorCode.HANDLE_INVALID)
    assert _error(lambda: harness.state.get_stat(sid, handle)) is ErrorCode.HANDLE_INVALID
    # The poisoned handle still holds its lock until it is closed.
    assert harness.stat(other, foreign)["lock"]["holders"] == 1
    harness.ok(Close(now_ms=harness.now, session=sid, handle=handle))
    assert harness.stat(other, foreign)["lock"]["holders"] == 0
    harness.fail(Poison(now_ms=harness.now, session=sid, handle=handle), ErrorCode.HANDLE_INVALID)


def test_ephemeral_file_goes_with_its_last_handle() -> None:
    harness = Harness()
    first = harness.new_session()
    second = harness.new_session()
    a = harness.open(first, f"{ROOT}/e", create=NodeKind.FILE, ephemeral=True)
    b = harness.open(second, f"{ROOT}/e")
    assert harness.stat(second, b)["ephemeral"] is True
    harness.ok(Close(now_ms=harness.now, session=first, handle=a))
    assert harness.stat(second, b)["kind"] == "file"
    result = harness.apply(Close(now_ms=harness.now, session=second, handle=b))
    assert any(isinstance(effect, NodeDeleted) for effect in result.effects)
    harness.fail(harness.open_command(first, f"{ROOT}/e"), ErrorCode.NOT_FOUND)


def test_ephemeral_directory_goes_when_unopened_and_empty() -> None:
    harness = Harness()
    sid = harness.new_session()
    directory = harness.open(sid, f"{ROOT}/ed", create=NodeKind.DIR, ephemeral=True)
    child = harness.open(sid, f"{ROOT}/ed/child", create=NodeKind.FILE)
    harness.ok(Close(now_ms=harness.now, session=sid, handle=directory))
    # Still there: it has a child.
    reopened = harness.open(sid, f"{ROOT}/ed")
    harness.ok(Close(now_ms=harness.now, session=sid, handle=reopened))
    result = harness.apply(Delete(now_ms=harness.now, session=sid, handle=child))
    deleted = [effect.path for effect in result.effects if isinstance(effect, NodeDeleted)]
    assert deleted == [f"{ROOT}/ed/child", f"{ROOT}/ed"]
    harness.fail(harness.open_command(sid, f"{ROOT}/ed"), ErrorCode.NOT_FOUND)


def test_nested_ephemeral_directories_cascade() -> None:
    harness = Harness()
    sid = harness.new_session()
    outer = harness.open(sid, f"{ROOT}/o", create=NodeKind.DIR, ephemeral=True)
    inner = harness.open(sid, f"{ROOT}/o/i", create=NodeKind.DIR, ephemeral=True)
    leaf = harness.open(sid, f"{ROOT}/o/i/f", create=NodeKind.FILE, ephemeral=True)
    harness.ok(Close(now_ms=harness.now, session=sid, handle=outer))
    harness.ok(Close(now_ms=harness.now, session=sid, handle=inner))
    assert harness.state.counts().nodes == 4
    result = harness.apply(Close(now_ms=harness.now, session=sid, handle=leaf))
    deleted = [effect.path for effect in result.effects if isinstance(effect, NodeDeleted)]
    assert deleted == [f"{ROOT}/o/i/f", f"{ROOT}/o/i", f"{ROOT}/o"]
    assert harness.state.counts().nodes == 1


def test_read_dir_lists_children_sorted_with_stats() -> None:
    harness = Harness()
    sid = harness.new_session()
    root = harness.open(sid, ROOT)
    for name in ("b", "a", "c.d"):
        harness.open(sid, f"{ROOT}/{name}", create=NodeKind.FILE, data=name.encode())
    harness.open(sid, f"{ROOT}/z", create=NodeKind.DIR)
    listing = harness.state.read_dir(sid, root)
    assert [entry["name"] for entry in listing["children"]] == ["a", "b", "c.d", "z"]
    assert listing["children"][2]["stat"]["length"] == 3
    assert listing["children"][3]["stat"]["kind"] == "dir"
    assert harness.stat(sid, root)["children"] == 4
    file_handle = harness.open(sid, f"{ROOT}/a")
    assert _error(lambda: harness.state.read_dir(sid, file_handle)) is ErrorCode.CONFLICT


def test_queries_check_the_session() -> None:
    harness = Harness()
    sid = harness.new_session()
    handle = harness.open(sid, ROOT)
    assert _error(lambda: harness.state.get_stat("x" * 32, handle)) is ErrorCode.NOT_FOUND


def test_create_spec_defaults() -> None:
    spec = CreateSpec(kind=NodeKind.FILE)
    assert (spec.ephemeral, spec.data) == (False, b"")
