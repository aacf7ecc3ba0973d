"""Bad input over real processes: every malformed call gets its documented error and
changes nothing (DESIGN.md §4: invalid_argument 400, not_found 404, conflict 409,
handle_invalid 410, too_large 413)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from lockcell.cli.localcell import LocalCell

from .kit import (
    MAX_CONTENTS,
    NO_BODY,
    Api,
    b64,
    dump_tree,
    expect,
    metric,
    serving_leader,
    uniq,
)

CELL_OPTIONS = {"lease_ms": 12000}
ROOT = "/ls/local"


@dataclass
class World:
    api: Api
    s: str          # the session under test
    d: str          # its directory
    hd: str         # handle on the directory
    hf: str         # handle on d/f, holding the exclusive lock of d/f
    seq: str        # that lock's sequencer
    stale: int      # a lock generation the handle held before
    t: str          # another session
    ht: str         # its handle on d/g

    def snapshot(self) -> dict[str, Any]:
        """Everything a bad call could have changed."""
        api = self.api
        expect(api.keepalive(self.s, wait_ms=0), 200)
        expect(api.keepalive(self.t, wait_ms=0), 200)
        return {
            "tree": dump_tree(api, self.s, self.d),
            "f": expect(api.get(self.s, self.hf), 200).body,
            "d": expect(api.stat(self.s, self.hd), 200).body,
            "g": expect(api.get(self.t, self.ht), 200).body,
            "sequencer": expect(api.get_sequencer(self.s, self.hf), 200).body,
            "valid": expect(api.check_sequencer(self.seq), 200).body,
        }


@pytest.fixture(scope="module")
def world(cell: LocalCell) -> World:
    api = Api(serving_leader(cell).url)
    s = api.session(60000)
    d = f"{ROOT}/{uniq('bad')}"
    hd = api.mkdir(s, d)
    hf = api.handle(s, f"{d}/f", "file", data=b"contents of f", events=["contents_modified"])
    stale = expect(api.acquire(s, hf), 200).body["lock_generation"]
    expect(api.release(s, hf), 204)
    seq = expect(api.acquire(s, hf), 200).body["sequencer"]
    t = api.session(60000)
    ht = api.handle(t, f"{d}/g", "file", data=b"contents of g")
    return World(api, s, d, hd, hf, seq, stale, t, ht)


@dataclass(frozen=True)
class Case:
    name: str
    method: str
    path: str
    body: Any = NO_BODY
    raw: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    status: int = 400
    code: str = "invalid_argument"


S = "/v1/sessions/{s}"
HF = S + "/handles/{hf}"
OPEN = S + "/handles"
BIG = b64(b"x" * (MAX_CONTENTS + 1))

CASES = [
    # CreateSession
    Case("session-bad-json", "POST", "/v1/sessions", raw=b"{"),
    Case("session-array", "POST", "/v1/sessions", raw=b"[]"),
    Case("session-string", "POST", "/v1/sessions", raw=b'"x"'),
    Case("session-lease-string", "POST", "/v1/sessions", {"lease_ms": "1000"}),
    Case("session-lease-float", "POST", "/v1/sessions", {"lease_ms": 1500.5}),
    Case("session-lease-bool", "POST", "/v1/sessions", {"lease_ms": True}),
    Case("session-unknown-field", "POST", "/v1/sessions", {"lease_ms": 1000, "lease": 1}),
    # KeepAlive
    Case("keepalive-bad-json", "POST", S + "/keepalive", raw=b"{wait_ms: 5}"),
    Case("keepalive-wait-string", "POST", S + "/keepalive", {"wait_ms": "5"}),
    Case("keepalive-wait-negative", "POST", S + "/keepalive", {"wait_ms": -1}),
    Case("keepalive-ack-string", "POST", S + "/keepalive", {"ack": "1"}),
    Case("keepalive-ack-negative", "POST", S + "/keepalive", {"ack": -1}),
    Case("keepalive-unknown-field", "POST", S + "/keepalive", {"wait": 5}),
    # Open
    Case("open-bad-json", "POST", OPEN, raw=b'{"path": '),
    Case("open-array", "POST", OPEN, raw=b'["/ls/local"]'),
    Case("open-no-path", "POST", OPEN, {}),
    Case("open-path-null", "POST", OPEN, {"path": None}),
    Case("open-path-number", "POST", OPEN, {"path": 5}),
    Case("open-unknown-field", "POST", OPEN, {"path": "{d}/n1", "pth": "{d}/n1"}),
    Case("open-create-not-object", "POST", OPEN, {"path": "{d}/n2", "create": "file"}),
    Case("open-create-no-kind", "POST", OPEN, {"path": "{d}/n3", "create": {}}),
    Case("open-create-bad-kind", "POST", OPEN, {"path": "{d}/n4", "create": {"kind": "link"}}),
    Case("open-create-kind-number", "POST", OPEN, {"path": "{d}/n5", "create": {"kind": 1}}),
    Case("open-create-ephemeral-string", "POST", OPEN,
         {"path": "{d}/n6", "create": {"kind": "file", "ephemeral": "yes"}}),
    Case("open-create-data-not-base64", "POST", OPEN,
         {"path": "{d}/n7", "create": {"kind": "file", "data": "not base64!"}}),
    Case("open-create-data-number", "POST", OPEN,
         {"path": "{d}/n8", "create": {"kind": "file", "data": 5}}),
    Case("open-create-unknown-field", "POST", OPEN,
         {"path": "{d}/n9", "create": {"kind": "file", "size": 1}}),
    Case("open-events-string", "POST", OPEN,
         {"path": "{d}/f", "events": "contents_modified"}),
    Case("open-events-unknown", "POST", OPEN, {"path": "{d}/f", "events": ["bogus"]}),
    Case("open-events-number", "POST", OPEN, {"path": "{d}/f", "events": [3]}),
    Case("open-lock-delay-high", "POST", OPEN, {"path": "{d}/f", "lock_delay_ms": 60001}),
    Case("open-lock-delay-negative", "POST", OPEN, {"path": "{d}/f", "lock_delay_ms": -1}),
    Case("open-lock-delay-string", "POST", OPEN, {"path": "{d}/f", "lock_delay_ms": "5"}),
    Case("open-dotdot", "POST", OPEN, {"path": "{d}/../x", "create": {"kind": "file"}}),
    Case("open-dot", "POST", OPEN, {"path": "{d}/./x", "create": {"kind": "dir"}}),
    Case("open-trailing-slash", "POST", OPEN, {"path": "{d}/n10/", "create": {"kind": "dir"}}),
    Case("open-relative", "POST", OPEN, {"path": "n11", "create": {"kind": "file"}}),
    Case("open-too-long", "POST", OPEN,
         {"path": "{d}/" + "/".join(["a" * 200] * 6), "create": {"kind": "file"}}),
    Case("open-data-too-large", "POST", OPEN,
         {"path": "{d}/n12", "create": {"kind": "file", "data": BIG}}, status=413,
         code="too_large"),
    Case("open-missing-parent", "POST", OPEN,
         {"path": "{d}/nope/n13", "create": {"kind": "file"}}, status=404, code="not_found"),
    Case("open-other-cell", "POST", OPEN,
         {"path": "/ls/elsewhere/n14", "create": {"kind": "file"}}, status=404,
         code="not_found"),
    Case("open-other-kind", "POST", OPEN, {"path": "{d}/f", "create": {"kind": "dir"}},
         status=409, code="conflict"),
    # SetContents
    Case("set-bad-json", "PUT", HF, raw=b"{]"),
    Case("set-no-data", "PUT", HF, {}),
    Case("set-data-null", "PUT", HF, {"data": None}),
    Case("set-data-number", "PUT", HF, {"data": 5}),
    Case("set-data-not-base64", "PUT", HF, {"data": "***"}),
    Case("set-if-generation-string", "PUT", HF, {"data": "eA==", "if_generation": "3"}),
    Case("set-if-generation-negative", "PUT", HF, {"data": "eA==", "if_generation": -3}),
    Case("set-unknown-field", "PUT", HF, {"data": "eA==", "generation": 1}),
    Case("set-too-large", "PUT", HF, {"data": BIG}, status=413, code="too_large"),
    Case("set-body-too-large", "PUT", HF, {"data": b64(b"y" * (900 * 1024))}, status=413,
         code="too_large"),
    Case("set-stale-cas", "PUT", HF, {"data": "eA==", "if_generation": 1}, status=409,
         code="conflict"),
    Case("set-request-id-too-long", "PUT", HF, {"data": "eA=="},
         headers=(("X-Request-Id", "r" * 257),)),
    # Acquire / Release
    Case("acquire-bad-json", "POST", HF + "/lock", raw=b"mode=exclusive"),
    Case("acquire-bad-mode", "POST", HF + "/lock", {"mode": "exclusive2"}),
    Case("acquire-mode-number", "POST", HF + "/lock", {"mode": 1}),
    Case("acquire-wait-negative", "POST", HF + "/lock", {"mode": "shared", "wait_ms": -1}),
    Case("acquire-wait-string", "POST", HF + "/lock", {"mode": "shared", "wait_ms": "9"}),
    Case("acquire-wait-float", "POST", HF + "/lock", {"mode": "shared", "wait_ms": 1.5}),
    Case("acquire-unknown-field", "POST", HF + "/lock", {"mode": "shared", "try": True}),
    Case("release-generation-text", "DELETE", HF + "/lock?generation=abc"),
    Case("release-generation-negative", "DELETE", HF + "/lock?generation=-1"),
    Case("release-generation-stale", "DELETE", HF + "/lock?generation={stale}", status=409,
         code="conflict"),
    Case("release-not-held", "DELETE", S + "/handles/{hd}/lock", status=409, code="conflict"),
    # Sequencers
    Case("set-sequencer-number", "PUT", S + "/handles/{hd}/sequencer", {"sequencer": 5}),
    Case("set-sequencer-unknown-field", "PUT", S + "/handles/{hd}/sequencer",
         {"sequencer": None, "x": 1}),
    Case("set-sequencer-bad-json", "PUT", S + "/handles/{hd}/sequencer", raw=b"{"),
    Case("check-bad-json", "POST", "/v1/sequencers/check", raw=b"{"),
    Case("check-missing", "POST", "/v1/sequencers/check", {}),
    Case("check-number", "POST", "/v1/sequencers/check", {"sequencer": 5}),
    Case("check-unknown-field", "POST", "/v1/sequencers/check", {"sequencer": "x", "y": 1}),
    # Handles that are not this session's, sessions that do not exist
    Case("foreign-get", "GET", S + "/handles/{ht}", status=404, code="not_found"),
    Case("foreign-set", "PUT", S + "/handles/{ht}", {"data": "eA=="}, status=404,
         code="not_found"),
    Case("foreign-delete", "DELETE", S + "/handles/{ht}/node", status=404, code="not_found"),
    Case("foreign-acquire", "POST", S + "/handles/{ht}/lock", {"mode": "exclusive"},
         status=404, code="not_found"),
    Case("foreign-poison", "POST", S + "/handles/{ht}/poison", status=404, code="not_found"),
    Case("foreign-close", "DELETE", S + "/handles/{ht}", status=404, code="not_found"),
    Case("foreign-set-sequencer", "PUT", S + "/handles/{ht}/sequencer", {"sequencer": "{seq}"},
         status=404, code="not_found"),
    Case("unknown-session-open", "POST", "/v1/sessions/{x}/handles",
         {"path": "{d}/n15", "create": {"kind": "file"}}, status=404, code="not_found"),
    Case("unknown-session-set", "PUT", "/v1/sessions/{x}/handles/{hf}", {"data": "eA=="},
         status=404, code="not_found"),
    Case("unknown-session-close", "DELETE", "/v1/sessions/{x}", status=404, code="not_found"),
    # Delete
    Case("delete-non-empty", "DELETE", S + "/handles/{hd}/node", status=409, code="conflict"),
]


def _fill(text: str, world: World, unknown: str) -> str:
    return (text.replace("{s}", world.s).replace("{hf}", world.hf).replace("{hd}", world.hd)
            .replace("{ht}", world.ht).replace("{d}", world.d).replace("{seq}", world.seq)
            .replace("{stale}", str(world.stale))
            .replace("{x}", unknown))


def _fill_body(body: Any, world: World, unknown: str) -> Any:
    if isinstance(body, str):
        return _fill(body, world, unknown)
    if isinstance(body, dict):
        return {k: _fill_body(v, world, unknown) for k, v in body.items()}
    if isinstance(body, list):
        return [_fill_body(v, world, unknown) for v in body]
    return body


def _sessions(api: Api) -> float:
    return metric(api, "lockcell_sessions")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_call_gets_its_error_and_changes_nothing(world: World, case: Case) -> None:
    api = world.api
    unknown = uuid.uuid4().hex
    before = world.snapshot()
    sessions = _sessions(api)
    body = case.body if case.body is NO_BODY else _fill_body(case.body, world, unknown)
    reply = api(case.method, _fill(case.path, world, unknown), body, raw=case.raw,
                headers=dict(case.headers), retry=0)
    expect(reply, case.status, case.code)
    assert reply.header("content-type").startswith("application/json")
    assert set(reply.body) == {"error"}
    assert world.snapshot() == before
    assert _sessions(api) == sessions, "a refused call changed the number of sessions"
    # no event was queued by a refused write either
    events = expect(api.keepalive(world.s, wait_ms=0), 200).body["events"]
    assert events == [], events
    # (names the call might have created would show in the directory listing of the tree)


def test_bad_input_from_a_follower_is_answered_the_same(cell: LocalCell, world: World) -> None:
    leader = serving_leader(cell)
    follower = next(m for m in cell.members if m is not leader)
    api = Api(follower.url, retry=0)
    before = world.snapshot()
    for case in CASES:
        if case.headers:
            continue  # see test_a_bad_request_id_is_refused_by_a_follower_too
        unknown = uuid.uuid4().hex
        body = case.body if case.body is NO_BODY else _fill_body(case.body, world, unknown)
        reply = api(case.method, _fill(case.path, world, unknown), body, raw=case.raw,
                    headers=dict(case.headers))
        assert (reply.status, reply.code) == (case.status, case.code), (case.name, reply)
    assert world.snapshot() == before


def test_a_bad_request_id_is_refused_by_a_follower_too(cell: LocalCell, world: World) -> None:
    leader = serving_leader(cell)
    follower = next(m for m in cell.members if m is not leader)
    api = Api(follower.url, retry=0)
    before = world.snapshot()
    reply = api.set(world.s, world.hf, b"x", headers={"X-Request-Id": "r" * 257})
    after = world.snapshot()
    expect(reply, 400, "invalid_argument")
    assert after == before
