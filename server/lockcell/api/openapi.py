"""The route table of HTTP API v1 and the OpenAPI document generated from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JSON = "application/json"
MAX_INT = 2**63
"""The largest integer the handlers accept in a body (``_int_in`` of api/http.py)."""
MEMBER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$"
"""A member id: a name hint (pod or host name) and a suffix, see storage/identity.py."""
_HOST = r"([A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])"
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
CLIENT_URL_PATTERN = rf"^https?://{_HOST}(:{_PORT})?/?$"
"""A member's client URL: ``http(s)://host[:port]``."""
PEER_URL_PATTERN = rf"^([a-z][a-z0-9+.-]*://)?{_HOST}:{_PORT}/?$"
"""A member's peer address: ``host:port``, optionally with a scheme (``tcp://``)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP route: method, path template, handler name, and documentation."""

    method: str
    path: str
    name: str
    summary: str
    ok: int = 200
    body: tuple[tuple[str, str, bool], ...] = ()
    """(field, kind of value in :data:`FIELDS`, required) of the request body."""
    admin: bool = False
    errors: tuple[int, ...] = (400, 404, 409, 410, 503)
    answer: str | None = None
    """The schema (in ``components``) of the success body; None: no body (204) or not JSON."""
    media: str = JSON
    """The media type of the success body."""
    also_ok: tuple[int, ...] = ()
    """Other success statuses with the same body (Open answers 200 for an existing node)."""
    request_id: bool = False
    """Whether the call is a write that takes ``X-Request-Id`` (applied once per id)."""


S = "/v1/sessions/{session}"
H = S + "/handles/{handle}"
WRITE = (400, 404, 409, 410, 413, 503)
"""Errors of a call with a body on a session's handle (413: body or contents too large)."""
ADMIN = (400, 401, 404, 409, 413, 503)
"""Errors of an admin call on a member (404: no such member)."""

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/sessions", "create_session", "CreateSession", 201,
          (("lease_ms", "ms", False),), errors=(400, 413, 503), answer="Session",
          request_id=True),
    Route("POST", S + "/keepalive", "keepalive", "KeepAlive (long poll)", 200,
          (("wait_ms", "ms", False), ("ack", "ms", False)), errors=WRITE,
          answer="KeepAlive"),
    Route("DELETE", S, "close_session", "CloseSession", 204, request_id=True),
    Route("POST", S + "/handles", "open", "Open", 201,
          (("path", "path", True), ("create", "create", False), ("events", "events", False),
           ("lock_delay_ms", "lock_delay_ms", False)), errors=WRITE, answer="Opened",
          also_ok=(200,), request_id=True),
    Route("DELETE", H, "close", "Close", 204, request_id=True),
    Route("POST", H + "/poison", "poison", "Poison", 204, request_id=True),
    Route("GET", H, "get_contents", "GetContentsAndStat", answer="Contents"),
    Route("GET", H + "/stat", "get_stat", "GetStat", answer="StatAnswer"),
    Route("GET", H + "/children", "read_dir", "ReadDir", answer="Children"),
    Route("PUT", H, "set_contents", "SetContents", 200,
          (("data", "base64", True), ("if_generation", "generation", False)),
          errors=WRITE, answer="StatAnswer", request_id=True),
    Route("DELETE", H + "/node", "delete", "Delete", 204, request_id=True),
    Route("POST", H + "/lock", "acquire", "Acquire / TryAcquire", 200,
          (("mode", "mode", False), ("wait_ms", "ms", False)), errors=WRITE,
          answer="Acquired", request_id=True),
    Route("DELETE", H + "/lock", "release", "Release", 204, request_id=True),
    Route("GET", H + "/sequencer", "get_sequencer", "GetSequencer", answer="Sequencer"),
    Route("PUT", H + "/sequencer", "set_sequencer", "SetSequencer", 200,
          (("sequencer", "sequencer", False),), errors=WRITE, answer="SequencerSet",
          request_id=True),
    Route("POST", "/v1/sequencers/check", "check_sequencer", "CheckSequencer", 200,
          (("sequencer", "string", True),), errors=(400, 413, 503), answer="Validity"),
    Route("GET", "/v1/cluster", "cluster", "Cluster status", errors=(), answer="Cluster"),
    Route("POST", "/v1/cluster/members", "add_member", "Add a learner", 201,
          (("id", "member_id", True), ("url", "client_url", True),
           ("peer_url", "peer_url", True)),
          admin=True, errors=(400, 401, 409, 413, 503), answer="Cluster"),
    Route("POST", "/v1/cluster/members/{id}/promote", "promote_member",
          "Promote a learner through joint consensus", admin=True, errors=ADMIN,
          answer="Cluster"),
    Route("DELETE", "/v1/cluster/members/{id}", "remove_member", "Remove a member",
          admin=True, errors=ADMIN, answer="Cluster"),
    Route("POST", "/v1/cluster/leader", "transfer_leader", "Transfer leadership", 200,
          (("to", "member_ref", False),), admin=True, errors=(400, 401, 409, 413, 503),
          answer="Cluster"),
    Route("GET", "/metrics", "metrics", "Prometheus metrics", errors=(),
          media="text/plain"),
    Route("GET", "/healthz", "healthz", "Liveness", errors=(), answer="Health"),
    Route("GET", "/readyz", "readyz", "Readiness (503 with the same body when not ready)",
          errors=(), answer="Readiness"),
    Route("GET", "/v1/openapi.json", "openapi", "This document", errors=(),
          answer="Document"),
    Route("GET", "/", "status_page", "Status page (HTML)", errors=(), media="text/html"),
)

_CODES_BY_STATUS: dict[int, tuple[str, ...]] = {
    400: ("invalid_argument",),
    401: ("unauthorized",),
    404: ("not_found",),
    409: ("conflict", "lock_busy", "lock_delay"),
    410: ("session_expired", "handle_invalid"),
    413: ("too_large",),
    503: ("unavailable",),
}
"""The error codes each status carries (DESIGN.md §4)."""


def _error_schema(codes: tuple[str, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": list(codes)},
                    "message": {"type": "string"},
                    "lock_delay_until_ms": {"type": "integer"},
                },
            }
        },
    }


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
_MS: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": MAX_INT}
_BASE64: dict[str, Any] = {"type": "string", "format": "byte"}
_EVENT_TYPES = ["contents_modified", "child_added", "child_removed", "child_modified",
                "handle_invalid", "lock_acquired", "conflicting_lock"]

FIELDS: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "ms": _MS,
    "generation": _nullable(_MS),
    "lock_delay_ms": {"type": "integer", "minimum": 0, "maximum": 60000},
    "base64": _BASE64,
    "path": {"type": "string", "pattern": "^/ls/",
             "description": "/ls/<cell>/…; /ls/local names this cell"},
    "create": _nullable({
        "type": "object",
        "additionalProperties": False,
        "required": ["kind"],
        "properties": {"kind": {"type": "string", "enum": ["file", "dir"]},
                       "ephemeral": {"type": "boolean"},
                       "data": _nullable(_BASE64)},
    }),
    "events": {"type": "array",
               "items": {"type": "string", "enum": _EVENT_TYPES}},
    "mode": {"type": "string", "enum": ["exclusive", "shared"]},
    "sequencer": _nullable({"type": "string"}),
    "member_id": {"type": "string", "pattern": MEMBER_ID_PATTERN},
    "member_ref": _nullable({"type": "string", "pattern": MEMBER_ID_PATTERN}),
    "client_url": {"type": "string", "pattern": CLIENT_URL_PATTERN},
    "peer_url": {"type": "string", "pattern": PEER_URL_PATTERN},
}
"""Schemas of request body fields, by the kind a :class:`Route` names."""


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": list(properties) if required is None else required,
            "properties": properties}


_STAT = _object({
    "kind": {"type": "string", "enum": ["file", "dir"]},
    "instance": _COUNT,
    "content_generation": _COUNT,
    "lock_generation": _COUNT,
    "acl_generation": _COUNT,
    "checksum": {"type": "string"},
    "length": _COUNT,
    "children": _COUNT,
    "ephemeral": {"type": "boolean"},
    "lock": _object({
        "mode": _nullable({"type": "string", "enum": ["exclusive", "shared"]}),
        "holders": _COUNT,
        "waiters": _COUNT,
        "lock_delay_until_ms": _COUNT,
    }),
})
_STAT_REF = {"$ref": "#/components/schemas/Stat"}
_ID_LIST = {"type": "array", "items": {"type": "string"}}

ANSWERS: dict[str, dict[str, Any]] = {
    "Stat": _STAT,
    "Session": _object({"session": {"type": "string"}, "lease_ms": _COUNT, "valid_ms": _COUNT,
                        "grace_ms": _COUNT}),
    "KeepAlive": _object({
        "lease_ms": _COUNT, "valid_ms": _COUNT,
        "events": {"type": "array", "items": _object({
            "seq": _COUNT, "type": {"type": "string", "enum": [*_EVENT_TYPES, "master_failover"]},
            "handle": {"type": "string"}, "path": {"type": "string"}})},
    }),
    "Opened": _object({"handle": {"type": "string"}, "created": {"type": "boolean"},
                       "lock_delay_ms": _COUNT, "stat": _STAT_REF}),
    "Contents": _object({"data": _BASE64, "stat": _STAT_REF}),
    "StatAnswer": _object({"stat": _STAT_REF}),
    "Children": _object({"children": {"type": "array", "items": _object(
        {"name": {"type": "string"}, "stat": _STAT_REF})}}),
    "Acquired": _object({"sequencer": {"type": "string"}, "lock_generation": _COUNT}),
    "Sequencer": _object({"sequencer": {"type": "string"}, "lock_generation": _COUNT,
                          "mode": {"type": "string", "enum": ["exclusive", "shared"]}},
                         required=["sequencer", "lock_generation"]),
    "SequencerSet": _object({"sequencer": _nullable({"type": "string"})}),
    "Validity": _object({"valid": {"type": "boolean"}}),
    "Cluster": _object({
        "leader": _nullable({"type": "string"}),
        "term": _COUNT,
        "leader_in_contact": {"type": "boolean", "description":
                              "this member leads, or heard from its leader within an "
                              "election timeout (so it can forward calls to it)"},
        "commit_index": _COUNT,
        "members": {"type": "array", "items": _object({
            "id": {"type": "string"},
            "url": _nullable({"type": "string"}),
            "peer_url": _nullable({"type": "string"}),
            "role": {"type": "string", "enum": ["voter", "learner"]},
            "match_index": _nullable(_COUNT),
        })},
        "joint": _nullable(_object({"old": _ID_LIST, "new": _ID_LIST})),
    }),
    "Health": _object({"status": {"type": "string"}, "id": {"type": "string"}}),
    "Readiness": _object({"ready": {"type": "boolean"}, "reason": {"type": "string"},
                          "id": {"type": "string"}}),
    "Document": _object({"openapi": {"type": "string"}, "paths": {"type": "object"}}),
}
"""Schemas of success bodies (DESIGN.md §4), by the name a :class:`Route` answers with."""

_LEADER_HEADER: dict[str, Any] = {
    "X-Lockcell-Leader": {
        "description": "the leader's client URL (whenever the answering member knows it)",
        "required": False,
        "schema": {"type": "string", "pattern": "^https?://"},
    }
}
_RETRY_HEADER: dict[str, Any] = {
    "Retry-After": {"description": "seconds to wait before retrying", "required": True,
                    "schema": {"type": "integer", "minimum": 0}},
}


def _content(media: str, schema: dict[str, Any] | None) -> dict[str, Any]:
    return {media: {"schema": schema if schema is not None else {"type": "string"}}}


def openapi_document() -> dict[str, Any]:
    """An OpenAPI 3.0 document describing exactly the routes in :data:`ROUTES`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        params = [
            {"name": part[1:-1], "in": "path", "required": True,
             "schema": FIELDS["member_id"] if part == "{id}" else {"type": "string"}}
            for part in route.path.split("/")
            if part.startswith("{")
        ]
        if route.name == "release":
            params.append({"name": "generation", "in": "query", "required": False,
                           "schema": {"type": "integer", "minimum": 0}})
        if route.request_id:
            params.append({"name": "X-Request-Id", "in": "header", "required": False,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 256}})
        op: dict[str, Any] = {"operationId": route.name, "summary": route.summary,
                              "parameters": params}
        if route.body:
            op["requestBody"] = {
                "required": any(r for _, _, r in route.body),
                "content": {JSON: {"schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {f: FIELDS[kind] for f, kind, _ in route.body},
                    "required": [f for f, _, r in route.body if r],
                }}},
            }
        responses: dict[str, Any] = {}
        for status in (route.ok, *route.also_ok):
            answer: dict[str, Any] = {"description": "success", "headers": _LEADER_HEADER}
            if route.ok != 204:
                schema = ({"$ref": f"#/components/schemas/{route.answer}"}
                          if route.answer else None)
                answer["content"] = _content(route.media, schema)
            responses[str(status)] = answer
        if route.name == "readyz":
            responses["503"] = {**responses["200"], "description": "not ready"}
        for status in route.errors:
            responses[str(status)] = {
                "description": " or ".join(_CODES_BY_STATUS[status]),
                "headers": {**_LEADER_HEADER, **(_RETRY_HEADER if status == 503 else {})},
                "content": _content(JSON, {"$ref": f"#/components/schemas/Error{status}"}),
            }
        op["responses"] = responses
        if route.admin:
            op["security"] = [{"adminToken": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = op
    errors = {f"Error{status}": _error_schema(codes)
              for status, codes in _CODES_BY_STATUS.items()}
    return {
        "openapi": "3.0.3",
        "info": {"title": "lockcell HTTP API", "version": "v1"},
        "paths": paths,
        "components": {
            "schemas": {**ANSWERS, **errors},
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }
