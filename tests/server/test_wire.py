"""The client port's HTTP/1.1 layer over real sockets: framing, keep-alive, pipelining,
limits and shutdown, with a small answerer in place of the API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from lockcell.api import wire
from lockcell.api.http import error_response
from lockcell.api.wire import Answer, ApiCall, HttpServer

pytestmark = pytest.mark.asyncio


class Echo:
    """Answers with what it saw; ``/slow/<ms>`` waits first, ``/fail`` raises."""

    def __init__(self) -> None:
        self.seen: list[ApiCall] = []

    async def __call__(self, call: ApiCall) -> Answer:
        self.seen.append(call)
        if call.path.startswith("/slow/"):
            await asyncio.sleep(int(call.path.rsplit("/", 1)[1]) / 1000)
        if call.path == "/fail":
            raise RuntimeError("answerer bug")
        if call.path == "/empty":
            return Answer(204)
        body = json.dumps({"method": call.method, "path": call.path,
                           "query": sorted(call.query.items()),
                           "body": call.body.decode(),
                           "x": call.headers.get("X-Thing")}).encode()
        return Answer(200, body, "application/json", (("X-Extra", "1"),))


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[HttpServer, Echo]]:
    echo = Echo()
    server = HttpServer(echo, error_response, idle_timeout=0.4)
    await server.start("127.0.0.1", 0)
    try:
        yield server, echo
    finally:
        await server.close(grace=0.2)


class Link:
    """A raw client connection that reads whole answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @staticmethod
    async def to(server: HttpServer) -> Link:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        return Link(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def answer(self, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v for k, _, v in (x.partition(": ") for x in lines[1:] if x)}
        length = int(headers.get("content-length", "0"))
        body = b"" if head else await asyncio.wait_for(self.reader.readexactly(length), 5)
        return status, headers, body

    async def closed(self) -> bool:
        """True when the server closed the connection (EOF within 5 s)."""
        try:
            return await asyncio.wait_for(self.reader.read(1), 5) == b""
        except (ConnectionResetError, TimeoutError):
            return False

    def close(self) -> None:
        self.writer.close()


def request(method: str, target: str, body: bytes = b"", *headers: str,
            version: str = "1.1") -> bytes:
    lines = [f"{method} {target} HTTP/{version}", "Host: x", *headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def test_keep_alive_serves_many_calls_on_one_connection(served: Any) -> None:
    server, _ = served
    link = await Link.to(server)
    for i in range(3):
        sent = f'{{"n":{i}}}'
        link.send(request("PUT", f"/v1/x/{i}?a=1&b=two", sent.encode(), "X-Thing: t"))
        status, headers, body = await link.answer()
        assert status == 200
        assert headers["content-type"] == "application/json"
        assert headers["x-extra"] == "1" and "connection" not in headers
        seen = json.loads(body)
        assert seen == {"method": "PUT", "path": f"/v1/x/{i}", "query": [["a", "1"], ["b", "two"]],
                        "body": sent, "x": "t"}
    assert len(server.connections) == 1
    link.close()


async def test_pipelined_calls_are_answered_in_order(served: Any) -> None:
    server, _ = served
    link = await Link.to(server)
    link.send(request("GET", "/slow/150") + request("GET", "/slow/1") + request("GET", "/b"))
    paths = [json.loads((await link.answer())[2])["path"] for _ in range(3)]
    assert paths == ["/slow/150", "/slow/1", "/b"]
    link.close()


async def test_connection_close_and_http10(served: Any) -> None:
    server, _ = served
    link = await Link.to(server)
    link.send(request("GET", "/a", b"", "Connection: close"))
    status, headers, _ = await link.answer()
    assert status == 200 and headers["connection"] == "close"
    assert await link.closed()
    link = await Link.to(server)
    link.send(request("GET", "/a", version="1.0"))
    status, headers, _ = await link.answer()
    assert status == 200 and headers["connection"] == "close"
    assert await link.closed()
    link = await Link.to(server)
    for _ in range(2):
        link.send(request("GET", "/a", b"", "Connection: keep-alive", version="1.0"))
        status, headers, _ = await link.answer()
        assert status == 200 and headers["connection"] == "keep-alive"
    link.close()


async def test_half_closed_client_still_gets_its_answers(served: Any) -> None:
    server, _ = served
    link = await Link.to(server)
    link.send(request("GET", "/slow/100") + request("GET", "/b"))
    await link.writer.drain()
    link.writer.write_eof()
    paths = [json.loads((await link.answer())[2])["path"] for _ in range(2)]
    assert paths == ["/slow/100", "/b"]
    assert await link.closed()


async def test_chunked_body_is_read_whole(served: Any) -> None:
    server, _ = served
    link = await Link.to(server)
    link.send(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    status, _, body = await link.answer()
    assert status == 200 and json.loads(body)["body"] == "hello world"
    link.close()


async def test_expect_continue_is_honoured(served: Any) -> None:
    server, _ = served
    link = await Link.to(server)
    link.send(b"PUT /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
    interim = await asyncio.wait_for(link.reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    link.send(b"abc")
    status, _, body = await link.answer()
    assert status == 200 and json.loads(body)["body"] == "abc"
    link.close()


async def test_oversized_body_is_read_and_refused(served: Any) -> None:
    server, echo = served
    link = await Link.to(server)
    big = b"x" * (wire.MAX_BODY_BYTES + 1)
    link.send(request("PUT", "/big", big))
    status, headers, body = await link.answer()
    assert status == 413 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "too_large"
    assert await link.closed()
    assert not echo.seen  # the answerer never saw it


async def test_absurd_declared_length_is_refused_before_the_body(served: Any) -> None:
    server, echo = served
    for extra in ((), ("Expect: 100-continue",)):
        link = await Link.to(server)
        link.send(f"PUT /big HTTP/1.1\r\nHost: x\r\nContent-Length: {wire.DISCARD_LIMIT + 1}\r\n"
                  .encode() + "".join(f"{h}\r\n" for h in extra).encode() + b"\r\n")
        status, _, body = await link.answer()
        assert status == 413 and json.loads(body)["error"]["code"] == "too_large"
        assert await link.closed()
    # with Expect, even a body just over the limit is refused before it is sent
    link = await Link.to(server)
    link.send(f"PUT /big HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
              f"Content-Length: {wire.MAX_BODY_BYTES + 1}\r\n\r\n".encode())
    status, _, _ = await link.answer()
    assert status == 413
    assert not echo.seen


async def test_malformed_request_is_400_after_earlier_answers(served: Any) -> None:
    server, _ = served
    link = await Link.to(server)
    link.send(request("GET", "/slow/50") + b"NOT HTTP AT ALL\r\n\r\n")
    status, _, body = await link.answer()
    assert status == 200 and json.loads(body)["path"] == "/slow/50"
    status, headers, body = await link.answer()
    assert status == 400 and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "invalid_argument"
    assert await link.closed()


async def test_head_and_header_limits(served: Any) -> None:
    server, echo = served
    link = await Link.to(server)
    link.send(b"GET /h HTTP/1.1\r\nX-Big: " + b"a" * (wire.MAX_HEAD_BYTES + 10))
    status, _, body = await link.answer()
    assert status == 400 and b"longer than" in body
    assert await link.closed()
    link = await Link.to(server)
    link.send(request("GET", "/h", b"", *(f"X-{i}: v" for i in range(wire.MAX_HEADERS + 1))))
    status, _, body = await link.answer()
    assert status == 400 and b"header fields" in body
    assert await link.closed()
    # exactly at the limits is fine
    link = await Link.to(server)
    link.send(request("GET", "/h", b"", *(f"X-{i}: v" for i in range(wire.MAX_HEADERS - 1))))
    assert (await link.answer())[0] == 200
    link.close()
    assert [c.path for c in echo.seen] == ["/h"]


async def test_head_gets_headers_only_and_204_has_no_body(served: Any) -> None:
    server, _ = served
    link = await Link.to(server)
    link.send(request("HEAD", "/a"))
    status, headers, _ = await link.answer(head=True)
    assert status == 200 and int(headers["content-length"]) > 0
    link.send(request("DELETE", "/empty"))
    status, headers, _ = await link.answer(head=True)
    assert status == 204 and "content-length" not in headers
    link.send(request("GET", "/after"))  # nothing stray was left on the stream
    status, _, body = await link.answer()
    assert status == 200 and json.loads(body)["path"] == "/after"
    link.close()


async def test_percent_encoded_path_is_decoded(served: Any) -> None:
    server, _ = served
    link = await Link.to(server)
    link.send(request("GET", "/v1/a%20b/c?q=%2F"))
    seen = json.loads((await link.answer())[2])
    assert seen["path"] == "/v1/a b/c" and seen["query"] == [["q", "/"]]
    link.close()


async def test_answerer_failure_is_500_and_the_connection_lives(served: Any) -> None:
    server, _ = served
    link = await Link.to(server)
    link.send(request("GET", "/fail"))
    status, _, body = await link.answer()
    assert status == 500 and json.loads(body)["error"]["code"] == "internal"
    link.send(request("GET", "/ok"))
    assert (await link.answer())[0] == 200
    link.close()


async def test_idle_connections_are_closed_busy_ones_are_not(served: Any) -> None:
    server, _ = served
    idle = await Link.to(server)
    busy = await Link.to(server)
    busy.send(request("GET", "/slow/900"))
    started = time.monotonic()
    assert await idle.closed()
    assert time.monotonic() - started < 2.0
    status, _, _ = await busy.answer()  # outlived the idle timeout while being answered
    assert status == 200
    busy.close()


async def test_close_answers_calls_in_flight_within_grace() -> None:
    server = HttpServer(Echo(), error_response)
    await server.start("127.0.0.1", 0)
    port = server.port
    idle = await Link.to(server)
    busy = await Link.to(server)
    busy.send(request("GET", "/slow/100"))
    await asyncio.sleep(0.02)
    await server.close(grace=2.0)
    assert await idle.closed()
    assert (await busy.answer())[0] == 200
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_close_drops_calls_beyond_grace() -> None:
    server = HttpServer(Echo(), error_response)
    await server.start("127.0.0.1", 0)
    port = server.port
    busy = await Link.to(server)
    busy.send(request("GET", "/slow/5000"))
    await asyncio.sleep(0.02)
    started = time.monotonic()
    await server.close(grace=0.2)
    assert time.monotonic() - started < 1.0
    assert await busy.closed()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
