"""A thin asyncio client of the lockcell HTTP API v1 (DESIGN.md §4) for the load generators."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import aiohttp

TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)
"""What a call may raise when the member is down, slow or drops the connection."""


class ApiError(Exception):
    """A call answered with an error status."""

    def __init__(self, method: str, path: str, status: int, code: str, message: str,
                 leader: str = "") -> None:
        super().__init__(f"{method} {path}: {status} {code} {message}".strip())
        self.status = status
        self.code = code
        self.leader = leader
        """The leader's client URL the member named (``X-Lockcell-Leader``), if any."""


def encode(data: bytes) -> str:
    """File contents as the API carries them (base64)."""
    return base64.b64encode(data).decode()


def last_seq(answer: dict[str, Any], ack: int) -> int:
    """The highest event ``seq`` in a KeepAlive answer (or ``ack`` if none is higher)."""
    return max([ack, *(int(e.get("seq", 0)) for e in answer.get("events", []))])


class Api:
    """Calls against one member's client URL over a shared aiohttp session."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url.rstrip("/")

    async def call(self, method: str, path: str, body: Any = None,
                   timeout: float | None = None) -> Any:
        """One request; the decoded JSON answer (None for 204), or :class:`ApiError`."""
        limit = aiohttp.ClientTimeout(total=timeout) if timeout is not None else None
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        if limit is not None:
            kwargs["timeout"] = limit
        async with self.http.request(method, self.url + path, **kwargs) as response:
            if response.status == 204:
                return None
            if response.status >= 300:
                text = await response.text()
                code, message = "", text[:200]
                try:
                    error = (await response.json(content_type=None))["error"]
                    code, message = str(error.get("code", "")), str(error.get("message", ""))
                except (ValueError, KeyError, TypeError):
                    pass
                raise ApiError(method, path, response.status, code, message,
                               response.headers.get("X-Lockcell-Leader", ""))
            return await response.json(content_type=None)

    def follow(self, error: ApiError) -> Api:
        """The client of the leader ``error`` named (as the client library follows it)."""
        if error.leader and error.leader.rstrip("/") != self.url:
            return Api(self.http, error.leader)
        return self

    async def create_session(self, lease_ms: int | None = None) -> str:
        """CreateSession; the session id."""
        body = {} if lease_ms is None else {"lease_ms": lease_ms}
        return str((await self.call("POST", "/v1/sessions", body))["session"])

    async def close_session(self, session: str) -> None:
        """CloseSession."""
        await self.call("DELETE", f"/v1/sessions/{session}")

    async def keepalive(self, session: str, wait_ms: int = 0, timeout: float | None = None,
                        ack: int = 0) -> dict[str, Any]:
        """KeepAlive (a long poll when ``wait_ms`` > 0), acknowledging events up to ``ack``.

        Pending events make the leader answer at once, so a client that never acknowledges
        (e.g. the ``master_failover`` event after an election) spins: callers must pass the
        highest ``seq`` they have seen (:func:`last_seq`).
        """
        body: dict[str, Any] = {"wait_ms": wait_ms}
        if ack:
            body["ack"] = ack
        answer = await self.call("POST", f"/v1/sessions/{session}/keepalive", body,
                                 timeout=timeout)
        return dict(answer)

    async def open(self, session: str, path: str, kind: str = "file",
                   create: bool = True) -> str:
        """Open (creating the node when ``create``) with no lock-delay; the handle."""
        body: dict[str, Any] = {"path": path, "lock_delay_ms": 0}
        if create:
            body["create"] = {"kind": kind}
        answer = await self.call("POST", f"/v1/sessions/{session}/handles", body)
        return str(answer["handle"])

    async def close(self, session: str, handle: str) -> None:
        """Close a handle."""
        await self.call("DELETE", f"/v1/sessions/{session}/handles/{handle}")

    async def acquire(self, session: str, handle: str, wait_ms: int = 0) -> int:
        """Acquire the exclusive lock (waiting up to ``wait_ms``); its lock generation."""
        answer = await self.call("POST", f"/v1/sessions/{session}/handles/{handle}/lock",
                                 {"mode": "exclusive", "wait_ms": wait_ms})
        return int(answer["lock_generation"])

    async def release(self, session: str, handle: str) -> None:
        """Release the handle's lock."""
        await self.call("DELETE", f"/v1/sessions/{session}/handles/{handle}/lock")

    async def put(self, session: str, handle: str, data: str,
                  timeout: float | None = None) -> None:
        """SetContents with already encoded ``data``."""
        await self.call("PUT", f"/v1/sessions/{session}/handles/{handle}", {"data": data},
                        timeout=timeout)

    async def cluster(self, timeout: float = 5.0) -> dict[str, Any]:
        """This member's view of the cluster."""
        return dict(await self.call("GET", "/v1/cluster", timeout=timeout))

    async def status(self, path: str, timeout: float = 2.0) -> int:
        """The status code of a GET (e.g. ``/readyz``)."""
        limit = aiohttp.ClientTimeout(total=timeout)
        async with self.http.get(self.url + path, timeout=limit) as response:
            await response.read()
            return response.status

    async def metric(self, name: str) -> float:
        """The sum of every sample of one Prometheus metric on this member."""
        return (await self.metrics([name]))[name]

    async def metrics(self, names: list[str]) -> dict[str, float]:
        """The sum of every sample of each named metric (or one series, labels included)."""
        async with self.http.get(self.url + "/metrics",
                                 timeout=aiohttp.ClientTimeout(total=10)) as response:
            text = await response.text()
        totals = dict.fromkeys(names, 0.0)
        for line in text.splitlines():
            if line.startswith("#") or " " not in line:
                continue
            series, value = line.rsplit(" ", 1)
            name = series.split("{", 1)[0]
            if series in totals:  # one labelled series, e.g. a histogram bucket
                totals[series] += float(value)
            elif name in totals:
                totals[name] += float(value)
        return totals
