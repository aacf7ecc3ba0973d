"""End to end: the real operator (kopf) against kmock, with REAL lockcell servers.

A test-side StatefulSet controller and kubelet (op_realkubelet.py) turns each pod of the
Cell's StatefulSet into a `lockcell serve` process on loopback, with the environment the pod
template gives it (ConfigMap, Secrets, pod name) rewritten to 127.0.0.1 and per-pod ports,
and a directory per PVC; every pod runs the same copy of the server package (the "image").
The operator reaches the pods through the resolver override, and learns what each pod
advertises through `Context.advertised` (the same loopback URLs).

The scenario: create a 3-replica Cell; start lock and write traffic (op_traffic.py) that runs
for the whole test; scale 3 → 5 → 3 by patching spec.replicas; then check the StatefulSet's
replicas history, the Raft membership history (learner before voter, joint consensus for
every voter change, one member at a time), that no acknowledged write was lost, that no lock
ever had two holders (and the fencing checks held), and that the final voters are exactly the
members on the desired pods. The small tests below show that each check catches what it is
meant to catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from op_clusterwatch import ClusterWatch
from op_fakecell import free_port
from op_harness import NAMESPACE, KubeHarness, admin_token_of, kmock_api, running_operator
from op_realkubelet import (
    PodSpecError,
    RealKubelet,
    container_environment,
    expand,
    loopback_environment,
    snapshot_image,
)
from op_traffic import (
    CellHttp,
    Grant,
    Traffic,
    View,
    contended,
    lock_violations,
    membership_violations,
    now,
    parse_view,
    write_violations,
)

from lockcell_operator import builders as b
from lockcell_operator.cellapi import CellClient
from lockcell_operator.kube import ClientKubeApi
from lockcell_operator.reconcile import Context
from lockcell_operator.spec import CellRef, parse_spec

pytestmark = [
    # kmock 0.8 loads its bundled resources with a deprecated importlib call.
    pytest.mark.filterwarnings("ignore:read_binary is deprecated:DeprecationWarning"),
]

CELL = "demo"
# Short Raft timings (election timeout = 10 ticks = 0.5 s) keep the scenario quick.
SERVER_ENV = {"LOCKCELL_TICK_MS": "50", "LOCKCELL_LOG_LEVEL": "WARNING"}


@dataclass
class E2E(KubeHarness):
    kubelet: RealKubelet
    watch: ClusterWatch

    def describe(self) -> str:
        return (f"{super().describe()}; running: {self.kubelet.running()}; "
                f"ready: {self.kubelet.ready}; exits: {[e.pod for e in self.kubelet.exits]}; "
                f"errors: {self.kubelet.errors}; server logs and views in {self.kubelet.root}")

    def running_with(self, n: int) -> bool:
        """The Cell says Running with exactly n healthy voters on pods 0..n-1, and the
        StatefulSet and its pods agree."""
        status = self.cell_status()
        members = status.get("members") or []
        sts = self.obj("statefulsets", CELL) or {}
        want = [f"{CELL}-{i}" for i in range(n)]
        return (
            status.get("phase") == "Running"
            and sorted(m.get("name", "") for m in members) == want
            and all(m["role"] == "voter" and m["healthy"] for m in members)
            and int((sts.get("spec") or {}).get("replicas") or 0) == n
            and self.kubelet.running() == want
            and all(self.kubelet.ready.get(p) for p in want)
            and self.kubelet.updated()
        )


class WatchedCellClient(CellClient):
    """The operator's cell client, telling the membership watch when a voter change is in
    flight (the watch then polls every member back to back: the joint phase lies inside
    the call and lasts milliseconds). Runs in kopf's thread."""

    watch: ClusterWatch | None = None

    async def _watched(self, call: Awaitable[None]) -> None:
        watch = self.watch
        if watch is not None:
            watch.hot(+1)
        try:
            await call
        finally:
            if watch is not None:
                watch.hot(-1)

    async def promote(self, base_url: str, token: str, member_id: str) -> None:
        await self._watched(super().promote(base_url, token, member_id))

    async def remove_member(self, base_url: str, token: str, member_id: str) -> None:
        await self._watched(super().remove_member(base_url, token, member_id))


@dataclass
class Guard:
    kubelets: list[RealKubelet]
    watches: list[ClusterWatch]


@pytest.fixture
def process_guard() -> Iterator[Guard]:
    """Whatever happens to the test's event loop, no process outlives the test."""
    guard = Guard([], [])
    try:
        yield guard
    finally:
        for kubelet in guard.kubelets:
            kubelet.kill_all()
        for watch in guard.watches:
            watch.kill()


@contextlib.asynccontextmanager
async def e2e_harness(root: Path, guard: Guard) -> AsyncIterator[E2E]:
    async with kmock_api() as (km, url, http):
        image = snapshot_image(root / "image")
        kubelet = RealKubelet(km, http, CELL, root, extra_env=dict(SERVER_ENV), image=image)
        guard.kubelets.append(kubelet)
        watch = ClusterWatch(root / "views.jsonl")
        guard.watches.append(watch)
        cells = WatchedCellClient(timeout=3.0)
        cells.watch = watch
        kube = ClientKubeApi.for_host(url)
        ctx = Context(
            kube=kube,
            cells=cells,
            resolver=kubelet.resolver,
            advertised=kubelet.advertised,
            default_image="lockcell:test",
        )

        async def follow_pods() -> None:
            while True:
                watch.endpoints(kubelet.live_urls())
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(kubelet.run()), asyncio.create_task(follow_pods())]
        try:
            async with running_operator(ctx):
                yield E2E(km=km, http=http, url=url, kubelet=kubelet, watch=watch)
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            watch.kill()
            await kubelet.close()
            kube.close()


async def member_ids(client: aiohttp.ClientSession, kubelet: RealKubelet,
                     pods: list[str]) -> dict[str, str]:
    """pod → member id, as the pod's /healthz and /v1/cluster `self` report it (they must agree)."""
    out = {}
    for pod in pods:
        base = kubelet.client_url(pod)
        async with client.get(f"{base}/healthz") as resp:
            assert resp.status == 200
            health = await resp.json()
        async with client.get(f"{base}/v1/cluster") as resp:
            assert resp.status == 200
            view = await resp.json()
        assert health["id"] == view["self"]["id"], (pod, health, view["self"])
        out[pod] = str(health["id"])
    return out


async def leader_view(client: aiohttp.ClientSession, kubelet: RealKubelet,
                      timeout: float = 20.0) -> dict[str, Any]:
    """The view of the member that says it leads (retried through elections)."""
    deadline = now() + timeout
    while True:
        for base in kubelet.live_urls():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with client.get(f"{base}/v1/cluster") as resp:
                    view: dict[str, Any] = await resp.json()
                if view.get("leader") and view["leader"] == view["self"]["id"]:
                    return view
        assert now() < deadline, "no leader answers"
        await asyncio.sleep(0.1)


async def transfer_leadership(client: aiohttp.ClientSession, h: E2E, to: str) -> None:
    token = admin_token_of(h.km)
    deadline = now() + 30
    while True:
        view = await leader_view(client, h.kubelet)
        if view["leader"] == to:
            return
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with client.post(f"{view['self']['url']}/v1/cluster/leader", json={"to": to},
                                   headers={"Authorization": f"Bearer {token}"}) as resp:
                await resp.read()
        assert now() < deadline, f"leadership did not move to {to}"
        await asyncio.sleep(0.1)


async def until(what: str, predicate: Any, timeout: float) -> None:
    deadline = now() + timeout
    while not predicate():
        assert now() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(300)
async def test_scale_3_5_3_with_real_servers_under_traffic(
    tmp_path: Path, process_guard: Guard
) -> None:
    """Create a 3-replica Cell, then 3 → 5 → 3 under lock and write traffic. Checks:

    - the StatefulSet's replicas went 1, 2, 3, 4, 5, 4, 3 (kmock history): one pod at a time;
    - Raft membership (op_clusterwatch.py records every member's distinct views): from the
      bootstrap voter on, each voter set differs from the previous by one member, each new
      member was a learner (on the leader) before it was a voter, and every voter change
      A → B was seen as joint {old: A, new: B};
    - no acknowledged write was lost: every counter file, read back at the end (reads are
      linearizable), holds at least the last acknowledged value and at most the last sent;
      so does the counter each holder increments (compare-and-set) inside its lock;
    - no lock had two holders: see `lock_violations` (generations strictly increase in
      real time, and no grant was heard of before the previous holder sent its release);
      CheckSequencer said valid and a fence never saw an older generation, while held;
    - the final voters are exactly the member ids that pods 0..2 report (/healthz and
      /v1/cluster `self` agree), the same ids they had before the scaling; pods 3 and 4 are
      gone with their volumes (reclaimPolicy Delete); the Cell's status says so;
    - before shrinking, an admin moves leadership to pod 4: the operator moves it to a
      member that stays before removing pod 4's member; the traffic rides out both changes;
    - traffic made progress while the cell grew and while it shrank; no server process died.
    """
    started = now()
    async with e2e_harness(tmp_path, process_guard) as h, aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=10)
    ) as client:
        await h.create_cell({"replicas": 3, "storage": {"reclaimPolicy": "Delete"}})
        await h.wait_for("a running 3-member cell", lambda: h.running_with(3), timeout=90)
        formed = now()
        initial = await member_ids(client, h.kubelet, [f"{CELL}-{i}" for i in range(3)])
        # Pod 0 bootstrapped, and was rolled once without LOCKCELL_BOOTSTRAP (same identity).
        assert h.kubelet.started_count[f"{CELL}-0"] == 2
        assert h.kubelet.procs[f"{CELL}-0"].env[b.ENV_BOOTSTRAP] == "false"

        api = CellHttp(client, h.kubelet.live_urls)
        traffic = Traffic(api, CELL)
        traffic.start()
        rec = traffic.record
        try:
            await until("traffic to flow", lambda: rec.rounds >= 8 or bool(rec.anomalies), 30)

            up_at = now()
            await h.patch_cell({"spec": {"replicas": 5}})
            await h.wait_for("a running 5-member cell", lambda: h.running_with(5), timeout=90)
            grown = now()
            five = await member_ids(client, h.kubelet, [f"{CELL}-{i}" for i in range(5)])
            assert {five[p] for p in initial} == set(initial.values())
            rounds = rec.rounds
            await until("traffic on 5", lambda: rec.rounds >= rounds + 8 or bool(rec.anomalies),
                        30)
            # An admin moves leadership to pod 4: shrinking must move it away before pod 4's
            # member goes, and the traffic rides out both leader changes.
            await transfer_leadership(client, h, five[f"{CELL}-4"])

            down_at = now()
            await h.patch_cell({"spec": {"replicas": 3}})
            await h.wait_for(
                "back to 3 members, the extra volumes deleted",
                lambda: h.running_with(3)
                and h.obj("persistentvolumeclaims", f"data-{CELL}-3") is None
                and h.obj("persistentvolumeclaims", f"data-{CELL}-4") is None
                and not h.kubelet.volume_dir(f"{CELL}-3").exists()
                and not h.kubelet.volume_dir(f"{CELL}-4").exists(),
                timeout=90,
            )
            shrunk = now()
            rounds = rec.rounds
            await until("traffic on 3 again",
                        lambda: rec.rounds >= rounds + 8 or bool(rec.anomalies), 30)
        finally:
            await traffic.finish()

        counters, guarded = await traffic.read_back()
        final_ids = await member_ids(client, h.kubelet, [f"{CELL}-{i}" for i in range(3)])
        last = await leader_view(client, h.kubelet)
        views = [parse_view(t, body) for t, _url, body in h.watch.stop()]

        report = (
            f"formed after {formed - started:.1f}s, 3→5 took {grown - up_at:.1f}s, "
            f"5→3 took {shrunk - down_at:.1f}s; {rec.rounds} rounds, {len(rec.grants)} "
            f"grants ({contended(rec.grants)} waited for another holder), {rec.busy} busy, "
            f"{rec.failovers} failover events, {api.retries} retries; {len(views)} distinct "
            f"views; failed readiness probes {h.kubelet.probe_failures}, of ready pods "
            f"{h.kubelet.flaps}"
        )
        print(report)

        # The StatefulSet moved one pod at a time.
        assert h.replicas_history() == [1, 2, 3, 4, 5, 4, 3], report
        # Nothing crashed, no pod was refused.
        assert not h.kubelet.exits, [(e.pod, e.code, e.log_tail) for e in h.kubelet.exits]
        assert not h.kubelet.errors
        # No server logged an error while it served (the servers log at WARNING and above).
        assert not h.kubelet.errors_while_serving(), h.kubelet.errors_while_serving()
        # The client saw nothing wrong.
        assert not rec.anomalies, rec.anomalies
        # No lock had two holders; fencing tokens grew in real time.
        assert not lock_violations(rec.grants), lock_violations(rec.grants)
        assert {g.lock for g in rec.grants} == set(traffic.locks)
        assert contended(rec.grants) >= 10, report  # the locks were really fought over
        # No acknowledged write was lost (own counters, and the counters in the lock files).
        assert not write_violations(rec.acked, rec.attempted, counters)
        assert not write_violations(rec.guarded_acked, rec.guarded_attempted, guarded)
        assert len(rec.acked) == traffic.workers
        # Traffic kept flowing while the cell grew and while it shrank.
        assert any(up_at < t < grown for t in rec.write_times), report
        assert any(down_at < t < shrunk for t in rec.write_times), report
        # Membership: learners first, joint consensus for each voter change, one at a time.
        # From the bootstrap (pod 0 alone) on: 1 → 2 → 3 at creation, 3 → 4 → 5 → 4 → 3.
        # A joint phase lasts milliseconds; besides the polled views, every member that stays
        # reports the configurations it applied (`configurations` in /v1/cluster).
        for pod in final_ids:
            async with client.get(f"{h.kubelet.client_url(pod)}/v1/cluster") as resp:
                body = await resp.json()
            for conf in body.get("configurations") or []:
                if conf.get("joint"):
                    joint = (tuple(conf["joint"]["old"]), tuple(conf["joint"]["new"]))
                    views.append(View(now(), str(body["self"]["id"]), None, (), joint))
        problems, changes = membership_violations(
            views, frozenset({initial[f"{CELL}-0"]}), frozenset(final_ids.values()))
        assert not problems, "\n".join([*problems, report, *map(str, views)])
        added = [next(iter(new - old)) for old, new in changes[:4]]
        removed = [next(iter(old - new)) for old, new in changes[4:]]
        assert added == [five[f"{CELL}-{i}"] for i in range(1, 5)], (added, five)
        assert removed == [five[f"{CELL}-4"], five[f"{CELL}-3"]], (removed, five)
        assert len(changes) == 6
        # Pod 4's member led when the shrinking began: it handed leadership to a member that
        # stays before it was removed (the operator's TransferLeader), never leading the
        # joint configuration that removes it.
        d4 = five[f"{CELL}-4"]
        assert any(v.from_leader and v.leader == d4 for v in views)
        removal = [v.leader for v in views
                   if v.joint and d4 in v.joint[0] and d4 not in v.joint[1] and v.leader]
        assert removal and set(removal) <= set(initial.values()), (removal, five)
        assert "TransferLeader" in [e.get("reason") for e in h.events()]
        assert rec.failovers >= 1, report  # sessions were told of the new leaders
        # The final voters are exactly the members on pods 0..2; those pods kept their ids.
        assert final_ids == initial
        assert last["joint"] is None
        assert {m["id"]: m["role"] for m in last["members"]} == {
            i: "voter" for i in final_ids.values()}

        def settled() -> bool:
            status = h.cell_status()
            conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
            return (status.get("readyReplicas") == 3 and status.get("replicas") == 3
                    and {m["name"]: m["id"] for m in status.get("members") or []} == final_ids
                    and conditions.get("Available") == "True"
                    and conditions.get("Progressing") == "False")

        # Readiness follows /readyz, which a busy follower may fail for a moment.
        await h.wait_for("the Cell's status to show the 3 members ready", settled, timeout=30)
        assert sorted(h.kubelet.wiped) == [f"{CELL}-3", f"{CELL}-4"]
    elapsed = now() - started
    print(f"e2e wall time {elapsed:.1f}s")


# --- a server bug the e2e test met --------------------------------------------------------------
def _serve(root: Path, name: str, ports: tuple[int, int],
           bootstrap: bool) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKCELL_")}
    env.update({
        "LOCKCELL_CELL_NAME": CELL, "LOCKCELL_NAME_HINT": name,
        "LOCKCELL_DATA_DIR": str(root / name), "LOCKCELL_BOOTSTRAP": str(bootstrap).lower(),
        "LOCKCELL_CLIENT_LISTEN": f"127.0.0.1:{ports[0]}",
        "LOCKCELL_PEER_LISTEN": f"127.0.0.1:{ports[1]}",
        "LOCKCELL_ADVERTISE_CLIENT_URL": f"http://127.0.0.1:{ports[0]}",
        "LOCKCELL_ADVERTISE_PEER_URL": f"http://127.0.0.1:{ports[1]}",
        "LOCKCELL_ADMIN_TOKEN": "admin", "LOCKCELL_PEER_SECRET": "peer", **SERVER_ENV,
    })
    with open(root / f"{name}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "lockcell.cli.main", "serve"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer admin", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None


def _eventually(what: str, check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if check():
                return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_member_stops_on_sigterm_without_logging_an_error(tmp_path: Path) -> None:
    """Minimal reproduction: two members (bootstrap + learner), SIGTERM the learner."""
    ports = {name: (free_port(), free_port()) for name in ("m0", "m1")}
    procs = [_serve(tmp_path, "m0", ports["m0"], True), _serve(tmp_path, "m1", ports["m1"], False)]
    try:
        m0, m1 = (f"http://127.0.0.1:{ports[n][0]}" for n in ("m0", "m1"))
        _eventually("m0 to lead", lambda: _http("GET", f"{m0}/readyz")[0] == 200)
        _eventually("m1 to serve", lambda: _http("GET", f"{m1}/healthz")[0] == 200)
        member = _http("GET", f"{m1}/healthz")[1]["id"]
        status, _ = _http("POST", f"{m0}/v1/cluster/members", {
            "id": member, "url": m1, "peer_url": f"http://127.0.0.1:{ports['m1'][1]}"})
        assert status == 201
        _eventually("m1 to be a ready learner", lambda: _http("GET", f"{m1}/readyz")[0] == 200)
        procs[1].send_signal(signal.SIGTERM)
        assert procs[1].wait(timeout=10) == 0
        logged = (tmp_path / "m1.log").read_text(errors="replace")
        errors = [line for line in logged.splitlines() if " ERROR " in line]
        assert not errors, logged[-2000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


# --- the checks catch what they are meant to catch --------------------------------------------
def grant(lock: str, worker: int, gen: int, acq_ack: float, rel_sent: float,
          rel_ack: float | None = None) -> Grant:
    return Grant(lock, worker, gen, acq_ack - 0.5, acq_ack, rel_sent,
                 rel_sent + 0.01 if rel_ack is None else rel_ack)


def test_lock_check_allows_release_before_grant_overlap() -> None:
    # Worker 1 hears of its grant (3.05) before worker 0 hears its release committed (3.1),
    # but after worker 0 sent it (3.0): allowed.
    ok = [grant("a", 0, 1, 1.0, 3.0, 3.1), grant("a", 1, 2, 3.05, 4.0),
          grant("b", 0, 7, 3.5, 3.6)]
    assert lock_violations(ok) == []


def test_lock_check_catches_two_holders_and_disorder() -> None:
    overlap = [grant("a", 0, 1, 1.0, 3.0), grant("a", 1, 2, 2.5, 4.0)]
    assert "two holders" in lock_violations(overlap)[0]
    dup = [grant("a", 0, 5, 1.0, 2.0), grant("a", 1, 5, 3.0, 4.0)]
    assert any("more than once" in p for p in lock_violations(dup))
    backwards = [grant("a", 0, 9, 1.0, 2.0), grant("a", 1, 8, 3.0, 4.0)]
    problems = lock_violations(backwards)
    assert any("real-time order" in p for p in problems)
    never = [Grant("a", 0, 1, 0.0, 1.0), grant("a", 1, 2, 3.0, 4.0)]
    assert any("never released" in p for p in lock_violations(never))


def test_write_check() -> None:
    assert write_violations({"f": 3}, {"f": 4}, {"f": 4}) == []
    assert write_violations({"f": 3}, {"f": 3}, {"f": 3}) == []
    assert "lost write" in write_violations({"f": 3}, {"f": 3}, {"f": 2})[0]
    assert "only 3 were written" in write_violations({"f": 3}, {"f": 3}, {"f": 5})[0]
    assert write_violations({"f": 1}, {"f": 1}, {})


def view(t: float, source: str, leader: str, roles: dict[str, str],
         joint: tuple[list[str], list[str]] | None = None) -> View:
    return View(t, source, leader, tuple(sorted(roles.items())),
                None if joint is None else (tuple(sorted(joint[0])), tuple(sorted(joint[1]))))


def test_membership_check() -> None:
    v3 = {"a": "voter", "b": "voter", "c": "voter"}
    good = [
        view(1, "a", "a", v3),
        view(2, "a", "a", {**v3, "d": "learner"}),
        view(3, "b", "a", {**v3, "d": "voter"}, (["a", "b", "c"], ["a", "b", "c", "d"])),
        view(4, "a", "a", {**v3, "d": "voter"}),
        view(5, "d", "a", v3, (["a", "b", "c", "d"], ["a", "b", "c"])),
        view(6, "a", "a", v3),
    ]
    initial = frozenset("abc")
    problems, changes = membership_violations(good, initial, initial)
    assert problems == [] and len(changes) == 2
    # The joint phase of the removal was never seen.
    problems, _ = membership_violations(good[:4] + good[5:], initial, initial)
    assert problems == ["voter change ['a', 'b', 'c', 'd'] → ['a', 'b', 'c'] was never seen joint"]
    # A member that became a voter without being a learner first.
    jump = [good[0], view(3, "a", "a", {**v3, "d": "voter"}),
            view(3.5, "c", "a", {**v3, "d": "voter"}, (["a", "b", "c"], ["a", "b", "c", "d"]))]
    problems, _ = membership_violations(jump, initial, frozenset("abcd"))
    assert problems == ["d first appeared as voter, not as a learner"]
    # Two members at once, and the wrong final voters.
    two = [good[0], view(2, "a", "a", {"a": "voter", "b": "voter", "c": "voter", "d": "voter",
                                       "e": "voter"})]
    problems, _ = membership_violations(two, initial, initial)
    assert any("more than one member" in p for p in problems)
    assert any("last voters seen" in p for p in problems)


# --- the kubelet's pod environment ------------------------------------------------------------
def test_environment_from_the_template(tmp_path: Path) -> None:
    ref = CellRef(CELL, NAMESPACE, uid="u1")
    spec = parse_spec({"replicas": 3, "session": {"leaseSeconds": 20}})
    sts = b.build_statefulset(ref, spec, replicas=3, image="x", bootstrap=True)
    template = sts["spec"]["template"]
    container = template["spec"]["containers"][0]
    cm = b.build_config_map(ref, spec)["data"]
    secrets = {("demo-admin", "token"): "adm", ("demo-peer", "secret"): "peer"}
    env = container_environment("demo-2", NAMESPACE, container,
                                lambda name: cm if name == "demo-config" else None,
                                lambda name, key: secrets.get((name, key)))
    assert env[b.ENV_NAME_HINT] == "demo-2"
    assert env[b.ENV_ADMIN_TOKEN] == "adm" and env[b.ENV_PEER_SECRET] == "peer"
    assert env[b.ENV_LEASE_MS] == "20000" and env[b.ENV_BOOTSTRAP] == "true"
    dns = b.advertised_urls(ref, "demo-2")
    assert env[b.ENV_ADVERTISE_CLIENT_URL] == dns[0]
    local = loopback_environment(env, container=container, dns_urls=dns, loopback=(4001, 4002),
                                 mounts={b.DATA_MOUNT: tmp_path / "pvc", "/tmp": tmp_path / "t"})
    assert local[b.ENV_CLIENT_LISTEN] == "127.0.0.1:4001"
    assert local[b.ENV_PEER_LISTEN] == "127.0.0.1:4002"
    assert local[b.ENV_ADVERTISE_CLIENT_URL] == "http://127.0.0.1:4001"
    assert local[b.ENV_ADVERTISE_PEER_URL] == "http://127.0.0.1:4002"
    assert local[b.ENV_DATA_DIR] == str(tmp_path / "pvc" / "data")
    # A template whose advertised URL is not the pod's DNS name is refused.
    with pytest.raises(PodSpecError):
        loopback_environment(env, container=container, dns_urls=b.advertised_urls(ref, "demo-1"),
                             loopback=(1, 2), mounts={})
    # Missing Secret: the pod cannot start (CreateContainerConfigError in a cluster).
    with pytest.raises(PodSpecError):
        container_environment("demo-2", NAMESPACE, container, lambda name: cm,
                              lambda name, key: None)


def test_var_expansion() -> None:
    assert expand("$(A).x.$(B)", {"A": "a"}) == "a.x.$(B)"
    assert expand("$$(A)", {"A": "a"}) == "$(A)"
