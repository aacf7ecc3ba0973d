"""Fault injection over real `lockcell serve` processes.

* :class:`PeerProxy` — a TCP proxy in front of every member's peer port (members advertise
  the proxy's address with ``--advertise-peer-url``), run on an asyncio loop in a thread.
  It identifies the sender of each link from the HELLO frame (the sender's advertised
  address) and can cut links between groups (partitions), add latency, and drop links at
  random ("loss": on a stream transport a lost segment means a dead connection).
* :class:`ChaosCell` — a :class:`LocalCell` whose members sit behind the proxy.
* workloads (threads): register ops (checked for linearizability and lost writes), lock
  holders writing over HTTP to a fenced resource server in its own process
  (``resource_server.py``; lock safety is checked on its record), an abandoned session
  (ephemeral files and lock-delay).
* faults (:data:`FAULT_KINDS`, :func:`inject`): kills, pauses, partitions, delay and loss,
  torn WAL tails, whole-cell restarts, membership changes, crashes at persistence steps
  (``crash_point``: a member restarted with ``LOCKCELL_FAILPOINTS`` kills itself inside the
  storage layer), and ``mixed`` (every injection another kind).
* :func:`run_scenario` — start a cell, run the workloads, inject one fault kind repeatedly,
  heal, check everything, and return a JSON-able report (histories kept on failure).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lockcell.cli.localcell import LocalCell, LocalMember, free_port_base, http_json
from lockcell.client import SEQUENCER_HEADER, Cell, Conflict, LockcellError, StaleSequencer
from lockcell.client.core import Health
from lockcell.storage.failpoints import ENV_VAR as FAILPOINTS_VAR

from .checkers import (
    Admission,
    Grant,
    Observation,
    Op,
    SessionLoss,
    check_linearizable,
    check_lock_safety,
    check_no_lost_writes,
    check_sessions,
)

BASE_KINDS = ["kill_leader", "kill_follower", "pause", "partition", "delay_loss",
              "torn_wal", "restart_all", "membership", "crash_point"]
FAULT_KINDS = [*BASE_KINDS, "mixed"]
"""Every fault kind; ``mixed`` draws each injection from :data:`BASE_KINDS`."""

CELL_ENV = {"LOCKCELL_SNAPSHOT_EVERY": "400", "LOCKCELL_SEGMENT_SIZE": str(1 << 20)}
"""Every chaos member snapshots and rolls its WAL segments often enough for faults to
meet InstallSnapshot, compaction and segment deletion within a run."""

CRASH_POINT_ENV = {"LOCKCELL_SNAPSHOT_EVERY": "60", "LOCKCELL_SEGMENT_SIZE": str(64 << 10)}
"""A member armed with failpoints snapshots and starts segments much more often."""

CRASH_FAMILIES: dict[str, str] = {
    "wal": "wal.before_write={p},wal.after_write={p},wal.after_fsync={p}",
    "snapshot": "snapshot.before_write=0.2,snapshot.before_fsync=0.2,"
                "snapshot.before_rename=0.3,snapshot.before_dir_fsync=0.2,"
                "snapshot.after_dir_fsync=0.2",
    "segment": "segment.before_rename=0.3,segment.after_create=0.3,"
               "segment.before_delete=0.4,segment.after_delete=0.4",
    "any": "wal.before_write={p},wal.after_write={p},wal.after_fsync={p},"
           "snapshot.before_rename=0.5,segment.after_create=0.2,segment.before_delete=0.2",
}
"""``LOCKCELL_FAILPOINTS`` templates for ``crash_point`` (``{p}``: a per-save probability)."""

CRASH_WAIT_S = 12.0
"""How long an armed member may run before it is killed by hand (no failpoint fired)."""


def free_base(size: int = 4) -> int:
    """A base port with base+{0,10,20}+i (i < size) all free: clients, peers, proxy ports."""
    return free_port_base([off + i for off in (0, 10, 20) for i in range(size)])


# --------------------------------------------------------------------------- proxy

_FRAME = struct.Struct("<IB")


class PeerProxy:
    """Fault-injecting TCP proxy for the peer links (one listening port per member)."""

    def __init__(self, listen: dict[int, int], targets: dict[int, int], seed: int = 0) -> None:
        self.listen = dict(listen)
        self.targets = dict(targets)
        self.by_address = {f"127.0.0.1:{p}": i for i, p in listen.items()}
        self.blocked: set[frozenset[int]] = set()
        self.delay = 0.0
        self.loss = 0.0
        self.rng = random.Random(seed)
        self.links: set[tuple[int | None, int, asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self.stats = {"links": 0, "cut": 0, "lost": 0, "refused": 0}
        self.loop = asyncio.new_event_loop()
        self._servers: list[asyncio.base_events.Server] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="peer-proxy")
        self._thread.start()
        for index in listen:
            self.add(index, listen[index], targets[index])

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def add(self, index: int, port: int, target: int) -> None:
        self.listen[index], self.targets[index] = port, target
        self.by_address[f"127.0.0.1:{port}"] = index

        async def start() -> None:
            server = await asyncio.start_server(
                lambda r, w: self._handle(index, r, w), "127.0.0.1", port)
            self._servers.append(server)

        self._call(start())

    def _cut(self, src: int | None, dst: int) -> bool:
        return src is not None and frozenset((src, dst)) in self.blocked

    async def _handle(self, dst: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await asyncio.wait_for(reader.readexactly(_FRAME.size), 10)
            size, _ = _FRAME.unpack(head)
            payload = await asyncio.wait_for(reader.readexactly(min(size, 1 << 20)), 10)
            src: int | None = None
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                src = self.by_address.get(json.loads(payload).get("address"))
            if self._cut(src, dst):
                self.stats["refused"] += 1
                return
            ureader, upstream = await asyncio.open_connection("127.0.0.1", self.targets[dst])
            upstream.write(head + payload)
            link = (src, dst, writer, upstream)
            self.links.add(link)
            self.stats["links"] += 1
            try:
                await asyncio.gather(self._pump(reader, upstream, src, dst),
                                     self._pump(ureader, writer, src, dst))
            finally:
                self.links.discard(link)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    src: int | None, dst: int) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data or self._cut(src, dst):
                    break
                if self.loss and self.rng.random() < self.loss:
                    self.stats["lost"] += 1
                    break
                if self.delay:
                    await asyncio.sleep(self.delay * (0.5 + self.rng.random()))
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def partition(self, *groups: set[int]) -> None:
        """Cut every link between members of different groups (and existing links now)."""
        blocked = set()
        for a in groups:
            for b in groups:
                if a is not b:
                    blocked |= {frozenset((x, y)) for x in a for y in b}

        async def apply() -> None:
            self.blocked = blocked
            for src, dst, w1, w2 in list(self.links):
                if self._cut(src, dst):
                    self.stats["cut"] += 1
                    w1.close()
                    w2.close()

        self._call(apply())

    def heal(self) -> None:
        self.partition()
        self.delay, self.loss = 0.0, 0.0

    def close(self) -> None:
        async def stop() -> None:
            for s in self._servers:
                s.close()
            for _, _, w1, w2 in list(self.links):
                w1.close()
                w2.close()

        with contextlib.suppress(Exception):
            self._call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


# --------------------------------------------------------------------------- cell


@dataclass
class ChaosCell(LocalCell):
    """A LocalCell whose members advertise the proxy's port as their peer address."""

    proxy_base: int = 0
    joining: set[int] = field(default_factory=set)
    member_env: dict[int, dict[str, str]] = field(default_factory=dict)
    """Extra environment of one member's next starts (by index), over ``extra_env``."""

    def environment(self, member: LocalMember) -> dict[str, str]:
        env = super().environment(member)
        env.update(self.member_env.get(member.index, {}))
        return env

    def command(self, member: LocalMember) -> list[str]:
        args = super().command(member)
        args += ["--advertise-peer-url", f"127.0.0.1:{self.proxy_base + member.index}"]
        if member.index in self.joining and "--bootstrap" in args:
            args.remove("--bootstrap")
            for other in self.members:
                if other is not member:
                    args += ["--join", other.url]
        return args

    def alive(self, member: LocalMember) -> bool:
        return member.process is not None and member.process.poll() is None

    def member_id(self, member: LocalMember) -> str:
        return str(http_json("GET", f"{member.url}/v1/cluster", timeout=3)[1]["self"]["id"])

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        leader = self.leader()
        return http_json(method, f"{leader.url}{path}", body, timeout=10,
                         headers={"Authorization": f"Bearer {self.admin_token}"})


def start_chaos_cell(root: Path, *, lease_ms: int = 2000, tick_ms: int = 50,
                     seed: int = 0) -> tuple[ChaosCell, PeerProxy]:
    last: Exception | None = None
    for attempt in range(3):
        base = free_base()
        cell = ChaosCell(root / f"cell-{attempt}", size=3, client_base=base,
                         peer_base=base + 10, lease_ms=lease_ms, tick_ms=tick_ms,
                         proxy_base=base + 20, extra_env=dict(CELL_ENV))
        proxy = PeerProxy({i: base + 20 + i for i in range(3)},
                          {i: base + 10 + i for i in range(3)}, seed)
        try:
            cell.start(timeout=60)
            return cell, proxy
        except Exception as exc:  # port races with other processes: try another range
            last = exc
            stop_all(cell, proxy)
    assert last is not None
    raise last


def stop_all(cell: LocalCell, proxy: PeerProxy | None) -> None:
    for m in cell.members:
        if m.process is not None and m.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                m.process.send_signal(signal.SIGCONT)
    cell.stop()
    if proxy is not None:
        proxy.close()


# --------------------------------------------------------------------------- workloads


def now() -> float:
    return time.monotonic()


class Recorder:
    """Thread-safe history of everything the workloads did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: list[Op] = []
        self.admissions: list[Admission] = []
        self.losses: list[SessionLoss] = []
        self.observations: list[Observation] = []
        self.grants: list[Grant] = []
        self.errors: dict[str, int] = {}

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        with self.lock:
            self.errors[name] = self.errors.get(name, 0) + 1


def client(cell: LocalCell) -> Cell:
    return Cell(cell.endpoints, admin_token=cell.admin_token, request_timeout=3.0,
                retry_timeout=1.0, connect_timeout=1.0, retry_for=6.0)


def register_worker(cell: LocalCell, keys: list[str], rec: Recorder, stop: threading.Event,
                    wid: int, seed: int) -> None:
    rng = random.Random(seed)
    with client(cell) as c:
        session, handles, n = None, {}, 0
        last_gen: dict[str, int] = {}
        while not stop.is_set():
            try:
                if session is None or session.health in (Health.EXPIRED, Health.CLOSED):
                    session = c.session(lease_ms=2000)
                    handles = {k: session.open(k) for k in keys}
            except Exception as exc:
                rec.error(exc)
                session = None
                time.sleep(0.2)
                continue
            key = rng.choice(keys)
            kind = rng.choice(["read", "read", "write", "cas"])
            n += 1
            value = f"w{wid}-{n}"
            op = Op(key, kind, now(), None, "unknown", client=wid)
            if kind != "read":
                op.value = value
            if kind == "cas":
                op.expect = last_gen.get(key, 0)
            try:
                if kind == "read":
                    got = handles[key].get()
                    op.out_value, op.out_gen = got.data.decode(), got.stat.content_generation
                elif kind == "write":
                    op.out_gen = handles[key].set(value.encode()).content_generation
                else:
                    op.out_gen = handles[key].set(value.encode(),
                                                  if_generation=op.expect).content_generation
                op.complete, op.status = now(), "ok"
                last_gen[key] = op.out_gen
            except Conflict as exc:
                if kind == "cas" and exc.code == "conflict":
                    op.complete, op.status = now(), "fail"
                else:
                    rec.error(exc)
            except Exception as exc:  # unknown outcome: timeout, unavailable, expiry ...
                rec.error(exc)
                if kind == "read":
                    continue
            with rec.lock:
                rec.ops.append(op)
            time.sleep(rng.random() * 0.02)


RESOURCE_SERVER = Path(__file__).with_name("resource_server.py")


class ResourceServer:
    """The fenced resource (``resource_server.py``) in its own process, confirming every
    sequencer with the cell; lock workers write to it over HTTP (:meth:`write`)."""

    def __init__(self, cell: LocalCell, log: Path) -> None:
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(RESOURCE_SERVER), "--check",
                 "--endpoints", ",".join(cell.endpoints)],
                stdout=subprocess.PIPE, stderr=out, start_new_session=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline().decode()  # "listening on http://host:port"
        if not line.startswith("listening on "):
            self.close()
            raise RuntimeError(f"resource server did not start: {line!r} (see {log})")
        self.url = line.split()[-1]

    def write(self, sequencer: str, owner: str, section: int, *, late: bool = False) -> None:
        """One protected write; raises StaleSequencer when the resource refused it.
        ``late``: the sequencer's grant was released already (the resource must refuse)."""
        status, body = http_json("PUT", f"{self.url}/write",
                                 {"owner": owner, "section": section, "late": late},
                                 timeout=8, headers={SEQUENCER_HEADER: sequencer})
        if status == 409:
            raise StaleSequencer(str(body))
        if status != 200:
            raise RuntimeError(f"resource server answered {status}: {body}")

    def record(self) -> list[Admission]:
        """Every admission the resource saw (its own clock)."""
        status, body = http_json("GET", f"{self.url}/record", timeout=30)
        if status != 200:
            raise RuntimeError(f"resource server record: {status} {body}")
        return [Admission(**raw) for raw in body["admissions"]]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def lock_worker(cell: LocalCell, path: str, resource: ResourceServer, rec: Recorder,
                stop: threading.Event, wid: int, seed: int) -> None:
    """Take the lock, write three times through the fenced resource, release; now and then
    write once more with the released grant's sequencer, as a holder that missed losing
    its lock would (the resource must refuse it)."""
    rng = random.Random(seed)
    with client(cell) as c:
        session, section = None, 0
        while not stop.is_set():
            try:
                if session is None or session.health in (Health.EXPIRED, Health.CLOSED):
                    session = c.session(lease_ms=2000)
                owner = f"w{wid}:{session.id[:8]}"
                with session.lock(path, wait_ms=1500, lock_delay_ms=500) as lock:
                    section += 1
                    for _ in range(3):
                        lock.check()
                        resource.write(lock.sequencer, owner, section)
                        time.sleep(0.01)
                if rng.random() < 0.2:  # released (the with block's exit succeeded)
                    with contextlib.suppress(StaleSequencer):
                        resource.write(lock.sequencer, owner, section, late=True)
            except Exception as exc:
                rec.error(exc)
                time.sleep(0.05)


def session_prober(cell: LocalCell, rec: Recorder, stop: threading.Event, tag: str) -> None:
    """Abandon sessions holding an ephemeral file and a lock; watch both after expiry."""
    with client(cell) as c:
        attempts, abandoned = 0, 0
        while not stop.is_set() and abandoned < 50:  # (attempts fail while faults last)
            attempts += 1
            base = f"/ls/local/chaos-{tag}-{attempts}"
            try:
                url = cell.leader().url
                sent = now()
                st, s = http_json("POST", f"{url}/v1/sessions", {"lease_ms": 1000}, timeout=3)
                if st != 201:
                    continue
                sid, valid = s["session"], int(s["valid_ms"])
                sroute = f"{url}/v1/sessions/{sid}/handles"
                eph = f"{base}-eph"
                st, h = http_json("POST", sroute, {"path": eph, "create": {
                    "kind": "file", "ephemeral": True}}, timeout=3)
                if st != 201:
                    continue
                lockp = f"{base}-lock"
                st, h = http_json("POST", sroute, {"path": lockp, "create": {"kind": "file"},
                                                   "lock_delay_ms": 1500}, timeout=3)
                if st not in (200, 201):
                    continue
                delay, hid = int(h["lock_delay_ms"]), h["handle"]
                st, _ = http_json("POST", f"{sroute}/{hid}/lock", {"mode": "exclusive"},
                                  timeout=3)
                if st != 200:
                    continue
                loss = SessionLoss(sid, sent, valid, [eph], {lockp: delay})
                abandoned += 1
                with rec.lock:
                    rec.losses.append(loss)
                other = c.session(lease_ms=2000)
                rival = other.open(lockp)
                deadline = now() + 20
                got_lock = False
                while now() < deadline and not stop.is_set():
                    t = now()
                    st, _ = http_json("GET", f"{cell.leader().url}/v1/sessions/{sid}/handles/"
                                      f"{hid}/stat", timeout=3)
                    if st == 410 and loss.confirmed_expired_at is None:
                        loss.confirmed_expired_at = t
                    t = now()
                    try:
                        other.open(eph).close()
                        exists = True
                    except LockcellError as exc:
                        exists = False if exc.code == "not_found" else None  # type: ignore
                    if exists is not None:
                        with rec.lock:
                            rec.observations.append(Observation(t, eph, exists))
                    if not got_lock:
                        try:
                            rival.try_acquire()
                            got_lock = True
                            with rec.lock:
                                rec.grants.append(Grant(now(), lockp, other.id))
                        except LockcellError:
                            pass
                    if got_lock and loss.confirmed_expired_at is not None:
                        break
                    time.sleep(0.1)
                with contextlib.suppress(Exception):
                    other.close()
            except Exception as exc:
                rec.error(exc)
                time.sleep(0.2)


# --------------------------------------------------------------------------- faults


def _wait_ready(cell: ChaosCell, timeout: float = 60.0) -> None:
    cell.wait_ready(timeout, voters=3)


def newest_segment(member: LocalMember) -> Path | None:
    segs = sorted((member.data_dir / "raft").glob("*.wal"))
    return segs[-1] if segs else None


def tear_tail(path: Path, rng: random.Random) -> int:
    """Cut the last written bytes of a (preallocated) segment; returns bytes cut."""
    raw = path.read_bytes()
    end = len(raw.rstrip(b"\0"))
    cut = min(end // 2, rng.randint(1, 64))
    os.truncate(path, end - cut)
    return cut


def inject(kind: str, cell: ChaosCell, proxy: PeerProxy, rng: random.Random,
           log: list[str]) -> None:
    """One fault of ``kind`` (blocking until it is over and the processes are running)."""
    t0 = now()
    lease = cell.lease_ms / 1000
    leader = cell.leader()
    followers = [m for m in cell.members if m is not leader and cell.alive(m)]
    if kind == "kill_leader" or kind == "kill_follower":
        victim = leader if kind == "kill_leader" else rng.choice(followers)
        cell.kill(victim, signal.SIGKILL)
        time.sleep(rng.uniform(0.5, 2.0))
        cell.start_member(victim)
        log.append(f"{t0:.1f} kill -9 m{victim.index} ({kind}); restarted")
    elif kind == "pause":
        victim = rng.choice([leader, *followers])
        cell.kill(victim, signal.SIGSTOP)
        pause = lease * rng.uniform(1.5, 2.5)
        time.sleep(pause)
        cell.kill(victim, signal.SIGCONT)
        log.append(f"{t0:.1f} SIGSTOP m{victim.index} for {pause:.1f}s "
                   f"({'leader' if victim is leader else 'follower'})")
    elif kind == "partition":
        alone = rng.choice([leader, *followers]).index
        rest = {m.index for m in cell.members} - {alone}
        proxy.partition({alone}, rest)
        span = rng.uniform(2.0, 4.0)
        time.sleep(span)
        proxy.heal()
        log.append(f"{t0:.1f} partition {{m{alone}}} | {sorted(rest)} for {span:.1f}s")
    elif kind == "delay_loss":
        proxy.delay, proxy.loss = rng.uniform(0.01, 0.08), rng.uniform(0.01, 0.05)
        span = rng.uniform(2.0, 4.0)
        log.append(f"{t0:.1f} delay {proxy.delay * 1000:.0f}ms loss {proxy.loss:.2f} "
                   f"for {span:.1f}s")
        time.sleep(span)
        proxy.heal()
    elif kind == "torn_wal":
        victim = rng.choice([*followers, leader])
        cell.kill(victim, signal.SIGKILL)
        seg = newest_segment(victim)
        cut = tear_tail(seg, rng) if seg else 0
        cell.start_member(victim)
        log.append(f"{t0:.1f} kill -9 m{victim.index}, cut {cut} bytes of {seg and seg.name}")
    elif kind == "restart_all":
        for m in cell.members:
            cell.kill(m, signal.SIGKILL)
        time.sleep(rng.uniform(0.2, 1.0))
        for m in cell.members:
            cell.start_member(m)
        log.append(f"{t0:.1f} kill -9 every member; restarted all")
    elif kind == "crash_point":
        crash_point(cell, rng, leader, followers, log)
    elif kind == "membership":
        victim = rng.choice(followers)
        old = cell.member_id(victim)
        st, body = cell.admin("DELETE", f"/v1/cluster/members/{old}")
        log.append(f"{t0:.1f} DELETE member {old} (m{victim.index}) -> {st}")
        if st not in (200, 202, 204):
            raise AssertionError(f"removing {old} answered {st} {body}")
        # with faults on the side: a follower kill while the config changes
        time.sleep(0.5)
        cell.kill(victim, signal.SIGKILL)
        shutil.rmtree(victim.data_dir, ignore_errors=True)
        cell.joining.add(victim.index)
        cell.start_member(victim)  # joins again (POST members + promote) under a new id
        log.append(f"{t0:.1f} m{victim.index} rejoined with an empty disk")
    else:
        raise ValueError(kind)
    _wait_ready(cell)


def member_log(cell: LocalCell, member: LocalMember) -> Path:
    return cell.root / "logs" / f"member-{member.index}.log"


def stop_gracefully(member: LocalMember, timeout: float = 10.0) -> None:
    """SIGTERM (a clean shutdown), SIGKILL after ``timeout``."""
    process = member.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def crash_point(cell: ChaosCell, rng: random.Random, leader: LocalMember,
                followers: list[LocalMember], log: list[str]) -> None:
    """Restart a member (the leader or a follower) with failpoints armed; when it is the
    leader's turn, hand leadership back to it; wait until a failpoint kills it under the
    workload's writes (or kill it after :data:`CRASH_WAIT_S`), then restart it unarmed."""
    t0 = now()
    as_leader = rng.random() < 0.5 or not followers
    victim = leader if as_leader else rng.choice(followers)
    family = rng.choice(sorted(CRASH_FAMILIES))
    spec = CRASH_FAMILIES[family].format(p=round(rng.uniform(0.005, 0.03), 3))
    spec += f";seed={rng.randrange(1 << 30)}"
    victim_id = cell.member_id(victim)
    stop_gracefully(victim)  # the one crash is the failpoint's
    cell.member_env[victim.index] = {**CRASH_POINT_ENV, FAILPOINTS_VAR: spec}
    path = member_log(cell, victim)
    offset = path.stat().st_size if path.exists() else 0
    try:
        cell.start_member(victim)
        deadline = now() + CRASH_WAIT_S
        moved = ""
        if as_leader:  # leadership back to the armed member, once it has caught up
            while now() < deadline and cell.alive(victim) and not moved:
                with contextlib.suppress(OSError, RuntimeError):
                    if http_json("GET", f"{victim.url}/readyz", timeout=2)[0] == 200:
                        st, _ = cell.admin("POST", "/v1/cluster/leader", {"to": victim_id})
                        moved = f", leadership moved to it ({st})"
                time.sleep(0.1)
        while now() < deadline and cell.alive(victim):
            time.sleep(0.05)
        died = not cell.alive(victim)
        if not died:
            cell.kill(victim, signal.SIGKILL)
    finally:
        cell.member_env.pop(victim.index, None)
    with path.open("rb") as f:
        f.seek(offset)
        tail = f.read().decode(errors="replace")
    fired = [line.split()[2] for line in tail.splitlines()
             if line.startswith("lockcell: failpoint ")]
    outcome = (f"failpoint {fired[-1]} fired after {now() - t0:.1f}s" if fired
               else "died without a failpoint (!)" if died
               else f"no failpoint fired in {CRASH_WAIT_S:.0f}s; killed -9")
    log.append(f"{t0:.1f} crash_point m{victim.index} "
               f"({'leader' if as_leader else 'follower'}) armed {family}: {spec}{moved}; "
               f"{outcome}; restarted unarmed")
    cell.start_member(victim)


class KindBag:
    """Fault kinds for ``mixed``: a seeded shuffle of :data:`BASE_KINDS`, refilled when
    empty, never the same kind twice in a row."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.bag: list[str] = []
        self.last: str | None = None

    def next(self) -> str:
        if not self.bag:
            self.bag = list(BASE_KINDS)
            self.rng.shuffle(self.bag)
            if self.bag[-1] == self.last:
                self.bag[0], self.bag[-1] = self.bag[-1], self.bag[0]
        self.last = self.bag.pop()
        return self.last


# --------------------------------------------------------------------------- scenario


@dataclass
class ScenarioReport:
    fault: str
    seed: int
    duration: float
    faults: list[str] = field(default_factory=list)
    injected: list[str] = field(default_factory=list)
    """The kind of every injection (for ``mixed``: the kind drawn)."""
    counts: dict[str, int] = field(default_factory=dict)
    verdicts: dict[str, bool] = field(default_factory=dict)
    violations: int = 0
    """Violations the checkers found (each one is also in ``problems``)."""
    problems: list[str] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    history_file: str | None = None
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(self.verdicts.values()) and not self.problems

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def run_scenario(root: Path, fault: str, *, seed: int = 0, duration: float = 8.0,
                 keep_history: Path | None = None, min_faults: int = 1) -> ScenarioReport:
    """Run the workloads against a fresh cell while injecting ``fault`` for ``duration``
    seconds (and at least ``min_faults`` times), heal, and check every history."""
    started = now()
    rng = random.Random(seed)
    bag = KindBag(random.Random(seed * 7919 + 1))
    report = ScenarioReport(fault, seed, duration)
    cell, proxy = start_chaos_cell(root, seed=seed)
    rec = Recorder()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    resource: ResourceServer | None = None
    inits: dict[str, tuple[str, int]] = {}
    try:
        keys = [f"/ls/local/reg-{i}" for i in range(2)]
        resource = ResourceServer(cell, cell.root / "logs" / "resource-server.log")
        with client(cell) as c:
            s = c.session()
            for k in keys:
                h = s.open(k, create="file")
                got = h.get()
                inits[k] = (got.data.decode(), got.stat.content_generation)
            for w in range(3):
                threads.append(threading.Thread(target=register_worker, daemon=True,
                                                args=(cell, keys, rec, stop, w, seed * 10 + w)))
            for w in range(2):
                threads.append(threading.Thread(target=lock_worker, daemon=True,
                                                args=(cell, "/ls/local/fenced", resource, rec,
                                                      stop, w, seed * 10 + 5 + w)))
            threads.append(threading.Thread(target=session_prober, daemon=True,
                                            args=(cell, rec, stop, f"s{seed}")))
            for t in threads:
                t.start()
            time.sleep(1.0)
            end = now() + duration
            while now() < end or len(report.injected) < min_faults:
                kind = bag.next() if fault == "mixed" else fault
                report.injected.append(kind)
                before = len(report.faults)
                inject(kind, cell, proxy, rng, report.faults)
                if fault == "mixed":
                    report.faults[before:] = [f"[{kind}] {line}"
                                              for line in report.faults[before:]]
                time.sleep(rng.uniform(0.3, 1.0))
            proxy.heal()
            _wait_ready(cell)
            time.sleep(1.0)
            # faults every few seconds can keep abandoned sessions from ever expiring (a new
            # leader grants every session a fresh lease): let one expire in calm weather
            calm_until = now() + 15
            while now() < calm_until and not _sessions_checked(rec):
                time.sleep(0.2)
            stop.set()
            for t in threads:
                t.join(30)
            alive = [t.name for t in threads if t.is_alive()]
            if alive:
                report.problems.append(f"workload threads hung: {alive}")
            finals: dict[str, tuple[str, int]] = {}
            # a fresh session: the first one may have expired in a failover (with 2 s leases
            # a client does not always reach the new leader before its fresh lease ends)
            s = c.session()
            t_final = now()
            for k in keys:
                got = s.open(k).get()
                finals[k] = (got.data.decode(), got.stat.content_generation)
                rec.ops.append(Op(k, "read", t_final, now(), "ok", out_value=finals[k][0],
                                  out_gen=finals[k][1], client=-1))
        rec.admissions = resource.record()
        lin = check_linearizable(rec.ops, inits)
        lost = check_no_lost_writes(rec.ops, finals)
        locks = check_lock_safety(rec.admissions)
        sess = check_sessions(rec.losses, rec.observations, rec.grants)
        report.verdicts = {"linearizable": lin.ok, "no_lost_writes": lost.ok,
                           "lock_safety": locks.ok, "sessions": sess.ok}
        found = lin.problems + lost.problems + locks.problems + sess.problems
        report.violations = len(found)
        report.problems += found
        report.counts = {
            "register_ops": len(rec.ops),
            "register_checked": lin.checked,
            "register_ok": sum(o.status == "ok" for o in rec.ops),
            "register_unknown": sum(o.status == "unknown" for o in rec.ops),
            "fenced_writes": len(rec.admissions),
            "admissions_accepted": sum(a.accepted for a in rec.admissions),
            "admissions_refused": sum(not a.accepted for a in rec.admissions),
            "lock_sections": len({(a.owner, a.section) for a in rec.admissions if a.accepted}),
            "sessions_abandoned": len(rec.losses),
            "session_checks": sess.checked,
            "faults": len(report.injected),
        }
        report.errors = dict(rec.errors)
    except Exception as exc:
        report.problems.append(f"scenario error: {type(exc).__name__}: {exc}")
        report.problems.append(_logs(cell))
    finally:
        stop.set()
        if resource is not None:
            resource.close()
        stop_all(cell, proxy)
    report.wall_s = round(now() - started, 1)
    if not report.ok and keep_history is not None:
        keep_history.mkdir(parents=True, exist_ok=True)
        path = keep_history / f"{fault}-seed{seed}.history.json"
        path.write_text(json.dumps({
            "inits": {k: list(v) for k, v in inits.items()},
            "ops": [o.to_json() for o in rec.ops],
            "admissions": [asdict(a) for a in rec.admissions],
            "losses": [asdict(x) for x in rec.losses],
            "observations": [asdict(x) for x in rec.observations],
            "grants": [asdict(x) for x in rec.grants],
            "report": report.to_json()}, default=str))
        report.history_file = str(path)
        logs = keep_history / f"{fault}-seed{seed}.logs"
        with contextlib.suppress(OSError):
            shutil.copytree(cell.root / "logs", logs, dirs_exist_ok=True)
    return report


def _sessions_checked(rec: Recorder) -> bool:
    with rec.lock:
        return check_sessions(rec.losses, rec.observations, rec.grants).checked > 0


def _logs(cell: LocalCell, lines: int = 15) -> str:
    out = []
    for m in cell.members:
        p = cell.root / "logs" / f"member-{m.index}.log"
        if p.exists():
            tail = p.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- m{m.index} ---\n" + "\n".join(tail))
    return "\n".join(out)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
