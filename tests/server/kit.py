"""Helpers of the end-to-end tests: real local cells, a small HTTP client, polling.

Everything here talks to real ``lockcell serve`` processes over loopback sockets. The
client is built on :mod:`http.client` so that header names go out exactly as written and
answers come back with their headers.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import signal
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from lockcell.cli.localcell import LocalCell, LocalMember
from lockcell.cli.localcell import free_port_base as _free_base

T = TypeVar("T")

NO_BODY: Any = object()
"""Marker: send no request body at all."""

LEADER_HEADER = "X-Lockcell-Leader"
KIB = 1024
MAX_CONTENTS = 256 * KIB

STAT_KEYS = {"kind", "instance", "content_generation", "lock_generation", "acl_generation",
             "checksum", "length", "children", "ephemeral", "lock"}
LOCK_KEYS = {"mode", "holders", "waiters", "lock_delay_until_ms"}


# --------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    """One HTTP answer: status, decoded body (JSON, text or None), headers (lower-case)."""

    status: int
    body: Any
    headers: dict[str, str]
    raw: bytes
    elapsed: float
    method: str = ""
    url: str = ""

    @property
    def code(self) -> str | None:
        """The ``error.code`` of an error answer."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return code if isinstance(code, str) else None
        return None

    def header(self, name: str) -> str | None:
        """A response header (case-insensitive)."""
        return self.headers.get(name.lower())

    def __repr__(self) -> str:
        text = self.raw[:400].decode(errors="replace")
        return f"<{self.method} {self.url} -> {self.status} {text}>"


def _host_port(base: str) -> tuple[str, int]:
    rest = base.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return host, int(port)


def request(base: str, method: str, path: str, body: Any = NO_BODY, *, raw: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30.0) -> Reply:
    """One HTTP request; raises ``OSError``/``http.client.HTTPException`` on transport errors."""
    host, port = _host_port(base)
    data: bytes | None = raw
    send_headers = dict(headers or {})
    if data is None and body is not NO_BODY:
        data = json.dumps(body).encode()
    if data is not None and not any(k.lower() == "content-type" for k in send_headers):
        send_headers["Content-Type"] = "application/json"
    started = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=send_headers)
        response = conn.getresponse()
        payload = response.read()
        status = response.status
        got = {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()
    decoded: Any = None
    if payload:
        try:
            decoded = json.loads(payload)
        except ValueError:
            decoded = payload.decode(errors="replace")
    return Reply(status, decoded, got, payload, time.monotonic() - started, method,
                 f"{base}{path}")


def expect(reply: Reply, status: int | Iterable[int], code: str | None = None) -> Reply:
    """Assert the status (and the error code) of an answer; returns it."""
    wanted = {status} if isinstance(status, int) else set(status)
    assert reply.status in wanted, f"expected {sorted(wanted)}, got {reply!r}"
    if code is not None:
        assert reply.code == code, f"expected error code {code!r}, got {reply!r}"
        message = reply.body["error"].get("message")
        assert isinstance(message, str), f"error without a message: {reply!r}"
    return reply


def b64(data: bytes) -> str:
    """File data as the API carries it."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    """Decode the API's ``data`` field."""
    return base64.b64decode(text, validate=True)


def rid() -> str:
    """A fresh request id."""
    return uuid.uuid4().hex


def uniq(prefix: str = "t") -> str:
    """A fresh, legal name component."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


WRITE_METHODS = {"POST", "PUT", "DELETE"}


class Api:
    """A client bound to one member's URL.

    ``retry`` seconds: retry on 503 and on transport errors (the documented way to ride out
    an election); writes then always carry an ``X-Request-Id`` so that a retry is applied
    once. ``retry=0`` shows every answer exactly as it came.
    """

    def __init__(self, base: str, retry: float = 20.0, timeout: float = 30.0) -> None:
        self.base = base.rstrip("/")
        self.retry = retry
        self.timeout = timeout

    def __call__(self, method: str, path: str, body: Any = NO_BODY, *,
                 raw: bytes | None = None, headers: dict[str, str] | None = None,
                 timeout: float | None = None, retry: float | None = None) -> Reply:
        retry = self.retry if retry is None else retry
        timeout = self.timeout if timeout is None else timeout
        headers = dict(headers or {})
        if retry > 0 and method in WRITE_METHODS and not path.startswith("/v1/cluster") and \
                not any(k.lower() == "x-request-id" for k in headers):
            headers["X-Request-Id"] = rid()
        deadline = time.monotonic() + retry
        while True:
            try:
                reply = request(self.base, method, path, body, raw=raw, headers=headers,
                                timeout=timeout)
            except (OSError, http.client.HTTPException):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)
                continue
            if reply.status == 503 and time.monotonic() < deadline:
                time.sleep(0.1)
                continue
            return reply

    # -------------------------------------------------------------- the calls of §4

    def create_session(self, lease_ms: int | None = None, **kw: Any) -> Reply:
        body = {} if lease_ms is None else {"lease_ms": lease_ms}
        return self("POST", "/v1/sessions", body, **kw)

    def session(self, lease_ms: int | None = None) -> str:
        """CreateSession that must succeed; returns the session id."""
        reply = expect(self.create_session(lease_ms), 201)
        return str(reply.body["session"])

    def keepalive(self, s: str, wait_ms: int | None = None, ack: int | None = None,
                  **kw: Any) -> Reply:
        body: dict[str, Any] = {}
        if wait_ms is not None:
            body["wait_ms"] = wait_ms
        if ack is not None:
            body["ack"] = ack
        kw.setdefault("timeout", (wait_ms or 0) / 1000.0 + 30.0)
        return self("POST", f"/v1/sessions/{s}/keepalive", body, **kw)

    def close_session(self, s: str, **kw: Any) -> Reply:
        return self("DELETE", f"/v1/sessions/{s}", **kw)

    def open(self, s: str, path: str, create: str | None = None, *, ephemeral: bool | None = None,
             data: bytes | None = None, events: list[str] | None = None,
             lock_delay_ms: int | None = None, **kw: Any) -> Reply:
        body: dict[str, Any] = {"path": path}
        if create is not None:
            spec: dict[str, Any] = {"kind": create}
            if ephemeral is not None:
                spec["ephemeral"] = ephemeral
            if data is not None:
                spec["data"] = b64(data)
            body["create"] = spec
        if events is not None:
            body["events"] = events
        if lock_delay_ms is not None:
            body["lock_delay_ms"] = lock_delay_ms
        return self("POST", f"/v1/sessions/{s}/handles", body, **kw)

    def handle(self, s: str, path: str, create: str | None = None, **kw: Any) -> str:
        """Open that must succeed; returns the handle id."""
        reply = expect(self.open(s, path, create, **kw), (200, 201))
        return str(reply.body["handle"])

    def close(self, s: str, h: str, **kw: Any) -> Reply:
        return self("DELETE", f"/v1/sessions/{s}/handles/{h}", **kw)

    def poison(self, s: str, h: str, **kw: Any) -> Reply:
        return self("POST", f"/v1/sessions/{s}/handles/{h}/poison", **kw)

    def get(self, s: str, h: str, **kw: Any) -> Reply:
        return self("GET", f"/v1/sessions/{s}/handles/{h}", **kw)

    def stat(self, s: str, h: str, **kw: Any) -> Reply:
        return self("GET", f"/v1/sessions/{s}/handles/{h}/stat", **kw)

    def readdir(self, s: str, h: str, **kw: Any) -> Reply:
        return self("GET", f"/v1/sessions/{s}/handles/{h}/children", **kw)

    def set(self, s: str, h: str, data: bytes, if_generation: int | None = None,
            **kw: Any) -> Reply:
        body: dict[str, Any] = {"data": b64(data)}
        if if_generation is not None:
            body["if_generation"] = if_generation
        return self("PUT", f"/v1/sessions/{s}/handles/{h}", body, **kw)

    def delete(self, s: str, h: str, **kw: Any) -> Reply:
        return self("DELETE", f"/v1/sessions/{s}/handles/{h}/node", **kw)

    def acquire(self, s: str, h: str, mode: str | None = "exclusive",
                wait_ms: int | None = None, **kw: Any) -> Reply:
        body: dict[str, Any] = {}
        if mode is not None:
            body["mode"] = mode
        if wait_ms is not None:
            body["wait_ms"] = wait_ms
        kw.setdefault("timeout", (wait_ms or 0) / 1000.0 + 30.0)
        return self("POST", f"/v1/sessions/{s}/handles/{h}/lock", body, **kw)

    def release(self, s: str, h: str, generation: int | str | None = None,
                **kw: Any) -> Reply:
        query = "" if generation is None else f"?generation={generation}"
        return self("DELETE", f"/v1/sessions/{s}/handles/{h}/lock{query}", **kw)

    def get_sequencer(self, s: str, h: str, **kw: Any) -> Reply:
        return self("GET", f"/v1/sessions/{s}/handles/{h}/sequencer", **kw)

    def set_sequencer(self, s: str, h: str, sequencer: Any, **kw: Any) -> Reply:
        return self("PUT", f"/v1/sessions/{s}/handles/{h}/sequencer",
                    {"sequencer": sequencer}, **kw)

    def check_sequencer(self, sequencer: Any, **kw: Any) -> Reply:
        return self("POST", "/v1/sequencers/check", {"sequencer": sequencer}, **kw)

    def cluster(self, **kw: Any) -> Reply:
        return self("GET", "/v1/cluster", **kw)

    # -------------------------------------------------------------- conveniences

    def stat_of(self, s: str, h: str) -> dict[str, Any]:
        """GetStat that must succeed."""
        return dict(expect(self.stat(s, h), 200).body["stat"])

    def contents(self, s: str, h: str) -> bytes:
        """GetContentsAndStat that must succeed; the data."""
        return unb64(expect(self.get(s, h), 200).body["data"])

    def mkdir(self, s: str, path: str) -> str:
        """Create a permanent directory (must be new); returns the handle."""
        reply = expect(self.open(s, path, "dir"), 201)
        return str(reply.body["handle"])

    def exists(self, s: str, path: str) -> bool:
        """Whether ``path`` exists (Open without create; closes the handle again)."""
        reply = self.open(s, path)
        if reply.status == 404:
            return False
        expect(reply, 200)
        expect(self.close(s, reply.body["handle"]), 204)
        return True


# --------------------------------------------------------------------------- polling


def wait_until(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05,
               message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, http.client.HTTPException, RuntimeError, KeyError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}"
                                 + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="e2e")


def background(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
    """Run a blocking call in a thread (e.g. a long poll or a blocking Acquire)."""
    return _pool.submit(fn, *args, **kwargs)


# --------------------------------------------------------------------------- cells


def free_port_base(size: int) -> int:
    """A base B with B..B+size-1 (clients) and B+100..B+100+size-1 (peers) all free."""
    return _free_base([*range(size), *range(100, 100 + size)])


def start_cell(root: Path, size: int = 3, *, lease_ms: int = 12000, tick_ms: int = 100,
               extra_env: dict[str, str] | None = None, timeout: float = 90.0) -> LocalCell:
    """Start a real N-member cell on loopback and wait until every member is a ready voter."""
    last: Exception | None = None
    for attempt in range(2):
        base = free_port_base(size)
        cell = LocalCell(root / f"cell-{attempt}", size=size, client_base=base,
                         peer_base=base + 100, lease_ms=lease_ms, tick_ms=tick_ms,
                         extra_env=dict(extra_env or {}))
        try:
            cell.start(timeout=timeout)
            return cell
        except BaseException as exc:
            last = exc
            logs = cell_logs(cell)
            stop_cell(cell)
            if not isinstance(exc, TimeoutError):
                raise
            last = TimeoutError(f"{exc}\n{logs}")
    assert last is not None
    raise last


def stop_cell(cell: LocalCell) -> None:
    """Stop every member of ``cell`` (SIGCONT first, so stopped processes can exit)."""
    for member in cell.members:
        if member.process is not None and member.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                member.process.send_signal(signal.SIGCONT)
    cell.stop()


def cell_logs(cell: LocalCell, lines: int = 30) -> str:
    """The tails of the members' logs (for failure messages)."""
    out = []
    for member in cell.members:
        path = cell.root / "logs" / f"member-{member.index}.log"
        if path.exists():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- member {member.index} ---\n" + "\n".join(tail))
    return "\n".join(out)


def alive(member: LocalMember) -> bool:
    """Whether the member's process runs."""
    return member.process is not None and member.process.poll() is None


def view(member: LocalMember) -> dict[str, Any]:
    """GET /v1/cluster of one member."""
    reply = request(member.url, "GET", "/v1/cluster", timeout=5)
    assert reply.status == 200, reply
    return dict(reply.body)


def serving_leader(cell: LocalCell, timeout: float = 30.0,
                   exclude: LocalMember | None = None) -> LocalMember:
    """The member that leads and serves (answers /readyz 200 as leader)."""

    def find() -> LocalMember | None:
        for member in cell.members:
            if not alive(member) or member is exclude:
                continue
            v = view(member)
            if v["self"]["role"] != "leader":
                continue
            if request(member.url, "GET", "/readyz", timeout=5).status == 200:
                return member
        return None

    return wait_until(find, timeout, 0.05, "a serving leader")


def followers(cell: LocalCell, leader: LocalMember | None = None) -> list[LocalMember]:
    """The live members other than the leader."""
    leader = leader or serving_leader(cell)
    return [m for m in cell.members if m is not leader and alive(m)]


def member_id(member: LocalMember) -> str:
    """The Raft id of a member (from its own /v1/cluster view)."""
    return str(view(member)["self"]["id"])


def heal(cell: LocalCell, timeout: float = 60.0) -> None:
    """Resume stopped members, restart dead ones, and wait until the cell is whole again."""
    for member in cell.members:
        if alive(member):
            assert member.process is not None
            with contextlib.suppress(ProcessLookupError):
                member.process.send_signal(signal.SIGCONT)
        else:
            cell.start_member(member)
    cell.wait_ready(timeout)


def kill(member: LocalMember, sig: int = signal.SIGKILL) -> None:
    """Send a signal to a member; for SIGKILL/SIGTERM wait until it is gone."""
    assert member.process is not None
    member.process.send_signal(sig)
    if sig in (signal.SIGKILL, signal.SIGTERM):
        member.process.wait(timeout=30)


# --------------------------------------------------------------------------- state dumps


def comparable_stat(stat: dict[str, Any]) -> dict[str, Any]:
    """A stat without ``lock.waiters`` (leader memory, not replicated state)."""
    out = dict(stat)
    lock = dict(out["lock"])
    lock.pop("waiters", None)
    out["lock"] = lock
    return out


def dump_tree(api: Api, s: str, root: str) -> dict[str, Any]:
    """Every node under (and including) ``root``: kind, stat and contents, by path."""
    result: dict[str, Any] = {}
    pending = [root]
    while pending:
        path = pending.pop()
        reply = expect(api.open(s, path), 200)
        h = reply.body["handle"]
        got = expect(api.get(s, h), 200).body
        entry = {"stat": comparable_stat(got["stat"]), "data": got["data"]}
        if got["stat"]["kind"] == "dir":
            children = expect(api.readdir(s, h), 200).body["children"]
            entry["children"] = sorted(c["name"] for c in children)
            pending.extend(f"{path}/{c['name']}" for c in children)
        result[path] = entry
        expect(api.close(s, h), 204)
    return result


def start_joining(cell: LocalCell, member: LocalMember) -> None:
    """Start ``member`` so that it asks to join (never bootstraps, even as member 0).

    LocalCell always passes ``--bootstrap`` to member 0; with an empty data directory that
    would found a new cell instead of joining this one.
    """
    original = cell.command

    def command(m: LocalMember) -> list[str]:
        args = original(m)
        if m is member and "--bootstrap" in args:
            args.remove("--bootstrap")
            for other in cell.members:
                if other is not m:
                    args += ["--join", other.url]
        return args

    cell.command = command  # type: ignore[method-assign]
    try:
        cell.start_member(member)
    finally:
        del cell.command


def metric(api: Api, family: str) -> float:
    """The value of a label-free metric of the member behind ``api`` (counter or gauge)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = expect(api("GET", "/metrics"), 200).raw.decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            values = [s.value for s in fam.samples
                      if s.name in (family, f"{family}_total") and not s.labels]
            assert values, f"{family} has no label-free sample"
            return float(values[0])
    raise AssertionError(f"{family} missing from /metrics")
