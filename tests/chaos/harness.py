"""Fault injection over real `lockcell serve` processes.

* :class:`PeerProxy` — a TCP proxy in front of every member's peer port (members advertise
  the proxy's address with ``--advertise-peer-url``), run on an asyncio loop in a thread.
  It identifies the sender of each link from the HELLO frame (the sender's advertised
  address) and can cut links between groups (partitions), add latency, and drop links at
  random ("loss": on a stream transport a lost segment means a dead connection).
* :class:`ClientProxy` — the same byte pump (:class:`TcpProxy`) in front of every member's
  client HTTP port (members advertise it with ``--advertise-client-url``): the workloads
  reach the cell only through it, so the clients can be cut off from some members or all
  of them; the harness itself and the resource server talk to the members' own ports.
* :class:`ChaosCell` — a :class:`LocalCell` whose members sit behind both proxies.
* workloads (threads): register ops (checked for linearizability and lost writes), lock
  holders writing over HTTP to a fenced resource server in its own process
  (``resource_server.py``; lock safety is checked on its record; a holder whose release is
  not confirmed straggles on with its sequencer), an abandoned session (ephemeral files
  and lock-delay).
* faults (:data:`FAULT_KINDS`, :func:`inject`): kills, pauses, partitions between replicas,
  partitions between the clients and replicas (``client_partition``: from the leader, from
  every member for longer than a lease, or from one follower), delay and loss, torn WAL
  tails, whole-cell restarts, membership changes, crashes at persistence steps
  (``crash_point``: a member restarted with ``LOCKCELL_FAILPOINTS`` kills itself inside the
  storage layer), and ``mixed`` (every injection another kind).
* :func:`run_scenario` — start a cell, run the workloads, inject one fault kind repeatedly,
  heal, check everything, and return a JSON-able report (histories kept on failure).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import http.client
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lockcell.cli.localcell import LocalCell, LocalMember, free_port_base, http_json
from lockcell.client import (
    SEQUENCER_HEADER,
    Cell,
    Conflict,
    Lock,
    LockcellError,
    Session,
    StaleSequencer,
)
from lockcell.client.aio import lease_clock
from lockcell.client.core import Health, HealthChange
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

BASE_KINDS = ["kill_leader", "kill_follower", "pause", "partition", "client_partition",
              "delay_loss", "torn_wal", "restart_all", "membership", "crash_point"]
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
    """A base port with base+{0,10,20,30}+i (i < size) all free: clients, peers, and the
    peer and client proxy ports."""
    return free_port_base([off + i for off in (0, 10, 20, 30) for i in range(size)])


# --------------------------------------------------------------------------- proxies

_FRAME = struct.Struct("<IB")

Link = tuple[int | None, int, asyncio.StreamWriter, asyncio.StreamWriter]


class TcpProxy:
    """A fault-injecting TCP byte pump, one listening port per member in front of a target
    port, run on an asyncio loop in a thread. A link is ``(src, dst)``: who sends (``None``
    when unknown) and the member behind the port; subclasses say who sends
    (:meth:`_identify`) and which links are cut (:meth:`_cut`). Cut links are closed at
    once (both sides) and refused while the cut lasts; ``delay`` and ``loss`` apply to
    every link."""

    def __init__(self, listen: dict[int, int], targets: dict[int, int], seed: int = 0,
                 name: str = "proxy") -> None:
        self.listen: dict[int, int] = {}
        self.targets: dict[int, int] = {}
        self.delay = 0.0
        self.loss = 0.0
        self.rng = random.Random(seed)
        self.links: set[Link] = set()
        self.stats = {"links": 0, "cut": 0, "lost": 0, "refused": 0}
        self.loop = asyncio.new_event_loop()
        self._servers: list[asyncio.base_events.Server] = []
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name=name)
        self._thread.start()
        for index in listen:
            self.add(index, listen[index], targets[index])

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def add(self, index: int, port: int, target: int) -> None:
        self.listen[index], self.targets[index] = port, target

        async def start() -> None:
            server = await asyncio.start_server(
                lambda r, w: self._handle(index, r, w), "127.0.0.1", port)
            self._servers.append(server)

        self._call(start())

    def _cut(self, src: int | None, dst: int) -> bool:
        return False

    async def _identify(self, reader: asyncio.StreamReader) -> tuple[int | None, bytes]:
        """Who sends on a new connection, and the bytes read to learn it (to pass on)."""
        return None, b""

    async def _handle(self, dst: int, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            src, first = await self._identify(reader)
            if self._cut(src, dst):
                self.stats["refused"] += 1
                return
            ureader, upstream = await asyncio.open_connection("127.0.0.1", self.targets[dst])
            upstream.write(first)
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

    def _apply(self, change: Callable[[], None]) -> None:
        """Run ``change()`` on the proxy's loop, then close every link it cuts."""

        async def apply() -> None:
            change()
            for src, dst, w1, w2 in list(self.links):
                if self._cut(src, dst):
                    self.stats["cut"] += 1
                    w1.close()
                    w2.close()

        self._call(apply())

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


class PeerProxy(TcpProxy):
    """The proxy in front of every member's peer port. It identifies the sender of each
    link from the HELLO frame (the sender's advertised address) and can cut links between
    groups (partitions), add latency, and drop links at random ("loss": on a stream
    transport a lost segment means a dead connection)."""

    def __init__(self, listen: dict[int, int], targets: dict[int, int], seed: int = 0) -> None:
        self.by_address: dict[str, int] = {}
        self.blocked: set[frozenset[int]] = set()
        super().__init__(listen, targets, seed, name="peer-proxy")

    def add(self, index: int, port: int, target: int) -> None:
        self.by_address[f"127.0.0.1:{port}"] = index
        super().add(index, port, target)

    def _cut(self, src: int | None, dst: int) -> bool:
        return src is not None and frozenset((src, dst)) in self.blocked

    async def _identify(self, reader: asyncio.StreamReader) -> tuple[int | None, bytes]:
        head = await asyncio.wait_for(reader.readexactly(_FRAME.size), 10)
        size, _ = _FRAME.unpack(head)
        payload = await asyncio.wait_for(reader.readexactly(min(size, 1 << 20)), 10)
        src: int | None = None
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            src = self.by_address.get(json.loads(payload).get("address"))
        return src, head + payload

    def partition(self, *groups: set[int]) -> None:
        """Cut every link between members of different groups (and existing links now)."""
        blocked = set()
        for a in groups:
            for b in groups:
                if a is not b:
                    blocked |= {frozenset((x, y)) for x in a for y in b}
        self._apply(lambda: setattr(self, "blocked", blocked))

    def heal(self) -> None:
        self.partition()
        self.delay, self.loss = 0.0, 0.0


class ClientProxy(TcpProxy):
    """The proxy in front of every member's client (HTTP) port: a plain byte pump. Members
    advertise its ports as their client URLs, so the workloads reach the cell only through
    it (leader hints and ``GET /v1/cluster`` name the proxy ports); :meth:`cut` cuts the
    clients off from some members. The harness itself and the resource server use the
    members' own ports."""

    def __init__(self, listen: dict[int, int], targets: dict[int, int], seed: int = 0) -> None:
        self.cut_off: frozenset[int] = frozenset()
        super().__init__(listen, targets, seed, name="client-proxy")

    def _cut(self, src: int | None, dst: int) -> bool:
        return dst in self.cut_off

    def cut(self, members: set[int]) -> None:
        """Cut the clients off from ``members`` (open connections now, new ones refused)."""
        self._apply(lambda: setattr(self, "cut_off", frozenset(members)))

    def heal(self) -> None:
        self.cut(set())
        self.delay, self.loss = 0.0, 0.0


# --------------------------------------------------------------------------- cell


@dataclass
class ChaosCell(LocalCell):
    """A LocalCell whose members advertise the proxies' ports: the peer proxy's as their
    peer address, the client proxy's as their client URL. ``url``, ``endpoints`` and
    :meth:`leader` stay the members' own ports (the harness's view of the cell, which no
    fault cuts); the workloads use :attr:`client_endpoints`."""

    proxy_base: int = 0
    client_proxy_base: int = 0
    joining: set[int] = field(default_factory=set)
    member_env: dict[int, dict[str, str]] = field(default_factory=dict)
    """Extra environment of one member's next starts (by index), over ``extra_env``."""

    write_paths: tuple[str, ...] = ()
    """How each member (by index) writes its log as a leader: ``loop`` (written and synced
    in its loop: the default), ``aio`` (written in its loop, synced by Linux AIO) or
    ``thread`` (both on the WAL thread), so that faults meet every way of a leader's write."""

    def environment(self, member: LocalMember) -> dict[str, str]:
        env = super().environment(member)
        path = self.write_paths[member.index] if member.index < len(self.write_paths) else "loop"
        if path == "aio":
            env["LOCKCELL_LEADER_ASYNC_SYNC"] = "on"
        if path == "thread":
            env["LOCKCELL_LEADER_INLINE_WRITE_MS"] = "0"
        env.update(self.member_env.get(member.index, {}))
        return env

    def client_url(self, member: LocalMember) -> str:
        """The client URL ``member`` advertises: its port on the client proxy."""
        return f"http://127.0.0.1:{self.client_proxy_base + member.index}"

    @property
    def client_endpoints(self) -> list[str]:
        """The client URLs the members advertise (what the workloads connect to)."""
        return [self.client_url(m) for m in self.members]

    def command(self, member: LocalMember) -> list[str]:
        args = super().command(member)
        args += ["--advertise-peer-url", f"127.0.0.1:{self.proxy_base + member.index}",
                 "--advertise-client-url", self.client_url(member)]
        if member.index in self.joining and "--bootstrap" in args:
            args.remove("--bootstrap")
            for other in self.members:
                if other is not member:
                    args += ["--join", other.url]
        return args

    def alive(self, member: LocalMember) -> bool:
        return member.process is not None and member.process.poll() is None

    def urls_of(self, member: LocalMember) -> tuple[str, ...]:
        """Its own port (asked by the harness) and the proxy's, which the cell advertises."""
        return (member.url, self.client_url(member))

    def member_id(self, member: LocalMember) -> str:
        return str(http_json("GET", f"{member.url}/v1/cluster", timeout=3)[1]["self"]["id"])

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        leader = self.leader()
        return http_json(method, f"{leader.url}{path}", body, timeout=10,
                         headers={"Authorization": f"Bearer {self.admin_token}"})


WRITE_PATHS = ("loop", "aio", "thread")


def _write_paths(seed: int) -> tuple[str, ...]:
    """Each member a different way of writing the log, rotated by ``seed``."""
    shift = seed % len(WRITE_PATHS)
    return WRITE_PATHS[shift:] + WRITE_PATHS[:shift]


def start_chaos_cell(root: Path, *, lease_ms: int = 2000, tick_ms: int = 50,
                     seed: int = 0) -> tuple[ChaosCell, PeerProxy, ClientProxy]:
    """A started 3-member cell behind a peer proxy and a client proxy."""
    last: Exception | None = None
    for attempt in range(3):
        base = free_base()
        cell = ChaosCell(root / f"cell-{attempt}", size=3, client_base=base,
                         peer_base=base + 10, lease_ms=lease_ms, tick_ms=tick_ms,
                         proxy_base=base + 20, client_proxy_base=base + 30,
                         extra_env=dict(CELL_ENV), write_paths=_write_paths(seed))
        peers: PeerProxy | None = None
        clients: ClientProxy | None = None
        try:
            peers = PeerProxy({i: base + 20 + i for i in range(3)},
                              {i: base + 10 + i for i in range(3)}, seed)
            clients = ClientProxy({i: base + 30 + i for i in range(3)},
                                  {i: base + i for i in range(3)}, seed)
            cell.start(timeout=60)
            return cell, peers, clients
        except Exception as exc:  # port races with other processes: try another range
            last = exc
            stop_all(cell, peers, clients)
    assert last is not None
    raise last


def stop_all(cell: LocalCell, *proxies: TcpProxy | None) -> None:
    for m in cell.members:
        if m.process is not None and m.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                m.process.send_signal(signal.SIGCONT)
    cell.stop()
    for proxy in proxies:
        if proxy is not None:
            proxy.close()


# --------------------------------------------------------------------------- workloads


def now() -> float:
    return time.monotonic()


@dataclass
class Straggle:
    """Writes a lock holder kept sending with its grant's sequencer while its release was
    not confirmed (:func:`lock_worker`)."""

    owner: str
    section: int
    session: str
    started: float
    writes: int = 0
    accepted: int = 0
    late: int = 0
    """Writes sent after the client library reported the session expired by the cell."""
    refused_at: float | None = None


@dataclass
class ClientCut:
    """One ``client_partition`` fault: the members cut off from the clients, when, and the
    sessions holding the fenced lock when the cut began."""

    case: str
    members: list[int]
    start: float
    end: float
    holders: list[str] = field(default_factory=list)


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
        self.holding: dict[int, str] = {}
        """Lock worker -> the session it holds the fenced lock with (until released)."""
        self.expired: dict[str, tuple[float, str, bool]] = {}
        """Lock workers' sessions the client library reported expired: (when, why, whether
        the cell said so)."""
        self.straggles: list[Straggle] = []
        self.client_cuts: list[ClientCut] = []

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        with self.lock:
            self.errors[name] = self.errors.get(name, 0) + 1

    def holders(self) -> list[str]:
        with self.lock:
            return sorted(set(self.holding.values()))

    def on_expired(self, session: Session, change: HealthChange) -> None:
        """The client library's ``on_expired`` callback of a lock worker's session. Told
        before the session's local lease and grace period ran out, the client cannot have
        expired it by its own clock: the cell said so."""
        by_cell = lease_clock() < session.aio.core.expires_at
        with self.lock:
            self.expired.setdefault(session.id, (now(), change.reason, by_cell))

    def expired_by_cell(self, session: str) -> bool:
        """Whether the client library reported ``session`` expired because the cell said
        so (not because its own grace period ran out)."""
        with self.lock:
            seen = self.expired.get(session)
        return seen is not None and seen[2]


def client(cell: ChaosCell) -> Cell:
    """A workload's client: it reaches the cell through the client proxy only."""
    return Cell(cell.client_endpoints, admin_token=cell.admin_token, request_timeout=3.0,
                retry_timeout=1.0, connect_timeout=1.0, retry_for=6.0)


def register_worker(cell: ChaosCell, keys: list[str], rec: Recorder, stop: threading.Event,
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
    sequencer with the cell; lock workers write to it over HTTP (:meth:`write`). It is
    not behind the client proxy: it knows the members by the client URLs they advertise
    but connects to their own ports (``--direct``), so a client cut leaves it in touch."""

    def __init__(self, cell: ChaosCell, log: Path) -> None:
        direct = ",".join(f"{cell.client_url(m)}={m.url}" for m in cell.members)
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(RESOURCE_SERVER), "--check",
                 "--endpoints", ",".join(cell.client_endpoints), "--direct", direct],
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


STRAGGLE_AFTER_S = 0.2
"""A lock holder whose release is not confirmed this long after its critical section
ended writes on with the grant's sequencer (:func:`straggle`)."""

STRAGGLE_MAX_S = 10.0


def lock_worker(cell: ChaosCell, path: str, resource: ResourceServer, rec: Recorder,
                stop: threading.Event, wid: int, seed: int) -> None:
    """Take the lock, write three times through the fenced resource, release; now and then
    write once more with the released grant's sequencer, as a holder that missed losing
    its lock would (the resource must refuse it).

    While a release is not confirmed (the holder cut off from the cell, say), the holder's
    writes straggle on with the grant's sequencer (:func:`straggle`): the resource, which
    confirms every sequencer with the cell, may accept them while the grant lives and must
    refuse them once it is gone (the session expired). A session whose release stayed
    unconfirmed is closed (it may hold the lock still)."""
    rng = random.Random(seed)
    with client(cell) as c:
        session: Session | None = None
        section = 0
        while not stop.is_set():
            held: Lock | None = None
            try:
                if session is None or session.health in (Health.EXPIRED, Health.CLOSED):
                    session = c.session(lease_ms=2000)
                    session.on_expired(functools.partial(rec.on_expired, session))
                owner = f"w{wid}:{session.id[:8]}"
                done = threading.Event()
                straggler: threading.Thread | None = None
                try:
                    with session.lock(path, wait_ms=1500, lock_delay_ms=500) as lock:
                        held = lock
                        section += 1
                        with rec.lock:
                            rec.holding[wid] = session.id
                        try:
                            for _ in range(3):
                                lock.check()
                                resource.write(lock.sequencer, owner, section)
                                time.sleep(0.01)
                        finally:
                            record = Straggle(owner, section, session.id, now())
                            straggler = threading.Thread(
                                target=straggle, args=(resource, lock, record, done, rec),
                                daemon=True, name=f"straggler-{wid}")
                            straggler.start()
                finally:
                    done.set()
                    if straggler is not None:
                        straggler.join()
                    with rec.lock:
                        rec.holding.pop(wid, None)
                # released (the with block's exit succeeded, and the cell confirmed it)
                if rng.random() < 0.2 and lock.aio.released:
                    with contextlib.suppress(StaleSequencer):
                        resource.write(lock.sequencer, owner, section, late=True)
            except Exception as exc:
                rec.error(exc)
                time.sleep(0.05)
            if (held is not None and not held.aio.released and session is not None
                    and session.health not in (Health.EXPIRED, Health.CLOSED)):
                with contextlib.suppress(Exception):
                    session.close()  # releases whatever the session may still hold
                session = None


def straggle(resource: ResourceServer, lock: Lock, record: Straggle, done: threading.Event,
             rec: Recorder) -> None:
    """Write through the resource with ``lock``'s sequencer every 0.1 s from
    :data:`STRAGGLE_AFTER_S` after the critical section on, while the release is not
    confirmed (``done``: the lock block was left), until the resource refuses one (or for
    :data:`STRAGGLE_MAX_S`). A write sent once the client library reported the session
    expired by the cell is ``late``: its grant is gone for sure, the resource must refuse."""
    if done.wait(STRAGGLE_AFTER_S) and lock.aio.released:
        return
    with rec.lock:
        rec.straggles.append(record)
    deadline = now() + STRAGGLE_MAX_S
    while now() < deadline and not lock.aio.released:
        late = rec.expired_by_cell(record.session)
        record.writes += 1
        record.late += late
        try:
            resource.write(lock.sequencer, record.owner, record.section, late=late)
            record.accepted += 1
        except StaleSequencer:
            record.refused_at = now()
            return
        except Exception as exc:  # the resource could not ask the cell (503), ...
            rec.error(exc)
        if late:
            return
        time.sleep(0.1)


def session_prober(cell: ChaosCell, rec: Recorder, stop: threading.Event, tag: str) -> None:
    """Abandon sessions holding an ephemeral file and a lock; watch both after expiry.

    Every call goes through the client proxy (raw ones to the leader's advertised URL).
    The watching session may itself expire while the clients are cut off from the cell:
    a fresh one takes over (and opens the lock again)."""
    with client(cell) as c:
        attempts, abandoned = 0, 0
        while not stop.is_set() and abandoned < 50:  # (attempts fail while faults last)
            attempts += 1
            base = f"/ls/local/chaos-{tag}-{attempts}"
            try:
                url = cell.client_url(cell.leader())
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
                    if other.health in (Health.EXPIRED, Health.CLOSED):
                        try:
                            other = c.session(lease_ms=2000)
                            rival = other.open(lockp)
                        except LockcellError as exc:
                            rec.error(exc)
                            time.sleep(0.1)
                            continue
                        got_lock = False
                    t = now()
                    try:
                        st, _ = http_json("GET", f"{cell.client_url(cell.leader())}/v1/sessions/"
                                          f"{sid}/handles/{hid}/stat", timeout=3)
                    except (OSError, http.client.HTTPException) as exc:  # a cut, a failover
                        rec.error(exc)
                        st = 0
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


CLIENT_CUTS = ["leader", "all", "minority"]
"""Sub-cases of ``client_partition``: the clients cut off from the leader, from every
member, or from one follower."""


def inject(kind: str, cell: ChaosCell, proxy: PeerProxy, rng: random.Random,
           log: list[str], *, clients: ClientProxy | None = None, rec: Recorder | None = None,
           case: str | None = None) -> None:
    """One fault of ``kind`` (blocking until it is over and the processes are running).
    ``client_partition`` needs ``clients`` (the client proxy); ``case`` picks its sub-case
    (else the rng does) and ``rec`` gets a :class:`ClientCut` for it."""
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
    elif kind == "client_partition":
        if clients is None:
            raise ValueError("client_partition needs the client proxy")
        client_partition(cell, clients, rng, leader, followers, log, rec,
                         case or rng.choice(CLIENT_CUTS))
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


def client_partition(cell: ChaosCell, clients: ClientProxy, rng: random.Random,
                     leader: LocalMember, followers: list[LocalMember], log: list[str],
                     rec: Recorder | None, case: str) -> None:
    """Cut the clients (the workloads) off from some members, not the members from each
    other nor the resource server from the cell:

    * ``leader``: from the leader only, for 2-4 s (calls must fail over to followers,
      which forward to the leader);
    * ``all``: from every member for lease x 1.75-2.5, begun while a lock worker holds the
      lock (when ``rec`` is given): sessions expire at the cell, the holder loses its lock
      while it can still write to the resource, which must refuse it once the session
      expired; the workers recover after the heal;
    * ``minority``: from one follower, for 2-4 s.
    """
    t0 = now()
    lease = cell.lease_ms / 1000
    holders: list[str] = []
    if case == "leader":
        cut, span, what = {leader.index}, rng.uniform(2.0, 4.0), "the leader"
    elif case == "all":
        # A KeepAlive the cell was holding when the cut began still renews the session
        # when the cell answers it, up to 1.5 x lease later: cut for longer than that.
        cut, span, what = {m.index for m in cell.members}, lease * rng.uniform(1.75, 2.5), \
            "every member"
        waited = now() + 3.0
        while rec is not None and not (holders := rec.holders()) and now() < waited:
            time.sleep(0.01)
    elif case == "minority":
        victim = rng.choice(followers or [leader])
        cut, span, what = {victim.index}, rng.uniform(2.0, 4.0), "a follower"
    else:
        raise ValueError(f"client_partition case {case!r}")
    before = dict(clients.stats)
    clients.cut(cut)
    start = now()
    time.sleep(span)
    clients.heal()
    end = now()
    if rec is not None:
        with rec.lock:
            rec.client_cuts.append(ClientCut(case, sorted(cut), start, end, holders))
    closed = clients.stats["cut"] - before["cut"]
    refused = clients.stats["refused"] - before["refused"]
    log.append(f"{t0:.1f} clients cut from {what} {sorted(f'm{i}' for i in cut)} for "
               f"{span:.1f}s (lease x{span / lease:.1f}, {case}): {closed} connection(s) "
               f"closed, {refused} refused"
               + (f"; {len(holders)} lock holder(s) cut off" if case == "all" else ""))


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
    """Fault kinds for ``mixed`` (or the sub-cases of one kind): a seeded shuffle of
    ``kinds`` (:data:`BASE_KINDS`), refilled when empty, never the same twice in a row."""

    def __init__(self, rng: random.Random, kinds: list[str] | None = None) -> None:
        self.rng = rng
        self.kinds = list(BASE_KINDS if kinds is None else kinds)
        self.bag: list[str] = []
        self.last: str | None = None

    def next(self) -> str:
        if not self.bag:
            self.bag = list(self.kinds)
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
    cuts = KindBag(random.Random(seed * 7919 + 2), CLIENT_CUTS)
    report = ScenarioReport(fault, seed, duration)
    cell, proxy, clients = start_chaos_cell(root, seed=seed)
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
                inject(kind, cell, proxy, rng, report.faults, clients=clients, rec=rec,
                       case=cuts.next() if kind == "client_partition" else None)
                if fault == "mixed":
                    report.faults[before:] = [f"[{kind}] {line}"
                                              for line in report.faults[before:]]
                time.sleep(rng.uniform(0.3, 1.0))
            proxy.heal()
            clients.heal()
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
            **client_cut_counts(rec),
        }
        report.errors = dict(rec.errors)
    except Exception as exc:
        report.problems.append(f"scenario error: {type(exc).__name__}: {exc}")
        report.problems.append(_logs(cell))
    finally:
        stop.set()
        if resource is not None:
            resource.close()
        stop_all(cell, proxy, clients)
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


def client_cut_counts(rec: Recorder) -> dict[str, int]:
    """What the client cuts did. Register ops that completed entirely inside the cuts from
    the leader or from a follower (clients failing over keep working). For the cuts from
    every member: the sessions holding the lock when one began (``client_cut_holders``),
    those the client library then reported expired by the cell
    (``client_cut_expired_sessions``), and those whose writes the resource refused while
    they were still cut off (``client_cut_refused_holders``). And the straggling writes
    (of every fault kind)."""
    total = [c for c in rec.client_cuts if c.case == "all"]
    cut_off = [(c, sid) for c in total for sid in c.holders]
    expired = sum(1 for c, sid in cut_off
                  if rec.expired_by_cell(sid) and rec.expired[sid][0] >= c.start)
    refused = sum(1 for c, sid in cut_off
                  if any(s.session == sid and s.refused_at is not None
                         and c.start <= s.refused_at <= c.end for s in rec.straggles))
    def ops_ok_inside(case: str) -> int:
        return sum(1 for c in rec.client_cuts if c.case == case for o in rec.ops
                   if o.status == "ok" and o.complete is not None
                   and c.start <= o.invoke and o.complete <= c.end)

    return {
        "client_cuts": len(rec.client_cuts),
        "register_ok_cut_from_leader": ops_ok_inside("leader"),
        "register_ok_cut_from_follower": ops_ok_inside("minority"),
        "client_cut_holders": len(cut_off),
        "client_cut_expired_sessions": expired,
        "client_cut_refused_holders": refused,
        "straggler_writes": sum(s.writes for s in rec.straggles),
        "straggler_accepted": sum(s.accepted for s in rec.straggles),
        "straggler_refused": sum(s.refused_at is not None for s in rec.straggles),
        "straggler_late": sum(s.late for s in rec.straggles),
    }


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
