"""Prometheus metrics of one member: Raft, lock service and HTTP, in a private registry.

Counters and histograms are fed as things happen, through hooks: the driver's
``metrics_hook`` and ``event_hook``, the cell service's ``metrics_hook`` and the HTTP
middleware (:meth:`MemberMetrics.observe_http`). Gauges are refreshed from the member on
every scrape (:meth:`MemberMetrics.render`). Labels stay low-cardinality: routes, codes,
roles, modes, command and event types, and member ids (a cell has at most nine members) -
never session ids, paths or handles.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

import lockcell
from lockcell.raft.types import Role

if TYPE_CHECKING:
    from lockcell.node.member import Member

_ROLES = tuple(role.value for role in Role)

# Outcomes of a proposal, as the driver reports them (``proposal:<result>``).
PROPOSAL_RESULTS = ("committed", "failed", "lost", "not_leader", "dropped")
# Outcomes of Acquire (``acquire:<mode>:<result>``).
ACQUIRE_RESULTS = ("granted", "lock_busy", "lock_delay", "error", "unavailable")

_LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30,
                    60)
_WAIT_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120,
                 300)


class LoopSeries:
    """One labelled series of a :class:`LoopHistogram`: bucket counts and a sum."""

    __slots__ = ("bounds", "buckets", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.buckets = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one observation (in the first bucket whose bound is at least ``value``)."""
        self.buckets[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value


class LoopHistogram:
    """A labelled histogram fed by the event loop's per-request paths: an observation is
    a bisect and two additions, where prometheus-client takes a lock for the bucket and
    another for the sum (1.5 us against 0.13 us). Only the loop's thread may observe; the
    families are built when the registry is scraped (on that same thread). With
    ``counter``, the count of each series is also exposed as that counter."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...],
                 buckets: tuple[float, ...], registry: CollectorRegistry,
                 counter: tuple[str, str] | None = None) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.bounds = tuple(float(bound) for bound in buckets)
        self._edges = [*(floatToGoString(bound)  # type: ignore[no-untyped-call]
                         for bound in self.bounds), "+Inf"]
        """The ``le`` labels, written as prometheus-client writes them."""
        self.counter = counter
        self.series: dict[tuple[str, ...], LoopSeries] = {}
        registry.register(self)

    def labels(self, *values: str) -> LoopSeries:
        """The series of these label values (made on first use)."""
        series = self.series.get(values)
        if series is None:
            series = self.series[values] = LoopSeries(self.bounds)
        return series

    def describe(self) -> list[Metric]:
        """The families' names, for the registry's duplicate check (no samples)."""
        return [family for family in self._empty_families() if family is not None]

    def collect(self) -> Iterator[Metric]:
        """The histogram family (cumulative ``le`` buckets), and the counter if any."""
        histogram, counter = self._empty_families()
        edges = self._edges
        for values, series in self.series.items():
            cumulative = list(itertools.accumulate(series.buckets))
            histogram.add_metric(list(values), list(zip(edges, cumulative, strict=True)),
                                 series.total)
            if counter is not None:
                counter.add_metric(list(values), cumulative[-1])
        yield histogram
        if counter is not None:
            yield counter

    def _empty_families(self) -> tuple[HistogramMetricFamily, CounterMetricFamily | None]:
        labels = list(self.labelnames)
        histogram = HistogramMetricFamily(self.name, self.documentation, labels=labels)
        if self.counter is None:
            return histogram, None
        return histogram, CounterMetricFamily(self.counter[0], self.counter[1], labels=labels)


class MemberMetrics:
    """Metrics named ``lockcell_*`` of one member."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series
        r = self.registry = CollectorRegistry()
        ProcessCollector(namespace="lockcell", registry=r)
        self.info = Gauge("lockcell_member_info", "Always 1: this member's id and version",
                          ["member", "version"], registry=r)
        # --- Raft
        self.term = Gauge("lockcell_raft_term", "Current Raft term", registry=r)
        self.role = Gauge("lockcell_raft_role", "1 for this member's current role",
                          ["role"], registry=r)
        self.has_leader = Gauge("lockcell_raft_has_leader",
                                "1 while this member knows a leader", registry=r)
        self.lease = Gauge("lockcell_raft_leader_lease",
                           "1 while this member leads and holds its leader lease", registry=r)
        self.commit = Gauge("lockcell_raft_commit_index", "Commit index", registry=r)
        self.applied = Gauge("lockcell_raft_applied_index", "Applied index", registry=r)
        self.last_index = Gauge("lockcell_raft_last_index", "Index of the last log entry",
                                registry=r)
        self.snapshot_index = Gauge("lockcell_raft_snapshot_index",
                                    "Index the latest snapshot covers", registry=r)
        self.leader_changes = Counter("lockcell_raft_leader_changes_total",
                                      "Times this member saw a new leader", registry=r)
        self.role_changes = Counter("lockcell_raft_role_changes_total",
                                    "Times this member entered a role (pre_candidate and "
                                    "candidate: elections it started)", ["role"], registry=r)
        self.proposals = Counter("lockcell_raft_proposals_total",
                                 "Proposals by outcome: committed, failed (apply raised), lost "
                                 "(leadership changed first), not_leader, dropped",
                                 ["result"], registry=r)
        self.conf_changes = Counter("lockcell_raft_conf_changes_total",
                                    "Membership changes applied on this member", registry=r)
        self.members = Gauge("lockcell_raft_members", "Members by role", ["role"], registry=r)
        self.joint = Gauge("lockcell_raft_joint", "1 while in a joint configuration",
                           registry=r)
        self.follower_lag = Gauge("lockcell_raft_follower_lag_entries",
                                  "Leader's view: entries each member's log is behind the "
                                  "leader's last index", ["member"], registry=r)
        self.quorum = Gauge("lockcell_raft_quorum_active",
                            "1 on the leader while a majority of voters (of both configurations "
                            "when joint) answered it within an election timeout; 0 elsewhere",
                            registry=r)
        self.voters_active = Gauge("lockcell_raft_voters_active",
                                   "Leader's view: voters that answered within an election "
                                   "timeout (itself included); 0 on other members", registry=r)
        self.follower_active = Gauge("lockcell_raft_follower_active",
                                     "Leader's view: 1 when the member answered within the "
                                     "last election timeout", ["member"], registry=r)
        self.fsync = Histogram("lockcell_wal_fsync_seconds", "WAL batch write+fsync time",
                               buckets=(.0002, .0005, .001, .002, .005, .01, .025, .05, .1,
                                        .25, 1), registry=r)
        self.leader_writes_in_loop = Gauge(
            "lockcell_leader_writes_in_loop",
            "1 while this member, leading, writes its log in its event loop; 0 while its "
            "writes are slow enough to go to the WAL thread", registry=r)
        self.wal_aio = Gauge(
            "lockcell_wal_aio",
            "1 when this member, leading, writes its log in its event loop and has Linux AIO "
            "run the fdatasync (the loop never waits for the disk)", registry=r)
        self.batch = Histogram("lockcell_wal_append_batch_entries", "Entries per WAL batch",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
                               registry=r)
        self.snapshot = Histogram("lockcell_snapshot_seconds",
                                  "Snapshot creation time, image to installed file "
                                  "(built in a child process off the event loop)",
                                  registry=r)
        self.loop_lag = Histogram("lockcell_event_loop_lag_seconds",
                                  "How late the Raft ticker woke (event loop busy: a long "
                                  "callback, a collection, CPU starvation)",
                                  buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5),
                                  registry=r)
        self.gc_pause = Histogram("lockcell_gc_pause_seconds",
                                  "Cyclic garbage collections by generation (they stop the "
                                  "event loop)", ["generation"],
                                  buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5),
                                  registry=r)
        for generation in ("0", "1", "2"):
            self.gc_pause.labels(generation)  # exported before the first collection
        self.snapshot_failures = Counter("lockcell_snapshot_failures_total",
                                         "Snapshots that could not be built or staged",
                                         registry=r)
        self.snapshot_restore = Histogram("lockcell_snapshot_restore_seconds",
                                          "Time to install a snapshot received from the "
                                          "leader", registry=r)
        self.snapshot_bytes = Gauge("lockcell_snapshot_bytes",
                                    "Size of the latest snapshot this member took", registry=r)
        # --- lock service
        self.sessions = Gauge("lockcell_sessions", "Live sessions", registry=r)
        self.tombstones = Gauge("lockcell_session_tombstones",
                                "Expired or closed sessions still remembered", registry=r)
        self.handles = Gauge("lockcell_handles", "Open handles", registry=r)
        self.nodes = Gauge("lockcell_nodes", "Files and directories", registry=r)
        self.locks = Gauge("lockcell_locks_held", "Locks held by mode", ["mode"], registry=r)
        self.shared_holders = Gauge("lockcell_lock_shared_holders",
                                    "Holders of shared locks", registry=r)
        self.waiters = Gauge("lockcell_lock_waiters", "Blocking acquires queued at the leader",
                             registry=r)
        self.expired = Counter("lockcell_sessions_expired_total",
                               "Sessions this member expired as leader", registry=r)
        self.keepalives = Counter("lockcell_keepalives_total",
                                  "KeepAlives this member served as leader", registry=r)
        self.events = Counter("lockcell_events_total",
                              "Events queued for clients by this member as leader", ["type"],
                              registry=r)
        self.lock_delay_blocks = Counter("lockcell_lock_delay_blocks_total",
                                         "Acquires refused or held back by lock-delay",
                                         registry=r)
        self.acquire = Histogram("lockcell_lock_acquire_seconds",
                                 "Acquire latency (waiting included) by mode and outcome",
                                 ["mode", "result"], buckets=_WAIT_BUCKETS, registry=r)
        self.writes = LoopHistogram("lockcell_write_seconds",
                                    "Leader: time from proposing a command to its result, "
                                    "by command", ("command",), _LATENCY_BUCKETS, r)
        # --- HTTP
        self.http = LoopHistogram("lockcell_http_request_seconds", "HTTP latency",
                                  ("route", "code"), _LATENCY_BUCKETS, r,
                                  counter=("lockcell_http_requests_total", "HTTP requests"))
        self._leader: str | None = None
        self._role: Role | None = None
        self._lag_members: set[str] = set()
        self._children: dict[tuple[object, ...], Any] = {}
        """Labelled children already looked up (``labels()`` locks and allocates per call)."""
        for result in PROPOSAL_RESULTS:
            self.proposals.labels(result)
        self.leader_changes.inc(0)

    # ------------------------------------------------------------------ hooks

    def observe_http(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        key = (self.http, route, status)
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = self.http.labels(route, str(status))
        series.observe(seconds)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, name: str, value: float = 1.0) -> None:
        """Driver and cell-service hook: ``fsync_seconds``, ``append_batch``,
        ``snapshot_seconds``, ``snapshot_restore_seconds``, ``snapshot_bytes``,
        ``snapshot_failures``, ``leader_writes_in_loop``, ``loop_lag_seconds``,
        ``gc_pause_seconds:<generation>``,
        ``proposal:<result>``, ``keepalive``, ``session_expired``, ``event:<type>``,
        ``lock_delay_block``, ``acquire:<mode>:<result>`` (seconds),
        ``write:<command>`` (seconds). Unknown names are ignored."""
        kind, _, rest = name.partition(":")
        if kind == "proposal":  # per write, as ``write`` is: first in line
            if rest in PROPOSAL_RESULTS:
                self._child(self.proposals, rest).inc(value)
        elif kind == "write":
            if rest:
                self._child(self.writes, rest).observe(value)
        elif kind == "fsync_seconds":
            self.fsync.observe(value)
        elif kind == "append_batch":
            self.batch.observe(value)
        elif kind == "snapshot_seconds":
            self.snapshot.observe(value)
        elif kind == "snapshot_restore_seconds":
            self.snapshot_restore.observe(value)
        elif kind == "snapshot_bytes":
            self.snapshot_bytes.set(value)
        elif kind == "snapshot_failures":
            self.snapshot_failures.inc(value)
        elif kind == "leader_writes_in_loop":
            self.leader_writes_in_loop.set(value)
        elif kind == "wal_aio":
            self.wal_aio.set(value)
        elif kind == "loop_lag_seconds":
            self.loop_lag.observe(value)
        elif kind == "gc_pause_seconds" and rest:
            self._child(self.gc_pause, rest).observe(value)
        elif kind == "keepalive":
            self.keepalives.inc(value)
        elif kind == "session_expired":
            self.expired.inc(value)
        elif kind == "event" and rest:
            self._child(self.events, rest).inc(value)
        elif kind == "lock_delay_block":
            self.lock_delay_blocks.inc(value)
        elif kind == "acquire":
            mode, _, result = rest.partition(":")
            if mode in ("exclusive", "shared") and result in ACQUIRE_RESULTS:
                self._child(self.acquire, mode, result).observe(value)

    def on_driver_event(self, kind: str, info: Mapping[str, Any]) -> None:
        """Driver event hook: count leader and role changes, and membership changes."""
        if kind == "role":
            role = info.get("role")
            if isinstance(role, Role) and role is not self._role:
                self._role = role
                self.role_changes.labels(role.value).inc()
            leader = info.get("leader")
            if leader is not None and leader != self._leader:
                self._leader = str(leader)
                self.leader_changes.inc()
        elif kind == "conf_change":
            self.conf_changes.inc()

    # ------------------------------------------------------------------ scrape

    def render(self, member: Member) -> tuple[bytes, str]:
        """Refresh gauges from ``member`` and render the exposition text."""
        self.refresh(member)
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def refresh(self, member: Member) -> None:
        """Set the gauges from the member's current state."""
        driver = member.driver
        status = driver.status()
        self.info.labels(member.id, lockcell.__version__).set(1)
        self.term.set(status.term)
        for role in _ROLES:
            self.role.labels(role).set(1 if status.role.value == role else 0)
        self.has_leader.set(1 if status.leader is not None else 0)
        self.lease.set(1 if status.role is Role.LEADER and driver.holds_lease() else 0)
        self.commit.set(status.commit)
        self.applied.set(status.applied)
        self.last_index.set(status.last_index)
        self.snapshot_index.set(driver.core.log.snapshot.meta.index)
        conf = status.conf
        self.members.labels("voter").set(len(conf.voters | conf.voters_outgoing))
        self.members.labels("learner").set(len(conf.learners))
        self.joint.set(1 if conf.joint else 0)
        seen: set[str] = set()
        for member_id, progress in status.progress.items():
            seen.add(member_id)
            self.follower_lag.labels(member_id).set(max(0, status.last_index - progress.match))
            active = progress.recent_active or member_id == member.id
            self.follower_active.labels(member_id).set(1 if active else 0)
        if status.role is Role.LEADER:
            answering = {m for m, p in status.progress.items() if p.recent_active}
            answering.add(member.id)
            voters = conf.voters | conf.voters_outgoing

            def majority(group: frozenset[str]) -> bool:
                return not group or 2 * len(group & answering) > len(group)

            has_quorum = majority(conf.voters) and majority(conf.voters_outgoing)
            self.quorum.set(1 if has_quorum and voters else 0)
            self.voters_active.set(len(voters & answering))
        else:
            self.quorum.set(0)
            self.voters_active.set(0)
        for gone in self._lag_members - seen:
            self.follower_lag.remove(gone)
            self.follower_active.remove(gone)
        self._lag_members = seen
        counts = member.service.state.counts()
        self.sessions.set(counts.sessions)
        self.tombstones.set(counts.tombstones)
        self.handles.set(counts.handles)
        self.nodes.set(counts.nodes)
        self.locks.labels("exclusive").set(counts.locks_exclusive)
        self.locks.labels("shared").set(counts.locks_shared)
        self.shared_holders.set(counts.shared_holders)
        self.waiters.set(member.service.total_waiters())
