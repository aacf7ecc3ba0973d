"""A fake lockcell cell for operator tests: one aiohttp server per pod on 127.0.0.1.

It speaks the DESIGN §4 shapes the operator relies on: `GET /healthz` → {"id"},
`GET /readyz`, `GET /v1/cluster`, and the admin membership routes with a bearer token and
{"error": {"code", "message"}} errors. The Raft side is simulated on a timer: learners catch
up, joint consensus resolves after a few ticks, a leader exists only while a majority of
voters is up (CheckQuorum), and an empty volume mints a new member id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from lockcell.cli.localcell import free_port_base

POD = web.AppKey("pod", str)


def free_port() -> int:
    """A free loopback port below the ephemeral range (see ``free_port_base``)."""
    return free_port_base([0])


def quorum(n: int) -> int:
    return n // 2 + 1


@dataclass
class FakeMemberState:
    id: str
    url: str
    peer_url: str
    role: str
    match: int = 0


@dataclass
class FakeCell:
    """Shared Raft state plus the per-pod servers."""

    token: Callable[[], str | None]
    url_of: Callable[[str], tuple[str, str]]
    tick_seconds: float = 0.04
    catch_up_per_tick: int = 25
    joint_ticks: int = 4
    members: dict[str, FakeMemberState] = field(default_factory=dict)
    leader: str | None = None
    term: int = 0
    commit: int = 50
    joint: dict[str, list[str]] | None = None
    joint_age: int = 0
    volumes: dict[str, str] = field(default_factory=dict)  # pod → member id in its data dir
    running: dict[str, web.AppRunner] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    minted: int = 0
    _ticker: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> FakeCell:
        self._ticker = asyncio.create_task(self._tick_forever())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for pod in list(self.running):
            await self.stop(pod)

    def port(self, pod: str) -> int:
        if pod not in self.ports:
            self.ports[pod] = free_port()
        return self.ports[pod]

    def base_url(self, pod: str) -> str:
        return f"http://127.0.0.1:{self.port(pod)}"

    def is_up(self, pod: str) -> bool:
        return pod in self.running

    async def start(self, pod: str, *, bootstrap: bool = False) -> str:
        """Start the server of `pod` (its volume is kept across restarts)."""
        if pod in self.running:
            return self.volumes[pod]
        if not self.volumes.get(pod):
            self.minted += 1
            self.volumes[pod] = f"{pod}-x{self.minted}"
            if bootstrap and not self.members:
                url, peer = self.url_of(pod)
                new_id = self.volumes[pod]
                self.members[new_id] = FakeMemberState(new_id, url, peer, "voter", self.commit)
                self.leader = new_id
                self.term += 1
        app = web.Application()
        app[POD] = pod
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/v1/cluster", self._cluster)
        app.router.add_post("/v1/cluster/members", self._add)
        app.router.add_post("/v1/cluster/members/{id}/promote", self._promote)
        app.router.add_delete("/v1/cluster/members/{id}", self._remove)
        app.router.add_post("/v1/cluster/leader", self._transfer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port(pod), reuse_address=True)
        await site.start()
        self.running[pod] = runner
        return self.volumes[pod]

    async def stop(self, pod: str) -> None:
        runner = self.running.pop(pod, None)
        if runner is not None:
            await runner.cleanup()

    def wipe(self, pod: str) -> None:
        self.volumes.pop(pod, None)

    # --- Raft simulation ------------------------------------------------------------------------
    def id_of(self, pod: str) -> str | None:
        return self.volumes.get(pod) if pod in self.running else None

    def up_ids(self) -> set[str]:
        return {i for p in self.running if (i := self.volumes.get(p))}

    def voters(self) -> list[str]:
        return [m.id for m in self.members.values() if m.role == "voter"]

    def has_quorum(self) -> bool:
        up = self.up_ids()
        voters = self.voters()
        if not voters or sum(1 for v in voters if v in up) < quorum(len(voters)):
            return False
        if self.joint is not None:
            old = self.joint["old"]
            if sum(1 for v in old if v in up) < quorum(len(old)):
                return False
        return True

    def tick(self) -> None:
        up = self.up_ids()
        quorate = self.has_quorum()
        if quorate:
            self.commit += 1
        for m in self.members.values():
            if m.id in up and quorate:
                if m.role == "voter":
                    m.match = self.commit
                else:
                    m.match = min(self.commit, m.match + self.catch_up_per_tick)
        if self.joint is not None and quorate:
            self.joint_age += 1
            if self.joint_age >= self.joint_ticks:
                self.joint, self.joint_age = None, 0
        if self.leader is not None and (not quorate or self.leader not in up
                                        or self.leader not in self.voters()):
            self.leader = None
        if self.leader is None and quorate:
            self.leader = sorted(v for v in self.voters() if v in up)[0]
            self.term += 1

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick_seconds)
            self.tick()

    def view(self) -> dict[str, Any]:
        return {
            "leader": self.leader,
            "term": self.term,
            "commit_index": self.commit,
            "members": [
                {"id": m.id, "url": m.url, "peer_url": m.peer_url, "role": m.role,
                 "match_index": m.match}
                for m in self.members.values()
            ],
            "joint": self.joint,
        }

    # --- HTTP -------------------------------------------------------------------------------------
    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    def _my_id(self, request: web.Request) -> str:
        return self.volumes[request.app[POD]]

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "id": self._my_id(request)})

    async def _readyz(self, request: web.Request) -> web.Response:
        me = self._my_id(request)
        if me in self.members and self.leader is not None:
            return web.json_response({"ready": True})
        return self._error(503, "unavailable", "not a member or no leader")

    async def _cluster(self, request: web.Request) -> web.Response:
        if self._my_id(request) not in self.members:
            return self._error(503, "unavailable", "not a member of the cell yet")
        return web.json_response(self.view())

    def _admin(self, request: web.Request) -> web.Response | None:
        want = self.token()
        if not want or request.headers.get("Authorization") != f"Bearer {want}":
            return self._error(401, "unauthorized", "admin token required")
        if self.leader is None:
            return self._error(503, "unavailable", "no leader")
        if self._my_id(request) != self.leader:
            return self._error(503, "unavailable", "ask the leader")  # the operator does
        return None

    async def _add(self, request: web.Request) -> web.Response:
        if (denied := self._admin(request)) is not None:
            return denied
        body = await request.json()
        self.calls.append(("add", request.path, body))
        if not all(isinstance(body.get(k), str) for k in ("id", "url", "peer_url")):
            return self._error(400, "invalid_argument", "id, url, peer_url required")
        if self.joint is not None or any(m.role == "learner" for m in self.members.values()):
            return self._error(409, "conflict", "a membership change is in progress")
        if body["id"] in self.members:
            return self._error(409, "conflict", "already a member")
        self.members[body["id"]] = FakeMemberState(
            body["id"], body["url"], body["peer_url"], "learner", 0)
        return web.json_response(self.view(), status=201)

    async def _promote(self, request: web.Request) -> web.Response:
        if (denied := self._admin(request)) is not None:
            return denied
        member_id = request.match_info["id"]
        self.calls.append(("promote", request.path, member_id))
        m = self.members.get(member_id)
        if m is None:
            return self._error(404, "not_found", "no such member")
        if m.role != "learner" or self.joint is not None:
            return self._error(409, "conflict", "not a learner, or a change is in progress")
        if self.commit - m.match > 100:
            return self._error(409, "conflict", "learner has not caught up")
        old = self.voters()
        m.role = "voter"
        self.joint, self.joint_age = {"old": old, "new": self.voters()}, 0
        return web.json_response(self.view())

    async def _remove(self, request: web.Request) -> web.Response:
        if (denied := self._admin(request)) is not None:
            return denied
        member_id = request.match_info["id"]
        self.calls.append(("remove", request.path, member_id))
        m = self.members.get(member_id)
        if m is None:
            return self._error(404, "not_found", "no such member")
        if self.joint is not None:
            return self._error(409, "conflict", "a change is in progress")
        old = self.voters()
        del self.members[member_id]
        if m.role == "voter":
            self.joint, self.joint_age = {"old": old, "new": self.voters()}, 0
        if self.leader == member_id:
            self.leader = None
        return web.Response(status=204)

    async def _transfer(self, request: web.Request) -> web.Response:
        if (denied := self._admin(request)) is not None:
            return denied
        body = await request.json()
        self.calls.append(("leader", request.path, body))
        to = body.get("to")
        m = self.members.get(to) if isinstance(to, str) else None
        if m is None or m.role != "voter" or to not in self.up_ids():
            return self._error(409, "conflict", "target cannot lead")
        self.leader = to
        self.term += 1
        return web.json_response(self.view())
