"""A test-side StatefulSet controller and kubelet that run REAL `lockcell serve` processes.

kmock has no controllers, so this plays them for one Cell's StatefulSet:

- pods `<cell>-0 .. <cell>-(replicas-1)` and their PVCs `data-<pod>` exist as objects;
  pods above `replicas` are stopped (SIGTERM) and deleted; a PVC object deleted (by the
  operator, reclaimPolicy Delete) removes the directory that plays its volume;
- each pod is one `python -m lockcell.cli.main serve` process (the template's `lockcell serve`
  command) with the environment the pod template specifies - the ConfigMap (`envFrom`), the
  Secrets (`secretKeyRef`), the pod name (`fieldRef`), `$(VAR)` expansion - rewritten for
  loopback: listen addresses and advertised URLs become 127.0.0.1 with per-pod free ports
  (fixed for the pod's name for the whole test, as a pod's DNS name is), and paths under the
  `data` mount move into a per-PVC directory, so a restarted pod keeps its data;
- a template change rolls the pods (RollingUpdate: highest ordinal first, one at a time, only
  while every pod is ready), as the StatefulSet controller does; the only change in a scale
  test is the end of bootstrap, which restarts pod 0 without LOCKCELL_BOOTSTRAP;
- pod readiness is the template's readinessProbe (`GET /readyz`; Ready after one success,
  not Ready after `failureThreshold` failures in a row; probed every `probe_period` seconds
  instead of `periodSeconds`), written to the pod's Ready condition; the StatefulSet's
  `status.replicas` / `readyReplicas` follow.

Every pod runs one "image": a copy of the `lockcell` package taken when the kubelet is made
(`snapshot_image`), first on the processes' PYTHONPATH - as in a cluster, where every pod of
the StatefulSet runs the same image even if the source tree changes meanwhile.

A process that exits on its own is restarted (restartPolicy Always) and recorded in `exits`;
`close()` kills every process it started (the test's finalizer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kmock
from op_fakecell import free_port
from op_harness import NAMESPACE, find, find_all

from lockcell_operator import builders as b
from lockcell_operator.spec import CellRef

log = logging.getLogger(__name__)

START_MARK = "--- start"
STOP_MARK = "--- SIGTERM"
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodSpecError(Exception):
    """The pod template asks for something this kubelet (or a real one) cannot provide."""


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known variables are replaced, `$$` is a `$`, and a
    reference to an unknown variable stays as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR_REF.sub(sub, value)


def container_environment(
    pod: str,
    namespace: str,
    container: Mapping[str, Any],
    config_map: Callable[[str], Mapping[str, str] | None],
    secret: Callable[[str, str], str | None],
) -> dict[str, str]:
    """The environment a kubelet gives `container` of `pod`: envFrom first, then env in order
    (later entries win; `$(VAR)` sees what is defined before it)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        if ref is None:
            raise PodSpecError(f"unsupported envFrom source {source!r}")
        data = config_map(ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise PodSpecError(f"ConfigMap {ref['name']} does not exist")
        prefix = source.get("prefix", "")
        env.update({f"{prefix}{k}": str(v) for k, v in data.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = expand(str(item["value"]), env)
            continue
        value_from = item.get("valueFrom") or {}
        if "fieldRef" in value_from:
            path = value_from["fieldRef"]["fieldPath"]
            fields = {"metadata.name": pod, "metadata.namespace": namespace,
                      "status.podIP": "127.0.0.1"}
            if path not in fields:
                raise PodSpecError(f"unsupported fieldRef {path}")
            env[name] = fields[path]
        elif "secretKeyRef" in value_from:
            ref = value_from["secretKeyRef"]
            got = secret(ref["name"], ref["key"])
            if got is None:
                raise PodSpecError(f"Secret {ref['name']} has no key {ref['key']}")
            env[name] = got
        elif "configMapKeyRef" in value_from:
            ref = value_from["configMapKeyRef"]
            data = config_map(ref["name"]) or {}
            if ref["key"] not in data:
                raise PodSpecError(f"ConfigMap {ref['name']} has no key {ref['key']}")
            env[name] = str(data[ref["key"]])
        else:
            env[name] = ""
    return env


def _port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def loopback_environment(
    env: Mapping[str, str],
    *,
    container: Mapping[str, Any],
    dns_urls: tuple[str, str],
    loopback: tuple[int, int],
    mounts: Mapping[str, Path],
) -> dict[str, str]:
    """Rewrite a pod's environment for a process on this machine.

    `dns_urls` are the (client, peer) URLs the pod's DNS name gives; they must be what the
    template makes the pod advertise, and become `http://127.0.0.1:<port>`. The listen
    addresses must use the container's named ports and move to 127.0.0.1 and the pod's
    ports. Paths under a volume mount move into that volume's directory.
    """
    ports = {p["name"]: int(p["containerPort"]) for p in container.get("ports") or []}
    client_port, peer_port = loopback
    out = dict(env)
    listen = {b.ENV_CLIENT_LISTEN: ("client", client_port), b.ENV_PEER_LISTEN: ("peer", peer_port)}
    for var, (port_name, port) in listen.items():
        if _port_of(out[var]) != ports[port_name]:
            raise PodSpecError(f"{var}={out[var]} is not the container's {port_name} port")
        out[var] = f"127.0.0.1:{port}"
    advertise = {b.ENV_ADVERTISE_CLIENT_URL: (dns_urls[0], client_port),
                 b.ENV_ADVERTISE_PEER_URL: (dns_urls[1], peer_port)}
    for var, (dns, port) in advertise.items():
        if out.get(var) != dns:
            raise PodSpecError(f"{var}={out.get(var)!r}, but the pod's DNS name gives {dns}")
        out[var] = f"http://127.0.0.1:{port}"
    for var, value in out.items():
        for mount_path, directory in mounts.items():
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                out[var] = str(directory) + value[len(mount_path.rstrip("/")):]
    return out


def snapshot_image(into: Path) -> Path:
    """Copy the `lockcell` package the tests import into `into`; returns the PYTHONPATH entry."""
    import lockcell

    source = Path(lockcell.__file__).parent
    shutil.copytree(source, into / "lockcell",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return into


@dataclass
class PodProcess:
    pod: str
    process: subprocess.Popen[bytes]
    revision: str
    env: dict[str, str]
    started: float


@dataclass
class Exit:
    """A server process that ended without being asked to."""

    pod: str
    code: int | None
    log_tail: str


@dataclass
class RealKubelet:
    """Plays the StatefulSet controller and the kubelet for one Cell, with real servers."""

    km: kmock.KubernetesEmulator
    http: aiohttp.ClientSession  # to kmock
    cell: str
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    image: Path | None = None  # PYTHONPATH entry holding the `lockcell` package to run
    ns: str = NAMESPACE
    period: float = 0.1
    ports: dict[str, tuple[int, int]] = field(default_factory=dict)
    procs: dict[str, PodProcess] = field(default_factory=dict)
    ready: dict[str, bool] = field(default_factory=dict)
    probe_period: float = 0.25
    failures_in_a_row: dict[str, int] = field(default_factory=dict)
    probe_failures: dict[str, int] = field(default_factory=dict)  # pod → failed probes, total
    flaps: list[tuple[str, str]] = field(default_factory=list)  # failed probes of Ready pods
    exits: list[Exit] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    started_count: dict[str, int] = field(default_factory=dict)
    wiped: list[str] = field(default_factory=list)
    _probe_http: aiohttp.ClientSession | None = None
    _probed_at: float = 0.0
    _sts_status: dict[str, Any] | None = None

    # --- addresses -------------------------------------------------------------------------
    @property
    def ref(self) -> CellRef:
        return CellRef(self.cell, self.ns)

    def port_pair(self, pod: str) -> tuple[int, int]:
        """(client, peer) ports of `pod`, fixed for its name like its DNS name."""
        if pod not in self.ports:
            taken = {p for pair in self.ports.values() for p in pair}
            pair: list[int] = []
            while len(pair) < 2:
                port = free_port()
                if port not in taken and port not in pair:
                    pair.append(port)
            self.ports[pod] = (pair[0], pair[1])
        return self.ports[pod]

    def client_url(self, pod: str) -> str:
        return f"http://127.0.0.1:{self.port_pair(pod)[0]}"

    def peer_url(self, pod: str) -> str:
        return f"http://127.0.0.1:{self.port_pair(pod)[1]}"

    def advertised(self, _ref: CellRef, pod: str) -> tuple[str, str]:
        """What the pod advertises (for the operator's Context.advertised)."""
        return self.client_url(pod), self.peer_url(pod)

    def resolver(self, _ref: CellRef, pod: str) -> str:
        """How the operator reaches the pod (for the operator's Context.resolver)."""
        return self.client_url(pod)

    def running(self) -> list[str]:
        return sorted(p for p, proc in self.procs.items() if proc.process.poll() is None)

    def updated(self) -> bool:
        """Every running pod runs the StatefulSet's current template (no roll pending)."""
        sts = find(self.km, "statefulsets", self.ns, b.statefulset_name(self.cell))
        if sts is None:
            return not self.procs
        revision = b.content_hash(sts["spec"]["template"])
        return all(p.revision == revision for p in self.procs.values())

    def live_urls(self) -> list[str]:
        return [self.client_url(p) for p in self.running()]

    def volume_dir(self, pod: str) -> Path:
        return self.root / "pvc" / b.pvc_name(pod)

    def log_path(self, pod: str) -> Path:
        return self.root / "logs" / f"{pod}.log"

    # --- kmock -----------------------------------------------------------------------------
    def _url(self, plural: str, name: str | None = None, group: str = "") -> str:
        base = f"/apis/{group}/namespaces/{self.ns}" if group else f"/api/v1/namespaces/{self.ns}"
        return f"{base}/{plural}/{name}" if name else f"{base}/{plural}"

    async def _post(self, plural: str, body: dict[str, Any]) -> None:
        async with self.http.post(self._url(plural), json=body) as resp:
            assert resp.status < 300 or resp.status == 409, await resp.text()

    async def _delete(self, plural: str, name: str) -> None:
        async with self.http.delete(self._url(plural, name)) as resp:
            assert resp.status < 300 or resp.status == 404, await resp.text()

    async def _patch(self, url: str, body: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.http.patch(url, json=body, headers=headers) as resp:
            assert resp.status < 300, await resp.text()

    def _config_map(self, name: str) -> Mapping[str, str] | None:
        cm = find(self.km, "configmaps", self.ns, name)
        return None if cm is None else (cm.get("data") or {})

    def _secret(self, name: str, key: str) -> str | None:
        secret = find(self.km, "secrets", self.ns, name)
        return None if secret is None else b.secret_value(secret, key)

    # --- processes -------------------------------------------------------------------------
    def environment_for(self, pod: str, template: Mapping[str, Any]) -> dict[str, str]:
        """The loopback environment of `pod`'s server, from the StatefulSet's template."""
        containers = template["spec"]["containers"]
        container = next(c for c in containers if c["name"] == b.CONTAINER_NAME)
        env = container_environment(pod, self.ns, container, self._config_map, self._secret)
        volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
        mounts: dict[str, Path] = {}
        for mount in container.get("volumeMounts") or []:
            name = mount["name"]
            if name == b.DATA_VOLUME:  # the volumeClaimTemplate
                mounts[mount["mountPath"]] = self.volume_dir(pod)
            elif "emptyDir" in (volumes.get(name) or {}):
                mounts[mount["mountPath"]] = self.root / "emptydir" / pod / name
            else:
                raise PodSpecError(f"unsupported volume {name}")
        env = loopback_environment(
            env, container=container, dns_urls=b.advertised_urls(self.ref, pod),
            loopback=self.port_pair(pod), mounts=mounts,
        )
        overridden = sorted(set(self.extra_env) & set(env))
        if overridden:
            raise ValueError(f"the test's extra environment would override the template: "
                             f"{overridden}")
        return {**env, **self.extra_env}

    def _command(self, template: Mapping[str, Any]) -> list[str]:
        container = next(c for c in template["spec"]["containers"]
                         if c["name"] == b.CONTAINER_NAME)
        command = list(container.get("command") or []) + list(container.get("args") or [])
        if not command or command[0] != "lockcell":
            raise PodSpecError(f"unexpected command {command}")
        return [sys.executable, "-m", "lockcell.cli.main", *command[1:]]

    def start(self, pod: str, template: Mapping[str, Any]) -> None:
        env = self.environment_for(pod, template)
        base = {k: v for k, v in os.environ.items() if not k.startswith("LOCKCELL_")}
        if self.image is not None:
            base["PYTHONPATH"] = os.pathsep.join(
                [str(self.image), *filter(None, [base.get("PYTHONPATH")])])
        self.volume_dir(pod).mkdir(parents=True, exist_ok=True)
        empty = self.root / "emptydir" / pod
        shutil.rmtree(empty, ignore_errors=True)  # emptyDir volumes: new with every pod
        for volume in template["spec"].get("volumes") or []:
            if "emptyDir" in volume:
                (empty / volume["name"]).mkdir(parents=True)
        self.log_path(pod).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path(pod), "ab") as out:
            out.write(f"{START_MARK} {time.strftime('%H:%M:%S')} {pod}\n".encode())
            out.flush()
            process = subprocess.Popen(
                self._command(template), env={**base, **env}, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.procs[pod] = PodProcess(pod, process, b.content_hash(template), env, time.monotonic())
        self.started_count[pod] = self.started_count.get(pod, 0) + 1
        self.ready[pod] = False
        self.failures_in_a_row[pod] = 0

    async def stop(self, pod: str, grace: float = 5.0) -> None:
        proc = self.procs.pop(pod, None)
        self.ready.pop(pod, None)
        if proc is None:
            return
        p = proc.process
        if p.poll() is None:
            with open(self.log_path(pod), "ab") as out:
                out.write(f"{STOP_MARK} {time.strftime('%H:%M:%S')} {pod}\n".encode())
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while p.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)

    def kill_all(self) -> None:
        """Synchronous last resort: SIGKILL every process this kubelet started."""
        for proc in list(self.procs.values()):
            if proc.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.process.wait(timeout=5)
        self.procs.clear()

    async def close(self) -> None:
        try:
            await asyncio.gather(*(self.stop(p, grace=3.0) for p in list(self.procs)))
        finally:
            self.kill_all()
            if self._probe_http is not None:
                await self._probe_http.close()

    def errors_while_serving(self) -> dict[str, list[str]]:
        """pod → ERROR / CRITICAL / Traceback lines its server logged while it served (between
        a start and the SIGTERM that stopped it; what shutdown logs is not counted)."""
        out: dict[str, list[str]] = {}
        for path in sorted((self.root / "logs").glob("*.log")):
            serving = False
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(START_MARK):
                    serving = True
                elif line.startswith(STOP_MARK):
                    serving = False
                elif serving and (" ERROR " in line or " CRITICAL " in line
                                  or line.startswith("Traceback")):
                    out.setdefault(path.stem, []).append(line[:300])
        return out

    def log_tail(self, pod: str, lines: int = 30) -> str:
        try:
            text = self.log_path(pod).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # --- probes ----------------------------------------------------------------------------
    def _probes(self) -> aiohttp.ClientSession:
        if self._probe_http is None:
            self._probe_http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        return self._probe_http

    async def _ready(self, pod: str) -> bool:
        try:
            async with self._probes().get(f"{self.client_url(pod)}/readyz") as resp:
                body = await resp.read()
                if resp.status != 200 and self.ready.get(pod):
                    self.flaps.append((pod, body.decode(errors="replace")[:200]))
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if self.ready.get(pod):
                self.flaps.append((pod, repr(exc)))
            return False

    # --- the control loop --------------------------------------------------------------------
    async def sync(self) -> None:
        sts = find(self.km, "statefulsets", self.ns, b.statefulset_name(self.cell))
        pods = {p["metadata"]["name"]: p for p in find_all(self.km, "pods", self.ns)
                if p["metadata"]["name"].startswith(f"{self.cell}-")}
        pvcs = {p["metadata"]["name"] for p in find_all(self.km, "persistentvolumeclaims",
                                                         self.ns)}
        replicas = int(sts["spec"]["replicas"]) if sts else 0
        template = sts["spec"]["template"] if sts else None
        revision = b.content_hash(template) if template else ""
        wanted = [f"{self.cell}-{i}" for i in range(replicas)]

        # Processes that ended on their own: record, and let the pod restart below.
        for pod, proc in list(self.procs.items()):
            if proc.process.poll() is not None:
                self.exits.append(Exit(pod, proc.process.returncode, self.log_tail(pod)))
                log.warning("pod %s exited with %s", pod, proc.process.returncode)
                self.procs.pop(pod)
                self.ready[pod] = False

        # Pods beyond the replicas: stop them, delete the objects (the highest first).
        for pod in sorted(set(pods) | set(self.procs), reverse=True):
            if pod not in wanted:
                await self.stop(pod)
                if pod in pods:
                    await self._delete("pods", pod)
                    pods.pop(pod)

        # Volumes whose PVC object is gone (and whose pod is not running): gone too.
        for pod in list(self.ports):
            if (b.pvc_name(pod) not in pvcs and pod not in self.procs
                    and self.volume_dir(pod).exists()):
                shutil.rmtree(self.volume_dir(pod))
                self.wiped.append(pod)

        # Rolling update: one outdated pod at a time, highest ordinal first, all ready.
        if template is not None and all(self.ready.get(p) for p in wanted):
            outdated = [p for p in wanted if p in self.procs and self.procs[p].revision != revision]
            if outdated:
                victim = outdated[-1]
                await self.stop(victim)
                await self._delete("pods", victim)
                pods.pop(victim, None)

        # Pods and volumes the StatefulSet wants.
        for pod in wanted:
            assert sts is not None and template is not None
            if b.pvc_name(pod) not in pvcs:
                if self.volume_dir(pod).exists():
                    shutil.rmtree(self.volume_dir(pod))  # a new claim is a new, empty volume
                await self._post("persistentvolumeclaims", {
                    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                    "metadata": {"name": b.pvc_name(pod), "namespace": self.ns,
                                 "labels": dict(b.selector_labels(self.cell))},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "1Gi"}}},
                })
            if pod not in pods:
                await self._post("pods", {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": self.ns,
                                 "labels": template["metadata"]["labels"],
                                 "annotations": {"controller-revision-hash": revision}},
                    "spec": template["spec"],
                    "status": {"phase": "Running", "podIP": "127.0.0.1", "conditions": [
                        {"type": "Ready", "status": "False"}]},
                })
                pods[pod] = {"metadata": {"name": pod}, "status": {"conditions": [
                    {"type": "Ready", "status": "False"}]}}
            if pod not in self.procs:
                try:
                    self.start(pod, template)
                except PodSpecError as exc:  # a real kubelet: CreateContainerConfigError
                    msg = f"{pod}: {exc}"
                    if msg not in self.errors:
                        self.errors.append(msg)

        # Readiness (the readinessProbe) onto the pods, and the StatefulSet's status.
        if time.monotonic() - self._probed_at >= self.probe_period and template is not None:
            self._probed_at = time.monotonic()
            probe = next(c for c in template["spec"]["containers"]
                         if c["name"] == b.CONTAINER_NAME).get("readinessProbe") or {}
            threshold = int(probe.get("failureThreshold", 3))
            running = [p for p in wanted if p in self.procs]
            results = await asyncio.gather(*(self._ready(p) for p in running))
            for pod, ok in zip(running, results, strict=True):
                if ok:
                    self.failures_in_a_row[pod] = 0
                    self.ready[pod] = True
                    continue
                self.probe_failures[pod] = self.probe_failures.get(pod, 0) + 1
                self.failures_in_a_row[pod] = self.failures_in_a_row.get(pod, 0) + 1
                if self.failures_in_a_row[pod] >= threshold:
                    self.ready[pod] = False
        for pod in wanted:
            ok = self.ready.get(pod, False)
            conds = ((pods.get(pod) or {}).get("status") or {}).get("conditions") or []
            was = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)
            if pod in pods and ok != was:
                await self._patch(self._url("pods", pod), {"status": {"conditions": [
                    {"type": "Ready", "status": "True" if ok else "False"}]}})
        if sts is not None:
            status = {
                "observedGeneration": int(sts["metadata"].get("generation") or 1),
                "replicas": len([p for p in wanted if p in pods]),
                "readyReplicas": sum(1 for p in wanted if self.ready.get(p)),
                "updatedReplicas": sum(1 for p in wanted if p in self.procs
                                       and self.procs[p].revision == revision),
            }
            if status != self._sts_status:
                await self._patch(
                    self._url("statefulsets", b.statefulset_name(self.cell), "apps/v1")
                    + "/status", {"status": status})
                self._sts_status = status

    async def run(self) -> None:
        while True:
            try:
                await self.sync()
            except (aiohttp.ClientError, AssertionError, OSError) as exc:  # keep playing
                log.warning("kubelet: %r", exc)
            await asyncio.sleep(self.period)
