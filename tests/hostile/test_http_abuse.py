"""Hostile clients against a real cell: oversized input, slow and idle connections, access.

After each case the cell must still serve, and a value written before it must be intact.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from lockcell.cli.localcell import LocalCell, http_json

from ..chaos.harness import free_base, stop_all

IDLE = int(os.environ.get("LOCKCELL_HOSTILE_IDLE", "10000"))


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCell]:
    base = free_base(3)
    c = LocalCell(tmp_path_factory.mktemp("hostile"), size=3, client_base=base,
                  peer_base=base + 10, lease_ms=3000, tick_ms=50)
    try:
        c.start(timeout=60)
        yield c
    finally:
        stop_all(c, None)


def _session(url: str) -> str:
    st, body = http_json("POST", f"{url}/v1/sessions", {"lease_ms": 60000})
    assert st == 201, body
    return str(body["session"])


@pytest.fixture(scope="module")
def canary(cell: LocalCell) -> tuple[str, str, str]:
    """A file with known contents, checked after every hostile case."""
    url = cell.leader().url
    sid = _session(url)
    st, h = http_json("POST", f"{url}/v1/sessions/{sid}/handles",
                      {"path": "/ls/local/canary", "create": {
                          "kind": "file", "data": base64.b64encode(b"intact").decode()}})
    assert st in (200, 201), h
    return url, sid, h["handle"]


def assert_serving(cell: LocalCell, canary: tuple[str, str, str]) -> None:
    _, sid, hid = canary
    url = cell.leader().url
    for member in cell.members:
        assert member.process is not None and member.process.poll() is None
        assert http_json("GET", f"{member.url}/healthz", timeout=5)[0] == 200
    st, body = http_json("GET", f"{url}/v1/sessions/{sid}/handles/{hid}", timeout=10)
    assert st == 200 and base64.b64decode(body["data"]) == b"intact", body
    assert http_json("POST", f"{url}/v1/sessions", {}, timeout=10)[0] == 201


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _raw(port: int, data: bytes, timeout: float = 15.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        with_timeout = time.monotonic() + timeout
        while time.monotonic() < with_timeout:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and len(b"".join(chunks)) > 12:
                break
        return b"".join(chunks)


def test_oversized_body_is_refused(cell, canary) -> None:
    url, sid, hid = canary
    big = base64.b64encode(b"x" * (1 << 20) + b"y").decode()
    try:
        st, body = http_json("PUT", f"{url}/v1/sessions/{sid}/handles/{hid}", {"data": big},
                             timeout=30)
    except OSError:  # the server may also cut the upload off
        st, body = 413, None
    assert st in (400, 413), (st, str(body)[:200])
    assert st < 500
    raw = json.dumps({"data": "A" * (2 << 20)}).encode()
    head = (f"PUT /v1/sessions/{sid}/handles/{hid} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n\r\n").encode()
    try:
        answer = _raw(_port(url), head + raw)
    except (BrokenPipeError, ConnectionResetError):
        answer = b"HTTP/1.1 413 (connection cut)"
    assert answer[:12] in (b"HTTP/1.1 413", b"HTTP/1.1 400") or answer == b"", answer[:200]
    assert_serving(cell, canary)


def test_oversized_headers_are_refused(cell, canary) -> None:
    url = canary[0]
    head = (b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
    try:
        answer = _raw(_port(url), head)
    except (BrokenPipeError, ConnectionResetError):
        answer = b""
    assert not answer.startswith(b"HTTP/1.1 5"), answer[:200]
    assert not answer.startswith(b"HTTP/1.1 200"), "a 1 MiB header was accepted"
    many = b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: v\r\n" % i for i in range(20000)) + b"\r\n"
    try:
        answer = _raw(_port(url), many)
    except (BrokenPipeError, ConnectionResetError):
        answer = b""
    assert not answer.startswith(b"HTTP/1.1 5"), answer[:200]
    assert_serving(cell, canary)


def test_slow_header_clients_do_not_block_others(cell, canary) -> None:
    url = canary[0]
    slow = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", _port(url)), timeout=5)
        s.sendall(b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\n")
        slow.append(s)
    try:
        for i in range(10):  # keep dribbling header bytes while others are served
            for s in slow:
                with contextlib.suppress(OSError):  # the server may drop a slow client
                    s.sendall(b"X-Slow-%d: y\r\n" % i)
            started = time.monotonic()
            st, _ = http_json("GET", f"{url}/v1/cluster", timeout=5)
            assert st == 200 and time.monotonic() - started < 2.0
            time.sleep(0.2)
    finally:
        for s in slow:
            s.close()
    assert_serving(cell, canary)


def test_many_idle_connections(cell, canary) -> None:
    url = canary[0]
    idle = []
    try:
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", _port(url)), timeout=10))
        started = time.monotonic()
        st, _ = http_json("GET", f"{url}/v1/cluster", timeout=10)
        assert st == 200, st
        assert time.monotonic() - started < 5.0
        assert_serving(cell, canary)
    finally:
        for s in idle:
            s.close()
    assert_serving(cell, canary)


# ------------------------------------------------------------------ access


ADMIN_CALLS = [("POST", "/v1/cluster/members", {"id": "x", "url": "http://127.0.0.1:1",
                                                 "peer_url": "127.0.0.1:2"}),
               ("POST", "/v1/cluster/members/x/promote", {}),
               ("DELETE", "/v1/cluster/members/x", None),
               ("POST", "/v1/cluster/leader", {})]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS)
@pytest.mark.parametrize("auth", [None, "Bearer wrong", "Basic abc", "Bearer "])
def test_admin_routes_need_the_token(cell, canary, method, path, body, auth) -> None:
    headers = {"Authorization": auth} if auth is not None else {}
    for member in cell.members:  # followers too (no forwarding before the check)
        st, answer = http_json(method, f"{member.url}{path}", body, headers=headers)
        assert st == 401, (member.url, st, answer)
        assert answer["error"]["code"] == "unauthorized"
    view = http_json("GET", f"{cell.leader().url}/v1/cluster")[1]
    assert len(view["members"]) == 3 and view["joint"] is None


def _peer_hello(cell: LocalCell, member_index: int, payload: bytes, kind: int = 1) -> bytes:
    port = cell.members[member_index].peer_port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack("<IB", len(payload), kind) + payload)
        out = b""
        while True:
            try:
                chunk = s.recv(4096)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
        return out


@pytest.mark.parametrize("variant", ["wrong-secret", "no-secret", "wrong-cell", "http"])
def test_peer_port_refuses_strangers(cell, canary, variant) -> None:
    hello = {"protocol": "lockcell-peer/1", "cell": cell.cell, "from": "intruder",
             "address": "127.0.0.1:1", "secret": "0" * 32}
    if variant == "no-secret":
        del hello["secret"]
    if variant == "wrong-cell":
        hello["secret"], hello["cell"] = cell.peer_secret, "other"
    for i in range(3):
        if variant == "http":
            port = cell.members[i].peer_port
            answer = _raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
            assert b"HTTP/1.1 200" not in answer
            assert len(answer) < 5 + 64 or answer[4] != 2  # never HELLO_OK
        else:
            answer = _peer_hello(cell, i, json.dumps(hello).encode())
            assert len(answer) >= 5, answer
            kind = answer[4]
            assert kind == 6, f"member {i} did not refuse the link: {answer[:80]!r}"  # REFUSED
    assert_serving(cell, canary)


def test_a_session_cannot_use_another_sessions_handle(cell, canary) -> None:
    url, _, hid = canary
    other = _session(url)
    for method, suffix, body in [("GET", "", None), ("GET", "/stat", None),
                                 ("PUT", "", {"data": base64.b64encode(b"evil").decode()}),
                                 ("POST", "/lock", {"mode": "exclusive", "wait_ms": 0}),
                                 ("DELETE", "/node", None), ("POST", "/poison", None),
                                 ("DELETE", "", None)]:
        st, answer = http_json(method, f"{url}/v1/sessions/{other}/handles/{hid}{suffix}",
                               body)
        assert st == 404, (method, suffix, st, answer)
    assert_serving(cell, canary)


def test_session_and_handle_ids_are_unguessable(cell, canary) -> None:
    url = canary[0]
    sessions, handles = [], []
    for i in range(60):
        sid = _session(url)
        sessions.append(sid)
        st, h = http_json("POST", f"{url}/v1/sessions/{sid}/handles",
                          {"path": f"/ls/local/ids-{i % 3}", "create": {"kind": "file"}})
        assert st in (200, 201), h
        handles.append(h["handle"])
    for ids in (sessions, handles):
        assert len(set(ids)) == len(ids)
        for x in ids:
            assert len(x) >= 32 and all(c in "0123456789abcdef" for c in x.lower()), x
        values = [int(x, 16) for x in ids]
        deltas = {b - a for a, b in itertools.pairwise(values)}
        assert len(deltas) > len(ids) // 2, "ids look sequential"
        # every bit position varies (a counter or timestamp prefix would not)
        width = 4 * len(ids[0])
        fixed = [b for b in range(width) if len({(v >> b) & 1 for v in values}) == 1]
        assert len(fixed) < 8, f"{len(fixed)} of {width} bits never change"
    http_json("DELETE", f"{url}/v1/sessions/{sessions[0]}")
