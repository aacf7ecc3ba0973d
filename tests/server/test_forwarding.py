"""Followers forward: every call made against a follower gets the same answer as against
the leader, and every answer carries X-Lockcell-Leader (DESIGN.md §4)."""

from __future__ import annotations

import uuid

import pytest

from lockcell.cli.localcell import LocalCell

from .kit import (
    LEADER_HEADER,
    MAX_CONTENTS,
    Api,
    Reply,
    background,
    expect,
    followers,
    request,
    serving_leader,
    unb64,
    uniq,
    wait_until,
)

CELL_OPTIONS = {"lease_ms": 12000}
ROOT = "/ls/local"


class Recorder:
    """Runs calls against one member and records (step, status, error code, body keys)."""

    def __init__(self, base: str, leader_url: str) -> None:
        self.api = Api(base, retry=0)
        self.leader_url = leader_url
        self.transcript: list[tuple[str, int, str | None, tuple[str, ...]]] = []

    def __call__(self, step: str, reply: Reply) -> Reply:
        assert reply.header(LEADER_HEADER) == self.leader_url, (step, reply, reply.headers)
        keys = tuple(sorted(reply.body)) if isinstance(reply.body, dict) else ()
        self.transcript.append((step, reply.status, reply.code, keys))
        return reply


def scenario(rec: Recorder, leader_api: Api) -> list[tuple[str, int, str | None,
                                                           tuple[str, ...]]]:
    """The same sequence of calls, each checked, through ``rec``'s member."""
    api = rec.api
    d = f"{ROOT}/{uniq('fwd')}"
    a = rec("create-a", expect(api.create_session(), 201)).body["session"]
    b = rec("create-b", expect(api.create_session(4000), 201)).body
    assert b["lease_ms"] == 4000
    b = b["session"]
    held = rec("keepalive-held", expect(api.keepalive(b, wait_ms=1000), 200))
    assert held.elapsed >= 0.9 and held.body["valid_ms"] >= 4000, held
    hd = rec("open-create-dir", expect(api.open(a, d, "dir"), 201)).body["handle"]
    rec("open-existing-dir", expect(api.open(a, d), 200))
    rec("open-missing", expect(api.open(a, f"{d}/x"), 404, "not_found"))
    rec("open-other-kind", expect(api.open(a, d, "file"), 409, "conflict"))
    rec("open-bad-path", expect(api.open(a, f"{d}/../x", "file"), 400, "invalid_argument"))
    rec("open-no-parent", expect(api.open(a, f"{d}/no/x", "file"), 404, "not_found"))
    f = f"{d}/f"
    hf = rec("open-create-file", expect(api.open(a, f, "file", data=b"one",
                                                 events=["contents_modified"]), 201))
    hf = hf.body["handle"]
    got = rec("get", expect(api.get(a, hf), 200)).body
    assert unb64(got["data"]) == b"one"
    stat = rec("stat", expect(api.stat(a, hf), 200)).body["stat"]
    children = rec("readdir", expect(api.readdir(a, hd), 200)).body["children"]
    assert [c["name"] for c in children] == ["f"]
    gen = stat["content_generation"]
    rec("set-cas-mismatch", expect(api.set(a, hf, b"two", if_generation=gen + 1), 409,
                                   "conflict"))
    two = rec("set-cas", expect(api.set(a, hf, b"two", if_generation=gen), 200)).body
    assert two["stat"]["content_generation"] == gen + 1
    rec("set-too-large", expect(api.set(a, hf, b"x" * (MAX_CONTENTS + 1)), 413, "too_large"))
    rec("set-max", expect(api.set(a, hf, b"m" * MAX_CONTENTS), 200))
    events = rec("keepalive-events", expect(api.keepalive(a, wait_ms=10000), 200))
    assert events.elapsed < 5
    assert [e["type"] for e in events.body["events"]] == ["contents_modified"] * 2
    rec("keepalive-ack", expect(api.keepalive(a, wait_ms=0,
                                              ack=events.body["events"][-1]["seq"]), 200))
    hb = rec("open-b", expect(api.open(b, f), 200)).body["handle"]
    rec("acquire-b", expect(api.acquire(b, hb), 200))
    rec("try-acquire-a", expect(api.acquire(a, hf), 409, "lock_busy"))
    rec("acquire-a-runs-out", expect(api.acquire(a, hf, wait_ms=300), 409, "lock_busy"))
    waiting = background(api.acquire, a, hf, "exclusive", 15000)
    wait_until(lambda: leader_api.stat_of(a, hf)["lock"]["waiters"] == 1, 10,
               message="the forwarded Acquire to queue at the leader")
    rec("waiters", expect(api.stat(b, hb), 200))
    rec("release-b", expect(api.release(b, hb), 204))
    granted = rec("acquire-a-granted", expect(waiting.result(30), 200)).body
    seq = rec("get-sequencer", expect(api.get_sequencer(a, hf), 200)).body
    assert seq["sequencer"] == granted["sequencer"]
    check = rec("check-valid", expect(api.check_sequencer(granted["sequencer"]), 200))
    assert check.body == {"valid": True}
    rec("set-sequencer", expect(api.set_sequencer(b, hb, granted["sequencer"]), 200))
    rec("release-a", expect(api.release(a, hf, granted["lock_generation"]), 204))
    check = rec("check-stale", expect(api.check_sequencer(granted["sequencer"]), 200))
    assert check.body == {"valid": False}
    rec("check-forged", expect(api.check_sequencer("lc1:forged"), 200))
    rec("acquire-b-again", expect(api.acquire(b, hb, "shared"), 410, "handle_invalid"))
    rec("close-b-handle", expect(api.close(b, hb), 204))
    rec("release-not-held", expect(api.release(a, hf), 409, "conflict"))
    rec("release-bad-generation", expect(api.release(a, hf, "abc"), 400, "invalid_argument"))
    rec("foreign-handle", expect(api.get(b, hf), 404, "not_found"))
    rec("unknown-session", expect(api.keepalive(uuid.uuid4().hex, wait_ms=0), 404,
                                  "not_found"))
    hp = rec("open-poison", expect(api.open(a, f), 200)).body["handle"]
    rec("poison", expect(api.poison(a, hp), 204))
    rec("poisoned-get", expect(api.get(a, hp), 410, "handle_invalid"))
    rec("close-poisoned", expect(api.close(a, hp), 204))
    rec("close-again", expect(api.close(a, hp), 204))
    rec("delete-non-empty", expect(api.delete(a, hd), 409, "conflict"))
    rec("delete-file", expect(api.delete(a, hf), 204))
    rec("get-deleted", expect(api.get(a, hf), 410, "handle_invalid"))
    rec("delete-dir", expect(api.delete(a, hd), 204))
    rec("close-session-b", expect(api.close_session(b), 204))
    rec("close-session-a", expect(api.close_session(a), 204))
    rec("cluster", expect(api.cluster(), 200))
    return rec.transcript


def test_a_follower_answers_every_call_like_the_leader(cell: LocalCell) -> None:
    leader = serving_leader(cell)
    leader_api = Api(leader.url)
    on_leader = scenario(Recorder(leader.url, leader.url), leader_api)
    for follower in followers(cell, leader):
        on_follower = scenario(Recorder(follower.url, leader.url), leader_api)
        assert on_follower == on_leader


@pytest.mark.parametrize("route", ["/v1/cluster", "/healthz", "/readyz", "/metrics",
                                   "/v1/openapi.json", "/v1/no-such-route"])
def test_every_answer_names_the_leader(cell: LocalCell, route: str) -> None:
    leader = serving_leader(cell)
    for member in cell.members:
        reply = request(member.url, "GET", route)
        assert reply.header(LEADER_HEADER) == leader.url, (member.url, reply.headers)


def test_errors_of_forwarded_calls_name_the_leader(cell: LocalCell) -> None:
    leader = serving_leader(cell)
    for member in cell.members:
        reply = request(member.url, "POST", "/v1/sessions", raw=b"{")
        expect(reply, 400, "invalid_argument")
        assert reply.header(LEADER_HEADER) == leader.url
        reply = request(member.url, "GET", f"/v1/sessions/{uuid.uuid4().hex}/handles/x")
        expect(reply, 404, "not_found")
        assert reply.header(LEADER_HEADER) == leader.url


@pytest.mark.parametrize("spelling", ["X-Request-Id", "x-request-id"])
def test_a_retried_write_through_a_follower_is_applied_once(cell: LocalCell,
                                                           spelling: str) -> None:
    leader = serving_leader(cell)
    leader_api = Api(leader.url)
    s = leader_api.session()
    h = leader_api.handle(s, f"{ROOT}/{uniq()}", "file")
    gen = leader_api.stat_of(s, h)["content_generation"]
    follower = Api(followers(cell, leader)[0].url, retry=0)
    key = uuid.uuid4().hex
    first = expect(follower.set(s, h, b"once", headers={spelling: key}), 200)
    second = expect(follower.set(s, h, b"once", headers={spelling: key}), 200)
    assert leader_api.stat_of(s, h)["content_generation"] == gen + 1
    assert second.body == first.body


def test_a_write_retried_at_each_member_in_turn_is_applied_once(cell: LocalCell) -> None:
    """The request-id table is replicated state: where the retry lands does not matter."""
    leader = serving_leader(cell)
    leader_api = Api(leader.url)
    s = leader_api.session()
    h = leader_api.handle(s, f"{ROOT}/{uniq()}", "file")
    gen = leader_api.stat_of(s, h)["content_generation"]
    key = uuid.uuid4().hex
    answers = [expect(Api(member.url, retry=0).set(s, h, b"once",
                                                   headers={"X-Request-Id": key}), 200)
               for member in [leader, *followers(cell, leader), leader]]
    assert all(a.body == answers[0].body for a in answers)
    assert leader_api.stat_of(s, h)["content_generation"] == gen + 1


def test_admin_token_is_forwarded_whatever_the_header_spelling(cell: LocalCell) -> None:
    leader = serving_leader(cell)
    leader_id = str(expect(request(leader.url, "GET", "/v1/cluster"), 200).body["leader"])
    for follower in followers(cell, leader):
        for name in ("Authorization", "authorization", "AUTHORIZATION"):
            reply = request(follower.url, "POST", "/v1/cluster/leader", {"to": leader_id},
                            headers={name: f"Bearer {cell.admin_token}"}, timeout=30)
            expect(reply, 200)
            assert reply.body["leader"] == leader_id
