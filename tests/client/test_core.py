"""Unit tests of the client's sans-I/O core, errors, fencing and CLI parser (no cell)."""

from __future__ import annotations

import argparse
import base64
import json
import random
import subprocess
import sys

import pytest

from lockcell.cli.commands import add_client_commands, split_command
from lockcell.client import (
    Conflict,
    FencedResource,
    HandleInvalid,
    InvalidArgument,
    LockBusy,
    LockcellError,
    LockDelay,
    LockLost,
    NotFound,
    SessionExpired,
    StaleSequencer,
    TooLarge,
    Unauthorized,
    Unavailable,
    core,
    keeps_through_grace,
    local_deadline,
    parse_sequencer,
    resolve_endpoints,
)
from lockcell.client.core import (
    EndpointSet,
    Event,
    EventNotice,
    EventSequencer,
    Health,
    HealthChange,
    HeldLock,
    KeepAliveAnswer,
    LockLostNotice,
    SessionCore,
    SessionGrant,
)
from lockcell.client.errors import error_from_answer


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_core(clock: Clock, *, lease_ms: int = 2000, valid_ms: int = 2000,
              grace_ms: int = 3000, drift: float = 0.01) -> SessionCore:
    grant = SessionGrant("s" * 32, lease_ms, valid_ms, grace_ms)
    return SessionCore(grant, clock.now, clock=clock, drift=drift)


def held(c: SessionCore, lock_delay_ms: int, handle: str = "h1") -> HeldLock:
    lock = HeldLock(c, path="/ls/demo/x", handle=handle, mode="exclusive",
                    sequencer="lc1:x", lock_generation=3, lock_delay_ms=lock_delay_ms)
    c.track(lock)
    return lock


def sequencer(path: str, mode: str, generation: int, instance: int = 2) -> str:
    body = json.dumps([path, mode, generation, instance], separators=(",", ":")).encode()
    return "lc1:" + base64.urlsafe_b64encode(body).rstrip(b"=").decode()


# ---------------------------------------------------------------------- lease arithmetic


def test_local_deadline_counts_from_the_send_time_minus_drift() -> None:
    assert local_deadline(10.0, 12000) == pytest.approx(10.0 + 12.0 * 0.99)
    assert local_deadline(10.0, 12000, drift=0.0) == pytest.approx(22.0)
    assert local_deadline(10.0, 0) == 10.0


def test_keepalive_answer_extends_from_when_it_was_sent_not_received() -> None:
    clock = Clock()
    c = make_core(clock)
    sent = clock.now + 1.0
    clock.now = sent + 1.5  # a long poll held 1.5 s
    c.on_keepalive(sent, clock.now, KeepAliveAnswer(2000, 3500, ()), None)
    assert c.deadline == pytest.approx(sent + 3.5 * 0.99)
    # an answer promising less never shortens the lease
    c.on_keepalive(sent, clock.now, KeepAliveAnswer(2000, 10, ()), None)
    assert c.deadline == pytest.approx(sent + 3.5 * 0.99)


def test_keeps_through_grace_needs_the_delay_to_cover_grace_with_drift() -> None:
    assert keeps_through_grace(60000, 45000)
    assert not keeps_through_grace(45000, 45000)  # the cell's clock may run fast
    assert keeps_through_grace(45455, 45000)
    assert not keeps_through_grace(0, 1000)
    assert keeps_through_grace(0, 0)


# ---------------------------------------------------------------------- health


def test_safe_then_jeopardy_then_expired_with_notices_in_order() -> None:
    clock = Clock()
    c = make_core(clock, grace_ms=3000)
    weak = held(c, lock_delay_ms=0, handle="a")
    strong = held(c, lock_delay_ms=60000, handle="b")
    assert c.poll(clock.now + 1.0) == []
    clock.now = c.deadline
    notices = c.poll(clock.now)
    assert notices[0] == HealthChange(Health.SAFE, Health.JEOPARDY, "local lease ran out")
    assert [n.lock for n in notices if isinstance(n, LockLostNotice)] == [weak]
    assert weak.lost and not strong.lost
    assert c.health is Health.JEOPARDY
    clock.now = c.expires_at - 0.01
    assert c.poll(clock.now) == []
    clock.now = c.expires_at
    notices = c.poll(clock.now)
    assert isinstance(notices[0], HealthChange) and notices[0].new is Health.EXPIRED
    assert [n.lock for n in notices if isinstance(n, LockLostNotice)] == [strong]
    assert strong.lost and c.health is Health.EXPIRED
    assert c.next_wakeup() is None


def test_a_long_pause_gives_jeopardy_then_expired_at_once() -> None:
    clock = Clock()
    c = make_core(clock)
    notices = c.poll(clock.now + 60)
    changes = [n.new for n in notices if isinstance(n, HealthChange)]
    assert changes == [Health.JEOPARDY, Health.EXPIRED]


def test_jeopardy_back_to_safe_when_a_keepalive_gets_through() -> None:
    clock = Clock()
    c = make_core(clock)
    lock = held(c, lock_delay_ms=0)
    clock.now = c.deadline + 0.5
    c.poll(clock.now)
    assert c.health is Health.JEOPARDY
    sent = clock.now
    clock.now += 0.1
    notices = c.on_keepalive(sent, clock.now, KeepAliveAnswer(2000, 2000, ()), "http://l")
    assert HealthChange(Health.JEOPARDY, Health.SAFE, "keepalive answered") in notices
    assert c.health is Health.SAFE
    assert lock.lost, "a lock lost at jeopardy stays lost"


def test_a_stale_answer_does_not_end_jeopardy() -> None:
    clock = Clock()
    c = make_core(clock)
    sent = clock.now + 0.5
    clock.now = sent + 2.0  # the answer arrives after the lease it promised ran out
    notices = c.on_keepalive(sent, clock.now, KeepAliveAnswer(2000, 2000, ()), None)
    assert [n.new for n in notices if isinstance(n, HealthChange)] == [Health.JEOPARDY]
    assert c.health is Health.JEOPARDY


def test_lock_lost_is_exact_before_any_poll() -> None:
    clock = Clock()
    c = make_core(clock)
    weak = held(c, lock_delay_ms=0)
    strong = held(c, lock_delay_ms=60000)
    clock.now = c.deadline + 0.001
    assert weak.lost and "jeopardy" in (weak.lost_reason or "")
    assert not strong.lost
    with pytest.raises(LockLost):
        weak.check()
    clock.now = c.expires_at
    assert strong.lost
    assert c.health is Health.SAFE, "reading lost changes nothing"
    assert c.health_at(clock.now) is Health.EXPIRED


def test_the_cell_saying_expired_ends_the_session() -> None:
    clock = Clock()
    c = make_core(clock)
    lock = held(c, lock_delay_ms=60000)
    notices = c.on_session_gone(clock.now, "410")
    assert notices[0] == HealthChange(Health.SAFE, Health.EXPIRED, "410")
    assert lock.lost
    assert c.on_session_gone(clock.now, "again") == []


def test_closing_releases_locks_without_calling_them_lost() -> None:
    clock = Clock()
    c = make_core(clock)
    lock = held(c, lock_delay_ms=0)
    notices = c.on_closed()
    assert notices == [HealthChange(Health.SAFE, Health.CLOSED, "closed by the client")]
    assert lock.released and not lock.lost


def test_handle_invalid_event_loses_that_handles_lock() -> None:
    clock = Clock()
    c = make_core(clock)
    mine = held(c, lock_delay_ms=60000, handle="h1")
    other = held(c, lock_delay_ms=60000, handle="h2")
    answer = KeepAliveAnswer(2000, 2000, (Event(1, "handle_invalid", "h1", "/ls/demo/x"),))
    notices = c.on_keepalive(clock.now, clock.now, answer, None)
    assert any(isinstance(n, LockLostNotice) and n.lock is mine for n in notices)
    assert mine.lost and not other.lost


def test_lost_listeners_fire_once() -> None:
    clock = Clock()
    c = make_core(clock)
    lock = held(c, lock_delay_ms=0)
    calls: list[HeldLock] = []
    lock.add_lost_listener(calls.append)
    c.poll(c.deadline)
    c.poll(c.expires_at)
    assert calls == [lock]
    late: list[HeldLock] = []
    lock.add_lost_listener(late.append)
    assert late == [lock]


def test_keepalive_plan_long_polls_when_safe_and_probes_in_jeopardy() -> None:
    clock = Clock()
    c = make_core(clock, lease_ms=12000, valid_ms=12000)
    plan = c.keepalive_plan(clock.now)
    assert plan.wait_ms == 6000 and plan.timeout == pytest.approx(8.0) and plan.ack is None
    c.poll(c.deadline)
    plan = c.keepalive_plan(c.deadline)
    assert plan.wait_ms == 0 and plan.timeout <= 1.0


# ---------------------------------------------------------------------- events


def ev(seq: int, kind: str = "contents_modified") -> Event:
    return Event(seq, kind, "h", "/ls/demo/x")


def test_events_are_acked_and_redeliveries_dropped() -> None:
    seq = EventSequencer()
    assert seq.ack() is None
    assert seq.accept([ev(2), ev(1)], "L") == [ev(1), ev(2)]
    assert seq.ack() == 2
    seq.failed()
    assert seq.ack() is None, "no ack after a failure: the leader may be new"
    assert seq.accept([ev(1), ev(2), ev(3)], "L") == [ev(3)]
    assert seq.ack() == 3


def test_master_failover_starts_a_new_numbering() -> None:
    seq = EventSequencer()
    seq.accept([ev(1), ev(2), ev(3)], "A")
    seq.failed()
    out = seq.accept([Event(1, "master_failover", "", ""), ev(2)], "B")
    assert [e.type for e in out] == ["master_failover", "contents_modified"]
    assert seq.ack() == 2


def test_a_new_leader_without_master_failover_gets_a_synthetic_one() -> None:
    seq = EventSequencer()
    seq.accept([ev(1)], "A")
    out = seq.accept([ev(1)], "B")
    assert out[0].type == "master_failover" and out[0].synthetic and out[0].needs_reread
    assert out[1] == ev(1)
    assert seq.accept([], "B") == []


def test_core_delivers_events_through_keepalive_answers() -> None:
    clock = Clock()
    c = make_core(clock)
    answer = KeepAliveAnswer(2000, 2000, (ev(1), ev(2)))
    notices = c.on_keepalive(clock.now, clock.now, answer, "A")
    assert [n.event.seq for n in notices if isinstance(n, EventNotice)] == [1, 2]
    assert c.keepalive_plan(clock.now).ack == 2
    c.on_keepalive_failure(clock.now)
    assert c.keepalive_plan(clock.now).ack is None


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(("status", "code", "cls"), [
    (400, "invalid_argument", InvalidArgument), (401, "unauthorized", Unauthorized),
    (404, "not_found", NotFound), (409, "conflict", Conflict), (409, "lock_busy", LockBusy),
    (409, "lock_delay", LockDelay), (410, "session_expired", SessionExpired),
    (410, "handle_invalid", HandleInvalid), (413, "too_large", TooLarge),
    (503, "unavailable", Unavailable),
])
def test_error_codes_map_to_typed_exceptions(status: int, code: str,
                                             cls: type[LockcellError]) -> None:
    error = error_from_answer(status, {"error": {"code": code, "message": "why"}})
    assert type(error) is cls
    assert error.code == code and error.status == status and error.message == "why"
    assert isinstance(error, LockcellError)
    assert str(error) == f"{code}: why"


def test_lock_delay_carries_its_end_and_busy_is_a_conflict() -> None:
    error = error_from_answer(409, {"error": {"code": "lock_delay", "message": "m",
                                              "lock_delay_until_ms": 1234}})
    assert isinstance(error, LockDelay) and error.until_ms == 1234
    assert isinstance(LockBusy("x"), Conflict)


def test_unknown_errors_fall_back_on_the_status() -> None:
    assert type(error_from_answer(404, "no")) is NotFound
    weird = error_from_answer(409, {"error": {"code": "brand_new", "message": "m"}})
    assert type(weird) is Conflict and "brand_new" in weird.message
    other = error_from_answer(500, None)
    assert type(other) is LockcellError and other.answer_status == 500


# ---------------------------------------------------------------------- requests


def test_requests_follow_the_http_api() -> None:
    r = core.req_keepalive("s1", 1000, None)
    assert (r.method, r.path, r.body, r.wait_ms) == ("POST", "/v1/sessions/s1/keepalive",
                                                     {"wait_ms": 1000}, 1000)
    assert core.req_keepalive("s1", 0, 7).body == {"wait_ms": 0, "ack": 7}
    r = core.req_open("s1", "/ls/local/x", create="file", data=b"hi",
                      events=["contents_modified"], lock_delay_ms=0)
    assert r.write and r.body == {"path": "/ls/local/x",
                                  "create": {"kind": "file", "data": "aGk="},
                                  "events": ["contents_modified"], "lock_delay_ms": 0}
    r = core.req_release("s1", "h1", 5)
    assert r.method == "DELETE" and r.target == "/v1/sessions/s1/handles/h1/lock?generation=5"
    assert core.req_release("s1", "h1", None).target == "/v1/sessions/s1/handles/h1/lock"
    r = core.req_acquire("s1", "h1", "shared", 0)
    assert r.body == {"mode": "shared", "wait_ms": 0} and r.write
    assert core.req_set_contents("s", "h", b"", 3).body == {"data": "", "if_generation": 3}
    assert core.req_promote_member("a/b").path == "/v1/cluster/members/a%2Fb/promote"
    assert core.req_transfer_leader(None).admin
    assert not core.req_get_stat("s", "h").write


def test_endpoints_resolution() -> None:
    assert resolve_endpoints(None, {}) == core.DEFAULT_ENDPOINTS
    assert resolve_endpoints(None, {"LOCKCELL_ENDPOINTS": "a:1, http://b:2/"}) == (
        "http://a:1", "http://b:2")
    assert resolve_endpoints(["http://x:1", "http://x:1"]) == ("http://x:1",)
    with pytest.raises(ValueError):
        resolve_endpoints(" , ")


def test_endpoint_set_prefers_the_leader_and_rotates_on_failure() -> None:
    eps = EndpointSet(["http://a", "http://b", "http://c"])
    assert eps.current() == "http://a"
    eps.note_leader("http://c")
    assert eps.current() == "http://c"
    eps.failed("http://c")
    assert eps.current() == "http://a"
    eps.failed("http://a", leader_hint="http://c")  # a hint to a member that just failed
    assert eps.current() == "http://b"
    eps.failed("http://b", leader_hint="http://d")  # a new member is learnt
    assert eps.current() == "http://d" and "http://d" in eps.urls
    eps.succeeded("http://d")
    assert eps.failures_in_a_row == 0


def test_backoff_is_bounded() -> None:
    rng = random.Random(1)
    delays = [core.backoff_delay(n, rng) for n in range(1, 30)]
    assert all(0.025 <= d <= 1.0 for d in delays)


def test_a_call_retries_sooner_while_the_cell_answers() -> None:
    """A 503 (or members naming no live leader) means an election is under way: retries
    come at least every 0.25 s; when nothing answers, the pauses grow to a second."""
    rng = random.Random(2)
    answered = [core.retry_delay(n, rng, cell_answered=True) for n in range(1, 200)]
    silent = [core.retry_delay(n, rng, cell_answered=False) for n in range(1, 200)]
    assert all(0.025 <= d <= core.RETRY_CAP_ANSWERED_S for d in answered)
    assert all(0.025 <= d <= core.RETRY_CAP_SILENT_S for d in silent)
    assert max(silent) > 0.9 and max(answered) > 0.2


# ---------------------------------------------------------------------- sequencers and fencing


def test_parse_sequencer() -> None:
    text = sequencer("/ls/demo/x", "exclusive", 7, 3)
    info = parse_sequencer(text)
    assert info is not None
    assert (info.path, info.mode, info.lock_generation, info.instance) == (
        "/ls/demo/x", "exclusive", 7, 3)
    for bad in ("", "lc2:abc", "lc1:!!!", "lc1:" + base64.urlsafe_b64encode(b"[1]").decode(),
                sequencer("/x", "weird", 1), 42, None):
        assert parse_sequencer(bad) is None


def test_fenced_resource_keeps_the_highest_generation_per_lock() -> None:
    fence = FencedResource()
    assert fence.admit(sequencer("/ls/demo/a", "exclusive", 5)).lock_generation == 5
    fence.admit(sequencer("/ls/demo/a", "exclusive", 5))  # the same holder again
    fence.admit(sequencer("/ls/demo/b", "exclusive", 1))  # another lock
    fence.admit(sequencer("/ls/demo/a", "exclusive", 8))
    with pytest.raises(StaleSequencer):
        fence.admit(sequencer("/ls/demo/a", "exclusive", 7))
    assert fence.highest("/ls/demo/a") == 8 and fence.highest("/ls/demo/b") == 1
    with pytest.raises(InvalidArgument):
        fence.admit("garbage")
    assert fence.snapshot() == {"/ls/demo/a": 8, "/ls/demo/b": 1}
    other = FencedResource()
    other.restore(fence.snapshot())
    with pytest.raises(StaleSequencer):
        other.admit(sequencer("/ls/demo/a", "exclusive", 2))


def test_fenced_resource_confirms_with_the_cell_and_modes() -> None:
    verdicts = {sequencer("/ls/demo/a", "exclusive", 1): False}
    fence = FencedResource(check=lambda s: verdicts.get(s, True), require_exclusive=True)
    with pytest.raises(StaleSequencer):
        fence.admit(sequencer("/ls/demo/a", "exclusive", 1))
    assert fence.highest("/ls/demo/a") is None, "a refused sequencer is not recorded"
    with pytest.raises(InvalidArgument):
        fence.admit(sequencer("/ls/demo/a", "shared", 2))
    with fence.guard(sequencer("/ls/demo/a", "exclusive", 2)) as info:
        assert info.lock_generation == 2


def test_fenced_resource_async_guard() -> None:
    import asyncio

    async def acheck(s: str) -> bool:
        return parse_sequencer(s) is not None

    async def main() -> None:
        fence = FencedResource(acheck=acheck)
        async with fence.guard_async(sequencer("/ls/demo/a", "shared", 4)):
            pass
        with pytest.raises(StaleSequencer):
            await fence.admit_async(sequencer("/ls/demo/a", "exclusive", 3))

    asyncio.run(main())


# ---------------------------------------------------------------------- CLI without a cell


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lockcell")
    add_client_commands(p.add_subparsers(dest="command", required=True))
    return p


@pytest.mark.parametrize("argv", [
    ["get", "--help"], ["put", "--help"], ["ls", "--help"], ["stat", "--help"],
    ["rm", "--help"], ["mkdir", "--help"], ["watch", "--help"], ["lock", "--help"],
    ["elect", "--help"], ["cluster", "--help"], ["cluster", "status", "--help"],
    ["cluster", "members", "--help"], ["cluster", "add", "--help"],
    ["cluster", "promote", "--help"], ["cluster", "remove", "--help"],
    ["cluster", "transfer", "--help"],
])
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(argv)
    assert exit_info.value.code == 0
    assert "usage: lockcell" in capsys.readouterr().out


def test_lock_arguments_keep_the_command_intact() -> None:
    args = parser().parse_args(["lock", "/ls/local/x", "--wait", "2", "--", "sh", "-c",
                                "echo --json"])
    assert args.cmd == ["--wait", "2", "--", "sh", "-c", "echo --json"]
    args = split_command(args)
    assert args.cmd == ["sh", "-c", "echo --json"] and args.wait == 2.0
    args = split_command(parser().parse_args(["lock", "--wait", "1", "/ls/local/x", "--",
                                              "true"]))
    assert args.cmd == ["true"] and args.wait == 1.0
    args = split_command(parser().parse_args(["lock", "/ls/local/x", "true", "--x"]))
    assert args.cmd == ["true", "--x"]


def run_cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lockcell.cli.main", *argv], text=True,
                          capture_output=True, timeout=60, env=env)


def test_cli_exit_codes_without_a_cell() -> None:
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    done = run_cli("get", "/ls/local/x", "--endpoints", dead, "--timeout", "0.5")
    assert done.returncode == 3 and "unavailable" in done.stderr
    done = run_cli("lock", "/ls/local/x", "--endpoints", dead)
    assert done.returncode == 2 and "no command" in done.stderr
    done = run_cli("cluster", "transfer", "--endpoints", dead)
    assert done.returncode == 2 and "admin token" in done.stderr
    done = run_cli("frobnicate")
    assert done.returncode == 2


def view(term: int, leader: str | None, me: str, urls: dict[str, str],
         in_contact: bool = False) -> core.ClusterView:
    return core.ClusterView.from_json({
        "leader": leader, "term": term, "commit_index": 1, "joint": None,
        "leader_in_contact": in_contact,
        "members": [{"id": i, "url": u, "peer_url": "p", "role": "voter", "match_index": 1}
                    for i, u in urls.items()],
        "self": {"id": me}})


def test_choose_leader_distrusts_a_leader_that_failed_and_prefers_newer_terms() -> None:
    urls = {"a": "http://a", "b": "http://b", "c": "http://c"}
    stale = [("http://b", view(3, "a", "b", urls)), ("http://c", view(3, "a", "c", urls))]
    assert core.choose_leader(stale, failed={"http://a"}) is None
    assert core.choose_leader(stale, failed=set()) == "http://a"
    mixed = [("http://b", view(4, "b", "b", urls)), ("http://c", view(3, "a", "c", urls))]
    assert core.choose_leader(mixed, failed={"http://a"}) == "http://b"
    back = [("http://a", view(3, "a", "a", urls))]  # it failed, but answers now
    assert core.choose_leader(back, failed={"http://a"}) == "http://a"
    assert core.choose_leader([("http://b", view(5, None, "b", urls))], failed=()) is None


def test_choose_relay_only_through_members_still_hearing_from_the_leader() -> None:
    urls = {"a": "http://a", "b": "http://b", "c": "http://c"}
    # a failed us; b and c still hear from it: go through one of them
    hearing = [("http://b", view(3, "a", "b", urls, in_contact=True)),
               ("http://c", view(3, "a", "c", urls, in_contact=False))]
    assert core.choose_relay(hearing, failed={"http://a"}) == ("http://b", "http://a")
    # nobody hears from it (it may be dead): no relay, wait for an election
    silent = [("http://b", view(3, "a", "b", urls)), ("http://c", view(3, "a", "c", urls))]
    assert core.choose_relay(silent, failed={"http://a"}) is None
    # the named leader did not fail us: no relay needed
    assert core.choose_relay(hearing, failed=set()) is None
    # the newest term wins
    newer = [*hearing, ("http://c", view(4, "a", "c", urls, in_contact=True))]
    assert core.choose_relay(newer, failed={"http://a"}) == ("http://c", "http://a")


def test_relaying_ignores_the_unreachable_leader_until_the_hold_ends() -> None:
    eps = EndpointSet(["http://a", "http://b", "http://c"])
    eps.note_leader("http://a")
    eps.failed("http://a")
    eps.relay_through("http://b", "http://a", now=100.0, hold=2.0)
    assert eps.current() == "http://b"
    eps.succeeded("http://b")
    eps.note_leader("http://a", now=101.0)  # the relay's answer names the leader
    assert eps.current() == "http://b"
    eps.failed("http://b", leader_hint="http://a")  # nor does a hint bring it back
    assert eps.current() == "http://c"
    eps.succeeded("http://c")
    eps.note_leader("http://a", now=102.5)  # after the hold the leader is tried again
    assert eps.current() == "http://a"
    eps.failed("http://a")
    eps.relay_through("http://b", "http://a", now=103.0)
    eps.revive(["http://a"])  # it answered directly: trusted at once
    eps.note_leader("http://a", now=103.1)
    assert eps.current() == "http://a"
