"""A small async client for a cell member's HTTP API: health, cluster view, membership admin."""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp

from .model import ClusterView, JointConfig, Member, Role

DEFAULT_TIMEOUT = 3.0
# Membership calls answer once the change is committed (joint consensus: two rounds).
DEFAULT_ADMIN_TIMEOUT = 30.0


class CellApiError(Exception):
    """A member answered with an error (DESIGN §4: {"error": {"code", "message"}})."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class CellUnreachable(Exception):
    """The member did not answer (connection refused, timeout, not JSON)."""


class MalformedAnswer(ValueError):
    """The member answered JSON that does not have the documented shape."""


def _str(obj: Mapping[str, Any], key: str, *, nullable: bool = False) -> str:
    value = obj.get(key)
    if value is None and nullable:
        return ""
    if not isinstance(value, str):
        raise MalformedAnswer(f"{key!r} must be a string, got {value!r}")
    return value


def _int(obj: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = obj.get(key, default)
    if value is None and default is not None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedAnswer(f"{key!r} must be an integer, got {value!r}")
    return value


def parse_member(obj: Any) -> Member:
    if not isinstance(obj, Mapping):
        raise MalformedAnswer(f"a member must be an object, got {obj!r}")
    role = obj.get("role")
    if role not in ("voter", "learner"):
        raise MalformedAnswer(f"role must be voter or learner, got {role!r}")
    role_value: Role = "voter" if role == "voter" else "learner"
    return Member(
        id=_str(obj, "id"),
        # A member whose address the answering server does not know yet shows null here.
        url=_str(obj, "url", nullable=True),
        peer_url=_str(obj, "peer_url", nullable=True),
        role=role_value,
        match_index=_int(obj, "match_index", 0),
    )


def parse_cluster(payload: Any) -> ClusterView:
    """Parse `GET /v1/cluster`: {leader, term, commit_index, members[], joint}."""
    if not isinstance(payload, Mapping):
        raise MalformedAnswer("the cluster view must be an object")
    leader = payload.get("leader")
    if leader is not None and not isinstance(leader, str):
        raise MalformedAnswer(f"leader must be a string or null, got {leader!r}")
    members = payload.get("members")
    if not isinstance(members, list):
        raise MalformedAnswer("members must be a list")
    joint_raw = payload.get("joint")
    joint: JointConfig | None = None
    if joint_raw is not None:
        if not isinstance(joint_raw, Mapping):
            raise MalformedAnswer("joint must be an object or null")
        old, new = joint_raw.get("old"), joint_raw.get("new")
        if not isinstance(old, list) or not isinstance(new, list):
            raise MalformedAnswer("joint.old and joint.new must be lists")
        joint = JointConfig(old=tuple(str(x) for x in old), new=tuple(str(x) for x in new))
    return ClusterView(
        leader=leader,
        term=_int(payload, "term", 0),
        commit_index=_int(payload, "commit_index", 0),
        members=tuple(parse_member(m) for m in members),
        joint=joint,
    )


def parse_health(payload: Any) -> str:
    """The member id from `GET /healthz` (`{"id": ...}`)."""
    if not isinstance(payload, Mapping):
        raise MalformedAnswer("/healthz must answer a JSON object with the member's id")
    return _str(payload, "id")


def _error_of(status: int, payload: Any) -> CellApiError:
    if isinstance(payload, Mapping) and isinstance(payload.get("error"), Mapping):
        err = payload["error"]
        return CellApiError(status, str(err.get("code", "unknown")), str(err.get("message", "")))
    return CellApiError(status, "unknown", str(payload)[:200])


class CellClient:
    """Talks to one member at a time, given its base URL (`http://host:7001`).

    The admin token goes as `Authorization: Bearer <token>` on the membership routes. The
    aiohttp session is made lazily inside the running loop and closed by `close()`.
    """

    def __init__(
        self, *, timeout: float = DEFAULT_TIMEOUT, admin_timeout: float = DEFAULT_ADMIN_TIMEOUT
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._admin_timeout = aiohttp.ClientTimeout(total=admin_timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def _call(
        self,
        method: str,
        url: str,
        *,
        token: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = self._admin_timeout if token else self._timeout
        try:
            async with self._http().request(
                method, url, json=body, headers=headers, timeout=timeout
            ) as resp:
                text = await resp.text()
                payload: Any = None
                if text:
                    try:
                        payload = await resp.json(content_type=None)
                    except ValueError as exc:
                        if resp.status < 400:
                            raise CellUnreachable(f"{url}: not JSON") from exc
                        payload = text
                if resp.status >= 400:
                    raise _error_of(resp.status, payload)
                return payload
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CellUnreachable(f"{method} {url}: {exc!r}") from exc

    async def health(self, base_url: str) -> str:
        """GET /healthz → the member id the server minted for its data directory."""
        return parse_health(await self._call("GET", f"{base_url}/healthz"))

    async def cluster(self, base_url: str) -> ClusterView:
        """GET /v1/cluster → the answering member's view of the configuration."""
        return parse_cluster(await self._call("GET", f"{base_url}/v1/cluster"))

    async def add_learner(
        self, base_url: str, token: str, *, member_id: str, url: str, peer_url: str
    ) -> None:
        """POST /v1/cluster/members {"id","url","peer_url"}: add a non-voting learner."""
        body = {"id": member_id, "url": url, "peer_url": peer_url}
        await self._call("POST", f"{base_url}/v1/cluster/members", token=token, body=body)

    async def promote(self, base_url: str, token: str, member_id: str) -> None:
        """POST /v1/cluster/members/{id}/promote: learner → voter through joint consensus."""
        url = f"{base_url}/v1/cluster/members/{quote(member_id, safe='')}/promote"
        await self._call("POST", url, token=token)

    async def remove_member(self, base_url: str, token: str, member_id: str) -> None:
        """DELETE /v1/cluster/members/{id}: remove a learner, or a voter via joint consensus."""
        url = f"{base_url}/v1/cluster/members/{quote(member_id, safe='')}"
        await self._call("DELETE", url, token=token)

    async def transfer_leader(self, base_url: str, token: str, to: str) -> None:
        """POST /v1/cluster/leader {"to": id}: hand leadership to another voter."""
        await self._call("POST", f"{base_url}/v1/cluster/leader", token=token, body={"to": to})
