"""Property-based API tests: schemathesis runs every operation of /v1/openapi.json on a cell."""

# A real 3-member cell serves /v1/openapi.json; schemathesis loads it from the leader and
# generates requests (valid and invalid ones) for every operation, sent to any member (so
# forwarding is covered too). Each answer must be no server error, have a documented status
# code and content type, match the documented body schema and headers; invalid requests must
# be refused; admin routes must refuse calls without the admin token.
#
# Random ids only reach the "not found" branch of a handler, so a share of the cases runs
# against real state instead: each such case builds a small *world* (a live session with a
# handle on a node of its own, optionally holding or contending a lock, or already closed)
# and puts its ids into the generated path parameters and bodies.
#
# LOCKCELL_SCHEMATHESIS_EXAMPLES sets the generated cases per operation and generation mode;
# the run is derandomized (CI runs are reproducible) unless LOCKCELL_SCHEMATHESIS_SEED names
# a hypothesis seed.

from __future__ import annotations

import base64
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from lockcell.cli.localcell import LocalCell, http_json

from ..chaos.harness import free_base, stop_all

EXAMPLES = int(os.environ.get("LOCKCELL_SCHEMATHESIS_EXAMPLES", "30"))
SEED = os.environ.get("LOCKCELL_SCHEMATHESIS_SEED")
"""Unset: derandomized (the same cases every run); set: that hypothesis seed."""
WAIT_CAP_MS = 200
"""Long polls and blocking Acquires on real state are capped to keep the run bounded (random
ids answer at once, so generated ``wait_ms`` values go through unchanged there)."""
SCRATCH = "/ls/local/schemathesis"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, ignored_auth]
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]
CONFIG = schemathesis.Config.from_dict({
    "checks": {"negative_data_rejection": {
        # A request that violates the schema must be refused with one of the API's documented
        # 4xx errors. 410 is among them: a call on a closed session is refused as such before
        # its body is looked at, which is as much a refusal as 400.
        "expected-statuses": ["400", "401", "404", "409", "410", "413"]}},
    # ``shape`` sends the admin token (valid, wrong or none) itself, so negative mode spends
    # its cases on the parameters and bodies rather than on dropping the header.
    "generation": {"with-security-parameters": False},
})
ADMIN = {"add_member", "promote_member", "remove_member", "transfer_leader"}
SESSION_WORLDS = ("live", "closed", "generated")
HANDLE_WORLDS = ("live", "holding", "contended", "foreign", "closed_handle", "closed_session",
                 "unknown_handle", "generated")
"""Worlds a case can run in (hypothesis favours the first entries: real state comes first)."""


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCell]:
    base = free_base(3)
    c = LocalCell(tmp_path_factory.mktemp("schemathesis"), size=3, client_base=base,
                  peer_base=base + 10, lease_ms=3000, tick_ms=50,
                  extra_env={"LOCKCELL_LOG_LEVEL": "WARNING"})
    try:
        c.start(timeout=60)
        yield c
    finally:
        stop_all(c, None)


# --------------------------------------------------------------------------- real state


def _ok(status: int, body: Any, *expected: int) -> Any:
    assert status in expected, (status, body)
    return body


@dataclass
class World:
    """Real ids for one case: a session, a handle on a node of its own, extra sessions."""

    url: str
    session: str
    handle: str
    path: str
    kind: str
    sequencer: str | None = None
    lock_generation: int | None = None
    sessions: list[str] = field(default_factory=list)


class Worlds:
    """Builds worlds on the cell and closes their sessions after each case."""

    def __init__(self, cell: LocalCell) -> None:
        self.cell = cell
        self.counter = itertools.count()
        self.learners: set[str] = set()
        self.url = cell.leader().url
        setup = self.session()
        self.open(setup, SCRATCH, "dir")
        self.close_session(setup)

    def session(self) -> str:
        body = _ok(*http_json("POST", f"{self.url}/v1/sessions", {"lease_ms": 10000}), 201)
        return str(body["session"])

    def open(self, session: str, path: str, kind: str) -> str:
        body = _ok(*http_json("POST", f"{self.url}/v1/sessions/{session}/handles",
                              {"path": path, "create": {"kind": kind}}), 200, 201)
        return str(body["handle"])

    def lock(self, session: str, handle: str) -> tuple[str, int]:
        body = _ok(*http_json("POST", f"{self.url}/v1/sessions/{session}/handles/{handle}/lock",
                              {"mode": "exclusive"}), 200)
        return str(body["sequencer"]), int(body["lock_generation"])

    def close_session(self, session: str) -> None:
        _ok(*http_json("DELETE", f"{self.url}/v1/sessions/{session}"), 204, 404, 410)

    def build(self, variant: str, kind: str) -> World:
        """A world of ``variant`` (one of SESSION_WORLDS or HANDLE_WORLDS)."""
        path = f"{SCRATCH}/n{next(self.counter)}"
        session = self.session()
        handle = self.open(session, path, kind)
        world = World(self.url, session, handle, path, kind, sessions=[session])
        if variant in ("holding", "contended", "foreign"):
            other = self.session()
            world.sessions.append(other)
            other_handle = self.open(other, path, kind)
            if variant == "holding":
                world.sequencer, world.lock_generation = self.lock(session, handle)
            elif variant == "contended":
                world.sequencer, world.lock_generation = self.lock(other, other_handle)
            else:
                world.handle = other_handle
        elif variant == "closed_handle":
            _ok(*http_json("DELETE", f"{self.url}/v1/sessions/{session}/handles/{handle}"), 204)
        elif variant in ("closed", "closed_session"):
            self.close_session(session)
        elif variant == "unknown_handle":
            world.handle = "0" * 32
        return world

    def dispose(self, world: World) -> None:
        for session in world.sessions:
            self.close_session(session)

    def voters(self) -> list[str]:
        view = _ok(*http_json("GET", f"{self.url}/v1/cluster"), 200)
        return [m["id"] for m in view["members"] if m["role"] == "voter"]

    def refresh_leader(self) -> None:
        self.cell.wait_ready(60)
        self.url = self.cell.leader().url


# --------------------------------------------------------------------------- case shaping


@dataclass
class Shaped:
    """What shaping did to a case: its world, and the admin token it sends.

    ``token`` is "none", "wrong" or "valid"; a valid token goes in ``headers``, passed to the
    call and to the checks as explicit credentials (so ``ignored_auth`` probes the call
    without them).
    """

    world: World | None = None
    token: str = "none"
    headers: dict[str, str] | None = None


def _cap_wait(body: dict[str, Any] | None) -> None:
    if body is not None and isinstance(body.get("wait_ms"), int):
        body["wait_ms"] = min(body["wait_ms"], WAIT_CAP_MS)


def _open_body(body: dict[str, Any], draw: Callable[[Any], Any], worlds: Worlds,
               world: World) -> None:
    """A path that exists, may be created, or is refused for each of the reasons of §4, and
    a ``create`` of either kind (creating, or a conflict with the existing node's kind)."""
    path = _open_path(draw, worlds, world)
    if path is not None:
        body["path"] = path
    create = draw(st.sampled_from(["file", "dir", "generated"]))
    if create != "generated":
        spec = body.get("create") if isinstance(body.get("create"), dict) else {}
        spec = {**spec, "kind": create}
        if create == "dir":
            spec.pop("data", None)
        body["create"] = spec


def _open_path(draw: Callable[[Any], Any], worlds: Worlds, world: World) -> str | None:
    choice = draw(st.sampled_from(["new", "existing", "root", "alias", "no_parent",
                                   "other_cell", "dotdot", "generated"]))
    return {
        "generated": None,
        "new": f"{SCRATCH}/o{next(worlds.counter)}",
        "existing": world.path,
        "root": "/ls/demo",
        "alias": "/ls/local",
        "no_parent": f"{SCRATCH}/missing-{world.session[:8]}/child",
        "other_cell": "/ls/elsewhere/x",
        "dotdot": f"{SCRATCH}/../x",
    }[choice]


def shape(case: Case, draw: Callable[[Any], Any], worlds: Worlds, token: str) -> Shaped:
    """Put real ids (and the admin token) into a share of the generated cases.

    Parts that schemathesis generated to be invalid (negative mode) stay as generated, so a
    request meant to be refused is not turned into a valid one.
    """
    name = case.operation.definition.raw.get("operationId", "")
    meta = case.meta
    fixed_path = meta is not None and meta.is_negative_at(ParameterLocation.PATH)
    fixed_body = meta is not None and meta.is_negative_at(ParameterLocation.BODY)
    fixed_query = meta is not None and meta.is_negative_at(ParameterLocation.QUERY)
    body = case.body if isinstance(case.body, dict) and not fixed_body else None
    params = case.path_parameters or {}
    shaped = Shaped()
    if name in ADMIN:
        shaped.token = draw(st.sampled_from(["valid", "none", "wrong"]))
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        if shaped.token == "wrong":
            headers["Authorization"] = "Bearer " + "0" * 32
        elif shaped.token == "valid":
            shaped.headers = {"Authorization": f"Bearer {token}"}
        case.headers = headers
        if fixed_path:  # an id that is no member id at all (and so never a voter's)
            return shaped
        voters = worlds.voters()
        # What is drawn does not depend on the cell's state (hypothesis replays draws).
        target = draw(st.sampled_from(["voter", "learner", "generated"]))
        pick = draw(st.integers(min_value=0, max_value=1 << 16))
        learners = sorted(worlds.learners)
        if name == "promote_member":
            # a voter (promotion is a no-op) or a learner of this run: it has an address
            # nobody listens on, so it never catches up and must not be promoted
            if target == "voter":
                params["id"] = voters[pick % len(voters)]
            elif target == "learner" and learners:
                params["id"] = learners[pick % len(learners)]
        if name == "remove_member":
            if target == "learner" and learners:
                params["id"] = learners[pick % len(learners)]
            elif params.get("id") in voters:
                params["id"] = "not-a-member"  # never remove a voter of the cell under test
        if name == "transfer_leader" and body is not None and target == "voter":
            body["to"] = voters[pick % len(voters)]
        return shaped
    if "session" not in params:
        if name == "check_sequencer" and body is not None:
            choice = draw(st.sampled_from(["current", "stale", "generated"]))
            if choice != "generated":
                world = worlds.build("holding", "file")
                shaped.world = world
                body["sequencer"] = world.sequencer
                if choice == "stale":
                    _ok(*http_json("DELETE", f"{world.url}/v1/sessions/{world.session}"
                                             f"/handles/{world.handle}/lock"), 204)
        return shaped
    if fixed_path:
        return shaped
    variants = HANDLE_WORLDS if "handle" in params else SESSION_WORLDS
    variant = draw(st.sampled_from(variants))
    if variant == "generated":
        return shaped
    world = worlds.build(variant, draw(st.sampled_from(["file", "dir"])))
    shaped.world = world
    params["session"] = world.session
    if "handle" in params:
        params["handle"] = world.handle
    case.path_parameters = params
    _cap_wait(body)
    if name == "release" and not fixed_query:
        # no generation, the one the handle holds, or the generated one (most likely stale)
        generation = draw(st.sampled_from(["none", "held", "generated"]))
        query = dict(case.query or {})
        if generation == "none":
            query.pop("generation", None)
        elif generation == "held" and world.lock_generation is not None:
            query["generation"] = world.lock_generation
        case.query = query
    if name == "open" and body is not None:
        _open_body(body, draw, worlds, world)
    if name == "set_sequencer" and body is not None and draw(st.booleans()):
        holder = worlds.build("holding", "file")
        world.sessions.extend(holder.sessions)
        body["sequencer"] = holder.sequencer
    return shaped


# --------------------------------------------------------------------------- the run


@dataclass
class Tally:
    """Cases sent per operation, and the failures found."""

    cases: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def run_operation(operation: Any, mode: GenerationMode, cell: LocalCell, worlds: Worlds,
                  http: requests.Session, tally: Tally) -> None:
    """Generate and check ``EXAMPLES`` cases of one operation in one generation mode."""
    label = f"{operation.label} [{mode.value}]"
    checks = NEGATIVE_CHECKS if mode is GenerationMode.NEGATIVE else CHECKS
    name = operation.definition.raw.get("operationId", "")

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=SEED is None, database=None,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def check(case: Case, data: st.DataObject) -> None:
        tally.cases[label] = tally.cases.get(label, 0) + 1
        base_url = data.draw(st.sampled_from(cell.endpoints), label="member")
        shaped = shape(case, data.draw, worlds, cell.admin_token)
        # promoting a learner of this run (never caught up) must be refused
        unpromotable = (name == "promote_member" and shaped.token == "valid"
                        and case.path_parameters.get("id") in worlds.learners)
        try:
            response = case.call(base_url=base_url, session=http, headers=shaped.headers,
                                 timeout=30)
            seen = tally.statuses.setdefault(label, {})
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            case.validate_response(response, checks=checks, headers=shaped.headers,
                                   transport_kwargs={"base_url": base_url, "session": http,
                                                     "timeout": 30})
            if name in ADMIN:
                # Admin routes refuse every call without the cell's admin token.
                if shaped.token != "valid":
                    assert response.status_code == 401, (shaped.token, response.status_code,
                                                         response.text)
                else:
                    assert response.status_code != 401, response.text
                if unpromotable:
                    assert response.status_code == 409, response.text
                if shaped.token == "valid" and response.status_code < 300:
                    if name == "add_member" and isinstance(case.body, dict):
                        worlds.learners.add(str(case.body["id"]))
                    if name == "remove_member":
                        worlds.learners.discard(str(case.path_parameters["id"]))
                    if name == "transfer_leader":
                        worlds.refresh_leader()
        finally:
            if shaped.world is not None:
                worlds.dispose(shaped.world)

    if SEED is not None:
        check = seed(int(SEED))(check)
    try:
        check()
    except (Exception, FailureGroup) as exc:  # collect all, the test fails with every one
        tally.failures.append(f"{label}: {type(exc).__name__}: {exc}")


def _negatable(operation: Any) -> bool:
    """Whether negative mode can make invalid input: a body, a query or header parameter, or
    a member id (any text is a valid session or handle id)."""
    raw = operation.definition.raw
    return "requestBody" in raw or any(p.get("in") != "path" or p.get("name") == "id"
                                       for p in raw.get("parameters", []))


def test_every_operation_conforms_to_the_served_openapi_document(cell: LocalCell) -> None:
    started = time.monotonic()
    leader = cell.leader().url
    schema = schemathesis.openapi.from_url(f"{leader}/v1/openapi.json", config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]
    documented = {(m.upper(), p) for p, ops in
                  http_json("GET", f"{leader}/v1/openapi.json")[1]["paths"].items()
                  for m in ops}
    # schemathesis leaves out the operation that serves the document itself (loaded above)
    assert {(op.method.upper(), op.path) for op in operations} == documented - {
        ("GET", "/v1/openapi.json")}
    worlds = Worlds(cell)
    tally = Tally()
    with requests.Session() as http:
        for operation in operations:
            modes = [GenerationMode.POSITIVE]
            if _negatable(operation):
                modes.append(GenerationMode.NEGATIVE)
            for mode in modes:
                run_operation(operation, mode, cell, worlds, http, tally)
    total = sum(tally.cases.values())
    print(f"\nschemathesis: {len(operations)} operations, {total} cases, "
          f"{time.monotonic() - started:.1f}s")
    for label, count in sorted(tally.cases.items()):
        statuses = " ".join(f"{k}x{v}" for k, v in sorted(tally.statuses.get(label, {}).items()))
        print(f"  {count:4d}  {label}  {statuses}")
    assert not tally.failures, "\n\n".join(tally.failures)
    # every operation ran, and a share of the cases reached its handler's success path (with
    # a handful of cases per operation, chance may miss it)
    for operation in operations if EXAMPLES >= 20 else ():
        answered = tally.statuses.get(f"{operation.label} [positive]", {})
        assert any(200 <= status < 300 for status in answered), (operation.label, answered)
    assert_cell_serves(cell, worlds)


def assert_cell_serves(cell: LocalCell, worlds: Worlds) -> None:
    """After the run: learners the run added are removed, every member is ready, and a
    write and a read succeed."""
    view = cell.wait_ready(60)
    url = cell.leader().url
    auth = {"Authorization": f"Bearer {cell.admin_token}"}
    for member in view["members"]:
        if member["role"] == "learner":
            status, body = http_json("DELETE", f"{url}/v1/cluster/members/{quote(member['id'])}",
                                     headers=auth, timeout=30)
            assert status == 200, body
    view = cell.wait_ready(60)
    assert all(m["role"] == "voter" for m in view["members"]), view
    for member in cell.members:
        assert member.process is not None and member.process.poll() is None
        assert http_json("GET", f"{member.url}/readyz", timeout=10)[0] == 200
    worlds.url = url
    session = worlds.session()
    handle = worlds.open(session, f"{SCRATCH}/after", "file")
    data = base64.b64encode(b"still serving").decode()
    _ok(*http_json("PUT", f"{url}/v1/sessions/{session}/handles/{handle}", {"data": data}), 200)
    body = _ok(*http_json("GET", f"{url}/v1/sessions/{session}/handles/{handle}"), 200)
    assert base64.b64decode(body["data"]) == b"still serving"
    worlds.close_session(session)
