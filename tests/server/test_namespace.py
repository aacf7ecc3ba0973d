"""Files, directories and handles over real processes: Open, Close, Poison,
GetContentsAndStat, GetStat, ReadDir, SetContents, Delete, paths, ephemeral nodes and
request ids (DESIGN.md §3 Names/Nodes/Handles, §4)."""

from __future__ import annotations

import asyncio
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest

from lockcell.cli.localcell import LocalCell

from .kit import (
    LOCK_KEYS,
    MAX_CONTENTS,
    STAT_KEYS,
    Api,
    b64,
    expect,
    serving_leader,
    unb64,
    uniq,
)

ROOT = "/ls/local"
CELL = "/ls/demo"


@pytest.fixture
def api(cell: LocalCell) -> Api:
    return Api(serving_leader(cell).url)


@pytest.fixture
def s(api: Api) -> str:
    return api.session()


@pytest.fixture
def d(api: Api, s: str) -> str:
    """A fresh directory for one test."""
    path = f"{ROOT}/{uniq('dir')}"
    api.mkdir(s, path)
    return path


def canonical(path: str) -> str:
    return path.replace("/ls/local", "/ls/demo", 1)


# --------------------------------------------------------------------------- Open


def test_root_exists_under_both_names(api: Api, s: str) -> None:
    local = expect(api.open(s, ROOT), 200)
    named = expect(api.open(s, CELL), 200)
    assert local.body["created"] is False and named.body["created"] is False
    assert local.body["stat"]["kind"] == "dir"
    assert local.body["stat"]["instance"] == named.body["stat"]["instance"]
    assert local.body["handle"] != named.body["handle"]
    # Open of the root with create of its own kind is an open, of the other kind a conflict
    expect(api.open(s, ROOT, "dir"), 200)
    expect(api.open(s, ROOT, "file"), 409, "conflict")


def test_open_creates_then_opens_with_data_untouched(api: Api, s: str, d: str) -> None:
    path = f"{d}/f"
    first = expect(api.open(s, path, "file", data=b"original"), 201)
    body = first.body
    assert set(body) == {"handle", "created", "lock_delay_ms", "stat"}
    assert body["created"] is True
    assert isinstance(body["handle"], str) and len(body["handle"]) >= 32
    assert body["stat"]["kind"] == "file" and body["stat"]["length"] == len(b"original")
    second = expect(api.open(s, path, "file", data=b"other data"), 200)
    assert second.body["created"] is False
    assert second.body["handle"] != body["handle"]
    assert second.body["stat"]["content_generation"] == body["stat"]["content_generation"]
    assert api.contents(s, second.body["handle"]) == b"original"
    third = expect(api.open(s, path), 200)
    assert third.body["created"] is False
    assert api.contents(s, third.body["handle"]) == b"original"
    # the same node under its canonical name
    named = expect(api.open(s, canonical(path)), 200)
    assert named.body["stat"]["instance"] == body["stat"]["instance"]


def test_open_missing_without_create_is_404(api: Api, s: str, d: str) -> None:
    expect(api.open(s, f"{d}/missing"), 404, "not_found")


def test_parent_must_exist(api: Api, s: str, d: str) -> None:
    expect(api.open(s, f"{d}/no/child", "file"), 404, "not_found")
    expect(api.open(s, f"{d}/no/child", "dir"), 404, "not_found")
    assert not api.exists(s, f"{d}/no")
    api.handle(s, f"{d}/file", "file")
    expect(api.open(s, f"{d}/file/child", "file"), 404, "not_found")
    h = api.handle(s, d)
    assert expect(api.readdir(s, h), 200).body["children"] == [
        {"name": "file", "stat": api.stat_of(s, api.handle(s, f"{d}/file"))}]


def test_create_of_the_other_kind_is_409(api: Api, s: str, d: str) -> None:
    fh = api.handle(s, f"{d}/f", "file", data=b"x")
    api.handle(s, f"{d}/sub", "dir")
    expect(api.open(s, f"{d}/f", "dir"), 409, "conflict")
    expect(api.open(s, f"{d}/sub", "file", data=b"y"), 409, "conflict")
    assert api.stat_of(s, fh)["kind"] == "file"
    assert api.contents(s, fh) == b"x"
    assert api.stat_of(s, api.handle(s, f"{d}/sub"))["kind"] == "dir"


BAD_PATHS = [
    "", "/", "ls/local/{n}", "/ls", "/ls/", "/LS/local/{n}", "/xx/local/{n}", "/ls/local/{n}/",
    "/ls/local//{n}", "/ls/local/{n}/../{n}", "/ls/local/./{n}", "/ls/local/{n}/.",
    "/ls/local/..", "/ls/local/{n} x", "/ls/local/{n}\u00e9", "/ls/local/{n}*",
    "/ls/local/" + "a" * 256, "/ls/local/{n}\x00", "/ls/local/{n}\\x", "/ls/./local/{n}",
]


@pytest.mark.parametrize("template", BAD_PATHS)
def test_bad_paths_are_400_and_create_nothing(api: Api, s: str, template: str) -> None:
    name = uniq("bad")
    path = template.replace("{n}", name)
    for kind in ("file", "dir"):
        expect(api.open(s, path, kind), 400, "invalid_argument")
    expect(api.open(s, path), 400, "invalid_argument")
    assert not api.exists(s, f"{ROOT}/{name}")


def test_other_cells_are_404(api: Api, s: str) -> None:
    expect(api.open(s, "/ls/othercell"), 404, "not_found")
    expect(api.open(s, "/ls/othercell/x", "file"), 404, "not_found")
    expect(api.open(s, "/ls/demo2/x"), 404, "not_found")


def _path_of_length(prefix: str, total: int) -> str:
    """``prefix`` plus components of at most 255 characters, ``total`` bytes in all."""
    path = prefix
    while len(path) < total:
        room = total - len(path) - 1
        if room <= 0:
            path = path[:-1] + "b"  # fix the length with the last character
            break
        take = min(255, room)
        if total - len(path) - 1 - take == 1:  # never leave room for an empty component
            take -= 1
        path += "/" + "a" * take
    assert len(path) == total, (len(path), total)
    return path


def test_path_length_limit_counts_after_the_local_rewrite(api: Api, s: str) -> None:
    longest = _path_of_length(CELL, 1024)
    expect(api.open(s, longest), 404, "not_found")  # legal, just missing
    expect(api.open(s, _path_of_length(CELL, 1025)), 400, "invalid_argument")
    # /ls/local is one byte longer than /ls/demo: 1025 bytes as sent, 1024 after rewriting
    aliased = ROOT + longest[len(CELL):]
    assert len(aliased) == 1025
    expect(api.open(s, aliased), 404, "not_found")
    expect(api.open(s, ROOT + _path_of_length(CELL, 1025)[len(CELL):]), 400,
           "invalid_argument")
    # a component of 255 characters is legal, 256 is not
    expect(api.open(s, f"{ROOT}/{'c' * 255}"), 404, "not_found")
    expect(api.open(s, f"{ROOT}/{'c' * 256}"), 400, "invalid_argument")


def test_lock_delay_granted_at_open(api: Api, s: str, d: str) -> None:
    assert expect(api.open(s, f"{d}/a", "file"), 201).body["lock_delay_ms"] == 60000
    for asked in (0, 1, 1234, 60000):
        got = expect(api.open(s, f"{d}/a", lock_delay_ms=asked), 200)
        assert got.body["lock_delay_ms"] == asked


# --------------------------------------------------------------------------- ephemeral


def test_ephemeral_file_goes_with_its_last_handle(api: Api, s: str, d: str) -> None:
    other = api.session()
    path = f"{d}/eph"
    first = expect(api.open(s, path, "file", ephemeral=True, data=b"e"), 201)
    assert first.body["stat"]["ephemeral"] is True
    h1 = first.body["handle"]
    h2 = api.handle(other, path)
    expect(api.close(s, h1), 204)
    assert api.contents(other, h2) == b"e"  # still open elsewhere: still there
    expect(api.close(other, h2), 204)
    expect(api.open(s, path), 404, "not_found")
    assert api.stat_of(s, api.handle(s, d))["children"] == 0


def test_ephemeral_directory_goes_when_unused_and_empty(api: Api, s: str, d: str) -> None:
    edir = f"{d}/edir"
    eh = expect(api.open(s, edir, "dir", ephemeral=True), 201).body["handle"]
    child = api.handle(s, f"{edir}/child", "file")
    expect(api.close(s, eh), 204)
    assert api.exists(s, edir), "an ephemeral directory with a child must stay"
    expect(api.delete(s, child), 204)
    expect(api.open(s, edir), 404, "not_found")
    # and one that never had children goes with its last handle
    lone = f"{d}/lone"
    lh = expect(api.open(s, lone, "dir", ephemeral=True), 201).body["handle"]
    expect(api.close(s, lh), 204)
    expect(api.open(s, lone), 404, "not_found")


# --------------------------------------------------------------------------- handles


def test_close_always_succeeds_on_own_handles(api: Api, s: str, d: str) -> None:
    h = api.handle(s, f"{d}/f", "file")
    expect(api.close(s, h), 204)
    expect(api.close(s, h), 204)
    expect(api.get(s, h), 410, "handle_invalid")
    expect(api.set(s, h, b"x"), 410, "handle_invalid")


def test_poison(api: Api, s: str, d: str) -> None:
    path = f"{d}/f"
    h = api.handle(s, path, "file", data=b"p")
    dh = api.handle(s, d)
    expect(api.poison(s, h), 204)
    expect(api.poison(s, dh), 204)
    for reply in (api.get(s, h), api.stat(s, h), api.set(s, h, b"q"), api.acquire(s, h),
                  api.release(s, h), api.get_sequencer(s, h), api.delete(s, h),
                  api.readdir(s, dh)):
        expect(reply, 410, "handle_invalid")
    # the node is untouched and other handles work
    other = api.handle(s, path)
    assert api.contents(s, other) == b"p"
    # Close of a poisoned handle still succeeds
    expect(api.close(s, h), 204)
    expect(api.close(s, dh), 204)


def test_handle_of_another_session_is_404(api: Api, s: str, d: str) -> None:
    other = api.session()
    path = f"{d}/f"
    h = api.handle(s, path, "file", data=b"mine")
    dh = api.handle(s, d)
    replies = [
        api.get(other, h), api.stat(other, h), api.readdir(other, dh), api.set(other, h, b"x"),
        api.set(other, h, b"x", if_generation=1), api.acquire(other, h),
        api.release(other, h), api.get_sequencer(other, h),
        api.set_sequencer(other, h, None), api.poison(other, h), api.delete(other, h),
        api.close(other, h),
    ]
    for reply in replies:
        expect(reply, 404, "not_found")
    # nothing happened to the handle or its node
    assert api.contents(s, h) == b"mine"
    assert api.stat_of(s, h)["lock"]["mode"] is None
    expect(api.get(s, h), 200)


def test_never_issued_handle(api: Api, s: str) -> None:
    for reply in (api.get(s, uuid.uuid4().hex), api.stat(s, uuid.uuid4().hex),
                  api.set(s, uuid.uuid4().hex, b"x"), api.acquire(s, uuid.uuid4().hex)):
        assert (reply.status, reply.code) in ((410, "handle_invalid"), (404, "not_found")), reply


# --------------------------------------------------------------------------- reads


def test_stat_fields(api: Api, s: str, d: str) -> None:
    data = os.urandom(1000)
    created = expect(api.open(s, f"{d}/f", "file", data=data), 201).body
    stat = created["stat"]
    assert set(stat) == STAT_KEYS
    assert set(stat["lock"]) == LOCK_KEYS
    assert stat["kind"] == "file"
    assert stat["length"] == 1000
    assert stat["children"] == 0
    assert stat["ephemeral"] is False
    assert stat["lock"] == {"mode": None, "holders": 0, "waiters": 0, "lock_delay_until_ms": 0}
    for key in ("instance", "content_generation", "lock_generation", "acl_generation",
                "length", "children"):
        assert isinstance(stat[key], int) and not isinstance(stat[key], bool), key
    assert isinstance(stat["checksum"], str) and stat["checksum"]
    h = created["handle"]
    assert api.stat_of(s, h) == stat
    got = expect(api.get(s, h), 200).body
    assert set(got) == {"data", "stat"}
    assert got["stat"] == stat
    assert api.contents(s, h) == data
    # same contents, same checksum; other contents, other checksum and a new generation
    twin = expect(api.open(s, f"{d}/twin", "file", data=data), 201).body["stat"]
    assert twin["checksum"] == stat["checksum"]
    assert twin["instance"] != stat["instance"]
    changed = expect(api.set(s, h, b"changed"), 200).body["stat"]
    assert changed["checksum"] != stat["checksum"]
    assert changed["length"] == 7
    assert changed["content_generation"] > stat["content_generation"]
    assert changed["instance"] == stat["instance"]
    dstat = api.stat_of(s, api.handle(s, d))
    assert dstat["kind"] == "dir" and dstat["children"] == 2 and dstat["length"] == 0


def test_binary_and_empty_contents_roundtrip(api: Api, s: str, d: str) -> None:
    h = api.handle(s, f"{d}/f", "file")
    assert api.contents(s, h) == b""
    assert api.stat_of(s, h)["length"] == 0
    for data in (bytes(range(256)) * 4, b"\x00", b"", os.urandom(MAX_CONTENTS)):
        expect(api.set(s, h, data), 200)
        assert api.contents(s, h) == data
        assert api.stat_of(s, h)["length"] == len(data)


def test_readdir(api: Api, s: str, d: str) -> None:
    dh = api.handle(s, d)
    assert expect(api.readdir(s, dh), 200).body == {"children": []}
    handles = {}
    for name, kind in (("b", "file"), ("a", "dir"), ("c.d-e_f", "file")):
        handles[name] = api.handle(s, f"{d}/{name}", kind)
    api.handle(s, f"{d}/a/inner", "file")
    children = expect(api.readdir(s, dh), 200).body["children"]
    assert sorted(c["name"] for c in children) == ["a", "b", "c.d-e_f"]
    for child in children:
        assert set(child) == {"name", "stat"}
        assert child["stat"] == api.stat_of(s, handles[child["name"]])
    by_name = {c["name"]: c["stat"] for c in children}
    assert by_name["a"]["kind"] == "dir" and by_name["a"]["children"] == 1
    assert by_name["b"]["kind"] == "file"


# --------------------------------------------------------------------------- writes


def test_set_contents_compare_and_set(api: Api, s: str, d: str) -> None:
    h = api.handle(s, f"{d}/f", "file", data=b"v0")
    gen = api.stat_of(s, h)["content_generation"]
    first = expect(api.set(s, h, b"v1", if_generation=gen), 200).body["stat"]
    assert first["content_generation"] == gen + 1
    assert set(first) == STAT_KEYS
    expect(api.set(s, h, b"v2", if_generation=gen), 409, "conflict")
    expect(api.set(s, h, b"v2", if_generation=gen + 5), 409, "conflict")
    assert api.contents(s, h) == b"v1"
    assert api.stat_of(s, h)["content_generation"] == gen + 1
    third = expect(api.set(s, h, b"v3"), 200).body["stat"]
    assert third["content_generation"] == gen + 2
    expect(api.set(s, h, b"v4", if_generation=None), 200)


def test_contents_limit_is_256_kib(api: Api, s: str, d: str) -> None:
    h = api.handle(s, f"{d}/f", "file", data=b"small")
    gen = api.stat_of(s, h)["content_generation"]
    expect(api.set(s, h, b"x" * (MAX_CONTENTS + 1)), 413, "too_large")
    assert api.contents(s, h) == b"small"
    assert api.stat_of(s, h)["content_generation"] == gen
    expect(api.open(s, f"{d}/big", "file", data=b"y" * (MAX_CONTENTS + 1)), 413, "too_large")
    assert not api.exists(s, f"{d}/big")
    expect(api.open(s, f"{d}/max", "file", data=b"z" * MAX_CONTENTS), 201)
    expect(api.set(s, h, b"w" * MAX_CONTENTS), 200)
    # far beyond the limit (a body larger than the server reads) is too_large as well
    huge = b"q" * (900 * 1024)
    expect(api("PUT", f"/v1/sessions/{s}/handles/{h}", {"data": b64(huge)}), 413, "too_large")
    assert api.contents(s, h) == b"w" * MAX_CONTENTS


def test_delete_and_recreate(api: Api, s: str, d: str) -> None:
    path = f"{d}/f"
    h = api.handle(s, path, "file", data=b"old")
    expect(api.acquire(s, h), 200)
    expect(api.release(s, h), 204)
    old = api.stat_of(s, h)
    keep = api.handle(s, path)
    expect(api.delete(s, h), 204)
    expect(api.get(s, h), 410, "handle_invalid")
    expect(api.get(s, keep), 410, "handle_invalid")
    expect(api.open(s, path), 404, "not_found")
    fresh = expect(api.open(s, path, "file", data=b"new"), 201).body
    new = fresh["stat"]
    # generations are monotonic per name, across delete and re-create
    assert new["instance"] > old["instance"]
    assert new["content_generation"] > old["content_generation"]
    assert new["lock_generation"] >= old["lock_generation"]
    # old handles stay bound to the old instance
    expect(api.get(s, keep), 410, "handle_invalid")
    expect(api.close(s, keep), 204)
    assert api.contents(s, fresh["handle"]) == b"new"
    locked = expect(api.acquire(s, fresh["handle"]), 200).body
    assert locked["lock_generation"] > old["lock_generation"]


def test_delete_of_a_non_empty_directory_is_409(api: Api, s: str, d: str) -> None:
    sub = f"{d}/sub"
    sh = api.handle(s, sub, "dir")
    api.handle(s, f"{sub}/child", "file", data=b"c")
    expect(api.delete(s, sh), 409, "conflict")
    assert api.stat_of(s, sh)["children"] == 1
    assert api.contents(s, api.handle(s, f"{sub}/child")) == b"c"


def test_delete_of_a_node_locked_by_another_session_is_409(api: Api, s: str, d: str) -> None:
    holder = api.session()
    path = f"{d}/f"
    h = api.handle(s, path, "file", data=b"d")
    lh = api.handle(holder, path)
    lock = expect(api.acquire(holder, lh), 200).body
    expect(api.delete(s, h), 409, "conflict")
    assert api.contents(s, h) == b"d"
    assert api.stat_of(s, h)["lock"]["mode"] == "exclusive"
    assert expect(api.check_sequencer(lock["sequencer"]), 200).body == {"valid": True}
    shared = f"{d}/g"
    g = api.handle(s, shared, "file")
    gh = api.handle(holder, shared)
    expect(api.acquire(holder, gh, "shared"), 200)
    expect(api.delete(s, g), 409, "conflict")
    assert api.exists(s, shared)


# --------------------------------------------------------------------------- request ids


def test_a_retried_write_is_applied_once(api: Api, s: str, d: str) -> None:
    h = api.handle(s, f"{d}/f", "file")
    gen = api.stat_of(s, h)["content_generation"]
    key = uuid.uuid4().hex
    first = expect(api.set(s, h, b"once", headers={"X-Request-Id": key}, retry=0), 200)
    second = expect(api.set(s, h, b"once", headers={"X-Request-Id": key}, retry=0), 200)
    assert first.body["stat"]["content_generation"] == gen + 1
    assert second.body == first.body
    assert api.stat_of(s, h)["content_generation"] == gen + 1
    # another id is another write
    expect(api.set(s, h, b"twice", headers={"X-Request-Id": uuid.uuid4().hex}), 200)
    assert api.stat_of(s, h)["content_generation"] == gen + 2
    # ids are per session: the same id in another session is that session's own write
    other = api.session()
    oh = api.handle(other, f"{d}/f")
    expect(api.set(other, oh, b"other", headers={"X-Request-Id": key}, retry=0), 200)
    assert api.stat_of(s, h)["content_generation"] == gen + 3
    assert api.contents(s, h) == b"other"


def test_a_retried_open_is_applied_once(api: Api, s: str, d: str) -> None:
    key = uuid.uuid4().hex
    path = f"{d}/f"
    first = expect(api.open(s, path, "file", data=b"a", headers={"X-Request-Id": key},
                            retry=0), 201)
    second = api.open(s, path, "file", data=b"a", headers={"X-Request-Id": key}, retry=0)
    assert second.status in (200, 201), second
    assert second.body["handle"] == first.body["handle"]
    assert second.body["stat"] == first.body["stat"]


def test_compare_and_set_is_atomic_under_contention(api: Api, d: str) -> None:
    """Eight clients increment one counter with CAS: no lost update, no double success."""
    owner = api.session()
    h = api.handle(owner, f"{d}/counter", "file", data=b"0")
    start = api.stat_of(owner, h)["content_generation"]

    def client(rounds: int) -> int:
        s = api.session()
        mine = api.handle(s, f"{d}/counter")
        wins = 0
        while wins < rounds:
            got = expect(api.get(s, mine), 200).body
            value = int(unb64(got["data"]))
            reply = api.set(s, mine, str(value + 1).encode(),
                            if_generation=got["stat"]["content_generation"])
            if reply.status == 200:
                wins += 1
            else:
                expect(reply, 409, "conflict")
        return wins

    with ThreadPoolExecutor(max_workers=8) as pool:
        total = sum(pool.map(client, [15] * 8))
    assert total == 120
    assert api.contents(owner, h) == b"120"
    assert api.stat_of(owner, h)["content_generation"] == start + 120


async def _writes(url: str, session: str, handle: str, count: int) -> None:
    failures: list[int] = []

    async def one(http: aiohttp.ClientSession, i: int) -> None:
        async with http.put(f"{url}/v1/sessions/{session}/handles/{handle}",
                            json={"data": b64(f"{i}".encode())},
                            headers={"X-Request-Id": f"window-{i}"}) as r:
            if r.status != 200:
                failures.append(r.status)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        for start in range(0, count, 50):
            await asyncio.gather(*(one(http, i) for i in range(start, min(count, start + 50))))
    assert not failures, failures[:5]


def test_request_ids_of_the_last_thousand_writes_are_remembered(api: Api, s: str,
                                                                d: str) -> None:
    h = api.handle(s, f"{d}/f", "file")
    key = uuid.uuid4().hex
    first = expect(api.set(s, h, b"first", headers={"X-Request-Id": key}, retry=0), 200)
    asyncio.run(_writes(api.base, s, h, 999))  # 999 more writes with ids of this session
    generation = api.stat_of(s, h)["content_generation"]
    assert generation == first.body["stat"]["content_generation"] + 999
    again = expect(api.set(s, h, b"first", headers={"X-Request-Id": key}, retry=0), 200)
    assert again.body == first.body
    assert api.stat_of(s, h)["content_generation"] == generation


def test_concurrent_retries_with_one_request_id_apply_once(api: Api, s: str, d: str) -> None:
    h = api.handle(s, f"{d}/f", "file")
    generation = api.stat_of(s, h)["content_generation"]
    key = uuid.uuid4().hex
    with ThreadPoolExecutor(max_workers=6) as pool:
        replies = list(pool.map(
            lambda _: api.set(s, h, b"once", headers={"X-Request-Id": key}, retry=0),
            range(6)))
    for reply in replies:
        expect(reply, 200)
        assert reply.body == replies[0].body
    assert api.stat_of(s, h)["content_generation"] == generation + 1
