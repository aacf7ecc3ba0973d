"""One cell member: identity, storage, driver, cell service and peer transport wired together."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from lockcell.node.cell import CallFailed, CellService, MemberAddress
from lockcell.node.collector import Collector
from lockcell.node.driver import DriverConfig, RaftDriver, Unavailable
from lockcell.observability.events import ClusterEventLog
from lockcell.observability.metrics import MemberMetrics
from lockcell.raft.confchange import ConfChangeError, apply_conf_change
from lockcell.raft.core import ConfChangeInProgressError, bootstrap_entries
from lockcell.raft.types import ChangeOp, ConfChange, ConfState, MemberChange, NodeId, Role
from lockcell.statemachine.errors import ErrorCode, Failure
from lockcell.storage.identity import open_member_identity
from lockcell.storage.store import DEFAULT_SEGMENT_SIZE, FileRaftStorage
from lockcell.transport.peer import ForwardedReply, ForwardedRequest, PeerTransport

log = logging.getLogger("lockcell.member")

CONFIGURATION_HISTORY = 32
PROMOTE_MAX_LAG = 1000
"""A learner is promoted only when in contact and at most this many entries behind the commit
index (the operator waits for a lag of 100 before it asks)."""


@dataclass(frozen=True, slots=True)
class MemberConfig:
    """Everything a member needs to start (from flags or ``LOCKCELL_*`` variables)."""

    cell: str
    data_dir: Path
    name_hint: str
    client_host: str = "127.0.0.1"
    client_port: int = 7001
    peer_host: str = "127.0.0.1"
    peer_port: int = 7101
    client_url: str = ""
    peer_url: str = ""
    bootstrap: bool = False
    join: tuple[str, ...] = ()
    admin_token: str = ""
    peer_secret: str = "lockcell-dev-peer-secret"
    lease_ms: int = 12000
    max_lock_delay_ms: int = 60000
    grace_ms: int = 45000
    tick_ms: int = 100
    election_ticks: int = 10
    snapshot_every: int = 20000
    segment_size: int = DEFAULT_SEGMENT_SIZE
    leader_inline_write_ms: float = 5.0
    leader_async_sync: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def advertised_client_url(self) -> str:
        """The client URL peers and clients are told."""
        return self.client_url or f"http://{self.client_host}:{self.client_port}"

    @property
    def advertised_peer_url(self) -> str:
        """The peer address (host:port) other members dial."""
        return self.peer_url or f"{self.peer_host}:{self.peer_port}"


def _conflict(message: str) -> CallFailed:
    return CallFailed(Failure(ErrorCode.CONFLICT, message))


class Member:
    """A running member of a cell (without its HTTP front end)."""

    def __init__(self, config: MemberConfig) -> None:
        self.config = config
        self.id, created = open_member_identity(config.data_dir, config.name_hint)
        self.storage = FileRaftStorage(config.data_dir / "raft",
                                       segment_size=config.segment_size)
        if created and config.bootstrap:
            context = json.dumps({"members": {self.id: {
                "url": config.advertised_client_url, "peer_url": config.advertised_peer_url}}})
            hard_state, entries = bootstrap_entries([self.id], context)
            self.storage.save(hard_state, entries)
            log.info("bootstrapped a new cell %s with member %s", config.cell, self.id)
        self.metrics = MemberMetrics()
        self.service = CellService(
            config.cell, default_lease_ms=config.lease_ms,
            max_lock_delay_ms=config.max_lock_delay_ms, grace_ms=config.grace_ms,
            on_members=self._members_changed,
        )
        self.driver = RaftDriver(
            self.id, self.storage, self.service,
            DriverConfig(tick_ms=config.tick_ms, election_ticks=config.election_ticks,
                         snapshot_every=config.snapshot_every,
                         leader_inline_write_ms=config.leader_inline_write_ms,
                         leader_async_sync=config.leader_async_sync),
        )
        self.driver.metrics_hook = self.metrics.observe
        self.metrics.observe("leader_writes_in_loop", float(config.leader_inline_write_ms > 0))
        self.collector = Collector(self.metrics.observe)
        self.driver.snapshot_hook = self.collector.settle
        self.service.metrics_hook = self.metrics.observe
        self.events = ClusterEventLog(replayed_until=self.driver.core.log.committed)
        self.driver.event_hook = self._driver_event
        self.service.attach(self.driver)
        self.transport = PeerTransport(
            self.id, config.cell, config.peer_secret,
            on_raft=self.driver.receive,
            on_forward=self._forward_unset,
            report_unreachable=lambda peer: self.driver.call(
                lambda: self.driver.core.report_unreachable(peer)),
            report_snapshot=lambda peer, ok: self.driver.call(
                lambda: self.driver.core.report_snapshot(peer, ok)),
            report_gone=lambda peer: self.driver.call(
                lambda: self.driver.core.report_gone(peer)),
        )
        self.transport.advertised_address = _peer_address(config.advertised_peer_url)
        self._join_task: asyncio.Task[None] | None = None
        self._settling: asyncio.Task[None] | None = None
        self.started_at = time.time()
        self.configurations: deque[dict[str, Any]] = deque(maxlen=CONFIGURATION_HISTORY)
        """The configurations this member applied since it started, newest last."""

    def _driver_event(self, kind: str, info: dict[str, Any]) -> None:
        """Leader, role and membership changes: into the metrics and the event ring."""
        before, change = info.get("conf"), info.get("change")
        if kind == "conf_change" and isinstance(before, ConfState) and isinstance(
                change, ConfChange):
            try:
                conf = apply_conf_change(before, change)  # the hook sees the one before
            except ConfChangeError:
                conf = before
            self.configurations.append({
                "index": info.get("index"), "voters": sorted(conf.voters),
                "learners": sorted(conf.learners),
                "joint": ({"old": sorted(conf.voters_outgoing), "new": sorted(conf.voters)}
                          if conf.joint else None),
            })
        try:
            self.metrics.on_driver_event(kind, info)
            self.events.record(kind, info)
        except Exception:  # observability must never stop the driver loop
            log.exception("recording a %s event failed", kind)

    async def _forward_unset(self, request: ForwardedRequest) -> ForwardedReply:
        raise Unavailable("not ready")

    def set_forward_handler(self, handler: Any) -> None:
        """Install the HTTP layer's handler for calls forwarded by followers."""
        self.transport._on_forward = handler

    def _members_changed(self, members: dict[NodeId, MemberAddress]) -> None:
        # Restoring the snapshot on disk calls this while __init__ builds the driver, before
        # the transport exists; start() hands the members to the transport then.
        transport: PeerTransport | None = self.__dict__.get("transport")
        if transport is not None:
            transport.set_peers({m: _peer_address(a.peer_url) for m, a in members.items()})

    async def start(self) -> None:
        """Listen on the peer port, start the driver, and join if asked to."""
        await self.transport.listen(self.config.peer_host, self.config.peer_port)
        self.collector.install()
        self.collector.settle()  # what the snapshot restored is long-lived
        self._settling = asyncio.get_running_loop().create_task(
            self.collector.settle_forever(), name="gc-settle")
        self._members_changed(self.service.members)
        self.driver.start(self.transport)
        self.service.start()
        if self.config.join and not self.driver.core.conf.members():
            self._join_task = asyncio.get_running_loop().create_task(self._join())

    async def hand_over(self, timeout: float = 1.0) -> NodeId | None:
        """Before a leader stops, hand leadership to the most caught-up other voter, so
        the cell has a leader again at once instead of after an election timeout of
        silence (a rolling restart, a SIGTERM). Returns who took over, None when this
        member did not lead or no one could take over in time."""
        if not self.driver.is_leader or self.driver.core.conf.all_voters() <= {self.id}:
            return None
        try:
            async with asyncio.timeout(timeout):
                await self.transfer(None)
        except (CallFailed, Unavailable, TimeoutError) as exc:
            log.warning("stopping without handing leadership over: %s", exc)
            return None
        log.info("handed leadership to %s before stopping", self.driver.leader_id)
        return self.driver.leader_id

    async def stop(self) -> None:
        """Stop everything; fsynced state stays on disk."""
        if self._join_task is not None:
            self._join_task.cancel()
        await self.service.stop()
        await self.transport.close()
        await self.driver.stop()
        if self._settling is not None:
            self._settling.cancel()
        self.collector.uninstall()

    # ------------------------------------------------------------------ joining

    async def _join(self) -> None:
        """Ask the cell (through ``--join`` endpoints) to add this member, then promote it."""
        body = {"id": self.id, "url": self.config.advertised_client_url,
                "peer_url": self.config.advertised_peer_url}
        headers = {"Authorization": f"Bearer {self.config.admin_token}"}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            while self.id not in self.driver.core.conf.members():
                for endpoint in self.config.join:
                    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                        async with http.post(f"{endpoint}/v1/cluster/members", json=body,
                                             headers=headers) as response:
                            if response.status in (200, 201):
                                break
                            log.info("join via %s: %s", endpoint, await response.text())
                await asyncio.sleep(0.5)
            while not self.driver.core.conf.is_voter(self.id):
                ready, _ = self.readiness()
                if ready:
                    for endpoint in self.config.join:
                        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                            url = f"{endpoint}/v1/cluster/members/{self.id}/promote"
                            async with http.post(url, headers=headers) as response:
                                if response.status == 200:
                                    break
                await asyncio.sleep(0.5)
        log.info("joined cell %s as voter %s", self.config.cell, self.id)

    # ------------------------------------------------------------------ views

    def leader_url(self) -> str | None:
        """Client URL of the leader this member knows."""
        leader = self.driver.leader_id
        if leader is None:
            return None
        if leader == self.id:
            return self.config.advertised_client_url
        address = self.service.members.get(leader)
        return address.url if address is not None else None

    def cluster_view(self) -> dict[str, Any]:
        """The answer of ``GET /v1/cluster``."""
        status = self.driver.status()
        conf = status.conf
        members = []
        for member_id in sorted(conf.members()):
            address = self.service.members.get(member_id)
            progress = status.progress.get(member_id)
            match = progress.match if progress is not None else None
            if member_id == self.id and status.role is Role.LEADER:
                match = status.last_index if progress is None else progress.match
            members.append({
                "id": member_id,
                "url": address.url if address else None,
                "peer_url": address.peer_url if address else None,
                "role": "voter" if conf.is_voter(member_id) else "learner",
                "match_index": match,
            })
        return {
            "leader": status.leader,
            "term": status.term,
            "leader_in_contact": status.leader is not None
            and self.driver.in_contact_with_leader(),
            "commit_index": status.commit,
            "applied_index": status.applied,
            "members": members,
            "joint": ({"old": sorted(conf.voters_outgoing), "new": sorted(conf.voters)}
                      if conf.joint else None),
            "configurations": list(self.configurations),
            "self": {"id": self.id, "url": self.config.advertised_client_url,
                     "peer_url": self.config.advertised_peer_url,
                     "role": status.role.value},
        }

    async def confirm_ready(self, timeout: float = 1.0) -> tuple[bool, str]:
        """Readiness confirmed with the leader: a ReadIndex round trip tells what it has
        committed right now, and this member is ready once it has applied that much."""
        ready, reason = self.readiness(catching_up_is_ready=True)
        if not ready:
            return ready, reason
        try:
            async with asyncio.timeout(timeout):
                await self.driver.linearizable_read()
        except (TimeoutError, Unavailable) as exc:
            return False, f"not caught up with the leader ({exc or 'timeout'})"
        return True, "ok"

    def readiness(self, catching_up_is_ready: bool = False) -> tuple[bool, str]:
        """Ready: in the configuration, a leader known, and applied what it committed
        (``catching_up_is_ready`` leaves that last part to a ReadIndex round trip)."""
        core = self.driver.core
        if self.id not in core.conf.members():
            return False, "not a member of the configuration yet"
        if core.leader is None:
            return False, "no leader known"
        if not self.driver.in_contact_with_leader():
            return False, "no recent word from the leader"
        target = max(core.log.committed, core.leader_commit)
        if core.log.applied < target and not catching_up_is_ready:
            return False, f"catching up (applied {core.log.applied} of {target})"
        if core.role is Role.LEADER and not self.service.serving:
            return False, "leader committing its first entry"
        return True, "ok"

    # ------------------------------------------------------------------ membership (admin)

    async def _change(self, change: ConfChange) -> None:
        try:
            await self.driver.propose_conf_change(change)
        except (ConfChangeError, ConfChangeInProgressError) as exc:
            raise _conflict(str(exc)) from exc
        deadline = time.monotonic() + 10.0
        while self.driver.core.conf.joint and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def add_learner(self, member_id: str, url: str, peer_url: str) -> dict[str, Any]:
        """Add ``member_id`` as a learner that starts catching up."""
        if not member_id or len(member_id) > 253:
            raise _conflict("bad member id")
        conf = self.driver.core.conf
        if member_id in conf.members():
            if member_id in conf.learners and member_id in self.service.members:
                return self.cluster_view()  # idempotent retry
            raise _conflict(f"{member_id} is already a member")
        context = json.dumps({"members": {member_id: {"url": url, "peer_url": peer_url}}})
        await self._change(ConfChange((MemberChange(ChangeOp.ADD_LEARNER, member_id),),
                                      context))
        return self.cluster_view()

    async def promote(self, member_id: str) -> dict[str, Any]:
        """Promote a caught-up learner to voter (joint consensus, left automatically)."""
        conf = self.driver.core.conf
        if member_id not in conf.members():
            raise CallFailed(Failure(ErrorCode.NOT_FOUND, f"{member_id} is not a member"))
        if conf.is_voter(member_id):
            return self.cluster_view()
        # A voter that cannot vote costs quorum: promoting learners that never caught up
        # (say, added with an unreachable address) would lose it a few calls later.
        status = self.driver.status()
        progress = status.progress.get(member_id)
        if (progress is None or progress.match == 0 or not progress.recent_active
                or status.commit - progress.match > PROMOTE_MAX_LAG):
            match = progress.match if progress is not None else 0
            raise _conflict(f"{member_id} has not caught up (match index {match} of "
                            f"{status.commit}, in contact: "
                            f"{progress is not None and progress.recent_active})")
        await self._change(ConfChange((MemberChange(ChangeOp.ADD_VOTER, member_id),)))
        return self.cluster_view()

    async def remove(self, member_id: str) -> dict[str, Any]:
        """Remove a member (voters through joint consensus)."""
        conf = self.driver.core.conf
        if member_id not in conf.members():
            raise CallFailed(Failure(ErrorCode.NOT_FOUND, f"{member_id} is not a member"))
        await self._change(ConfChange((MemberChange(ChangeOp.REMOVE, member_id),)))
        if member_id == self.id:
            # A removed leader hands over once C_new knows it is final; answer after that,
            # so whoever shuts this member down next cannot strand the new configuration.
            deadline = time.monotonic() + 10.0
            while self.driver.is_leader and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        return self.cluster_view()

    async def transfer(self, to: str | None) -> dict[str, Any]:
        """Move leadership to ``to`` (or the most caught-up other voter)."""
        status = self.driver.status()
        if to is None:
            candidates = [(p.match, m) for m, p in status.progress.items()
                          if m != self.id and status.conf.is_voter(m)]
            if not candidates:
                raise _conflict("no other voter to take over")
            to = max(candidates)[1]
        if not status.conf.is_voter(to):
            raise _conflict(f"{to} is not a voter")
        if to == self.id:
            return self.cluster_view()
        target = to
        self.driver.call(lambda: self.driver.core.transfer_leader(target))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            if self.driver.leader_id == target:
                return self.cluster_view()
        raise Unavailable(f"leadership did not move to {to} in time")


def _peer_address(peer_url: str) -> str:
    """``tcp://host:port`` or ``host:port`` → ``host:port``."""
    return peer_url.split("://", 1)[-1].rstrip("/")
