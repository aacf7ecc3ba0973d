"""HTTP API v1 on aiohttp: parses and validates calls, forwards to the leader, maps errors."""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from secrets import token_hex
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from multidict import CIMultiDict, MultiDict

from lockcell.api.openapi import (
    CLIENT_URL_PATTERN,
    MEMBER_ID_PATTERN,
    PEER_URL_PATTERN,
    ROUTES,
    Route,
    openapi_document,
)
from lockcell.api.statuspage import gather_status_view, render_status_page
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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FORWARDED_HEADER = "X-Lockcell-Forwarded"
LEADER_HEADER = "X-Lockcell-Leader"
REQUEST_ID_HEADER = "X-Request-Id"
MAX_BODY_BYTES = 1 << 20
MAX_WAIT_MS = 300_000


_HOT_PATHS = (
    "/v1/sessions/{session}/handles/{handle}/lock",
    "/v1/sessions/{session}/handles/{handle}",
    "/v1/sessions/{session}/keepalive",
    "/v1/sessions/{session}/handles",
)
"""Paths of the calls a busy cell answers most, matched first."""


class BadRequest(Exception):
    """Input that fails validation: answered 400 invalid_argument."""


def json_reply(value: Any, status: int = 200) -> web.Response:
    """A JSON answer (orjson: several times faster than the json module on these bodies)."""
    return web.Response(body=orjson.dumps(value), status=status,
                        content_type="application/json", charset="utf-8")


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    """The documented error body."""
    body: dict[str, Any] = {"code": code, "message": message}
    body.update(extra)
    return json_reply({"error": body}, status=status)


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
    """The client-facing aiohttp application of one member."""

    def __init__(self, member: Member) -> None:
        self.member = member
        self.app = web.Application(client_max_size=MAX_BODY_BYTES,
                                   middlewares=[self._middleware])
        self._add_routes()

    @property
    def service(self) -> CellService:
        """The cell service."""
        return self.member.service

    # ------------------------------------------------------------------ plumbing

    def _add_routes(self) -> None:
        handlers: dict[str, Handler] = {
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
        self._handlers = handlers
        self._route_names: dict[Handler, str] = {}
        # One resource per path, hottest first: aiohttp tries a prefix's resources in
        # order, so the lock and file calls should not wait behind the rare ones.
        paths = sorted({r.path: i for i, r in reversed(list(enumerate(ROUTES)))}.items(),
                       key=lambda item: (_HOT_PATHS.index(item[0])
                                         if item[0] in _HOT_PATHS else len(_HOT_PATHS),
                                         item[1]))
        for path, _ in paths:
            resource = self.app.router.add_resource(path)
            for route in (r for r in ROUTES if r.path == path):
                handler = handlers[route.name]
                resource.add_route(route.method, handler)
                self._route_names[handler] = route.name

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        route = self._route_names.get(request.match_info.handler, "unmatched")
        return await self._dispatch(route, handler, request)

    async def _dispatch(self, route: str, handler: Any, call: Any) -> web.StreamResponse:
        """Run a handler, mapping documented errors to their answers (HTTP or forwarded)."""
        started = time.perf_counter()
        try:
            response: web.StreamResponse = await handler(call)
        except web.HTTPException as exc:
            if exc.status == 413:
                response = error_response(413, "too_large", "request body too large")
            elif exc.status == 404:
                response = error_response(404, "not_found", "no such route")
            elif exc.status == 405:
                response = error_response(400, "invalid_argument",
                                          f"{call.method} is not allowed on {call.path}")
            else:
                raise
        except BadRequest as exc:
            response = error_response(400, "invalid_argument", str(exc))
        except Unauthorized:
            response = error_response(401, "unauthorized", "admin token required")
        except (CallFailed, CellError) as exc:
            failure = exc.failure
            extra = {}
            if failure.lock_delay_until_ms is not None:
                extra["lock_delay_until_ms"] = failure.lock_delay_until_ms
            response = error_response(failure.http_status, failure.code.value, failure.message,
                                      **extra)
        except Unavailable as exc:
            response = error_response(503, "unavailable", str(exc))
            response.headers["Retry-After"] = "1"
        leader_url = self.member.leader_url()
        if leader_url and LEADER_HEADER not in response.headers:
            response.headers[LEADER_HEADER] = leader_url
        self.member.metrics.observe_http(route, response.status, time.perf_counter() - started)
        return response

    async def _leader_only(self, request: web.Request) -> web.StreamResponse | None:
        """Forward to the leader unless this member serves; None means: handle here."""
        if self.service.serving:
            return None
        if request.headers.get(FORWARDED_HEADER):
            raise Unavailable("forwarded to a member that does not lead")
        leader = self.member.driver.leader_id
        if leader is None or leader == self.member.id:
            raise Unavailable("no leader yet")
        body = await request.read()
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
        response = web.Response(status=reply.status, body=reply.body)
        for key, value in reply.headers.items():
            response.headers[key] = value
        return response

    async def handle_forwarded(self, request: ForwardedRequest) -> ForwardedReply:
        """Serve a call a follower forwarded over the peer link (same handlers, no HTTP)."""
        call = ForwardedCall.of(request)
        resolved = resolve_route(request.method, request.path)
        response: web.StreamResponse
        if resolved is None:
            response = error_response(404, "not_found", "no such route")
        else:
            route, params = resolved
            call.match_info = params
            response = await self._dispatch(route.name, self._handlers[route.name], call)
        assert isinstance(response, web.Response)
        body = response.body if isinstance(response.body, bytes) else b""
        return ForwardedReply(response.status,
                              {k: v for k, v in response.headers.items()
                               if k in ("Content-Type", LEADER_HEADER, "Retry-After")},
                              body)

    @staticmethod
    def _request_id(request: web.Request) -> str | None:
        value = request.headers.get(REQUEST_ID_HEADER)
        if value is not None and not 0 < len(value) <= 256:
            raise BadRequest("X-Request-Id must be 1-256 characters")
        return value

    def _with_waiters(self, stat: Any, handle: str | None = None,
                      path: str | None = None) -> Any:
        """Fill in ``lock.waiters`` (leader memory) for the node of ``handle`` or ``path``."""
        if handle is not None:
            info = self.service.state.describe_handle(handle)
            path = info.path if info is not None else None
        if path is not None and isinstance(stat, dict) and isinstance(stat.get("lock"), dict):
            stat["lock"]["waiters"] = self.service.waiters_on(path)
        return stat

    def _check_admin(self, request: web.Request) -> None:
        token = self.member.config.admin_token
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if (not token or scheme.lower() != "bearer"
                or not hmac.compare_digest(given.strip().encode(), token.encode())):
            raise Unauthorized()

    # ------------------------------------------------------------------ sessions

    async def create_session(self, request: web.Request) -> web.StreamResponse:
        """CreateSession."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(await request.read(), {"lease_ms": (int,)})
        lease = _int_in(doc.get("lease_ms"), "lease_ms", 0, 2**63)  # clamped by the cell
        answer = await self.service.create_session(lease, self._request_id(request))
        return json_reply(answer, status=201)

    async def keepalive(self, request: web.Request) -> web.StreamResponse:
        """KeepAlive (long poll)."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(await request.read(), {"wait_ms": (int,), "ack": (int,)})
        wait_ms = _capped(_int_in(doc.get("wait_ms"), "wait_ms", 0, 2**63))
        ack = _int_in(doc.get("ack"), "ack", 0, 2**63)
        answer = await self.service.keepalive(request.match_info["session"], wait_ms, ack)
        return json_reply(answer)

    async def close_session(self, request: web.Request) -> web.StreamResponse:
        """CloseSession."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        await self.service.close_session(request.match_info["session"],
                                         self._request_id(request))
        return web.Response(status=204)

    # ------------------------------------------------------------------ handles

    async def open(self, request: web.Request) -> web.StreamResponse:
        """Open (and maybe create) a node."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(await request.read(),
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

    async def close(self, request: web.Request) -> web.StreamResponse:
        """Close a handle."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        await self.service.close(request.match_info["session"], request.match_info["handle"],
                                 self._request_id(request))
        return web.Response(status=204)

    async def poison(self, request: web.Request) -> web.StreamResponse:
        """Poison a handle."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        await self.service.poison(request.match_info["session"], request.match_info["handle"],
                                  self._request_id(request))
        return web.Response(status=204)

    async def get_contents(self, request: web.Request) -> web.StreamResponse:
        """GetContentsAndStat."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        session, handle = request.match_info["session"], request.match_info["handle"]
        value = await self.service.read(lambda s: s.get_contents_and_stat(session, handle))
        value["stat"] = self._with_waiters(value.get("stat"), handle=handle)
        return json_reply(value)

    async def get_stat(self, request: web.Request) -> web.StreamResponse:
        """GetStat."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        session, handle = request.match_info["session"], request.match_info["handle"]
        value = await self.service.read(lambda s: s.get_stat(session, handle))
        value["stat"] = self._with_waiters(value.get("stat"), handle=handle)
        return json_reply(value)

    async def read_dir(self, request: web.Request) -> web.StreamResponse:
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

    async def set_contents(self, request: web.Request) -> web.StreamResponse:
        """SetContents (optionally compare-and-set on the content generation)."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(await request.read(),
                         {"data": (str,), "if_generation": (int, type(None))},
                         required=("data",))
        value = await self.service.write(SetContents(
            now_ms=0, session=request.match_info["session"],
            handle=request.match_info["handle"], data=_b64(doc["data"], "data"),
            if_generation=_int_in(doc.get("if_generation"), "if_generation", 0, 2**63),
            request_id=self._request_id(request)))
        value["stat"] = self._with_waiters(value.get("stat"), handle=request.match_info["handle"])
        return json_reply(value)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        """Delete the handle's node."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        await self.service.write(Delete(now_ms=0, session=request.match_info["session"],
                                        handle=request.match_info["handle"],
                                        request_id=self._request_id(request)))
        return web.Response(status=204)

    # ------------------------------------------------------------------ locks

    async def acquire(self, request: web.Request) -> web.StreamResponse:
        """Acquire / TryAcquire."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(await request.read(), {"mode": (str,), "wait_ms": (int,)})
        mode = parse_lock_mode(doc.get("mode", "exclusive"))
        wait_ms = _capped(_int_in(doc.get("wait_ms"), "wait_ms", 0, 2**63)) or 0
        value = await self.service.acquire(request.match_info["session"],
                                           request.match_info["handle"], mode, wait_ms,
                                           self._request_id(request))
        return json_reply({"sequencer": value["sequencer"],
                                  "lock_generation": value["lock_generation"]})

    async def release(self, request: web.Request) -> web.StreamResponse:
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
        return web.Response(status=204)

    async def get_sequencer(self, request: web.Request) -> web.StreamResponse:
        """GetSequencer."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        session, handle = request.match_info["session"], request.match_info["handle"]
        value = await self.service.read(lambda s: s.get_sequencer(session, handle))
        return json_reply(value)

    async def set_sequencer(self, request: web.Request) -> web.StreamResponse:
        """SetSequencer."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(await request.read(), {"sequencer": (str, type(None))})
        value = await self.service.write(SetSequencerCommand(
            now_ms=0, session=request.match_info["session"],
            handle=request.match_info["handle"], sequencer=doc.get("sequencer"),
            request_id=self._request_id(request)))
        return json_reply(value)

    async def check_sequencer(self, request: web.Request) -> web.StreamResponse:
        """CheckSequencer."""
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(await request.read(), {"sequencer": (str,)}, required=("sequencer",))
        sequencer = str(doc["sequencer"])
        value = await self.service.read(lambda s: s.check_sequencer(sequencer))
        return json_reply(value)

    # ------------------------------------------------------------------ cluster

    async def cluster(self, request: web.Request) -> web.StreamResponse:
        """This member's view of the cell."""
        return json_reply(self.member.cluster_view())

    async def add_member(self, request: web.Request) -> web.StreamResponse:
        """Add a learner (admin)."""
        self._check_admin(request)
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(await request.read(),
                         {"id": (str,), "url": (str,), "peer_url": (str,)},
                         required=("id", "url", "peer_url"))
        for key, pattern in (("id", MEMBER_ID_PATTERN), ("url", CLIENT_URL_PATTERN),
                             ("peer_url", PEER_URL_PATTERN)):
            if re.fullmatch(pattern, doc[key]) is None:  # ids end up in paths, URLs are dialled
                raise BadRequest(f"{key} must match {pattern}")
        view = await self.member.add_learner(doc["id"], doc["url"], doc["peer_url"])
        return json_reply(view, status=201)

    async def promote_member(self, request: web.Request) -> web.StreamResponse:
        """Promote a learner to voter through joint consensus (admin)."""
        self._check_admin(request)
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        return json_reply(await self.member.promote(request.match_info["id"]))

    async def remove_member(self, request: web.Request) -> web.StreamResponse:
        """Remove a member (admin)."""
        self._check_admin(request)
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        return json_reply(await self.member.remove(request.match_info["id"]))

    async def transfer_leader(self, request: web.Request) -> web.StreamResponse:
        """Move leadership (admin)."""
        self._check_admin(request)
        if (fwd := await self._leader_only(request)) is not None:
            return fwd
        doc = _json_body(await request.read(), {"to": (str, type(None))})
        return json_reply(await self.member.transfer(doc.get("to")))

    # ------------------------------------------------------------------ ops

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        """Prometheus metrics."""
        body, content_type = self.member.metrics.render(self.member)
        response = web.Response(body=body)
        response.headers["Content-Type"] = content_type
        return response

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """Liveness: 200 while the process serves."""
        return json_reply({"status": "ok", "id": self.member.id})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        """Readiness: in the configuration, a leader known, caught up."""
        ready, reason = await self.member.confirm_ready()
        return json_reply({"ready": ready, "reason": reason, "id": self.member.id},
                                 status=200 if ready else 503)

    async def openapi(self, request: web.Request) -> web.StreamResponse:
        """The OpenAPI document of this API."""
        return json_reply(openapi_document())

    async def status_page(self, request: web.Request) -> web.StreamResponse:
        """The status page: this member's view of the cell (api/statuspage.py)."""
        view = await gather_status_view(self.member)
        response = web.Response(text=render_status_page(view), content_type="text/html")
        response.headers["Cache-Control"] = "no-store"
        return response


class Unauthorized(Exception):
    """A call without the cell's admin token."""


@dataclass
class ForwardedCall:
    """A forwarded call in the shape handlers read from an aiohttp request."""

    method: str
    path: str
    headers: CIMultiDict[str]
    query: MultiDict[str]
    body: bytes
    match_info: dict[str, str]

    @staticmethod
    def of(request: ForwardedRequest) -> ForwardedCall:
        """Wrap a forwarded request."""
        return ForwardedCall(request.method, request.path, CIMultiDict(request.headers),
                             MultiDict(parse_qsl(request.query, keep_blank_values=True)),
                             request.body, {})

    async def read(self) -> bytes:
        """The body."""
        return self.body


def _route_pattern(template: str) -> re.Pattern[str]:
    escaped = re.escape(template)
    return re.compile("^" + re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", escaped) + "$")


_COMPILED = [(route, _route_pattern(route.path)) for route in ROUTES]


def resolve_route(method: str, path: str) -> tuple[Route, dict[str, str]] | None:
    """Match a method and path against the route table."""
    for route, pattern in _COMPILED:
        if route.method == method:
            match = pattern.match(path)
            if match is not None:
                return route, match.groupdict()
    return None


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

