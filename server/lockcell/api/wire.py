"""HTTP/1.1 on the client port: httptools parses, each connection's calls are answered in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import cast
from urllib.parse import parse_qsl, unquote

import httptools
from multidict import CIMultiDict, MultiDict

log = logging.getLogger("lockcell.api.wire")

MAX_BODY_BYTES = 1 << 20
"""Bodies longer than this are answered 413 (the largest legal call is ~350 KiB)."""
DISCARD_LIMIT = 16 * MAX_BODY_BYTES
"""A body declared longer than this is refused before it is read and the link closed;
shorter oversized bodies are read and dropped, so the client sees the 413 and not a reset."""
MAX_HEAD_BYTES = 64 << 10
"""Request line plus headers: longer heads are refused (400) and the connection closed."""
MAX_HEADERS = 128
"""Header fields per request."""
MAX_QUEUED_CALLS = 32
"""Pipelined calls parsed ahead of their answers before reading from the socket pauses."""


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer: status, body, media type and extra headers."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive), if set."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def with_header(self, name: str, value: str) -> Answer:
        """This answer with one more header."""
        return Answer(self.status, self.body, self.content_type,
                      (*self.headers, (name, value)))


class ApiCall:
    """One client call as handlers read it (from a socket or forwarded by a peer), its
    body read whole."""

    __slots__ = (
        "_query",
        "body",
        "headers",
        "match_info",
        "method",
        "path",
        "problem",
        "query_string",
    )

    def __init__(self, method: str, path: str, query_string: str, headers: CIMultiDict[str],
                 body: bytes, problem: Answer | None = None) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.match_info: dict[str, str] = {}
        self.problem = problem
        """Set when the request itself was unacceptable (too large, malformed): the answer."""
        self._query: MultiDict[str] | None = None

    @property
    def query(self) -> MultiDict[str]:
        """The query string's parameters."""
        if self._query is None:
            self._query = MultiDict(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query


Answerer = Callable[[ApiCall], Awaitable[Answer]]
Refusal = Callable[[int, str, str], Answer]
"""Builds the documented error answer for (status, code, message)."""


def _status_line(status: int) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")


_STATUS_LINES = {status.value: _status_line(status.value) for status in HTTPStatus}
_BODYLESS = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Clock:
    """The Date header's value, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def date_line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = f"Date: {formatdate(now, usegmt=True)}\r\nServer: lockcell\r\n".encode()
        return self._line


def encode_answer(answer: Answer, *, keep_alive: bool, http10: bool, head: bool,
                  date_line: bytes = b"") -> bytes:
    """The bytes of one answer: status line, headers, and body (none for HEAD, 204, 304)."""
    status = answer.status
    lines = [_STATUS_LINES.get(status) or _status_line(status), date_line]
    if answer.content_type is not None:
        lines.append(f"Content-Type: {answer.content_type}\r\n".encode("latin-1"))
    for name, value in answer.headers:
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    bodyless = status in _BODYLESS
    if not bodyless:
        lines.append(b"Content-Length: %d\r\n" % len(answer.body))
    if not keep_alive:
        lines.append(b"Connection: close\r\n")
    elif http10:
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    if not bodyless and not head:
        lines.append(answer.body)
    return b"".join(lines)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A parsed call waiting for its turn, with how its answer must be framed."""

    call: ApiCall
    keep_alive: bool
    http10: bool
    head: bool


class HttpConnection(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time, in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._header_pairs: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._body_size = 0
        self._too_large = False
        self._in_head = True
        self._head_bytes = 0
        self._queue: deque[_Pending] = deque()
        self._task: asyncio.Task[None] | None = None
        self._broken = False
        self._reading_paused = False
        self._writable: asyncio.Future[None] | None = None
        self.last_active = time.monotonic()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        self._queue.clear()
        self._wake_writer()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        self.last_active = time.monotonic()
        if self._in_head:
            self._head_bytes += len(data)  # (reset when a head completes within ``data``)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades (h2c, websocket) are not offered: what was parsed is answered as
            # plain HTTP/1.1, then the connection ends.
            self._broken = True
            if not self.busy and self._transport is not None:
                self._transport.close()
        except httptools.HttpParserError as exc:
            if not self._broken:  # (a callback that refused the call set it already)
                self._broken = True
                self._refuse(400, "invalid_argument", f"malformed HTTP request: {exc}")
            return
        if self._in_head and self._head_bytes > MAX_HEAD_BYTES:
            self._broken = True
            self._refuse(400, "invalid_argument",
                         f"request line and headers longer than {MAX_HEAD_BYTES} bytes")

    def eof_received(self) -> bool:
        # The client has sent all it will: answer what was parsed, then close.
        self._broken = True
        return self.busy  # True keeps our side open for the answers still to come

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    # ------------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self._url = b""
        self._header_pairs = []
        self._body = []
        self._body_size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._header_pairs) >= MAX_HEADERS:
            self._broken = True
            self._refuse(400, "invalid_argument", f"more than {MAX_HEADERS} header fields")
            raise httptools.HttpParserCallbackError("too many header fields")
        self._header_pairs.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        declared = None
        expects = False
        for name, value in self._header_pairs:
            lowered = name.lower()
            if lowered == "content-length":
                declared = int(value) if value.strip().isdigit() else None
            elif lowered == "expect":
                expects = value.strip().lower() == "100-continue"
        if declared is not None and declared > MAX_BODY_BYTES:
            self._too_large = True
            if declared > DISCARD_LIMIT or expects:
                self._broken = True  # the client waits or would send too much: refuse now
                self._refuse(413, "too_large", "request body too large")
                raise httptools.HttpParserCallbackError("body too large")
        elif expects and self._task is None and not self._queue and self._transport:
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            self._too_large = True
            self._body = []
            if self._body_size > DISCARD_LIMIT:
                self._broken = True
                self._refuse(413, "too_large", "request body too large")
                raise httptools.HttpParserCallbackError("body too large")
        elif not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        parser = self._parser
        method = parser.get_method().decode("latin-1")
        target = self._url.decode("latin-1")
        path, _, query = target.partition("?")
        if "%" in path:
            path = unquote(path)
        problem = None
        keep_alive = parser.should_keep_alive()
        if self._too_large:
            problem = self._server.refusal(413, "too_large", "request body too large")
            keep_alive = False
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        call = ApiCall(method, path, query, CIMultiDict(self._header_pairs), body, problem)
        self._enqueue(_Pending(call, keep_alive, parser.get_http_version() == "1.0",
                               method == "HEAD"))

    # ------------------------------------------------------------------ answering

    def _enqueue(self, pending: _Pending) -> None:
        self._queue.append(pending)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._answer_queue())
        elif len(self._queue) >= MAX_QUEUED_CALLS and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True

    async def _answer_queue(self) -> None:
        server = self._server
        try:
            while self._queue:
                pending = self._queue.popleft()
                if self._reading_paused and self._transport is not None:
                    self._reading_paused = False
                    self._transport.resume_reading()
                answer = await server.answer_safely(pending.call)
                transport = self._transport
                if transport is None:
                    return
                if self._writable is not None:
                    await self._writable
                    transport = self._transport
                    if transport is None:
                        return
                transport.write(encode_answer(answer, keep_alive=pending.keep_alive,
                                              http10=pending.http10, head=pending.head,
                                              date_line=server.clock.date_line()))
                self.last_active = time.monotonic()
                if not pending.keep_alive or (self._broken and not self._queue):
                    self._broken = True
                    self._queue.clear()
                    transport.close()
                    return
        finally:
            self._task = None

    def _refuse(self, status: int, code: str, message: str) -> None:
        """Answer a request that cannot be parsed or accepted (after earlier answers), and
        close the connection."""
        call = ApiCall("", "", "", CIMultiDict(), b"",
                       self._server.refusal(status, code, message))
        self._queue.append(_Pending(call, keep_alive=False, http10=False, head=False))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._answer_queue())

    def _wake_writer(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------------ server's view

    @property
    def busy(self) -> bool:
        """Whether a call is being answered or waits for its turn."""
        return self._task is not None or bool(self._queue)

    def close(self) -> None:
        """Close the connection now (unanswered calls get no answer)."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once."""
        if self._transport is not None:
            self._transport.abort()
        if self._task is not None:
            self._task.cancel()


class HttpServer:
    """Serves HTTP/1.1 keep-alive connections, passing each call to ``answer``."""

    def __init__(self, answer: Answerer, refusal: Refusal, *,
                 idle_timeout: float = 75.0) -> None:
        self._answer = answer
        self.refusal = refusal
        self.idle_timeout = idle_timeout
        self.connections: set[HttpConnection] = set()
        self.clock = _Clock()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, *, backlog: int = 4096) -> None:
        """Listen on ``host:port``."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpConnection(self), host, port,
                                                backlog=backlog, reuse_address=True)
        self._sweeper = loop.create_task(self._sweep_idle())

    @property
    def port(self) -> int:
        """The port listened on (useful with port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def answer_safely(self, call: ApiCall) -> Answer:
        """The answer to ``call``; a failure of the answerer itself is a 500."""
        if call.problem is not None:
            return call.problem
        try:
            return await self._answer(call)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("answering %s %s failed", call.method, call.path)
            return self.refusal(500, "internal", "the member failed to answer; see its log")

    async def _sweep_idle(self) -> None:
        """Close connections idle for longer than ``idle_timeout`` (keep-alive expiry)."""
        while True:
            await asyncio.sleep(min(15.0, self.idle_timeout / 2))
            cutoff = time.monotonic() - self.idle_timeout
            for connection in list(self.connections):
                if not connection.busy and connection.last_active < cutoff:
                    connection.close()

    async def close(self, grace: float = 1.0) -> None:
        """Stop listening, close idle connections, give calls in flight ``grace`` seconds,
        then drop every connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace
        while True:
            for connection in list(self.connections):
                if not connection.busy:
                    connection.close()
            if not any(c.busy for c in self.connections) or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()

