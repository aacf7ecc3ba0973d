"""Client traffic against a real cell while the operator changes it, and what it must show.

- `CellHttp`: the HTTP API over whichever pods are live. It follows `X-Lockcell-Leader`,
  rides out elections (503, refused connections, timeouts) by retrying, and keeps a write's
  `X-Request-Id` across its retries, so that a retried write is applied once (DESIGN §4).
- `Traffic`: a few asyncio workers, each with its own session kept alive by KeepAlive long
  polls. A round takes an exclusive lock (blocking Acquire) on one of two shared lock files,
  checks its sequencer, passes a fence, increments the counter kept in the lock file itself
  with a compare-and-set, releases that grant by generation, then writes the next value of
  its own counter file. Every grant, every acknowledged write and every anomaly is recorded.
- `View`: one member's answer to `GET /v1/cluster` (recorded by op_clusterwatch.py).
- Pure checks over those records: `lock_violations`, `write_violations`,
  `membership_violations` (unit-tested in test_operator_e2e.py with histories that break them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

LEADER_HEADER = "X-Lockcell-Leader"
RETRY_STATUSES = frozenset({503})


def now() -> float:
    """One clock for every timestamp the checks compare (this process's monotonic clock)."""
    return time.monotonic()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(data: str) -> str:
    return base64.b64decode(data).decode()


class CallFailed(Exception):
    """No answer other than 503 / transport errors before the call's deadline."""


@dataclass
class Answer:
    status: int
    body: Any
    sent: float  # when the first attempt went out (the earliest it could take effect)
    acked: float  # when the answer that counts arrived
    attempts: int

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("code"))
        return None


class CellHttp:
    """The cell's HTTP API over whichever pods are live (`endpoints()`), leader first."""

    def __init__(self, http: aiohttp.ClientSession, endpoints: Callable[[], list[str]],
                 deadline: float = 30.0) -> None:
        self.http = http
        self.endpoints = endpoints
        self.deadline = deadline
        self.current: str | None = None
        self.retries = 0

    def _pick(self, failed: str | None) -> str | None:
        live = self.endpoints()
        if not live:
            return None
        if self.current in live and self.current != failed:
            return self.current
        if failed in live:
            self.current = live[(live.index(failed) + 1) % len(live)]
        else:
            self.current = live[0]
        return self.current

    async def call(self, method: str, path: str, body: Any = None, *,
                   request_id: str | None = None, fresh_ids: bool = False,
                   timeout: float = 10.0, deadline: float | None = None) -> Answer:
        """One call, retried on 503 and transport errors until `deadline` seconds pass.

        `request_id` is sent with every attempt (a retried write is applied once);
        `fresh_ids` sends a new id with each attempt instead (for idempotent calls such as
        Acquire, whose retry must be evaluated anew).
        """
        sent = now()
        end = sent + (self.deadline if deadline is None else deadline)
        failed: str | None = None
        attempts = 0
        last = "no live endpoint"
        while now() < end:
            base = self._pick(failed)
            if base is None:
                await asyncio.sleep(0.05)
                continue
            headers = {"Content-Type": "application/json"}
            rid = uuid.uuid4().hex if fresh_ids else request_id
            if rid:
                headers["X-Request-Id"] = rid
            attempts += 1
            try:
                async with self.http.request(
                    method, f"{base}{path}", json=body, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                ) as resp:
                    raw = await resp.read()
                    leader = resp.headers.get(LEADER_HEADER)
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = f"{base}: {exc!r}"
                failed = base
                self.retries += 1
                await asyncio.sleep(0.05)
                continue
            if leader and leader in self.endpoints():
                self.current = leader
            payload: Any = None
            if raw:
                try:
                    payload = json.loads(raw)
                except ValueError:
                    payload = raw.decode(errors="replace")
            if status in RETRY_STATUSES:
                last = f"{base}: {status} {payload}"
                if not leader or leader == base:
                    failed = base
                self.retries += 1
                await asyncio.sleep(0.05)
                continue
            return Answer(status, payload, sent, now(), attempts)
        raise CallFailed(f"{method} {path}: no answer in time; last: {last}")


# --- what the workers record ---------------------------------------------------------------
@dataclass
class Grant:
    """One exclusive grant as the holder saw it (times on this process's monotonic clock)."""

    lock: str
    worker: int
    generation: int
    acq_sent: float
    acq_ack: float
    rel_sent: float | None = None
    rel_ack: float | None = None


@dataclass
class Record:
    grants: list[Grant] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # counter file → last acked value
    attempted: dict[str, int] = field(default_factory=dict)  # counter file → last value sent
    guarded_acked: dict[str, int] = field(default_factory=dict)  # lock file → acked increments
    guarded_attempted: dict[str, int] = field(default_factory=dict)
    fence_seen: dict[str, int] = field(default_factory=dict)  # lock → highest generation
    anomalies: list[str] = field(default_factory=list)
    busy: int = 0
    rounds: int = 0
    failovers: int = 0
    write_times: list[float] = field(default_factory=list)  # when each write was acked

    def fence(self, lock: str, generation: int, worker: int) -> None:
        """The resource server's check (DESIGN §3): reject a generation older than seen."""
        highest = self.fence_seen.get(lock, 0)
        if generation < highest:
            self.anomalies.append(
                f"fence: worker {worker} presented {lock} generation {generation} after "
                f"{highest} was seen")
        self.fence_seen[lock] = max(highest, generation)


# --- the traffic ---------------------------------------------------------------------------
@dataclass
class Traffic:
    """`workers` clients taking the locks in `locks` in turn and writing their counters."""

    api: CellHttp
    cell: str
    workers: int = 4
    locks: tuple[str, ...] = ("lock-a", "lock-b")
    wait_ms: int = 2000
    pause: float = 0.02
    record: Record = field(default_factory=Record)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closing: set[int] = field(default_factory=set)
    """Workers that have asked to close their session: its end is no anomaly to them."""

    def path(self, name: str) -> str:
        return f"/ls/{self.cell}/{name}"

    def counter(self, worker: int) -> str:
        return f"counter-{worker}"

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._worker(w), name=f"worker-{w}")
                      for w in range(self.workers)]

    async def finish(self, timeout: float = 40.0) -> None:
        """Let every worker end its round, close its session, and stop."""
        self.stop.set()
        done, pending = await asyncio.wait(self.tasks, timeout=timeout)
        for task in pending:
            task.cancel()
            self.record.anomalies.append(f"{task.get_name()} did not stop in time")
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for task in done:
            if (exc := task.exception()) is not None:
                self.record.anomalies.append(f"{task.get_name()} crashed: {exc!r}")

    async def _open(self, session: str, name: str) -> str:
        ans = await self.api.call(
            "POST", f"/v1/sessions/{session}/handles",
            {"path": self.path(name), "create": {"kind": "file", "data": b64("0")},
             "lock_delay_ms": 0},
            request_id=uuid.uuid4().hex)
        assert ans.status in (200, 201), (name, ans)
        return str(ans.body["handle"])

    async def _keepalive(self, worker: int, session: str) -> None:
        ack = 0
        while not self.stop.is_set():
            try:
                ans = await self.api.call("POST", f"/v1/sessions/{session}/keepalive",
                                          {"wait_ms": 1000, "ack": ack}, timeout=12.0,
                                          deadline=15.0)
            except CallFailed as exc:
                self.record.anomalies.append(f"worker {worker} keepalive: {exc}")
                return
            if ans.status == 410 and worker in self.closing:
                return  # the long poll saw the worker's own CloseSession apply first
            if ans.status != 200:
                self.record.anomalies.append(f"worker {worker} keepalive: {ans.status} "
                                             f"{ans.body}")
                return
            for event in ans.body.get("events") or []:
                ack = max(ack, int(event["seq"]))
                if event.get("type") == "master_failover":
                    self.record.failovers += 1

    async def _worker(self, w: int) -> None:
        try:
            await self._work(w)
        except Exception as exc:  # recorded at once: the test stops waiting on anomalies
            self.record.anomalies.append(f"worker {w} failed: {exc!r}")

    async def _work(self, w: int) -> None:
        rec = self.record
        ans = await self.api.call("POST", "/v1/sessions", {}, request_id=uuid.uuid4().hex)
        assert ans.status == 201, ans
        session = str(ans.body["session"])
        keepalive = asyncio.create_task(self._keepalive(w, session))
        try:
            handles = {name: await self._open(session, name) for name in self.locks}
            mine = self.counter(w)
            own = await self._open(session, mine)
            n = 0
            r = 0
            while not self.stop.is_set() and not keepalive.done():
                lock = self.locks[(w + r) % len(self.locks)]
                r += 1
                await self._round(w, session, lock, handles[lock])
                n += 1
                rec.attempted[mine] = n
                put = await self.api.call(
                    "PUT", f"/v1/sessions/{session}/handles/{own}", {"data": b64(str(n))},
                    request_id=uuid.uuid4().hex)
                if put.status != 200:
                    rec.anomalies.append(f"worker {w} write {n}: {put.status} {put.body}")
                    return
                rec.acked[mine] = n
                rec.write_times.append(put.acked)
                rec.rounds += 1
                await asyncio.sleep(self.pause)
            self.closing.add(w)
            await self.api.call("DELETE", f"/v1/sessions/{session}",
                                request_id=uuid.uuid4().hex)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keepalive

    async def _round(self, w: int, session: str, lock: str, handle: str) -> None:
        rec = self.record
        base = f"/v1/sessions/{session}/handles/{handle}"
        # Acquire is idempotent for a handle that holds the lock in that mode, so each retry
        # carries a fresh request id: a retry then reports the grant if an earlier attempt
        # got it, instead of a remembered lock_busy.
        acq = await self.api.call("POST", f"{base}/lock",
                                  {"mode": "exclusive", "wait_ms": self.wait_ms},
                                  fresh_ids=True, timeout=self.wait_ms / 1000 + 10)
        if acq.status == 409 and acq.code == "lock_busy":
            rec.busy += 1
            return
        if acq.status != 200:
            rec.anomalies.append(f"worker {w} acquire {lock}: {acq.status} {acq.body}")
            return
        generation = int(acq.body["lock_generation"])
        grant = Grant(lock, w, generation, acq.sent, acq.acked)
        rec.grants.append(grant)
        rec.fence(lock, generation, w)
        check = await self.api.call("POST", "/v1/sequencers/check",
                                    {"sequencer": acq.body["sequencer"]})
        if check.status != 200 or check.body.get("valid") is not True:
            rec.anomalies.append(f"worker {w} holds {lock}@{generation} but CheckSequencer "
                                 f"says {check.status} {check.body}")
        got = await self.api.call("GET", base)
        if got.status != 200:
            rec.anomalies.append(f"worker {w} read {lock}: {got.status} {got.body}")
        else:
            value = int(unb64(got.body["data"]))
            rec.guarded_attempted[lock] = rec.guarded_attempted.get(lock, 0) + 1
            cas = await self.api.call(
                "PUT", base,
                {"data": b64(str(value + 1)),
                 "if_generation": int(got.body["stat"]["content_generation"])},
                request_id=uuid.uuid4().hex)
            if cas.status == 200:
                rec.guarded_acked[lock] = rec.guarded_acked.get(lock, 0) + 1
            else:
                rec.anomalies.append(f"worker {w} compare-and-set on {lock} under the lock "
                                     f"@{generation}: {cas.status} {cas.body}")
        rel = await self.api.call("DELETE", f"{base}/lock?generation={generation}",
                                  request_id=uuid.uuid4().hex)
        grant.rel_sent, grant.rel_ack = rel.sent, rel.acked
        if rel.status != 204:
            rec.anomalies.append(f"worker {w} release {lock}@{generation}: {rel.status} "
                                 f"{rel.body} after {rel.attempts} attempt(s)")

    async def read_back(self) -> tuple[dict[str, int], dict[str, int]]:
        """(counter file → value, lock file → value), read through a fresh session."""
        ans = await self.api.call("POST", "/v1/sessions", {}, request_id=uuid.uuid4().hex)
        assert ans.status == 201, ans
        session = str(ans.body["session"])
        counters: dict[str, int] = {}
        guarded: dict[str, int] = {}
        names = [self.counter(w) for w in range(self.workers)] + list(self.locks)
        for name in names:
            opened = await self.api.call("POST", f"/v1/sessions/{session}/handles",
                                         {"path": self.path(name)},
                                         request_id=uuid.uuid4().hex)
            if opened.status == 404:
                continue  # a worker that never wrote
            assert opened.status == 200, (name, opened)
            got = await self.api.call(
                "GET", f"/v1/sessions/{session}/handles/{opened.body['handle']}")
            assert got.status == 200, (name, got)
            value = int(unb64(got.body["data"]))
            (guarded if name in self.locks else counters)[name] = value
        await self.api.call("DELETE", f"/v1/sessions/{session}", request_id=uuid.uuid4().hex)
        return counters, guarded


# --- membership views ----------------------------------------------------------------------
Joint = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True)
class View:
    """One member's answer to GET /v1/cluster, reduced to what the checks need."""

    t: float
    source: str  # the answering member (`self.id`)
    leader: str | None
    roles: tuple[tuple[str, str], ...]  # (id, role), sorted
    joint: Joint | None

    @property
    def from_leader(self) -> bool:
        return self.leader is not None and self.source == self.leader

    def voters(self) -> frozenset[str]:
        return frozenset(i for i, role in self.roles if role == "voter")

    def role(self, member: str) -> str | None:
        return dict(self.roles).get(member)


def parse_view(t: float, body: dict[str, Any]) -> View:
    joint = body.get("joint")
    return View(
        t=t,
        source=str(body["self"]["id"]),
        leader=body.get("leader"),
        roles=tuple(sorted((str(m["id"]), str(m["role"])) for m in body["members"])),
        joint=None if joint is None else (tuple(sorted(joint["old"])), tuple(sorted(joint["new"]))),
    )


# --- checks --------------------------------------------------------------------------------
def lock_violations(grants: Sequence[Grant]) -> list[str]:
    """Mutual exclusion and fencing order of exclusive grants, from the holders' clocks.

    A grant takes effect at some instant a in [acq_sent, acq_ack] and ends at some instant r
    in [rel_sent, rel_ack] (linearizability; the session never expired - the traffic fails
    on any keepalive trouble). So the lock was *certainly* held by that grant during
    [acq_ack, rel_sent], and *possibly* during [acq_sent, rel_ack].

    For two grants of one lock with generations g < g' (g' granted after g ended, as the
    generation grows with every exclusive grant): r <= a', hence acq_ack <= rel_sent <= r
    <= a' <= acq_ack'. The holder intervals [acq_ack, rel_ack] may overlap - the next holder
    may hear of its grant before the previous holder hears that its release committed (the
    release and the next grant even ride one log entry) - but only after the previous
    holder had *sent* its release: a release-before-grant order allows exactly that much.
    So, sorted by generation, every grant must satisfy rel_sent(prev) <= acq_ack(next);
    generations must be distinct; and sorting by acq_ack must give the same order (the
    fencing tokens increase in real time). Any violation proves two holders at once.
    """
    out: list[str] = []
    by_lock: dict[str, list[Grant]] = {}
    for g in grants:
        by_lock.setdefault(g.lock, []).append(g)
    for lock, items in sorted(by_lock.items()):
        gens = [g.generation for g in items]
        if len(set(gens)) != len(gens):
            dup = sorted({x for x in gens if gens.count(x) > 1})
            out.append(f"{lock}: generation(s) {dup} granted more than once")
        ordered = sorted(items, key=lambda g: (g.generation, g.acq_ack))
        for prev, nxt in itertools.pairwise(ordered):
            if prev.rel_sent is None:
                out.append(f"{lock}: grant {prev.generation} to worker {prev.worker} was "
                           "never released, yet a later generation was granted")
                continue
            if nxt.acq_ack < prev.rel_sent:
                out.append(
                    f"{lock}: worker {nxt.worker} held generation {nxt.generation} "
                    f"{prev.rel_sent - nxt.acq_ack:.3f}s before worker {prev.worker} let go "
                    f"of generation {prev.generation} (two holders)")
        by_time = [g.generation for g in sorted(items, key=lambda g: g.acq_ack)]
        if by_time != sorted(by_time):
            out.append(f"{lock}: generations out of real-time order: {by_time}")
    return out


def contended(grants: Sequence[Grant]) -> int:
    """How many grants were asked for while the lock was certainly held by another grant
    (the blocking Acquire had to wait): the exclusion check is only as good as this count."""
    count = 0
    by_lock: dict[str, list[Grant]] = {}
    for g in grants:
        by_lock.setdefault(g.lock, []).append(g)
    for items in by_lock.values():
        ordered = sorted(items, key=lambda g: g.generation)
        for prev, nxt in itertools.pairwise(ordered):
            if prev.rel_sent is not None and nxt.acq_sent < prev.rel_sent:
                count += 1
    return count


def write_violations(acked: dict[str, int], attempted: dict[str, int],
                     final: dict[str, int]) -> list[str]:
    """Every acknowledged write survives: a file holds at least its last acknowledged value,
    and never more than the last value sent (reads are linearizable)."""
    out = []
    for name, value in sorted(acked.items()):
        got = final.get(name)
        if got is None or got < value:
            out.append(f"{name}: acknowledged {value}, read back {got} (a lost write)")
    for name, value in sorted(final.items()):
        if value > attempted.get(name, 0):
            out.append(f"{name}: read {value}, but only {attempted.get(name, 0)} were written")
    return out


def membership_violations(views: Sequence[View], initial: frozenset[str],
                          final: frozenset[str]) -> tuple[list[str], list[tuple[frozenset[str],
                                                                                 frozenset[str]]]]:
    """Check the recorded views; returns (problems, the voter-set changes seen).

    - The leader's stable (non-joint) voter sets, in time order, start at `initial`, end at
      `final`, and change by exactly one member each time.
    - Every member that became a voter was first seen - by the leader - as a learner.
    - Every voter change A → B was seen as a joint configuration {old: A, new: B} by some
      member (the operator changes membership only through joint consensus).
    """
    out: list[str] = []
    leader_views = sorted((v for v in views if v.from_leader), key=lambda v: v.t)
    sets: list[frozenset[str]] = []
    for v in leader_views:
        if v.joint is None and (not sets or sets[-1] != v.voters()):
            sets.append(v.voters())
    if not sets:
        return ["no stable configuration was seen on a leader"], []
    if sets[0] != initial:
        out.append(f"first voters seen {sorted(sets[0])}, expected {sorted(initial)}")
    if sets[-1] != final:
        out.append(f"last voters seen {sorted(sets[-1])}, expected {sorted(final)}")
    changes = list(itertools.pairwise(sets))
    joints = {v.joint for v in views if v.joint is not None}
    for old, new in changes:
        if len(old ^ new) != 1:
            out.append(f"voters changed by more than one member: {sorted(old)} → {sorted(new)}")
        if (tuple(sorted(old)), tuple(sorted(new))) not in joints:
            out.append(f"voter change {sorted(old)} → {sorted(new)} was never seen joint")
    added = set().union(*sets) - initial if sets else set()
    for member in sorted(added):
        first = next((v for v in leader_views if v.role(member) is not None), None)
        if first is None or first.role(member) != "learner":
            out.append(f"{member} first appeared as {first and first.role(member)}, "
                       "not as a learner")
    return out, changes
