"""Run the real kopf operator against kmock, with a test-side kubelet and a fake cell.

kmock 0.8 plays the API server (with the fixes below); kopf runs in its own thread and
event loop; the test's loop runs kmock, the fake cell's member servers and a "kubelet" that
plays the StatefulSet controller: it makes pods and PVCs for the StatefulSet's replicas,
starts a fake member per pod (pod 0 bootstraps when the template says so), deletes pods
above the replicas, forgets a volume when its PVC is deleted, and reports pod readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import itertools
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import kmock
import kopf
from op_fakecell import FakeCell

import lockcell_operator.handlers  # noqa: F401  (registers the handlers)
from lockcell_operator import builders as b
from lockcell_operator.cellapi import CellClient
from lockcell_operator.kube import ClientKubeApi
from lockcell_operator.reconcile import Context
from lockcell_operator.spec import CellRef

TEST_AGENT = "lockcell-test-kubelet"
NAMESPACE = "default"
_server_url: list[str] = []


@kopf.on.login()
def _login_to_kmock(**_: Any) -> kopf.ConnectionInfo:
    """Tests only: talk to the kmock server of the running test."""
    return kopf.ConnectionInfo(server=_server_url[-1], default_namespace=NAMESPACE)


class FixedKMock(kmock.KubernetesEmulator):
    """kmock 0.8 with what a real API server adds: uid, resourceVersion, generation,
    creationTimestamp (the `kubernetes` client and kopf rely on them), and names for
    objects created with generateName (kopf's Events)."""

    _versions = itertools.count(1)

    async def _handle(self, request: kmock.Request) -> Any:
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            version = str(next(self._versions))
            if request.action == kmock.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:8]}"
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("generation", 1)
                meta.setdefault(
                    "creationTimestamp",
                    datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                )
                meta["resourceVersion"] = version
            elif request.action == kmock.action.UPDATE and request.name is not None:
                meta["resourceVersion"] = version
                if "spec" in data and request.subresource is None:
                    current = find(self, request.resource.plural or "", request.namespace,
                                   request.name)
                    if current is not None:
                        generation = int(current["metadata"].get("generation", 1))
                        if merged_spec_changes(current.get("spec"), data["spec"]):
                            meta["generation"] = generation + 1
        return await super()._handle(request)


def merged_spec_changes(spec: Any, patch: Any) -> bool:
    if not isinstance(patch, dict) or not isinstance(spec, dict):
        return bool(spec != patch)
    return any(
        (k not in spec and v is not None) or (k in spec and merged_spec_changes(spec[k], v))
        for k, v in patch.items()
    )


def find(km: kmock.KubernetesEmulator, plural: str, ns: str | None,
         name: str) -> dict[str, Any] | None:
    for (resource, namespace, obj_name), obj in km.objects.items():
        if resource.plural == plural and namespace == ns and obj_name == name:
            return None if obj.deleted else copy.deepcopy(obj.raw)
    return None


def find_all(km: kmock.KubernetesEmulator, plural: str, ns: str) -> list[dict[str, Any]]:
    out = []
    for (resource, namespace, _), obj in km.objects.items():
        if resource.plural == plural and namespace == ns and not obj.deleted:
            out.append(copy.deepcopy(obj.raw))
    return out


def history(km: kmock.KubernetesEmulator, plural: str, ns: str, name: str) -> list[Any]:
    for (resource, namespace, obj_name), obj in km.objects.items():
        if resource.plural == plural and namespace == ns and obj_name == name:
            return [None if v is None else copy.deepcopy(v.raw) for v in obj.history]
    return []


@dataclass
class Kubelet:
    """Plays the StatefulSet controller and the kubelet for one Cell."""

    km: kmock.KubernetesEmulator
    http: aiohttp.ClientSession
    cell: FakeCell
    name: str
    ns: str = NAMESPACE
    crashed: set[str] = field(default_factory=set)  # pods whose server must stay down

    def url(self, plural: str, name: str | None = None) -> str:
        path = f"/api/v1/namespaces/{self.ns}/{plural}"
        return f"{path}/{name}" if name else path

    async def _post(self, plural: str, body: dict[str, Any]) -> None:
        async with self.http.post(self.url(plural), json=body) as resp:
            assert resp.status < 300 or resp.status == 409, await resp.text()

    async def _delete(self, plural: str, name: str) -> None:
        async with self.http.delete(self.url(plural, name)) as resp:
            assert resp.status < 300 or resp.status == 404, await resp.text()

    async def _patch(self, plural: str, name: str, body: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.http.patch(self.url(plural, name), json=body, headers=headers) as resp:
            assert resp.status < 300, await resp.text()

    async def sync(self) -> None:
        sts = find(self.km, "statefulsets", self.ns, self.name)
        pods = {p["metadata"]["name"]: p for p in find_all(self.km, "pods", self.ns)}
        pvcs = {p["metadata"]["name"] for p in find_all(self.km, "persistentvolumeclaims",
                                                         self.ns)}
        replicas = int(sts["spec"]["replicas"]) if sts else 0
        bootstrap = b.template_bootstrap_flag(sts) if sts else False
        wanted = [f"{self.name}-{i}" for i in range(replicas)]
        for pod in wanted:
            if b.pvc_name(pod) not in pvcs:
                await self._post("persistentvolumeclaims", {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": b.pvc_name(pod), "namespace": self.ns,
                                 "labels": b.selector_labels(self.name)},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "1Gi"}}},
                })
            if pod not in pods:
                assert sts is not None
                await self._post("pods", {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": self.ns,
                                 "labels": sts["spec"]["template"]["metadata"]["labels"]},
                    "spec": sts["spec"]["template"]["spec"],
                    "status": {"phase": "Running", "conditions": [
                        {"type": "Ready", "status": "False"}]},
                })
            if pod not in self.crashed and not self.cell.is_up(pod):
                await self.cell.start(pod, bootstrap=bootstrap and pod.endswith("-0"))
        for pod in pods:
            if pod.startswith(f"{self.name}-") and pod not in wanted:
                await self.cell.stop(pod)
                await self._delete("pods", pod)
        for pod in list(self.cell.volumes):
            if b.pvc_name(pod) not in pvcs and not self.cell.is_up(pod) and pod not in wanted:
                self.cell.wipe(pod)
        for pod in wanted:
            if pod in self.crashed and self.cell.is_up(pod):
                await self.cell.stop(pod)
            member = self.cell.id_of(pod)
            ready = member in self.cell.members and self.cell.leader is not None
            current = pods.get(pod) or {}
            conds = (current.get("status") or {}).get("conditions") or []
            was = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
            if pod in pods and ready != was:
                await self._patch("pods", pod, {"status": {"conditions": [
                    {"type": "Ready", "status": "True" if ready else "False"}]}})

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
            except (aiohttp.ClientError, AssertionError) as exc:  # keep playing
                logging.getLogger(__name__).warning("kubelet: %r", exc)
            await asyncio.sleep(0.05)


@dataclass
class KubeHarness:
    """The test's side of kmock: objects, history, the Cell, and waiting for conditions."""

    km: kmock.KubernetesEmulator
    http: aiohttp.ClientSession
    url: str

    def obj(self, plural: str, name: str) -> dict[str, Any] | None:
        return find(self.km, plural, NAMESPACE, name)

    def cell_status(self, name: str = "demo") -> dict[str, Any]:
        obj = self.obj("cells", name) or {}
        status: dict[str, Any] = obj.get("status") or {}
        return status

    def replicas_history(self, name: str = "demo") -> list[int]:
        out: list[int] = []
        for version in history(self.km, "statefulsets", NAMESPACE, name):
            if version is None:
                continue
            n = int(version["spec"]["replicas"])
            if not out or out[-1] != n:
                out.append(n)
        return out

    def events(self) -> list[dict[str, Any]]:
        return find_all(self.km, "events", NAMESPACE)

    def operator_requests(self) -> list[kmock.Request]:
        return [r for r in self.km if r.headers.get("User-Agent", "") != TEST_AGENT]

    async def create_cell(self, spec: dict[str, Any], name: str = "demo") -> None:
        body = {"apiVersion": "lockcell.io/v1alpha1", "kind": "Cell",
                "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}
        async with self.http.post(
            f"/apis/lockcell.io/v1alpha1/namespaces/{NAMESPACE}/cells", json=body
        ) as resp:
            assert resp.status < 300, await resp.text()

    async def patch_cell(self, patch: dict[str, Any], name: str = "demo") -> None:
        async with self.http.patch(
            f"/apis/lockcell.io/v1alpha1/namespaces/{NAMESPACE}/cells/{name}", json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        ) as resp:
            assert resp.status < 300, await resp.text()

    async def delete_cell(self, name: str = "demo") -> None:
        async with self.http.delete(
            f"/apis/lockcell.io/v1alpha1/namespaces/{NAMESPACE}/cells/{name}"
        ) as resp:
            assert resp.status < 300, await resp.text()

    def describe(self) -> str:
        """What a timeout message shows."""
        return f"status: {self.cell_status()}; sts replicas: {self.replicas_history()}"

    async def wait_for(self, what: str, predicate: Callable[[], bool],
                       timeout: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; {self.describe()}")
            await asyncio.sleep(0.05)


@dataclass
class Harness(KubeHarness):
    cell: FakeCell
    kubelet: Kubelet

    def describe(self) -> str:
        return (f"{super().describe()}; members: {self.cell.members}; "
                f"leader: {self.cell.leader}")

    def running_with(self, voters: int, name: str = "demo") -> bool:
        status = self.cell_status(name)
        members = status.get("members") or []
        return (
            status.get("phase") == "Running"
            and len(members) == voters
            and all(m["role"] == "voter" and m["healthy"] for m in members)
            and len(self.cell.voters()) == voters
        )


@contextlib.asynccontextmanager
async def kmock_api() -> AsyncIterator[tuple[FixedKMock, str, aiohttp.ClientSession]]:
    """kmock with the fixes, serving on loopback; kopf logs in to it (see _login_to_kmock)."""
    async with FixedKMock() as km, kmock.Server(km) as server:
        km.resources.load_bundled()
        km.resources["lockcell.io/v1alpha1/cells"] = kmock.ResourceInfo(
            kind="Cell", singular="cell", namespaced=True, shortnames={"lc"},
            verbs={"get", "list", "watch", "create", "patch", "update", "delete"},
            subresources={"status", "scale"},
        )
        url = str(server.url).rstrip("/")
        _server_url.append(url)
        http = aiohttp.ClientSession(base_url=url, headers={"User-Agent": TEST_AGENT})
        try:
            yield km, url, http
        finally:
            await http.close()
            _server_url.remove(url)


def admin_token_of(km: kmock.KubernetesEmulator, cell: str = "demo") -> str | None:
    secret = find(km, "secrets", NAMESPACE, b.admin_secret_name(cell))
    return b.secret_value(secret, b.ADMIN_TOKEN_KEY) if secret else None


@contextlib.asynccontextmanager
async def running_operator(ctx: Context) -> AsyncIterator[None]:
    """The real kopf operator with `ctx`, in its own thread and loop, until the block ends."""
    ready, stop = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run_operator() -> None:
        async def main() -> None:
            await kopf.operator(
                clusterwide=True,
                standalone=True,
                ready_flag=ready,
                stop_flag=stop,
                memo=kopf.Memo(ctx=ctx),
            )
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test below
            errors.append(exc)

    thread = threading.Thread(target=run_operator, name="kopf", daemon=True)
    thread.start()
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while not ready.is_set():
            assert not errors, errors
            assert asyncio.get_running_loop().time() < deadline, "kopf never got ready"
            await asyncio.sleep(0.05)
        yield
    finally:
        stop.set()
        deadline = asyncio.get_running_loop().time() + 15
        while thread.is_alive() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
    assert not thread.is_alive(), "kopf did not stop"


@contextlib.asynccontextmanager
async def operator_harness() -> AsyncIterator[Harness]:
    async with kmock_api() as (km, url, http):
        ref = CellRef("demo", NAMESPACE)
        cell = FakeCell(token=lambda: admin_token_of(km),
                        url_of=lambda pod: b.advertised_urls(ref, pod))
        kube = ClientKubeApi.for_host(url)
        ctx = Context(
            kube=kube,
            cells=CellClient(timeout=1.0),
            resolver=lambda _ref, pod: cell.base_url(pod),
            default_image="lockcell:test",
        )
        try:
            async with cell:
                kubelet = Kubelet(km, http, cell, "demo")
                kubelet_task = asyncio.create_task(kubelet.run())
                try:
                    async with running_operator(ctx):
                        yield Harness(km=km, http=http, url=url, cell=cell, kubelet=kubelet)
                finally:
                    kubelet_task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await kubelet_task
        finally:
            kube.close()
