"""Operations routes over real processes: /v1/cluster, the admin routes' token, /healthz,
/readyz, /metrics, /v1/openapi.json, and that the OpenAPI document lists exactly the
routes the server serves (DESIGN.md §4)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lockcell.api.http import HttpApi
from lockcell.api.openapi import ROUTES, openapi_document
from lockcell.cli.localcell import LocalCell

from .kit import (
    LEADER_HEADER,
    Api,
    expect,
    followers,
    member_id,
    request,
    serving_leader,
    uniq,
)

ROOT = "/ls/local"

# The routes of the table in DESIGN.md §4 (method, path template).
DESIGN_ROUTES = {
    ("POST", "/v1/sessions"),
    ("POST", "/v1/sessions/{session}/keepalive"),
    ("DELETE", "/v1/sessions/{session}"),
    ("POST", "/v1/sessions/{session}/handles"),
    ("DELETE", "/v1/sessions/{session}/handles/{handle}"),
    ("POST", "/v1/sessions/{session}/handles/{handle}/poison"),
    ("GET", "/v1/sessions/{session}/handles/{handle}"),
    ("GET", "/v1/sessions/{session}/handles/{handle}/stat"),
    ("GET", "/v1/sessions/{session}/handles/{handle}/children"),
    ("PUT", "/v1/sessions/{session}/handles/{handle}"),
    ("DELETE", "/v1/sessions/{session}/handles/{handle}/node"),
    ("POST", "/v1/sessions/{session}/handles/{handle}/lock"),
    ("DELETE", "/v1/sessions/{session}/handles/{handle}/lock"),
    ("GET", "/v1/sessions/{session}/handles/{handle}/sequencer"),
    ("PUT", "/v1/sessions/{session}/handles/{handle}/sequencer"),
    ("POST", "/v1/sequencers/check"),
    ("GET", "/v1/cluster"),
    ("POST", "/v1/cluster/members"),
    ("POST", "/v1/cluster/members/{id}/promote"),
    ("DELETE", "/v1/cluster/members/{id}"),
    ("POST", "/v1/cluster/leader"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/openapi.json"),
}


def _canonical_template(path: str) -> str:
    """Name every path parameter the same so templates compare by shape."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def _shape(routes: set[tuple[str, str]]) -> set[tuple[str, str]]:
    return {(m.upper(), _canonical_template(p)) for m, p in routes}


# --------------------------------------------------------------------------- /v1/cluster


def test_cluster_view_from_every_member(cell: LocalCell) -> None:
    leader = serving_leader(cell)
    leader_id = member_id(leader)
    peer_urls = {f"127.0.0.1:{m.peer_port}" for m in cell.members}
    for member in cell.members:
        reply = expect(request(member.url, "GET", "/v1/cluster"), 200)
        body = reply.body
        assert {"leader", "term", "commit_index", "members", "joint"} <= set(body)
        assert body["leader"] == leader_id
        assert isinstance(body["term"], int) and body["term"] >= 1
        assert isinstance(body["commit_index"], int) and body["commit_index"] >= 1
        assert body["joint"] is None
        members = body["members"]
        assert len(members) == 3
        for entry in members:
            assert {"id", "url", "peer_url", "role", "match_index"} <= set(entry)
            assert entry["role"] == "voter"
        assert {e["url"] for e in members} == set(cell.endpoints)
        assert {e["peer_url"].split("://")[-1] for e in members} == peer_urls
        assert leader_id in {e["id"] for e in members}
        assert len({e["id"] for e in members}) == 3
        assert reply.header(LEADER_HEADER) == leader.url
    leader_view = expect(request(leader.url, "GET", "/v1/cluster"), 200).body
    for entry in leader_view["members"]:
        assert isinstance(entry["match_index"], int)


# --------------------------------------------------------------------------- admin


def _admin_calls(target_id: str) -> list[tuple[str, str, Any]]:
    return [
        ("POST", "/v1/cluster/members",
         {"id": f"intruder-{uuid.uuid4().hex[:6]}", "url": "http://127.0.0.1:1",
          "peer_url": "127.0.0.1:2"}),
        ("POST", f"/v1/cluster/members/{target_id}/promote", None),
        ("DELETE", f"/v1/cluster/members/{target_id}", None),
        ("POST", "/v1/cluster/leader", {"to": target_id}),
        ("POST", "/v1/cluster/leader", {}),
    ]


def _membership(view: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(m["id"], m["url"], m["peer_url"], m["role"]) for m in view["members"]]


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "Basic YWRtaW46YWRtaW4=",
                                  "Bearer ", "bearer {token}x"])
def test_admin_routes_refuse_requests_without_the_token(cell: LocalCell,
                                                        auth: str | None) -> None:
    leader = serving_leader(cell)
    target = followers(cell, leader)[0]
    target_id = member_id(target)
    before = request(leader.url, "GET", "/v1/cluster").body
    headers = {} if auth is None else {"Authorization": auth.format(token=cell.admin_token)}
    for member in cell.members:
        for method, path, body in _admin_calls(target_id):
            reply = request(member.url, method, path,
                            body if body is not None else {}, headers=headers)
            expect(reply, 401, "unauthorized")
    after = request(leader.url, "GET", "/v1/cluster").body
    assert after["leader"] == before["leader"]
    assert _membership(after) == _membership(before)
    assert after["joint"] is None


def test_admin_route_with_the_token(cell: LocalCell) -> None:
    leader = serving_leader(cell)
    leader_id = member_id(leader)
    headers = {"Authorization": f"Bearer {cell.admin_token}"}
    # moving leadership to the member that already leads changes nothing
    for member in cell.members:
        reply = request(member.url, "POST", "/v1/cluster/leader", {"to": leader_id},
                        headers=headers)
        expect(reply, 200)
        assert reply.body["leader"] == leader_id
    # with the token, bad input is a 400 (not a 401)
    expect(request(leader.url, "POST", "/v1/cluster/members", {"id": 5}, headers=headers),
           400, "invalid_argument")


# --------------------------------------------------------------------------- health


def test_healthz_and_readyz(cell: LocalCell) -> None:
    leader = serving_leader(cell)
    for member in cell.members:
        health = expect(request(member.url, "GET", "/healthz"), 200)
        assert health.header(LEADER_HEADER) == leader.url
        ready = expect(request(member.url, "GET", "/readyz"), 200)
        assert ready.header(LEADER_HEADER) == leader.url


def test_metrics(cell: LocalCell) -> None:
    leader = serving_leader(cell)
    api = Api(leader.url)
    s = api.session()
    h = api.handle(s, f"{ROOT}/{uniq()}", "file")
    expect(api.acquire(s, h), 200)
    for member in cell.members:
        reply = expect(request(member.url, "GET", "/metrics"), 200)
        assert reply.header("content-type").startswith("text/plain")
        text = reply.raw.decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families, "no metrics"
        for name in families:
            assert name.startswith("lockcell_"), name
        for wanted in ("lockcell_raft_term", "lockcell_raft_commit_index",
                       "lockcell_raft_applied_index", "lockcell_sessions",
                       "lockcell_locks_held", "lockcell_http_requests"):
            assert wanted in families, f"{wanted} missing from /metrics of {member.url}"
    text = expect(request(leader.url, "GET", "/metrics"), 200).raw.decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    created = [s for s in families["lockcell_http_requests"].samples
               if s.labels.get("route") == "create_session" and s.labels.get("code") == "201"]
    assert created and created[0].value >= 1
    held = {s.labels.get("mode"): s.value for s in families["lockcell_locks_held"].samples}
    assert held.get("exclusive", 0) >= 1
    assert families["lockcell_sessions"].samples[0].value >= 1
    role = {s.labels.get("role"): s.value for s in families["lockcell_raft_role"].samples}
    assert role.get("leader") == 1


# --------------------------------------------------------------------------- OpenAPI


def test_openapi_document_is_served(cell: LocalCell) -> None:
    for member in cell.members:
        reply = expect(request(member.url, "GET", "/v1/openapi.json"), 200)
        doc = reply.body
        assert doc == openapi_document()
        assert str(doc["openapi"]).startswith("3.")
        assert doc["paths"]


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


def test_openapi_lists_exactly_the_routes_the_server_serves() -> None:
    documented = _documented(openapi_document())
    table = {(r.method, r.path) for r in ROUTES}
    assert documented == table
    served = HttpApi(object()).served()  # type: ignore[arg-type]  # routes need no member
    assert served == documented
    # every route of DESIGN.md §4 is served and documented
    missing = _shape(DESIGN_ROUTES) - _shape(documented)
    assert not missing, f"routes of DESIGN.md §4 missing: {sorted(missing)}"


def test_every_documented_route_answers_on_a_live_member(cell: LocalCell) -> None:
    """Call each documented route for real: none answers the router's 404 or a 405."""
    leader = serving_leader(cell)
    api = Api(leader.url)
    s = api.session()
    d = f"{ROOT}/{uniq('dir')}"
    dh = api.mkdir(s, d)
    h = api.handle(s, f"{d}/f", "file")
    seq = expect(api.acquire(s, h), 200).body["sequencer"]
    other = api.handle(s, f"{d}/other", "file")  # SetSequencer goes here, not on ``h``
    follower_id = member_id(followers(cell, leader)[0])
    values = {"session": s, "handle": h, "id": follower_id}
    order = ["GET", "PUT", "POST", "DELETE"]
    last = ["release", "delete", "poison", "close", "add_member", "promote_member",
            "remove_member", "transfer_leader", "close_session"]
    routes = sorted(ROUTES, key=lambda r: (last.index(r.name) if r.name in last else -1,
                                           order.index(r.method)))
    bodies: dict[str, Any] = {
        "keepalive": {"wait_ms": 0}, "open": {"path": f"{d}/g", "create": {"kind": "file"}},
        "set_contents": {"data": "eA=="},
        "acquire": {"mode": "exclusive"}, "set_sequencer": {"sequencer": seq},
        "check_sequencer": {"sequencer": seq}, "create_session": {},
    }
    for route in routes:
        path = route.path
        for key, value in values.items():
            path = path.replace("{" + key + "}", value)
        if route.name == "read_dir":
            path = path.replace(h, dh)
        if route.name == "set_sequencer":
            path = path.replace(h, other)
        if route.name in ("close_session",):
            continue  # last, below
        body = bodies.get(route.name, {} if route.method in ("POST", "PUT") else None)
        if body is None:
            reply = request(leader.url, route.method, path)
        else:
            reply = request(leader.url, route.method, path, body)
        if route.admin:
            expect(reply, 401, "unauthorized")  # the route exists; no token given
            continue
        assert reply.status == route.ok, (route.name, reply)
    expect(api.close_session(s), 204)
    unknown = request(leader.url, "GET", "/v1/no-such-route")
    expect(unknown, 404, "not_found")
    assert unknown.header("content-type").startswith("application/json")


# The error codes of DESIGN.md §4 and the one HTTP status each goes with.
ERROR_STATUS = {"invalid_argument": 400, "unauthorized": 401, "not_found": 404,
                "conflict": 409, "lock_busy": 409, "lock_delay": 409, "session_expired": 410,
                "handle_invalid": 410, "too_large": 413, "unavailable": 503}


@pytest.mark.parametrize(("method", "path"), [("PATCH", "/v1/sessions"),
                                              ("GET", "/v1/sessions"),
                                              ("PUT", "/v1/cluster"),
                                              ("DELETE", "/v1/sequencers/check")])
def test_a_wrong_method_answers_a_documented_error(cell: LocalCell, method: str,
                                                   path: str) -> None:
    reply = request(serving_leader(cell).url, method, path)
    assert reply.status >= 400
    assert reply.code in ERROR_STATUS, reply
    assert reply.status == ERROR_STATUS[reply.code], reply


def test_keepalives_are_not_log_writes(cell: LocalCell) -> None:
    leader = serving_leader(cell)
    api = Api(leader.url)
    s = api.session(60000)
    deltas = []
    for _ in range(5):  # other sessions of this module may expire meanwhile: retry
        before = expect(request(leader.url, "GET", "/v1/cluster"), 200).body["commit_index"]
        for _ in range(10):
            expect(api.keepalive(s, wait_ms=0), 200)
        after = expect(request(leader.url, "GET", "/v1/cluster"), 200).body["commit_index"]
        deltas.append(after - before)
        if after == before:
            break
    assert 0 in deltas, f"every round of 10 KeepAlives moved the commit index: {deltas}"
