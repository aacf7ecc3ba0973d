"""The leader's lock queue in one process, with a log the test commits by hand: a waiter's
wait that runs out while a grant to it is in the log gets that grant, never a false
lock_busy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from lockcell.node.cell import CallFailed, CellService
from lockcell.statemachine.commands import CreateSpec, Open
from lockcell.statemachine.errors import ErrorCode
from lockcell.statemachine.values import LockMode, NodeKind

pytestmark = pytest.mark.asyncio


@dataclass
class _Core:
    term: int = 1


@dataclass
class HeldLog:
    """Stands in for the Raft driver: proposals wait in a list until :meth:`commit`
    applies them in order (or every proposal commits at once while ``auto``)."""

    service: CellService
    auto: bool = True
    is_leader: bool = True
    leader_id: str = "m0"
    core: _Core = field(default_factory=_Core)
    pending: list[tuple[Callable[[int], bytes], asyncio.Future[object]]] = field(
        default_factory=list)
    index: int = 0

    def holds_lease(self) -> bool:
        return True

    async def linearizable_read(self) -> None:
        return None

    def propose(self, make: Callable[[int], bytes]) -> asyncio.Future[object]:
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.pending.append((make, future))
        if self.auto:
            self.commit()
        return future

    def commit(self) -> None:
        pending, self.pending = self.pending, []
        for make, future in pending:
            self.index += 1
            result = self.service.apply_entry(self.index, make(1_000_000 + self.index))
            if not future.done():
                future.set_result(result)


async def _cell() -> tuple[CellService, HeldLog]:
    service = CellService("demo")
    log = HeldLog(service)
    service.attach(log)  # type: ignore[arg-type]
    service._serving = True  # as after the leader's no-op is applied
    return service, log


async def _handle(service: CellService, session: str, name: str) -> str:
    value = await service.write(Open(
        now_ms=0, session=session, path="/ls/demo/f", handle=name,
        create=CreateSpec(kind=NodeKind.FILE, ephemeral=False, data=b""), lock_delay_ms=0))
    return str(value["handle"])


async def _holder_and_waiter(wait_ms: int) -> tuple[CellService, HeldLog, Any, Any]:
    service, log = await _cell()
    a = (await service.create_session(60000, None))["session"]
    b = (await service.create_session(60000, None))["session"]
    ha = await _handle(service, a, "a" * 32)
    hb = await _handle(service, b, "b" * 32)
    await service.acquire(a, ha, LockMode.EXCLUSIVE, 0, None)
    waiter = asyncio.ensure_future(service.acquire(b, hb, LockMode.EXCLUSIVE, wait_ms, None))
    await asyncio.sleep(0.01)
    assert service.waiters_on("/ls/demo/f") == 1
    return service, log, (a, ha), waiter


async def test_wait_running_out_during_a_release_that_grants_gets_the_grant() -> None:
    service, log, (a, ha), waiter = await _holder_and_waiter(wait_ms=50)
    log.auto = False
    release = asyncio.ensure_future(service.release(a, ha, None, None))
    await asyncio.sleep(0.15)  # the wait runs out while the granting release is in the log
    assert not waiter.done()
    log.commit()
    await release
    granted = await asyncio.wait_for(waiter, 1)
    assert granted["lock_generation"] > 0
    lock = service.state.lock_info("/ls/demo/f")
    assert lock is not None and lock.mode is LockMode.EXCLUSIVE
    assert service.waiters_on("/ls/demo/f") == 0


async def test_wait_running_out_with_no_grant_in_flight_is_lock_busy() -> None:
    service, _, _, waiter = await _holder_and_waiter(wait_ms=50)
    with pytest.raises(CallFailed) as failed:
        await asyncio.wait_for(waiter, 1)
    assert failed.value.failure.code is ErrorCode.LOCK_BUSY
    assert "50 ms" in failed.value.failure.message
    assert service.waiters_on("/ls/demo/f") == 0


async def test_grant_arrives_before_the_releases_own_answer() -> None:
    """The next holder's answer is ready first: it is on the handover's critical path."""
    service, log, (a, ha), waiter = await _holder_and_waiter(wait_ms=60000)
    order: list[str] = []
    waiter.add_done_callback(lambda _: order.append("grant"))
    log.auto = False
    release = asyncio.ensure_future(service.release(a, ha, None, None))
    release.add_done_callback(lambda _: order.append("release"))
    await asyncio.sleep(0.01)
    log.commit()  # as the driver does: the entry commits in a later loop turn
    await asyncio.wait_for(asyncio.gather(waiter, release), 1)
    assert order == ["grant", "release"]


async def test_cancelled_wait_leaves_the_queue() -> None:
    service, _, _, waiter = await _holder_and_waiter(wait_ms=60000)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert service.waiters_on("/ls/demo/f") == 0


async def test_a_long_queue_is_served_in_order_past_timeouts_and_cancels() -> None:
    """1,000 waiters: every tenth gives up (timeout or cancel) while queued; the rest get
    the lock one after another in arrival order, and the queue and its index end empty."""
    service, _ = await _cell()
    holder = (await service.create_session(60000, None))["session"]
    first = await _handle(service, holder, "h" * 32)
    await service.acquire(holder, first, LockMode.EXCLUSIVE, 0, None)
    calls = []
    for i in range(1000):
        s = (await service.create_session(60000, None))["session"]
        h = await _handle(service, s, f"{i:032d}")
        wait_ms = 30 if i % 20 == 5 else 60000
        calls.append((i, s, h, asyncio.ensure_future(
            service.acquire(s, h, LockMode.EXCLUSIVE, wait_ms, None))))
        await asyncio.sleep(0)
    await asyncio.sleep(0.1)  # the short waits run out
    for i, _, _, call in calls:
        if i % 20 == 15:
            call.cancel()
    await asyncio.sleep(0)
    gave_up = {i for i, *_ in calls if i % 10 == 5}
    assert service.waiters_on("/ls/demo/f") == 1000 - len(gave_up)
    order = []
    owner, handle = holder, first
    waiting = {c[3]: c for c in calls if c[0] not in gave_up}
    while waiting:
        await service.release(owner, handle, None, None)
        done, _ = await asyncio.wait(waiting, timeout=1, return_when=asyncio.FIRST_COMPLETED)
        assert len(done) == 1, "one grant per release"
        i, owner, handle, call = waiting.pop(done.pop())
        assert call.result()["lock_generation"] > 0
        order.append(i)
    assert order == [i for i in range(1000) if i not in gave_up]
    for i, _, _, call in calls:
        if i % 20 == 5:
            assert isinstance(call.exception(), CallFailed)
        elif i % 20 == 15:
            assert call.cancelled()
    assert service.waiters_on("/ls/demo/f") == 0
    assert service._queued == {}


async def test_two_waits_on_one_handle_are_both_answered() -> None:
    service, _, (a, ha), first = await _holder_and_waiter(wait_ms=60000)
    b, hb = "", ""
    for key in service._queued:
        b, hb = key
    second = asyncio.ensure_future(service.acquire(b, hb, LockMode.EXCLUSIVE, 60000, None))
    await asyncio.sleep(0.01)
    assert service.waiters_on("/ls/demo/f") == 2
    await service.release(a, ha, None, None)
    granted = await asyncio.wait_for(first, 1)
    assert granted["lock_generation"] > 0
    assert not second.done()  # the handle holds the lock; its second wait still waits
    await service.release(b, hb, None, None)  # ... and gets it with the release
    again = await asyncio.wait_for(second, 1)
    assert again["lock_generation"] > granted["lock_generation"]
    assert service.waiters_on("/ls/demo/f") == 0
    assert service._queued == {}
