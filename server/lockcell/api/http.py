"""HTTP API v1: routes calls, validates them, forwards to the leader, maps errors."""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from secrets import token_hex
from typing import Any

import orjson
from multidict import CIMultiDict

from lockcell.api.openapi import (
    CLIENT_URL_PATTERN,
    MEMBER_ID_PATTERN,
    PEER_URL_PATTERN,
    ROUTES,
    Route,
    openapi_document,
)
from lockcell.api.statuspage import gather_status_view, render_status_page
from lockcell.api.wire import Answer, ApiCall
from lockcell.node.cell import CallFailed, CellService
from lockcell.node.driver import Unavailable
from lockcell.node.member import Member
from lockcell.statemachine.commands import CreateSpec, Delete, Open, SetContents
from lockcell.statemachine.commands import SetSequencer as SetSequencerCommand
from lockcell.statemachine.errors import CellError
from lockcell.statemachine.values import (
    EventType,
    parse_event_type,
    parse_lock_mode,
    parse_node_kind,
)
from lockcell.transport.peer import ForwardedReply, ForwardedRequest, PeerUnavailableError

Handler = Callable[[ApiCall], Awaitable[Answer]]

FORWARDED_HEADER = "X-Lockcell-Forwarded"
LEADER_HEADER = "X-Lockcell-Leader"
REQUEST_ID_HEADER = "X-Request-Id"
MAX_WAIT_MS = 300_000
JSON = "application/json; charset=utf-8"


class BadRequest(Exception):
    """Input that fails validation: answered 400 invalid_argument."""


def json_reply(value: Any, status: int = 200) -> Answer:
    """A JSON answer (orjson: several times faster than the json module on these bodies)."""
    return Answer(status, orjson.dumps(value), JSON)


def error_response(status: int, code: str, message: str, **extra: Any) -> Answer:
    """The documented error body."""
    body: dict[str, Any] = {"code": code, "message": message}
    body.update(extra)
    return json_reply({"error": body}, status=status)


class RouteTable:
    """Matches a method and path to a route by comparing literal path segments (routes of
    the same method and length are tried in table order)."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes = tuple(routes)
        self._shapes: dict[tuple[str, int],
                           list[tuple[Route, tuple[tuple[int, str], ...],
                                      tuple[tuple[int, str], ...]]]] = {}
        for route in self.routes:
            parts = route.path.split("/")
            literals = tuple((i, p) for i, p in enumerate(parts) if not p.startswith("{"))
            params = tuple((i, p[1:-1]) for i, p in enumerate(parts) if p.startswith("{"))
            self._shapes.setdefault((route.method, len(parts)), []).append(
                (route, literals, params))
        self._methods = frozenset(route.method for route in self.routes)

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """The route serving ``method path`` and its parameters, or None."""
        parts = path.split("/")
        for route, literals, params in self._shapes.get((method, len(parts)), ()):
            for i, literal in literals:
                if parts[i] != literal:
                    break
            else:
                values = {name: parts[i] for i, name in params}
                if all(values.values()):
                    return route, values
        return None

    def serves_other_method(self, method: str, path: str) -> bool:
        """Whether a route serves ``path`` with a method other than ``method``."""
        return any(m != method and self.resolve(m, path) is not None for m in self._methods)


ROUTE_TABLE = RouteTable(ROUTES)


def _json_body(raw: bytes, allowed: dict[str, tuple[type, ...]],
               required: tuple[str, ...] = ()) -> dict[str, Any]:
    if not raw:
        doc: Any = {}
    else:
        try:
            doc = orjson.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object")
    for key, value in doc.items():
        types = allowed.get(key)
        if types is None:
            raise BadRequest(f"unknown field {key!r}")
        if value is None and type(None) in types:
            continue
        if isinstance(value, bool) and bool not in types:
            raise BadRequest(f"field {key!r} has the wrong type")
        if not isinstance(value, types):
            raise BadRequest(f"field {key!r} has the wrong type")
    for key in required:
        if doc.get(key) is None:
            raise BadRequest(f"field {key!r} is required")
    return doc


def _b64(value: Any, field: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{field} is not valid base64") from exc


def _int_in(value: Any, field: str, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise BadRequest(f"{field} must be an integer in {lo}..{hi}")
    return value


class HttpApi:
    """The client-facing calls of one member: one handler per route of :data:`ROUTES`."""

    def __init__(self, member: Member) -> None:
        self.member = member
        self._handlers: dict[str, Handler] = {
            "create_session": self.create_session,
            "keepalive": self.keepalive,
            "close_session": self.close_session,
            "open": self.open,
            "close": self.close,
            "poison": self.poison,
            "get_contents": self.get_contents,
            "get_stat": self.get_stat,
            "read_dir": self.read_dir,
            "set_contents": self.set_contents,
            "delete": self.delete,
            "acquire": self.acquire,
            "release": self.release,
            "get_sequencer": self.get_sequencer,
            "set_sequencer": self.set_sequencer,
            "check_sequencer": self.check_sequencer,
            "cluster": self.cluster,
            "add_member": self.add_member,
            "promote_member": self.promote_member,
            "remove_member": self.remove_member,
            "transfer_leader": self.transfer_leader,
            "metrics": self.metrics,
            "healthz": self.healthz,
            "readyz": self.readyz,
            "openapi": self.openapi,
            "status_page": self.status_page,
        }

    @property
    def service(self) -> CellService:
        """The cell service."""
        return self.member.service

    def served(self) -> set[tuple[str, str]]:
        """(method, path template) of every route with a handler."""
        return {(r.method, r.path) for r in ROUTE_TABLE.routes if r.name in self._handlers}

    # ------------------------------------------------------------------ plumbing

    async def answer(self, call: ApiCall) -> Answer:
        """Answer one call, from the client port or forwarded by a follower."""
        resolved = ROUTE_TABLE.resolve(call.method, call.path)
        if resolved is None:
            return await self._dispatch("unmatched", self._unmatched, call)
        route, call.match_info = resolved
        return await self._dispatch(route.name, self._handlers[route.name], call)

    async def _unmatched(self, call: ApiCall) -> Answer:
        if ROUTE_TABLE.serves_other_method(call.method, call.path):
            raise BadRequest(f"{call.method} is not allowed on {call.path}")
        return error_response(404, "not_found", "no such route")

    async def _dispatch(self, route: str, handler: Handler, call: ApiCall) -> Answer:
        """Run a handler, mapping documented errors to their answers."""
        started = time.perf_counter()
        try:
            answer = await handler(call)
        except BadRequest as exc:
            answer = error_response(400, "invalid_argument", str(exc))
        except Unauthorized:
            answer = error_response(401, "unauthorized", "admin token required")
        except (CallFailed, CellError) as exc:
            failure = exc.failure
            extra = {}
            if failure.lock_delay_until_ms is not None:
                extra["lock_delay_until_ms"] = failure.lock_delay_until_ms
            answer = error_response(failure.http_status, failure.code.value, failure.message,
                                    **extra)
        except Unavailable as exc:
            answer = error_response(503, "unavailable", str(exc))
            answer = answer.with_header("Retry-After", "1")
        leader_url = self.member.leader_url()
        if leader_url and answer.header(LEADER_HEADER) is None:
            answer = answer.with_header(LEADER_HEADER, leader_url)
        self.member.metrics.observe_http(route, answer.status, time.perf_counter() - started)
        return answer

    async def _leader_only(self, request: ApiCall) -> Answer | None:
        """Forward to the leader unless this member serves; None means: handle here."""
        if self.service.serving:
            return None
        if request.headers.get(FORWARDED_HEADER):
            raise Unavailable("forwarded to a member that does not lead")
        leader = self.member.driver.leader_id
        if leader is None or leader == self.member.id:
            raise Unavailable("no leader yet")
        body = request.body
        passed = {REQUEST_ID_HEADER.lower(), "content-type", "authorization"}
        headers = {k: v for k, v in request.headers.items() if k.lower() in passed}
        headers[FORWARDED_HEADER] = self.member.id
        timeout = 30.0
        with_wait = _wait_hint(body)
        if with_wait is not None:
            timeout = with_wait / 1000.0 + 10.0
        try:
            reply = await self.member.transport.forward(
                leader,
                ForwardedRequest(request.method, request.path, request.query_string, headers,
                                 body),
                timeout,
            )
        except (TimeoutError, PeerUnavailableError) as exc:
            raise Unavailable(f"leader unreachable: {exc}") from exc
        return Answer(reply.status, reply.body, None, tuple(reply.headers.items()))

    async def handle_forwarded(self, request: ForwardedRequest) -> ForwardedReply:
        """Serve a call a follower forwarded over the peer link (same handlers, no HTTP)."""
        answer = await self.answer(ApiCall(request.method, request.path, request.query,
                                           CIMultiDict(request.headers), request.body))
        headers = {k: v for k, v in answer.headers
                   if k in ("Content-Type", LEADER_HEADER, "Retry-After")}
        if answer.content_type is not None:
            headers["Content-Type"] = answer.content_type
        return ForwardedReply(answer.status, headers, answer.body)

    @staticmethod
    def _request_id(request: ApiCall) -> str | None:
        value = request.headers.get(REQUEST_ID_HEADER)
        if value is not None and not 0 < len(value) <= 256:
            raise BadRequest("X-Request-Id must be 1-256 characters")
        return value

    def _with_waiters(self, stat: Any, handle: str | None = None,
                      path: str | None = None) -> Any:
        """Fill in ``lock.waiters`` (leader memory) for the node of ``handle`` or ``path``."""
        if not self.service.has_waiters():
            return stat  # the state's stat already says 0
        if handle is not None:
            info = self.service.state.describe_handle(handle)
            path = info.path if info is not None else None
        if path is not None and isinstance(stat, dict) and isinstance(stat.get("lock"), dict):
            stat["lock"]["waiters"] = self.service.waiters_on(path)
        return stat

    def _check_admin(self, request: ApiCall) -> None:
        token = self.member.config.admin_token
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if (not token or scheme.lower() != "bearer"
                or not hmac.compare_digest(given.strip().encode(), token.encode())):
            raise Unauthorized()

    # ------------------------------------------------------------------ sessions

    async def create_session(self, request: ApiCall) -> Answer:
        """CreateSession."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(request.body, {"lease_ms": (int,)})
        lease = _int_in(doc.get("lease_ms"), "lease_ms", 0, 2**63)  # clamped by the cell
        answer = await self.service.create_session(lease, self._request_id(request))
        return json_reply(answer, status=201)

    async def keepalive(self, request: ApiCall) -> Answer:
        """KeepAlive (long poll)."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(request.body, {"wait_ms": (int,), "ack": (int,)})
        wait_ms = _capped(_int_in(doc.get("wait_ms"), "wait_ms", 0, 2**63))
        ack = _int_in(doc.get("ack"), "ack", 0, 2**63)
        answer = await self.service.keepalive(request.match_info["session"], wait_ms, ack)
        return json_reply(answer)

    async def close_session(self, request: ApiCall) -> Answer:
        """CloseSession."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        await self.service.close_session(request.match_info["session"],
                                         self._request_id(request))
        return Answer(204)

    # ------------------------------------------------------------------ handles

    async def open(self, request: ApiCall) -> Answer:
        """Open (and maybe create) a node."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(request.body,
                         {"path": (str,), "create": (dict, type(None)), "events": (list,),
                          "lock_delay_ms": (int,)}, required=("path",))
        create = None
        if doc.get("create") is not None:
            spec = _json_body(orjson.dumps(doc["create"]),
                              {"kind": (str,), "ephemeral": (bool,), "data": (str, type(None))},
                              required=("kind",))
            create = CreateSpec(kind=parse_node_kind(spec["kind"]),
                                ephemeral=bool(spec.get("ephemeral", False)),
                                data=_b64(spec.get("data"), "create.data"))
        events: list[EventType] = []
        for name in doc.get("events", []):
            event = parse_event_type(name)
            if event is EventType.MASTER_FAILOVER:
                raise BadRequest("master_failover is session-wide, not chosen per handle")
            events.append(event)
        lock_delay = _int_in(doc.get("lock_delay_ms"), "lock_delay_ms", 0, 60000)
        value = await self.service.write(Open(
            now_ms=0, session=request.match_info["session"], path=doc["path"],
            handle=token_hex(16), create=create, events=tuple(events),
            lock_delay_ms=lock_delay, request_id=self._request_id(request)))
        status = 201 if value.get("created") else 200
        value["stat"] = self._with_waiters(value.get("stat"), handle=value.get("handle"))
        return json_reply(value, status=status)

    async def close(self, request: ApiCall) -> Answer:
        """Close a handle."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        await self.service.close(request.match_info["session"], request.match_info["handle"],
                                 self._request_id(request))
        return Answer(204)

    async def poison(self, request: ApiCall) -> Answer:
        """Poison a handle."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        await self.service.poison(request.match_info["session"], request.match_info["handle"],
                                  self._request_id(request))
        return Answer(204)

    async def get_contents(self, request: ApiCall) -> Answer:
        """GetContentsAndStat."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        session, handle = request.match_info["session"], request.match_info["handle"]
        value = await self.service.read(lambda s: s.get_contents_and_stat(session, handle))
        value["stat"] = self._with_waiters(value.get("stat"), handle=handle)
        return json_reply(value)

    async def get_stat(self, request: ApiCall) -> Answer:
        """GetStat."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        session, handle = request.match_info["session"], request.match_info["handle"]
        value = await self.service.read(lambda s: s.get_stat(session, handle))
        value["stat"] = self._with_waiters(value.get("stat"), handle=handle)
        return json_reply(value)

    async def read_dir(self, request: ApiCall) -> Answer:
        """ReadDir."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        session, handle = request.match_info["session"], request.match_info["handle"]
        value = await self.service.read(lambda s: s.read_dir(session, handle))
        info = self.service.state.describe_handle(handle)
        for child in value.get("children", []):
            if info is not None:
                child_path = f"{info.path}/{child['name']}"
                child["stat"] = self._with_waiters(child.get("stat"), path=child_path)
        return json_reply(value)

    async def set_contents(self, request: ApiCall) -> Answer:
        """SetContents (optionally compare-and-set on the content generation)."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(request.body,
                         {"data": (str,), "if_generation": (int, type(None))},
                         required=("data",))
        value = await self.service.write(SetContents(
            now_ms=0, session=request.match_info["session"],
            handle=request.match_info["handle"], data=_b64(doc["data"], "data"),
            if_generation=_int_in(doc.get("if_generation"), "if_generation", 0, 2**63),
            request_id=self._request_id(request)))
        value["stat"] = self._with_waiters(value.get("stat"), handle=request.match_info["handle"])
        return json_reply(value)

    async def delete(self, request: ApiCall) -> Answer:
        """Delete the handle's node."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        await self.service.write(Delete(now_ms=0, session=request.match_info["session"],
                                        handle=request.match_info["handle"],
                                        request_id=self._request_id(request)))
        return Answer(204)

    # ------------------------------------------------------------------ locks

    async def acquire(self, request: ApiCall) -> Answer:
        """Acquire / TryAcquire."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(request.body, {"mode": (str,), "wait_ms": (int,)})
        mode = parse_lock_mode(doc.get("mode", "exclusive"))
        wait_ms = _capped(_int_in(doc.get("wait_ms"), "wait_ms", 0, 2**63)) or 0
        value = await self.service.acquire(request.match_info["session"],
                                           request.match_info["handle"], mode, wait_ms,
                                           self._request_id(request))
        return json_reply({"sequencer": value["sequencer"],
                                  "lock_generation": value["lock_generation"]})

    async def release(self, request: ApiCall) -> Answer:
        """Release (optionally only a named generation)."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        generation: int | None = None
        if "generation" in request.query:
            try:
                generation = int(request.query["generation"])
            except ValueError as exc:
                raise BadRequest("generation must be an integer") from exc
            if generation < 0:
                raise BadRequest("generation must not be negative")
        await self.service.release(request.match_info["session"], request.match_info["handle"],
                                   generation, self._request_id(request))
        return Answer(204)

    async def get_sequencer(self, request: ApiCall) -> Answer:
        """GetSequencer."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        session, handle = request.match_info["session"], request.match_info["handle"]
        value = await self.service.read(lambda s: s.get_sequencer(session, handle))
        return json_reply(value)

    async def set_sequencer(self, request: ApiCall) -> Answer:
        """SetSequencer."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(request.body, {"sequencer": (str, type(None))})
        value = await self.service.write(SetSequencerCommand(
            now_ms=0, session=request.match_info["session"],
            handle=request.match_info["handle"], sequencer=doc.get("sequencer"),
            request_id=self._request_id(request)))
        return json_reply(value)

    async def check_sequencer(self, request: ApiCall) -> Answer:
        """CheckSequencer."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(request.body, {"sequencer": (str,)}, required=("sequencer",))
        sequencer = str(doc["sequencer"])
        value = await self.service.read(lambda s: s.check_sequencer(sequencer))
        return json_reply(value)

    # ------------------------------------------------------------------ cluster

    async def cluster(self, request: ApiCall) -> Answer:
        """This member's view of the cell."""
        return json_reply(self.member.cluster_view())

    async def add_member(self, request: ApiCall) -> Answer:
        """Add a learner (admin)."""
        self._check_admin(request)
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(request.body,
                         {"id": (str,), "url": (str,), "peer_url": (str,)},
                         required=("id", "url", "peer_url"))
        for key, pattern in (("id", MEMBER_ID_PATTERN), ("url", CLIENT_URL_PATTERN),
                             ("peer_url", PEER_URL_PATTERN)):
            if re.fullmatch(pattern, doc[key]) is None:  # ids end up in paths, URLs are dialled
                raise BadRequest(f"{key} must match {pattern}")
        view = await self.member.add_learner(doc["id"], doc["url"], doc["peer_url"])
        return json_reply(view, status=201)

    async def promote_member(self, request: ApiCall) -> Answer:
        """Promote a learner to voter through joint consensus (admin)."""
        self._check_admin(request)
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        return json_reply(await self.member.promote(request.match_info["id"]))

    async def remove_member(self, request: ApiCall) -> Answer:
        """Remove a member (admin)."""
        self._check_admin(request)
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        return json_reply(await self.member.remove(request.match_info["id"]))

    async def transfer_leader(self, request: ApiCall) -> Answer:
        """Move leadership (admin)."""
        self._check_admin(request)
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(request.body, {"to": (str, type(None))})
        return json_reply(await self.member.transfer(doc.get("to")))

    # ------------------------------------------------------------------ ops

    async def metrics(self, request: ApiCall) -> Answer:
        """Prometheus metrics."""
        body, content_type = self.member.metrics.render(self.member)
        return Answer(200, body, content_type)

    async def healthz(self, request: ApiCall) -> Answer:
        """Liveness: 200 while the process serves."""
        return json_reply({"status": "ok", "id": self.member.id})

    async def readyz(self, request: ApiCall) -> Answer:
        """Readiness: in the configuration, a leader known, caught up."""
        ready, reason = await self.member.confirm_ready()
        return json_reply({"ready": ready, "reason": reason, "id": self.member.id},
                                 status=200 if ready else 503)

    async def openapi(self, request: ApiCall) -> Answer:
        """The OpenAPI document of this API."""
        return json_reply(openapi_document())

    async def status_page(self, request: ApiCall) -> Answer:
        """The status page: this member's view of the cell (api/statuspage.py)."""
        view = await gather_status_view(self.member)
        return Answer(200, render_status_page(view).encode(), "text/html; charset=utf-8",
                      (("Cache-Control", "no-store"),))


class Unauthorized(Exception):
    """A call without the cell's admin token."""


def _capped(wait_ms: int | None) -> int | None:
    """``wait_ms`` is an upper bound: longer waits are served as the longest one."""
    return None if wait_ms is None else min(wait_ms, MAX_WAIT_MS)


def _wait_hint(body: bytes) -> int | None:
    """``wait_ms`` of a long-poll body, to size the forwarding timeout."""
    if b"wait_ms" not in body:
        return None
    try:
        doc = orjson.loads(body)
    except ValueError:
        return None
    value = doc.get("wait_ms") if isinstance(doc, dict) else None
    return _capped(value) if isinstance(value, int) and value >= 0 else None

