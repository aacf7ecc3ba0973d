"""One reconcile pass: ensure owned objects, observe, plan one step, execute it, build status."""

from __future__ import annotations

import asyncio
import datetime
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import builders as b
from .cellapi import CellApiError, CellClient, CellUnreachable, MalformedAnswer
from .kube import (
    CONFIG_MAPS,
    PDBS,
    PODS,
    PVCS,
    SECRETS,
    SERVICE_MONITORS,
    SERVICES,
    STATEFULSETS,
    Conflict,
    KubeApi,
    KubeError,
    kind_of,
)
from .model import ClusterView, Observation, PodState, ordinal_of
from .planner import (
    DEFAULT_CATCH_UP_LAG,
    AddLearner,
    Bootstrap,
    DeletePVC,
    Done,
    EndBootstrap,
    Promote,
    RemoveMember,
    ScaleStatefulSet,
    Step,
    TransferLeader,
    Wait,
    describe,
    plan,
)
from .spec import CellRef, CellSpec, SpecError
from .status import build_status

log = logging.getLogger(__name__)

# How the operator reaches a pod's client API: (cell, pod name) → base URL.
PodUrlResolver = Callable[[CellRef, str], str]
# What a pod advertises to its peers: (cell, pod name) → (client URL, peer URL).
PodAdvertisedUrls = Callable[[CellRef, str], tuple[str, str]]


def dns_resolver(cluster_domain: str = b.DEFAULT_CLUSTER_DOMAIN) -> PodUrlResolver:
    """In a cluster: the pod's stable DNS name in the headless Service."""

    def resolve(ref: CellRef, pod: str) -> str:
        return b.advertised_urls(ref, pod, cluster_domain)[0]

    return resolve


def new_token() -> str:
    return secrets.token_urlsafe(32)


@dataclass
class Context:
    """What a pass needs from the outside world; tests swap any part."""

    kube: KubeApi
    cells: CellClient
    resolver: PodUrlResolver
    cluster_domain: str = b.DEFAULT_CLUSTER_DOMAIN
    default_image: str | None = None
    catch_up_lag: int = DEFAULT_CATCH_UP_LAG
    token_factory: Callable[[], str] = field(default=new_token)
    # The URLs each pod advertises (what its environment makes it say, handed to the cell
    # when the pod joins). None: the pod's DNS names in the headless Service, which is what
    # the StatefulSet's template sets. Tests that run pods elsewhere (loopback) swap it.
    advertised: PodAdvertisedUrls | None = None

    def advertised_urls(self, ref: CellRef, pod: str) -> tuple[str, str]:
        if self.advertised is not None:
            return self.advertised(ref, pod)
        return b.advertised_urls(ref, pod, self.cluster_domain)


@dataclass(frozen=True)
class PassResult:
    observation: Observation
    step: Step
    status: dict[str, Any]
    # Set when the step could not be carried out (the next pass re-plans from scratch).
    step_error: str | None = None


def utc_now() -> str:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    return now.isoformat().replace("+00:00", "Z")


# --- owned objects ---------------------------------------------------------------------------
async def ensure_object(kube: KubeApi, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Create `manifest`, or merge-patch it when its spec-hash annotation differs."""
    kind = kind_of(manifest)
    meta = manifest["metadata"]
    current = await kube.get(kind, meta["namespace"], meta["name"])
    if current is None:
        try:
            return await kube.create(kind, meta["namespace"], manifest)
        except Conflict:
            current = await kube.get(kind, meta["namespace"], meta["name"])
            if current is None:
                raise
    want = (meta.get("annotations") or {}).get(b.HASH_ANNOTATION)
    have = ((current.get("metadata") or {}).get("annotations") or {}).get(b.HASH_ANNOTATION)
    if want is not None and want == have:
        return current
    patch = {k: v for k, v in manifest.items() if k not in ("apiVersion", "kind", "status")}
    return await kube.merge_patch(kind, meta["namespace"], meta["name"], patch)


async def ensure_secret(ctx: Context, ref: CellRef, kind: b.SecretKind) -> str:
    """The Secret's token; generated once when the Secret does not exist, never replaced."""
    name = b.admin_secret_name(ref.name) if kind == "admin" else b.peer_secret_name(ref.name)
    key = b.ADMIN_TOKEN_KEY if kind == "admin" else b.PEER_SECRET_KEY
    current = await ctx.kube.get(SECRETS, ref.namespace, name)
    if current is None:
        try:
            current = await ctx.kube.create(
                SECRETS, ref.namespace, b.build_secret(ref, kind, ctx.token_factory())
            )
        except Conflict:
            current = await ctx.kube.get(SECRETS, ref.namespace, name)
            if current is None:
                raise
    token = b.secret_value(current, key)
    if not token:
        raise KubeError(422, f"Secret {name} has no usable key {key!r}; fix or delete it")
    return token


async def ensure_support_objects(ctx: Context, ref: CellRef, spec: CellSpec) -> str:
    """Secrets, ConfigMap, Services, ServiceMonitor; returns the admin token."""
    admin = await ensure_secret(ctx, ref, "admin")
    await ensure_secret(ctx, ref, "peer")
    await ensure_object(ctx.kube, b.build_config_map(ref, spec))
    await ensure_object(ctx.kube, b.build_peer_service(ref))
    await ensure_object(ctx.kube, b.build_client_service(ref))
    monitor = b.build_service_monitor(ref, spec)
    try:
        if monitor is not None:
            await ensure_object(ctx.kube, monitor)
        else:
            current = await ctx.kube.get(SERVICE_MONITORS, ref.namespace, ref.name)
            if current is not None and _owned_by(current, ref):
                await ctx.kube.delete(SERVICE_MONITORS, ref.namespace, ref.name)
    except KubeError as exc:
        if monitor is not None:
            log.warning("ServiceMonitor for %s/%s: %s", ref.namespace, ref.name, exc)
    return admin


def _owned_by(obj: Mapping[str, Any], ref: CellRef) -> bool:
    owners = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("kind") == "Cell" and o.get("name") == ref.name for o in owners)


async def ensure_pdb(ctx: Context, ref: CellRef, spec: CellSpec, obs: Observation) -> None:
    """Size the PDB by the voters the cell has now; keep it as is while that is unknown."""
    cluster = obs.cluster
    if cluster is not None and cluster.leader is not None and cluster.joint is None:
        voters = len(cluster.voters)
    else:
        current = await ctx.kube.get(PDBS, ref.namespace, b.pdb_name(ref.name))
        if current is not None:
            return
        voters = min(spec.replicas, obs.statefulset_replicas or 1)
    await ensure_object(ctx.kube, b.build_pdb(ref, voters))


def image_of(ctx: Context, spec: CellSpec) -> str:
    image = spec.image or ctx.default_image
    if not image:
        raise SpecError("spec.image is required: this operator has no default cell image")
    return image


async def sync_statefulset(
    ctx: Context,
    ref: CellRef,
    spec: CellSpec,
    current: Mapping[str, Any],
    *,
    bootstrap: bool,
) -> None:
    """Bring the template of an existing StatefulSet to the desired one (never replicas)."""
    desired = b.build_statefulset(
        ref,
        spec,
        replicas=int((current.get("spec") or {}).get("replicas") or 0),
        image=image_of(ctx, spec),
        bootstrap=bootstrap,
        cluster_domain=ctx.cluster_domain,
    )
    want = desired["metadata"]["annotations"][b.HASH_ANNOTATION]
    have = ((current.get("metadata") or {}).get("annotations") or {}).get(b.HASH_ANNOTATION)
    if want == have:
        return
    await ctx.kube.merge_patch(
        STATEFULSETS, ref.namespace, b.statefulset_name(ref.name),
        b.statefulset_template_patch(desired),
    )


# --- observation -----------------------------------------------------------------------------
def _pod_ready(pod: Mapping[str, Any]) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def leader_view(views: Mapping[str, ClusterView], ids: Mapping[str, str]) -> ClusterView | None:
    """The view of a pod that says it is the leader itself (highest term wins), else None."""
    own = [v for pod, v in views.items() if v.leader is not None and ids.get(pod) == v.leader]
    if not own:
        return None
    return max(own, key=lambda v: (v.term, v.commit_index))


async def _probe(ctx: Context, ref: CellRef, pod: str) -> tuple[str | None, ClusterView | None]:
    url = ctx.resolver(ref, pod)
    try:
        member_id = await ctx.cells.health(url)
    except (CellUnreachable, CellApiError, MalformedAnswer):
        return None, None
    try:
        view = await ctx.cells.cluster(url)
    except (CellUnreachable, CellApiError, MalformedAnswer):
        return member_id, None
    return member_id, view


async def observe(
    ctx: Context, ref: CellRef, spec: CellSpec, statefulset: Mapping[str, Any] | None
) -> Observation:
    labels = b.selector_labels(ref.name)
    raw_pods = await ctx.kube.list(PODS, ref.namespace, labels)
    raw_pvcs = await ctx.kube.list(PVCS, ref.namespace, labels)
    pods = []
    for raw in raw_pods:
        meta = raw.get("metadata") or {}
        name = str(meta.get("name", ""))
        ordinal = ordinal_of(ref.name, name)
        if ordinal is None or meta.get("deletionTimestamp"):
            continue
        pods.append((name, ordinal, _pod_ready(raw)))
    probes = await asyncio.gather(*(_probe(ctx, ref, name) for name, _, _ in pods))
    states: list[PodState] = []
    views: dict[str, ClusterView] = {}
    ids: dict[str, str] = {}
    for (name, ordinal, ready), (member_id, view) in zip(pods, probes, strict=True):
        client_url, peer_url = ctx.advertised_urls(ref, name)
        states.append(
            PodState(
                name=name,
                ordinal=ordinal,
                ready=ready,
                member_id=member_id,
                client_url=client_url,
                peer_url=peer_url,
            )
        )
        if member_id is not None:
            ids[name] = member_id
        if view is not None:
            views[name] = view
    volumes = []
    for raw in raw_pvcs:
        pvc = str((raw.get("metadata") or {}).get("name", ""))
        pod = b.pod_of_pvc(pvc)
        if pod is not None and ordinal_of(ref.name, pod) is not None:
            volumes.append(pod)
    sts_replicas = None
    bootstrapping = False
    if statefulset is not None:
        sts_replicas = int((statefulset.get("spec") or {}).get("replicas") or 0)
        bootstrapping = b.template_bootstrap_flag(statefulset)
    return Observation(
        cell=ref.name,
        desired_replicas=spec.replicas,
        statefulset_replicas=sts_replicas,
        bootstrapping=bootstrapping,
        pods=tuple(sorted(states, key=lambda p: p.ordinal)),
        cluster=leader_view(views, ids),
        volumes=tuple(sorted(volumes)),
        reclaim_policy=spec.storage.reclaim_policy,
    )


# --- execution -------------------------------------------------------------------------------
def _leader_url(ctx: Context, ref: CellRef, obs: Observation) -> str:
    cluster = obs.cluster
    if cluster is None or cluster.leader is None:
        raise CellUnreachable("no leader")
    for pod in obs.pods:
        if pod.member_id == cluster.leader:
            return ctx.resolver(ref, pod.name)
    raise CellUnreachable(f"the leader {cluster.leader} is on no known pod")


async def execute(
    ctx: Context,
    ref: CellRef,
    spec: CellSpec,
    obs: Observation,
    step: Step,
    admin_token: str,
    statefulset: Mapping[str, Any] | None,
) -> None:
    """Carry out exactly one step (Wait and Done do nothing)."""
    ns = ref.namespace
    match step:
        case Bootstrap(replicas=replicas, bootstrap=bootstrap):
            manifest = b.build_statefulset(
                ref, spec, replicas=replicas, image=image_of(ctx, spec),
                bootstrap=bootstrap, cluster_domain=ctx.cluster_domain,
            )
            try:
                await ctx.kube.create(STATEFULSETS, ns, manifest)
            except Conflict:
                log.info("StatefulSet %s/%s exists already", ns, ref.name)
        case EndBootstrap():
            if statefulset is not None:
                await sync_statefulset(ctx, ref, spec, statefulset, bootstrap=False)
        case ScaleStatefulSet(replicas=replicas):
            await ctx.kube.merge_patch(
                STATEFULSETS, ns, b.statefulset_name(ref.name), {"spec": {"replicas": replicas}}
            )
        case AddLearner(id=member_id, url=url, peer_url=peer_url):
            await ctx.cells.add_learner(
                _leader_url(ctx, ref, obs), admin_token,
                member_id=member_id, url=url, peer_url=peer_url,
            )
        case Promote(id=member_id):
            await ctx.cells.promote(_leader_url(ctx, ref, obs), admin_token, member_id)
        case RemoveMember(id=member_id):
            await ctx.cells.remove_member(_leader_url(ctx, ref, obs), admin_token, member_id)
        case TransferLeader(to=member_id):
            await ctx.cells.transfer_leader(_leader_url(ctx, ref, obs), admin_token, member_id)
        case DeletePVC(pod=pod):
            await ctx.kube.delete(PVCS, ns, b.pvc_name(pod))
        case Wait() | Done():
            pass


async def reconcile_once(
    ctx: Context,
    ref: CellRef,
    spec: CellSpec,
    previous_status: Mapping[str, Any] | None = None,
    now: str | None = None,
) -> PassResult:
    """Ensure, observe, plan, execute one step; return the status to write.

    Kubernetes API errors propagate (the caller retries); a cell member refusing or not
    answering a membership call is recorded in the result and the next pass re-plans.
    """
    admin_token = await ensure_support_objects(ctx, ref, spec)
    sts = await ctx.kube.get(STATEFULSETS, ref.namespace, b.statefulset_name(ref.name))
    obs = await observe(ctx, ref, spec, sts)
    await ensure_pdb(ctx, ref, spec, obs)
    step = plan(obs, catch_up_lag=ctx.catch_up_lag)
    step_error: str | None = None
    try:
        await execute(ctx, ref, spec, obs, step, admin_token, sts)
    except (CellApiError, CellUnreachable) as exc:
        step_error = f"{describe(step)} failed: {exc}"
        log.warning("%s/%s: %s", ref.namespace, ref.name, step_error)
    if sts is not None and not isinstance(step, EndBootstrap):
        await sync_statefulset(ctx, ref, spec, sts, bootstrap=obs.bootstrapping)
    status = build_status(
        obs,
        step,
        generation=ref.generation,
        selector=b.selector_string(ref.name),
        now=now or utc_now(),
        previous=previous_status,
    )
    if step_error is not None:
        for cond in status["conditions"]:
            if cond["type"] == "Progressing":
                cond["message"] = step_error
    return PassResult(observation=obs, step=step, status=status, step_error=step_error)


async def cleanup(ctx: Context, ref: CellRef, spec: CellSpec) -> list[str]:
    """On Cell deletion: delete what the operator made; volumes too when reclaimPolicy Delete.

    Owner references would let the garbage collector do most of it; deleting explicitly
    makes the order (pods before their volumes) and the result the same everywhere.
    """
    ns, name = ref.namespace, ref.name
    deleted: list[str] = []
    targets = [
        (STATEFULSETS, b.statefulset_name(name)),
        (PDBS, b.pdb_name(name)),
        (SERVICES, b.client_service_name(name)),
        (SERVICES, b.peer_service_name(name)),
        (CONFIG_MAPS, b.config_map_name(name)),
        (SECRETS, b.admin_secret_name(name)),
        (SECRETS, b.peer_secret_name(name)),
    ]
    for kind, obj in targets:
        if await ctx.kube.delete(kind, ns, obj):
            deleted.append(f"{kind.plural}/{obj}")
    if spec.service_monitor.enabled:
        try:
            if await ctx.kube.delete(SERVICE_MONITORS, ns, b.service_monitor_name(name)):
                deleted.append(f"servicemonitors/{name}")
        except KubeError as exc:
            log.warning("ServiceMonitor %s/%s: %s", ns, name, exc)
    if spec.storage.reclaim_policy == "Delete":
        for pvc in await ctx.kube.list(PVCS, ns, b.selector_labels(name)):
            pvc_name = str((pvc.get("metadata") or {}).get("name", ""))
            pod = b.pod_of_pvc(pvc_name)
            if (
                pod is not None
                and ordinal_of(name, pod) is not None
                and await ctx.kube.delete(PVCS, ns, pvc_name)
            ):
                deleted.append(f"persistentvolumeclaims/{pvc_name}")
    return deleted
