"""The route table of HTTP API v1 and the OpenAPI document generated from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Route:
    """One HTTP route: method, path template, handler name, and documentation."""

    method: str
    path: str
    name: str
    summary: str
    ok: int = 200
    body: tuple[tuple[str, str, bool], ...] = ()
    """(field, JSON type, required) of the request body."""
    admin: bool = False
    errors: tuple[int, ...] = (400, 404, 409, 410, 503)


S = "/v1/sessions/{session}"
H = S + "/handles/{handle}"

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/sessions", "create_session", "CreateSession", 201,
          (("lease_ms", "integer", False),), errors=(400, 503)),
    Route("POST", S + "/keepalive", "keepalive", "KeepAlive (long poll)", 200,
          (("wait_ms", "integer", False), ("ack", "integer", False))),
    Route("DELETE", S, "close_session", "CloseSession", 204),
    Route("POST", S + "/handles", "open", "Open", 201,
          (("path", "string", True), ("create", "object", False), ("events", "array", False),
           ("lock_delay_ms", "integer", False)), errors=(400, 404, 409, 410, 413, 503)),
    Route("DELETE", H, "close", "Close", 204),
    Route("POST", H + "/poison", "poison", "Poison", 204),
    Route("GET", H, "get_contents", "GetContentsAndStat"),
    Route("GET", H + "/stat", "get_stat", "GetStat"),
    Route("GET", H + "/children", "read_dir", "ReadDir"),
    Route("PUT", H, "set_contents", "SetContents", 200,
          (("data", "string", True), ("if_generation", "integer", False)),
          errors=(400, 404, 409, 410, 413, 503)),
    Route("DELETE", H + "/node", "delete", "Delete", 204),
    Route("POST", H + "/lock", "acquire", "Acquire / TryAcquire", 200,
          (("mode", "string", False), ("wait_ms", "integer", False))),
    Route("DELETE", H + "/lock", "release", "Release", 204),
    Route("GET", H + "/sequencer", "get_sequencer", "GetSequencer"),
    Route("PUT", H + "/sequencer", "set_sequencer", "SetSequencer", 200,
          (("sequencer", "string", False),)),
    Route("POST", "/v1/sequencers/check", "check_sequencer", "CheckSequencer", 200,
          (("sequencer", "string", True),), errors=(400, 503)),
    Route("GET", "/v1/cluster", "cluster", "Cluster status", errors=()),
    Route("POST", "/v1/cluster/members", "add_member", "Add a learner", 201,
          (("id", "string", True), ("url", "string", True), ("peer_url", "string", True)),
          admin=True, errors=(400, 401, 409, 503)),
    Route("POST", "/v1/cluster/members/{id}/promote", "promote_member",
          "Promote a learner through joint consensus", admin=True,
          errors=(400, 401, 404, 409, 503)),
    Route("DELETE", "/v1/cluster/members/{id}", "remove_member", "Remove a member",
          admin=True, errors=(400, 401, 404, 409, 503)),
    Route("POST", "/v1/cluster/leader", "transfer_leader", "Transfer leadership", 200,
          (("to", "string", False),), admin=True, errors=(400, 401, 409, 503)),
    Route("GET", "/metrics", "metrics", "Prometheus metrics", errors=()),
    Route("GET", "/healthz", "healthz", "Liveness", errors=()),
    Route("GET", "/readyz", "readyz", "Readiness", errors=(503,)),
    Route("GET", "/v1/openapi.json", "openapi", "This document", errors=()),
    Route("GET", "/", "status_page", "Status page (HTML)", errors=()),
)

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": [
                    "invalid_argument", "unauthorized", "not_found", "conflict", "lock_busy",
                    "lock_delay", "session_expired", "handle_invalid", "too_large",
                    "unavailable"]},
                "message": {"type": "string"},
                "lock_delay_until_ms": {"type": "integer"},
            },
        }
    },
}


def openapi_document() -> dict[str, Any]:
    """An OpenAPI 3.0 document describing exactly the routes in :data:`ROUTES`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        params = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in route.path.split("/")
            if part.startswith("{")
        ]
        if route.name == "release":
            params.append({"name": "generation", "in": "query", "required": False,
                           "schema": {"type": "integer", "minimum": 0}})
        op: dict[str, Any] = {"operationId": route.name, "summary": route.summary,
                              "parameters": params}
        if route.body:
            op["requestBody"] = {
                "required": any(r for _, _, r in route.body),
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {f: {"type": t} for f, t, _ in route.body},
                    "required": [f for f, _, r in route.body if r],
                }}},
            }
        responses: dict[str, Any] = {str(route.ok): {"description": "success"}}
        for status in route.errors:
            responses[str(status)] = {
                "description": "error",
                "content": {"application/json": {"schema": {"$ref":
                                                            "#/components/schemas/Error"}}},
            }
        op["responses"] = responses
        if route.admin:
            op["security"] = [{"adminToken": []}]
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "lockcell HTTP API", "version": "v1"},
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR_SCHEMA},
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }
