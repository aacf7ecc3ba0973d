"""Prometheus metrics of one member: Raft, lock service and HTTP, in a private registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from lockcell.node.member import Member

_ROLES = ("follower", "pre_candidate", "candidate", "leader")


class MemberMetrics:
    """Metrics named ``lockcell_*``; gauges are refreshed from the member on scrape."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.term = Gauge("lockcell_raft_term", "Current Raft term", registry=r)
        self.role = Gauge("lockcell_raft_role", "1 for this member's current role",
                          ["role"], registry=r)
        self.commit = Gauge("lockcell_raft_commit_index", "Commit index", registry=r)
        self.applied = Gauge("lockcell_raft_applied_index", "Applied index", registry=r)
        self.leader_changes = Counter("lockcell_raft_leader_changes_total",
                                      "Times this member saw the leader change", registry=r)
        self.members = Gauge("lockcell_raft_members", "Members by role", ["role"], registry=r)
        self.joint = Gauge("lockcell_raft_joint", "1 while in a joint configuration",
                           registry=r)
        self.follower_lag = Gauge("lockcell_raft_follower_lag_entries",
                                  "Leader's view of how far each member is behind",
                                  ["member"], registry=r)
        self.fsync = Histogram("lockcell_wal_fsync_seconds", "WAL batch write+fsync time",
                               buckets=(.0002, .0005, .001, .002, .005, .01, .025, .05, .1,
                                        .25, 1), registry=r)
        self.batch = Histogram("lockcell_wal_append_batch_entries", "Entries per WAL batch",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                               registry=r)
        self.snapshot = Histogram("lockcell_snapshot_seconds", "Snapshot creation time",
                                  registry=r)
        self.sessions = Gauge("lockcell_sessions", "Live sessions", registry=r)
        self.handles = Gauge("lockcell_handles", "Open handles", registry=r)
        self.nodes = Gauge("lockcell_nodes", "Files and directories", registry=r)
        self.locks = Gauge("lockcell_locks_held", "Locks held by mode", ["mode"], registry=r)
        self.waiters = Gauge("lockcell_lock_waiters", "Blocking acquires queued at the leader",
                             registry=r)
        self.expired = Gauge("lockcell_sessions_expired", "Sessions expired by this leader",
                             registry=r)
        self.keepalives = Gauge("lockcell_keepalives", "KeepAlives served by this leader",
                                registry=r)
        self.events = Gauge("lockcell_events", "Events queued by this leader", registry=r)
        self.http = Counter("lockcell_http_requests_total", "HTTP requests",
                            ["route", "code"], registry=r)
        self.http_latency = Histogram("lockcell_http_request_seconds", "HTTP latency",
                                      ["route"], registry=r)
        self._last_leader: str | None = None

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        self.http.labels(route, str(status)).inc()
        self.http_latency.labels(route).observe(seconds)

    def observe(self, name: str, value: float) -> None:
        """Driver hook: fsync time, batch size, snapshot time."""
        if name == "fsync_seconds":
            self.fsync.observe(value)
        elif name == "append_batch":
            self.batch.observe(value)
        elif name == "snapshot_seconds":
            self.snapshot.observe(value)

    def render(self, member: Member) -> tuple[bytes, str]:
        """Refresh gauges from ``member`` and render the exposition text."""
        status = member.driver.status()
        self.term.set(status.term)
        for role in _ROLES:
            self.role.labels(role).set(1 if status.role.value == role else 0)
        self.commit.set(status.commit)
        self.applied.set(status.applied)
        if status.leader != self._last_leader:
            self._last_leader = status.leader
            self.leader_changes.inc()
        conf = status.conf
        self.members.labels("voter").set(len(conf.voters | conf.voters_outgoing))
        self.members.labels("learner").set(len(conf.learners))
        self.joint.set(1 if conf.joint else 0)
        for member_id, progress in status.progress.items():
            self.follower_lag.labels(member_id).set(max(0, status.last_index - progress.match))
        counts = member.service.state.counts()
        self.sessions.set(counts.sessions)
        self.handles.set(counts.handles)
        self.nodes.set(counts.nodes)
        self.locks.labels("exclusive").set(counts.locks_exclusive)
        self.locks.labels("shared").set(counts.locks_shared)
        self.waiters.set(member.service.total_waiters())
        self.expired.set(member.service.counters["sessions_expired"])
        self.keepalives.set(member.service.counters["keepalives"])
        self.events.set(member.service.counters["events"])
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
