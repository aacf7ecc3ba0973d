"""The client library against a real local cell: every call, errors, locks, events."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from lockcell.cli.localcell import LocalCell, http_json
from lockcell.client import (
    AsyncCell,
    Cell,
    Conflict,
    Event,
    FencedResource,
    Handle,
    HandleInvalid,
    Health,
    InvalidArgument,
    LockBusy,
    LockDelay,
    NotFound,
    SessionExpired,
    StaleSequencer,
    TooLarge,
    core,
    parse_sequencer,
)

from .support import live, unique, wait_for


@pytest.fixture
def client(cell: LocalCell) -> Iterator[Cell]:
    with Cell(cell.endpoints) as c:
        yield c


def test_files_round_trip(client: Cell) -> None:
    session = client.session()
    d = unique("dir")
    top = session.open(d, create="dir")
    assert top.created
    f = session.open(f"{d}/f", create="file", data=b"one")
    assert f.created and f.get().data == b"one"
    again = session.open(f"{d}/f", create="file", data=b"ignored")
    assert not again.created and again.get().data == b"one"
    stat = f.set(b"two")
    assert f.get().data == b"two" and stat.length == 3
    assert f.stat().content_generation == stat.content_generation
    with pytest.raises(Conflict):
        f.set(b"three", if_generation=stat.content_generation - 1)
    assert f.set(b"three", if_generation=stat.content_generation).length == 5
    children = top.readdir()
    assert [c.name for c in children] == ["f"] and children[0].stat.kind == "file"
    with pytest.raises(Conflict):
        top.delete()  # not empty
    f.delete()
    with pytest.raises(HandleInvalid):
        f.get()
    top.delete()
    session.close()


def test_errors_are_typed(client: Cell) -> None:
    session = client.session()
    with pytest.raises(NotFound):
        session.open(unique("missing"))
    with pytest.raises(NotFound):
        session.open(unique("nodir") + "/child", create="file")
    with pytest.raises(InvalidArgument):
        session.open("/ls/local/a/../b")
    path = unique("big")
    with pytest.raises(TooLarge):
        session.open(path, create="file", data=b"x" * (300 * 1024))
    h = session.open(path, create="file")
    with pytest.raises(Conflict):
        session.open(path, create="dir")
    h.poison()
    with pytest.raises(HandleInvalid):
        h.stat()
    h2 = session.open(path)
    h2.close()
    h2.close()  # closing twice is fine
    session.close()
    with pytest.raises(SessionExpired):
        session.open(path)


def test_ephemeral_nodes_go_with_their_session(client: Cell) -> None:
    owner = client.session()
    path = unique("eph")
    owner.open(path, create="file", ephemeral=True, data=b"here")
    watcher = client.session()
    peek = watcher.open(path)
    assert peek.get().data == b"here"
    peek.close()  # an open handle keeps an ephemeral node
    owner.close()
    with pytest.raises(NotFound):
        watcher.open(path)


def test_lock_context_yields_a_current_sequencer(client: Cell) -> None:
    session = client.session()
    other = client.session()
    path = unique("job")
    with session.lock(path) as lock:
        info = parse_sequencer(lock.sequencer)
        assert info is not None and info.lock_generation == lock.lock_generation
        assert info.mode == "exclusive" and info.path.endswith(path.rsplit("/", 1)[1])
        assert client.check_sequencer(lock.sequencer)
        assert not lock.lost and lock.keeps_through_grace  # default delay 60 s ≥ grace 45 s
        with pytest.raises(LockBusy):
            other.open(path).try_acquire()
        assert lock.handle.get_sequencer().sequencer == lock.sequencer
    assert not client.check_sequencer(lock.sequencer)
    with other.lock(path) as second:
        assert second.lock_generation > lock.lock_generation


def test_blocking_acquire_waits_for_release(client: Cell) -> None:
    path = unique("queue")
    first = client.session()
    second = client.session()
    h1 = first.open(path, create="file")
    held = h1.acquire()
    got: list[int] = []

    def wait() -> None:
        got.append(second.open(path).acquire(wait_ms=10_000).lock_generation)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    assert not got
    held.release()
    waiter.join(10)
    assert got == [held.lock_generation + 1]
    with pytest.raises(LockBusy):
        h1.acquire(wait_ms=200)


def test_shared_locks_and_release_by_generation(client: Cell) -> None:
    path = unique("shared")
    a, b = client.session(), client.session()
    ha = a.open(path, create="file")
    hb = b.open(path)
    la = ha.acquire(shared=True)
    lb = hb.try_acquire(shared=True)
    assert la.lock_generation == lb.lock_generation and la.mode == "shared"
    assert ha.stat().lock.holders == 2
    with pytest.raises(Conflict):
        ha.release(generation=la.lock_generation + 5)
    la.release()
    lb.release()
    writer = ha.try_acquire()
    assert writer.lock_generation == la.lock_generation + 1
    with pytest.raises(Conflict):
        ha.release(generation=la.lock_generation)  # a late duplicate of an old grant
    assert client.check_sequencer(writer.sequencer)


def test_set_sequencer_fails_calls_once_stale(client: Cell) -> None:
    path = unique("fenced")
    holder, user = client.session(), client.session()
    with holder.lock(path) as lock:
        h = user.open(path)
        h.set_sequencer(lock.sequencer)
        h.stat()
    with pytest.raises(HandleInvalid):
        h.stat()


def test_lock_delay_after_expiry(cell: LocalCell, client: Cell) -> None:
    path = unique("delay")
    url = cell.leader().url
    # a raw session that never sends a KeepAlive: the cell expires it after 1 s
    _, created = http_json("POST", f"{url}/v1/sessions", {"lease_ms": 1000})
    sid = created["session"]
    _, opened = http_json("POST", f"{url}/v1/sessions/{sid}/handles",
                          {"path": path, "create": {"kind": "file"}, "lock_delay_ms": 1500})
    status, _ = http_json("POST", f"{url}/v1/sessions/{sid}/handles/{opened['handle']}/lock",
                          {})
    assert status == 200
    mine = client.session().open(path)
    error = wait_for(lambda: _lock_delay(mine), 10, "lock-delay never reported")
    assert error.until_ms > 0
    lock = mine.acquire(wait_ms=5000)  # waits through the delay
    assert client.check_sequencer(lock.sequencer)


def _lock_delay(handle: Handle) -> LockDelay | None:
    try:
        handle.try_acquire().release()
    except LockDelay as exc:
        return exc
    except LockBusy:
        return None
    raise AssertionError("acquired during lock-delay")


def test_events_reach_handle_callbacks_and_iterators(client: Cell) -> None:
    path = unique("watched")
    session = client.session()
    seen: list[Event] = []
    h = session.open(path, create="file", events=["contents_modified", "lock_acquired"],
                     on_event=seen.append)
    writer = client.session().open(path)
    stream = session.events(timeout=5)
    writer.set(b"1")
    writer.set(b"2")
    first = next(stream)
    second = next(stream)
    assert [first.type, second.type] == ["contents_modified", "contents_modified"]
    assert second.seq > first.seq and first.handle == h.id
    writer.try_acquire()
    assert next(stream).type == "lock_acquired"
    stream.close()
    wait_for(lambda: len(seen) >= 3, 5, "callback events")
    time.sleep(1.0)  # several KeepAlives later: acked events are not delivered again
    assert [e.seq for e in seen] == sorted({e.seq for e in seen})


def test_writes_are_applied_once_per_request_id(cell: LocalCell) -> None:
    async def main() -> None:
        async with AsyncCell(cell.endpoints) as c:
            session = await c.session()
            h = await session.open(unique("once"), create="file")
            before = (await h.stat()).content_generation
            request = core.req_set_contents(session.id, h.id, b"x")
            rid = uuid.uuid4().hex
            first = await c.call(request, request_id=rid)
            again = await c.call(request, request_id=rid)
            assert first == again
            assert (await h.stat()).content_generation == before + 1

    asyncio.run(main())


def test_async_flavour(cell: LocalCell) -> None:
    async def main() -> None:
        async with AsyncCell(cell.endpoints) as c:
            changes: list[Health] = []
            session = await c.session(on_safe=lambda ch: changes.append(ch.new))
            path = unique("async")
            async with session.lock(path) as lock:
                assert await c.check_sequencer(lock.sequencer)
                other = await c.session()
                h = await other.open(path, events=["contents_modified"])
                events = h.events()
                await lock.owner.set(b"hi")
                event = await asyncio.wait_for(events.__anext__(), 5)
                assert event.type == "contents_modified"
                with pytest.raises(LockBusy):
                    await h.try_acquire()
            assert not await c.check_sequencer(lock.sequencer)
            assert session.health is Health.SAFE and changes == []
            view = await c.cluster()
            assert view.leader is not None and len(view.members) == 3

    asyncio.run(main())


def test_follows_the_leader_from_a_follower_and_skips_dead_endpoints(cell: LocalCell) -> None:
    leader = cell.leader()
    follower = next(m for m in live(cell) if m is not leader)
    dead = "http://127.0.0.1:9"
    with Cell([dead, follower.url], retry_for=10) as c:
        session = c.session()
        session.open(unique("via-follower"), create="file")
        assert c.aio.endpoints.leader == leader.url
        view = c.discover()
        assert view is not None and len(c.endpoints) >= 4


def test_fenced_resource_confirms_with_check_sequencer(client: Cell) -> None:
    fence = FencedResource(check=client.check_sequencer)
    session = client.session()
    path = unique("resource")
    with session.lock(path) as lock:
        assert fence.admit(lock.sequencer).lock_generation == lock.lock_generation
    with pytest.raises(StaleSequencer):
        fence.admit(lock.sequencer)  # released: the cell says it is not current
    with session.lock(path) as newer:
        fence.admit(newer.sequencer)
    plain = FencedResource()  # no cell: only the generation rule
    plain.admit(newer.sequencer)
    with pytest.raises(StaleSequencer):
        plain.admit(lock.sequencer)
