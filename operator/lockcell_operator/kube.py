"""The few Kubernetes API calls the operator makes, on plain dicts: get, list, create, patch."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import kubernetes


@dataclass(frozen=True)
class Kind:
    """A namespaced resource: apiVersion + plural."""

    api_version: str
    plural: str

    def collection(self, namespace: str) -> str:
        base = (
            f"/api/{self.api_version}"
            if "/" not in self.api_version
            else f"/apis/{self.api_version}"
        )
        return f"{base}/namespaces/{quote(namespace, safe='')}/{self.plural}"

    def item(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{quote(name, safe='')}"


CELLS = Kind("lockcell.io/v1alpha1", "cells")
PODS = Kind("v1", "pods")
PVCS = Kind("v1", "persistentvolumeclaims")
SERVICES = Kind("v1", "services")
CONFIG_MAPS = Kind("v1", "configmaps")
SECRETS = Kind("v1", "secrets")
STATEFULSETS = Kind("apps/v1", "statefulsets")
PDBS = Kind("policy/v1", "poddisruptionbudgets")
SERVICE_MONITORS = Kind("monitoring.coreos.com/v1", "servicemonitors")

KIND_OF_MANIFEST: Mapping[tuple[str, str], Kind] = {
    ("v1", "Service"): SERVICES,
    ("v1", "ConfigMap"): CONFIG_MAPS,
    ("v1", "Secret"): SECRETS,
    ("apps/v1", "StatefulSet"): STATEFULSETS,
    ("policy/v1", "PodDisruptionBudget"): PDBS,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITORS,
}


def kind_of(manifest: Mapping[str, Any]) -> Kind:
    return KIND_OF_MANIFEST[(str(manifest["apiVersion"]), str(manifest["kind"]))]


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


def matches(obj: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


class KubeApi(Protocol):
    """What the reconciler needs from the API server (and what RBAC grants)."""

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def list(
        self, kind: Kind, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]: ...

    async def create(
        self, kind: Kind, namespace: str, body: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    async def merge_patch(
        self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]: ...

    async def delete(self, kind: Kind, namespace: str, name: str) -> bool: ...


class ClientKubeApi:
    """KubeApi over the `kubernetes` package's ApiClient (auth, TLS, kubeconfig, in-cluster).

    Requests are raw JSON (no model classes), made in a worker thread. Lists are also
    filtered here by labels, so a server that ignores labelSelector does no harm.
    """

    def __init__(self, api_client: Any) -> None:
        self._api = api_client

    @classmethod
    def from_environment(cls) -> ClientKubeApi:
        """In a pod: the service account; elsewhere: $KUBECONFIG or ~/.kube/config."""
        configuration = kubernetes.client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            kubernetes.config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        else:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.environ.get("KUBECONFIG") or None,
                client_configuration=configuration,
            )
        return cls(kubernetes.client.ApiClient(configuration))

    @classmethod
    def for_host(cls, host: str) -> ClientKubeApi:
        """An unauthenticated client for a plain-HTTP API server (tests)."""
        configuration = kubernetes.client.Configuration()
        configuration.host = host
        return cls(kubernetes.client.ApiClient(configuration))

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        if query:
            path = f"{path}?{urlencode(dict(query))}"
        _method, url, hdrs, _body, _post = self._api.param_serialize(
            method=method,
            resource_path=path,
            header_params=headers,
            auth_settings=["BearerToken"],
        )
        response = self._api.call_api(
            method, url, header_params=hdrs, body=body, _request_timeout=30.0
        )
        status = int(response.status)
        data = response.read()
        payload: Any = None
        if data:
            try:
                payload = json.loads(data)
            except ValueError:
                payload = data.decode(errors="replace")
        return status, payload

    async def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        return await asyncio.to_thread(
            self._request, method, path, query=query, body=body, content_type=content_type
        )

    @staticmethod
    def _raise(status: int, payload: Any) -> None:
        message = payload.get("message", "") if isinstance(payload, Mapping) else str(payload)
        if status == 404:
            raise NotFound(status, str(message))
        if status == 409:
            raise Conflict(status, str(message))
        raise KubeError(status, str(message)[:500])

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any] | None:
        status, payload = await self._call("GET", kind.item(namespace, name))
        if status == 404:
            return None
        if status >= 300:
            self._raise(status, payload)
        return dict(payload)

    async def list(
        self, kind: Kind, namespace: str, labels: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        status, payload = await self._call(
            "GET", kind.collection(namespace), query={"labelSelector": selector}
        )
        if status >= 300:
            self._raise(status, payload)
        items = payload.get("items") or [] if isinstance(payload, Mapping) else []
        return [dict(i) for i in items if isinstance(i, Mapping) and matches(i, labels)]

    async def create(self, kind: Kind, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        status, payload = await self._call("POST", kind.collection(namespace), body=dict(body))
        if status >= 300:
            self._raise(status, payload)
        return dict(payload)

    async def merge_patch(
        self, kind: Kind, namespace: str, name: str, patch: Mapping[str, Any]
    ) -> dict[str, Any]:
        status, payload = await self._call(
            "PATCH",
            kind.item(namespace, name),
            body=dict(patch),
            content_type="application/merge-patch+json",
        )
        if status >= 300:
            self._raise(status, payload)
        return dict(payload)

    async def delete(self, kind: Kind, namespace: str, name: str) -> bool:
        status, payload = await self._call(
            "DELETE", kind.item(namespace, name), body={"propagationPolicy": "Background"}
        )
        if status == 404:
            return False
        if status >= 300:
            self._raise(status, payload)
        return True

    def close(self) -> None:
        self._api.close()
