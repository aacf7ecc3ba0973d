"""Sans-I/O core of the client: requests, answers, endpoints, the local lease and events."""

from __future__ import annotations

import base64
import binascii
import enum
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .errors import LockcellError, LockLost, error_from_answer

LEADER_HEADER = "X-Lockcell-Leader"
REQUEST_ID_HEADER = "X-Request-Id"
DEFAULT_ENDPOINTS = ("http://127.0.0.1:7001", "http://127.0.0.1:7002", "http://127.0.0.1:7003")
DEFAULT_DRIFT = 0.01
"""ε: the clock-rate drift the local lease allows for (1 %)."""
DEFAULT_GRACE_MS = 45_000
MAX_WAIT_MS = 300_000
"""The largest ``wait_ms`` the cell accepts on one call."""

Json = dict[str, Any]


# ---------------------------------------------------------------------- endpoints


def normalize_endpoint(text: str) -> str:
    """``host:port`` or a URL → a URL without a trailing slash (``http://`` by default)."""
    url = text.strip().rstrip("/")
    if not url:
        raise ValueError("empty endpoint")
    if "://" not in url:
        url = "http://" + url
    return url


def resolve_endpoints(value: str | Sequence[str] | None,
                      environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Endpoints from ``value``, else ``LOCKCELL_ENDPOINTS`` in ``environ``, else the
    three local default ports. Text is comma-separated."""
    if value is None and environ is not None:
        value = environ.get("LOCKCELL_ENDPOINTS") or None
    if value is None:
        return DEFAULT_ENDPOINTS
    items = value.split(",") if isinstance(value, str) else list(value)
    urls: list[str] = []
    for item in items:
        if item.strip():
            url = normalize_endpoint(item)
            if url not in urls:
                urls.append(url)
    if not urls:
        raise ValueError("no endpoints given")
    return tuple(urls)


RELAY_HOLD_S = 2.0
"""How long calls go through a forwarding member before the unreachable leader is tried
directly again."""


class EndpointSet:
    """Which member to talk to: the known leader first, else round robin over the rest.

    Learns the leader from ``X-Lockcell-Leader`` and members from ``GET /v1/cluster``;
    a failed member is skipped until the others were tried.
    """

    def __init__(self, endpoints: Sequence[str]) -> None:
        self.urls: list[str] = [normalize_endpoint(u) for u in endpoints]
        if not self.urls:
            raise ValueError("no endpoints given")
        self.leader: str | None = None
        self._cursor = 0
        self._failed: set[str] = set()
        self.failures_in_a_row = 0
        self._unreachable_leader: tuple[str, float] | None = None
        """A leader we cannot reach while other members forward to it, and until when
        calls go through them instead (see :meth:`relay_through`)."""

    def current(self) -> str:
        """The member the next call goes to."""
        if self.leader is not None:
            return self.leader
        return self.urls[self._cursor % len(self.urls)]

    def note_leader(self, url: str | None, now: float | None = None) -> None:
        """Remember the leader a member named (ignored when empty, and, until ``now``
        passes the relay deadline, when it is the leader we could not reach)."""
        if not url:
            return
        url = normalize_endpoint(url)
        if self._unreachable_leader is not None and url == self._unreachable_leader[0]:
            if now is None or now < self._unreachable_leader[1]:
                return
            self._unreachable_leader = None
        if url not in self.urls:
            self.urls.append(url)
        self.leader = url

    def relay_through(self, relay: str, leader: str, now: float,
                      hold: float = RELAY_HOLD_S) -> None:
        """Send calls to ``relay`` (a member forwarding to ``leader``, which we cannot
        reach) for ``hold`` seconds; then the leader is tried directly again."""
        relay = normalize_endpoint(relay)
        if relay not in self.urls:
            self.urls.append(relay)
        self._unreachable_leader = (normalize_endpoint(leader), now + hold)
        self.leader = None
        self._cursor = self.urls.index(relay)

    def succeeded(self, url: str) -> None:
        """A call to ``url`` got an answer (not 503)."""
        self.failures_in_a_row = 0
        self._failed.clear()
        if self.leader is None and url in self.urls:
            self._cursor = self.urls.index(url)

    def failed(self, url: str, leader_hint: str | None = None) -> None:
        """A call to ``url`` failed (connection error, timeout, 503): move on, to the
        leader it named if that is another member that has not failed lately."""
        self.failures_in_a_row += 1
        self._failed.add(url)
        if len(self._failed) >= len(self.urls):
            self._failed = {url}
        if leader_hint:
            hint = normalize_endpoint(leader_hint)
            unreachable = self._unreachable_leader is not None \
                and hint == self._unreachable_leader[0]
            if hint != url and hint not in self._failed and not unreachable:
                self.note_leader(hint)
                return
        self.leader = None
        position = self.urls.index(url) if url in self.urls else self._cursor
        for step in range(1, len(self.urls) + 1):
            candidate = (position + step) % len(self.urls)
            if self.urls[candidate] not in self._failed:
                self._cursor = candidate
                return
        self._cursor = (position + 1) % len(self.urls)

    @property
    def failed_lately(self) -> frozenset[str]:
        """Members that failed since the last answer."""
        return frozenset(self._failed)

    def revive(self, urls: Iterable[str]) -> None:
        """These members answered (e.g. ``GET /v1/cluster``): they are reachable."""
        for url in urls:
            url = normalize_endpoint(url)
            self._failed.discard(url)
            if self._unreachable_leader is not None and url == self._unreachable_leader[0]:
                self._unreachable_leader = None

    def learn(self, urls: Iterable[str | None]) -> None:
        """Add member URLs (from ``GET /v1/cluster``)."""
        for url in urls:
            if url:
                normalized = normalize_endpoint(url)
                if normalized not in self.urls:
                    self.urls.append(normalized)

    @property
    def full_rotation(self) -> bool:
        """Whether the failures since the last answer have visited every member."""
        return self.failures_in_a_row > 0 and self.failures_in_a_row % len(self.urls) == 0


def choose_leader(views: Sequence[tuple[str, ClusterView]],
                  failed: Iterable[str]) -> str | None:
    """The leader URL to trust from members' ``GET /v1/cluster`` answers.

    A leader that failed lately and did not answer this round is not trusted (members
    may still believe in a dead leader); among the rest, the highest term wins, and a
    member naming itself beats one naming another.
    """
    answered = {normalize_endpoint(url) for url, _ in views}
    distrusted = {normalize_endpoint(url) for url in failed} - answered
    best: tuple[int, bool] | None = None
    chosen: str | None = None
    for _, view in views:
        url = view.leader_url
        if not url:
            continue
        url = normalize_endpoint(url)
        if url in distrusted:
            continue
        key = (view.term, view.self_id is not None and view.self_id == view.leader)
        if best is None or key > best:
            best, chosen = key, url
    return chosen


def choose_relay(views: Sequence[tuple[str, ClusterView]],
                 failed: Iterable[str]) -> tuple[str, str] | None:
    """When the leader the members name failed us but they still hear from it, a member
    to send calls through (it forwards them): ``(relay URL, leader URL)``, or ``None``.

    This is the client cut off from the leader alone; members in contact with a live
    leader forward faithfully, so the client need not wait for the cut to heal.
    """
    answered = {normalize_endpoint(url) for url, _ in views}
    distrusted = {normalize_endpoint(url) for url in failed} - answered
    best: tuple[int, str, str] | None = None
    for url, view in views:
        leader = view.leader_url
        if not leader or not view.leader_in_contact:
            continue
        leader = normalize_endpoint(leader)
        if leader not in distrusted:
            continue
        if best is None or view.term > best[0]:
            best = (view.term, normalize_endpoint(url), leader)
    return None if best is None else (best[1], best[2])


def backoff_delay(attempt: int, rng: random.Random, base: float = 0.05,
                  cap: float = 1.0) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): exponential with full jitter,
    at least ``base / 2``."""
    ceiling = min(cap, base * (2 ** min(max(attempt - 1, 0), 16)))
    return max(base / 2, rng.uniform(0, ceiling))


RETRY_CAP_ANSWERED_S = 0.25
"""Longest pause before retrying a call when the cell answered (503, or members that name
no live leader): an election is under way and a leader comes within moments, so the call
should not sleep through its first second."""
RETRY_CAP_SILENT_S = 1.0
"""Longest pause when nothing answered (connection errors, timeouts)."""


def retry_delay(attempt: int, rng: random.Random, *, cell_answered: bool) -> float:
    """Seconds to wait before a call's retry ``attempt`` (1-based)."""
    cap = RETRY_CAP_ANSWERED_S if cell_answered else RETRY_CAP_SILENT_S
    return backoff_delay(attempt, rng, cap=cap)


# ---------------------------------------------------------------------- values


class LockMode(enum.StrEnum):
    """Lock modes."""

    EXCLUSIVE = "exclusive"
    SHARED = "shared"


class EventType(enum.StrEnum):
    """Event names of the API (``master_failover`` is session-wide)."""

    CONTENTS_MODIFIED = "contents_modified"
    CHILD_ADDED = "child_added"
    CHILD_REMOVED = "child_removed"
    CHILD_MODIFIED = "child_modified"
    HANDLE_INVALID = "handle_invalid"
    LOCK_ACQUIRED = "lock_acquired"
    CONFLICTING_LOCK = "conflicting_lock"
    MASTER_FAILOVER = "master_failover"


HANDLE_EVENTS: tuple[str, ...] = tuple(e.value for e in EventType
                                       if e is not EventType.MASTER_FAILOVER)
"""Every event a handle may choose at Open."""


def _int(doc: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = doc.get(key, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _str(doc: Mapping[str, Any], key: str, default: str = "") -> str:
    value = doc.get(key, default)
    return value if isinstance(value, str) else default


@dataclass(frozen=True, slots=True)
class LockStatus:
    """The ``lock`` part of a stat: mode (``None`` when free), holders, waiters, delay."""

    mode: str | None
    holders: int
    waiters: int
    lock_delay_until_ms: int

    @staticmethod
    def from_json(doc: Any) -> LockStatus:
        """Parse the API's ``lock`` object."""
        if not isinstance(doc, dict):
            doc = {}
        mode = doc.get("mode")
        return LockStatus(mode if isinstance(mode, str) else None, _int(doc, "holders"),
                          _int(doc, "waiters"), _int(doc, "lock_delay_until_ms"))


@dataclass(frozen=True, slots=True)
class Stat:
    """Metadata of a node (``stat`` in the API)."""

    kind: str
    instance: int
    content_generation: int
    lock_generation: int
    acl_generation: int
    checksum: str
    length: int
    children: int
    ephemeral: bool
    lock: LockStatus

    @property
    def is_dir(self) -> bool:
        """Whether the node is a directory."""
        return self.kind == "dir"

    @staticmethod
    def from_json(doc: Any) -> Stat:
        """Parse the API's ``stat`` object."""
        if not isinstance(doc, dict):
            raise LockcellError("answer without a stat")
        return Stat(_str(doc, "kind"), _int(doc, "instance"), _int(doc, "content_generation"),
                    _int(doc, "lock_generation"), _int(doc, "acl_generation"),
                    _str(doc, "checksum"), _int(doc, "length"), _int(doc, "children"),
                    bool(doc.get("ephemeral", False)), LockStatus.from_json(doc.get("lock")))

    def to_json(self) -> Json:
        """The API's shape (for ``--json`` output)."""
        return {"kind": self.kind, "instance": self.instance,
                "content_generation": self.content_generation,
                "lock_generation": self.lock_generation, "acl_generation": self.acl_generation,
                "checksum": self.checksum, "length": self.length, "children": self.children,
                "ephemeral": self.ephemeral,
                "lock": {"mode": self.lock.mode, "holders": self.lock.holders,
                         "waiters": self.lock.waiters,
                         "lock_delay_until_ms": self.lock.lock_delay_until_ms}}


@dataclass(frozen=True, slots=True)
class Contents:
    """What GetContentsAndStat answers."""

    data: bytes
    stat: Stat


@dataclass(frozen=True, slots=True)
class Child:
    """One entry of ReadDir."""

    name: str
    stat: Stat


@dataclass(frozen=True, slots=True)
class OpenAnswer:
    """What Open answers."""

    handle: str
    created: bool
    lock_delay_ms: int
    stat: Stat


@dataclass(frozen=True, slots=True)
class LockGrant:
    """What Acquire / GetSequencer answer."""

    sequencer: str
    lock_generation: int


@dataclass(frozen=True, slots=True)
class SessionGrant:
    """What CreateSession answers."""

    session: str
    lease_ms: int
    valid_ms: int
    grace_ms: int


@dataclass(frozen=True, slots=True)
class Event:
    """A session event. ``master_failover`` means: re-read whatever you watch
    (events may have been lost); ``synthetic`` marks one the client made up because the
    leader changed without telling."""

    seq: int
    type: str
    handle: str
    path: str
    synthetic: bool = False

    @property
    def needs_reread(self) -> bool:
        """Whether cached views must be re-read (a master failover)."""
        return self.type == EventType.MASTER_FAILOVER

    @staticmethod
    def from_json(doc: Any) -> Event:
        """Parse one event of a KeepAlive answer."""
        if not isinstance(doc, dict):
            raise LockcellError("malformed event")
        return Event(_int(doc, "seq"), _str(doc, "type"), _str(doc, "handle"),
                     _str(doc, "path"))


@dataclass(frozen=True, slots=True)
class KeepAliveAnswer:
    """What KeepAlive answers."""

    lease_ms: int
    valid_ms: int
    events: tuple[Event, ...]

    @staticmethod
    def from_json(doc: Any) -> KeepAliveAnswer:
        """Parse a KeepAlive answer."""
        if not isinstance(doc, dict):
            raise LockcellError("malformed keepalive answer")
        raw = doc.get("events")
        events = tuple(Event.from_json(e) for e in raw) if isinstance(raw, list) else ()
        return KeepAliveAnswer(_int(doc, "lease_ms"), _int(doc, "valid_ms"), events)


@dataclass(frozen=True, slots=True)
class MemberView:
    """One member in ``GET /v1/cluster``."""

    id: str
    url: str | None
    peer_url: str | None
    role: str
    match_index: int | None


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The answering member's view of the cell."""

    leader: str | None
    term: int
    commit_index: int
    members: tuple[MemberView, ...]
    joint: Json | None
    raw: Json = field(compare=False, repr=False)
    self_id: str | None = None
    """The answering member (when the member says who it is)."""
    leader_in_contact: bool = False
    """The answering member leads or heard from its leader within an election timeout."""

    @property
    def leader_url(self) -> str | None:
        """The leader's client URL, when known."""
        for member in self.members:
            if member.id == self.leader:
                return member.url
        return None

    @staticmethod
    def from_json(doc: Any) -> ClusterView:
        """Parse ``GET /v1/cluster``."""
        if not isinstance(doc, dict):
            raise LockcellError("malformed cluster view")
        members = []
        for m in doc.get("members") or []:
            if isinstance(m, dict):
                url = m.get("url")
                peer = m.get("peer_url")
                match = m.get("match_index")
                members.append(MemberView(
                    _str(m, "id"), url if isinstance(url, str) else None,
                    peer if isinstance(peer, str) else None, _str(m, "role"),
                    match if isinstance(match, int) else None))
        leader = doc.get("leader")
        joint = doc.get("joint")
        me = doc.get("self")
        self_id = me.get("id") if isinstance(me, dict) else None
        return ClusterView(leader if isinstance(leader, str) else None, _int(doc, "term"),
                           _int(doc, "commit_index"), tuple(members),
                           joint if isinstance(joint, dict) else None, dict(doc),
                           self_id if isinstance(self_id, str) else None,
                           doc.get("leader_in_contact") is True)


# ---------------------------------------------------------------------- sequencers

SEQUENCER_PREFIX = "lc1:"


@dataclass(frozen=True, slots=True)
class SequencerInfo:
    """What a sequencer names: lock path, mode, lock generation and node instance."""

    path: str
    mode: str
    lock_generation: int
    instance: int


def parse_sequencer(text: object) -> SequencerInfo | None:
    """Parse ``lc1:<urlsafe-b64 of JSON [path, mode, lock_generation, instance]>``;
    ``None`` for anything else. The format is the cell's; treat it as opaque for storage."""
    if not isinstance(text, str) or len(text) > 4096 or not text.startswith(SEQUENCER_PREFIX):
        return None
    encoded = text[len(SEQUENCER_PREFIX):]
    try:
        fields = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return None
    if not isinstance(fields, list) or len(fields) != 4:
        return None
    path, mode, generation, instance = fields
    if not (isinstance(path, str) and mode in ("exclusive", "shared")
            and type(generation) is int and type(instance) is int):
        return None
    return SequencerInfo(path, str(mode), generation, instance)


# ---------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Request:
    """One API call, before any I/O. ``write`` calls carry an ``X-Request-Id`` that stays
    the same across retries; ``wait_ms`` is how long the cell may hold the call."""

    method: str
    path: str
    body: Json | None = None
    query: tuple[tuple[str, str], ...] = ()
    write: bool = False
    wait_ms: int = 0
    admin: bool = False

    @property
    def target(self) -> str:
        """Path plus query string."""
        if not self.query:
            return self.path
        return self.path + "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in self.query)

    def encoded_body(self) -> bytes | None:
        """The JSON body, if any."""
        return None if self.body is None else json.dumps(self.body).encode()


def _q(part: str) -> str:
    return quote(part, safe="")


def _s(session: str) -> str:
    return f"/v1/sessions/{_q(session)}"


def _h(session: str, handle: str) -> str:
    return f"{_s(session)}/handles/{_q(handle)}"


def b64(data: bytes) -> str:
    """Base64 text of ``data`` (the API's ``data`` fields)."""
    return base64.b64encode(data).decode("ascii")


def req_create_session(lease_ms: int | None) -> Request:
    """CreateSession."""
    body: Json = {} if lease_ms is None else {"lease_ms": lease_ms}
    return Request("POST", "/v1/sessions", body)


def req_keepalive(session: str, wait_ms: int, ack: int | None) -> Request:
    """KeepAlive (long poll)."""
    body: Json = {"wait_ms": wait_ms}
    if ack is not None:
        body["ack"] = ack
    return Request("POST", f"{_s(session)}/keepalive", body, wait_ms=wait_ms)


def req_close_session(session: str) -> Request:
    """CloseSession."""
    return Request("DELETE", _s(session), write=True)


def req_open(session: str, path: str, *, create: str | None = None, ephemeral: bool = False,
             data: bytes | None = None, events: Sequence[str] = (),
             lock_delay_ms: int | None = None) -> Request:
    """Open (``create`` is ``"file"``, ``"dir"`` or ``None``)."""
    body: Json = {"path": path}
    if create is not None:
        spec: Json = {"kind": create}
        if ephemeral:
            spec["ephemeral"] = True
        if data:
            spec["data"] = b64(data)
        body["create"] = spec
    if events:
        body["events"] = list(events)
    if lock_delay_ms is not None:
        body["lock_delay_ms"] = lock_delay_ms
    return Request("POST", f"{_s(session)}/handles", body, write=True)


def req_close(session: str, handle: str) -> Request:
    """Close."""
    return Request("DELETE", _h(session, handle), write=True)


def req_poison(session: str, handle: str) -> Request:
    """Poison."""
    return Request("POST", f"{_h(session, handle)}/poison", write=True)


def req_get_contents(session: str, handle: str) -> Request:
    """GetContentsAndStat."""
    return Request("GET", _h(session, handle))


def req_get_stat(session: str, handle: str) -> Request:
    """GetStat."""
    return Request("GET", f"{_h(session, handle)}/stat")


def req_read_dir(session: str, handle: str) -> Request:
    """ReadDir."""
    return Request("GET", f"{_h(session, handle)}/children")


def req_set_contents(session: str, handle: str, data: bytes,
                     if_generation: int | None = None) -> Request:
    """SetContents (compare-and-set when ``if_generation`` is given)."""
    body: Json = {"data": b64(data)}
    if if_generation is not None:
        body["if_generation"] = if_generation
    return Request("PUT", _h(session, handle), body, write=True)


def req_delete(session: str, handle: str) -> Request:
    """Delete."""
    return Request("DELETE", f"{_h(session, handle)}/node", write=True)


def req_acquire(session: str, handle: str, mode: str, wait_ms: int) -> Request:
    """Acquire (``wait_ms`` > 0) or TryAcquire (``wait_ms`` = 0)."""
    return Request("POST", f"{_h(session, handle)}/lock", {"mode": mode, "wait_ms": wait_ms},
                   write=True, wait_ms=wait_ms)


def req_release(session: str, handle: str, generation: int | None) -> Request:
    """Release (only ``generation`` when given)."""
    query = () if generation is None else (("generation", str(generation)),)
    return Request("DELETE", f"{_h(session, handle)}/lock", query=query, write=True)


def req_get_sequencer(session: str, handle: str) -> Request:
    """GetSequencer."""
    return Request("GET", f"{_h(session, handle)}/sequencer")


def req_set_sequencer(session: str, handle: str, sequencer: str | None) -> Request:
    """SetSequencer (``None`` clears it)."""
    return Request("PUT", f"{_h(session, handle)}/sequencer", {"sequencer": sequencer},
                   write=True)


def req_check_sequencer(sequencer: str) -> Request:
    """CheckSequencer."""
    return Request("POST", "/v1/sequencers/check", {"sequencer": sequencer})


def req_cluster() -> Request:
    """Cluster status."""
    return Request("GET", "/v1/cluster")


def req_add_member(member_id: str, url: str, peer_url: str) -> Request:
    """Add a learner (admin)."""
    return Request("POST", "/v1/cluster/members", {"id": member_id, "url": url,
                                                   "peer_url": peer_url},
                   admin=True)


def req_promote_member(member_id: str) -> Request:
    """Promote a learner (admin)."""
    return Request("POST", f"/v1/cluster/members/{_q(member_id)}/promote", admin=True)


def req_remove_member(member_id: str) -> Request:
    """Remove a member (admin)."""
    return Request("DELETE", f"/v1/cluster/members/{_q(member_id)}", admin=True)


def req_transfer_leader(to: str | None) -> Request:
    """Transfer leadership (admin)."""
    return Request("POST", "/v1/cluster/leader", {"to": to}, admin=True)


# ---------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer, decoded: status, JSON body (or text), the leader header."""

    status: int
    body: Any
    leader: str | None = None


def decode_body(raw: bytes) -> Any:
    """JSON if it parses, else the text."""
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


def is_retryable(status: int) -> bool:
    """Answers worth trying again elsewhere (no leader, no quorum, gateway trouble)."""
    return status in (502, 503, 504)


def check_answer(request: Request, answer: Answer) -> Any:
    """The body of a successful (2xx) answer; the typed exception otherwise."""
    if 200 <= answer.status < 300:
        return answer.body
    raise error_from_answer(answer.status, answer.body)


def parse_open(body: Any) -> OpenAnswer:
    """Parse Open's answer."""
    if not isinstance(body, dict) or not isinstance(body.get("handle"), str):
        raise LockcellError("malformed open answer")
    return OpenAnswer(body["handle"], bool(body.get("created")), _int(body, "lock_delay_ms"),
                      Stat.from_json(body.get("stat")))


def parse_contents(body: Any) -> Contents:
    """Parse GetContentsAndStat's answer."""
    if not isinstance(body, dict):
        raise LockcellError("malformed contents answer")
    try:
        data = base64.b64decode(_str(body, "data"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise LockcellError("contents are not base64") from exc
    return Contents(data, Stat.from_json(body.get("stat")))


def parse_children(body: Any) -> tuple[Child, ...]:
    """Parse ReadDir's answer."""
    if not isinstance(body, dict) or not isinstance(body.get("children"), list):
        raise LockcellError("malformed readdir answer")
    return tuple(Child(_str(c, "name"), Stat.from_json(c.get("stat")))
                 for c in body["children"] if isinstance(c, dict))


def parse_lock_grant(body: Any) -> LockGrant:
    """Parse Acquire's / GetSequencer's answer."""
    if not isinstance(body, dict) or not isinstance(body.get("sequencer"), str):
        raise LockcellError("malformed lock answer")
    return LockGrant(body["sequencer"], _int(body, "lock_generation"))


def parse_session_grant(body: Any) -> SessionGrant:
    """Parse CreateSession's answer."""
    if not isinstance(body, dict) or not isinstance(body.get("session"), str):
        raise LockcellError("malformed session answer")
    return SessionGrant(body["session"], _int(body, "lease_ms"), _int(body, "valid_ms"),
                        _int(body, "grace_ms", DEFAULT_GRACE_MS))


# ---------------------------------------------------------------------- local lease


def local_deadline(sent_at: float, valid_ms: int, drift: float = DEFAULT_DRIFT) -> float:
    """The conservative end of the lease, in the caller's clock: the time the request was
    *sent* plus ``valid_ms * (1 - drift)``."""
    return sent_at + valid_ms / 1000.0 * (1.0 - drift)


def keeps_through_grace(lock_delay_ms: int, grace_ms: int, drift: float = DEFAULT_DRIFT) -> bool:
    """DESIGN.md §3 safety rule: a lock may be kept through jeopardy only when nobody else
    can take it before the grace period ends, i.e. its lock-delay covers the grace period
    (with the drift allowance applied to the cell's clock)."""
    return lock_delay_ms * (1.0 - drift) >= grace_ms


class Health(enum.StrEnum):
    """Session health as the client sees it."""

    SAFE = "safe"
    JEOPARDY = "jeopardy"
    EXPIRED = "expired"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A transition of session health (what ``on_jeopardy`` / ``on_safe`` /
    ``on_expired`` hear)."""

    old: Health
    new: Health
    reason: str


@dataclass(frozen=True, slots=True)
class EventNotice:
    """An event to hand to the user."""

    event: Event


@dataclass(frozen=True, slots=True)
class LockLostNotice:
    """A lock the holder must now consider lost."""

    lock: HeldLock
    reason: str


Notice = HealthChange | EventNotice | LockLostNotice


@dataclass(frozen=True, slots=True)
class KeepAlivePlan:
    """The next KeepAlive: how long the cell may hold it, the client's timeout, the ack."""

    wait_ms: int
    timeout: float
    ack: int | None


class EventSequencer:
    """Delivers each event at least once and acks what was delivered.

    The cell numbers events per session, but only within one leader's memory: a new
    leader starts again (its first event is ``master_failover``). So after a failed
    attempt (the leader may have changed) no ack is sent until an answer arrives, a
    ``master_failover`` starts a new numbering, and a change of leader without one makes
    the client synthesize a ``master_failover``.
    """

    def __init__(self) -> None:
        self.last_seq = 0
        self.leader: str | None = None
        self.uncertain = False

    def ack(self) -> int | None:
        """The ``ack`` for the next KeepAlive."""
        if self.uncertain or self.last_seq == 0:
            return None
        return self.last_seq

    def failed(self) -> None:
        """A KeepAlive attempt failed: the next may reach a new leader."""
        self.uncertain = True

    def accept(self, events: Sequence[Event], leader: str | None) -> list[Event]:
        """Events of one answer → the ones to deliver, in order."""
        ordered = sorted(events, key=lambda e: e.seq)
        out: list[Event] = []
        failover = any(e.type == EventType.MASTER_FAILOVER for e in ordered)
        leader_changed = (leader is not None and self.leader is not None
                          and leader != self.leader)
        if failover or leader_changed:
            self.last_seq = 0
            if not failover:
                out.append(Event(0, EventType.MASTER_FAILOVER.value, "", "", synthetic=True))
        if leader is not None:
            self.leader = leader
        for event in ordered:
            if event.seq <= self.last_seq:
                continue  # redelivered: already handed out
            out.append(event)
            self.last_seq = event.seq
        self.uncertain = False
        return out


class HeldLock:
    """A lock this session holds, and whether the holder must consider it lost.

    ``lost`` is evaluated against the clock on every read, so a process that was paused
    past its lease sees the truth at once, before any background task runs.
    """

    def __init__(self, core: SessionCore | None, *, path: str, handle: str, mode: str,
                 sequencer: str, lock_generation: int, lock_delay_ms: int) -> None:
        self.path = path
        self.handle = handle
        self.mode = mode
        self.sequencer = sequencer
        self.lock_generation = lock_generation
        self.lock_delay_ms = lock_delay_ms
        self._core = core
        self._lost_reason: str | None = None
        self.released = False
        self._listeners: list[Callable[[HeldLock], None]] = []

    @property
    def keeps_through_grace(self) -> bool:
        """Whether this lock may be kept while the session is in jeopardy."""
        if self._core is None:
            return False
        return keeps_through_grace(self.lock_delay_ms, self._core.grace_ms, self._core.drift)

    @property
    def lost_reason(self) -> str | None:
        """Why the lock must be considered lost, or ``None`` while it is safe to use."""
        if self._lost_reason is not None:
            return self._lost_reason
        if self._core is not None and not self.released:
            return self._core.risk(self)
        return None

    @property
    def lost(self) -> bool:
        """Whether the holder must consider the lock lost."""
        return self.lost_reason is not None

    def check(self) -> None:
        """Raise :class:`LockLost` if the lock may be lost."""
        reason = self.lost_reason
        if reason is not None:
            raise LockLost(f"lock on {self.path} (generation {self.lock_generation}) "
                           f"may be lost: {reason}")

    def add_lost_listener(self, listener: Callable[[HeldLock], None]) -> None:
        """Call ``listener(lock)`` once when the lock is marked lost (at once if it is)."""
        if self._lost_reason is not None:
            listener(self)
        else:
            self._listeners.append(listener)

    def mark_lost(self, reason: str) -> bool:
        """Mark the lock lost (sticky); True the first time."""
        if self._lost_reason is not None or self.released:
            return False
        self._lost_reason = reason
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener(self)
        return True

    def mark_released(self) -> None:
        """The holder released the lock (it is no longer tracked)."""
        self.released = True
        self._listeners = []

    def __repr__(self) -> str:
        return (f"<HeldLock {self.path} {self.mode} generation={self.lock_generation} "
                f"lost={self.lost}>")


class SessionCore:
    """The client's view of one session: local lease, health, held locks, events.

    Pure: time is passed in (``clock`` is only read by :meth:`now` and by
    :attr:`HeldLock.lost`); callers act on the notices the methods return, in order.
    """

    def __init__(self, grant: SessionGrant, sent_at: float, *, clock: Callable[[], float],
                 drift: float = DEFAULT_DRIFT, grace_ms: int | None = None) -> None:
        if not 0 <= drift < 1:
            raise ValueError("drift must be in [0, 1)")
        self.session_id = grant.session
        self.lease_ms = grant.lease_ms
        self.grace_ms = grant.grace_ms if grace_ms is None else grace_ms
        self.drift = drift
        self.clock = clock
        self.health = Health.SAFE
        self.deadline = local_deadline(sent_at, grant.valid_ms, drift)
        self.events = EventSequencer()
        self.locks: list[HeldLock] = []

    def now(self) -> float:
        """The injected clock."""
        return self.clock()

    @property
    def expires_at(self) -> float:
        """When the session counts as expired if no KeepAlive succeeds before."""
        return self.deadline + self.grace_ms / 1000.0

    @property
    def alive(self) -> bool:
        """Neither expired nor closed."""
        return self.health in (Health.SAFE, Health.JEOPARDY)

    def health_at(self, now: float) -> Health:
        """The health at ``now`` including transitions time makes, without applying them
        (safe to read from another thread)."""
        if not self.alive:
            return self.health
        if now >= self.expires_at:
            return Health.EXPIRED
        if now >= self.deadline:
            return Health.JEOPARDY
        return self.health

    def risk(self, lock: HeldLock) -> str | None:
        """Why ``lock`` is unsafe *now* (time-based), without changing state."""
        if self.health is Health.EXPIRED:
            return "session expired"
        if self.health is Health.CLOSED:
            return "session closed"
        now = self.clock()
        if now >= self.expires_at:
            return "session expired (grace period over)"
        if now >= self.deadline and not lock.keeps_through_grace:
            return "session in jeopardy and the lock-delay does not cover the grace period"
        return None

    # -------------------------------------------------------------- time

    def poll(self, now: float) -> list[Notice]:
        """Apply the transitions time makes: safe → jeopardy → expired."""
        out: list[Notice] = []
        if self.health is Health.SAFE and now >= self.deadline:
            self.health = Health.JEOPARDY
            out.append(HealthChange(Health.SAFE, Health.JEOPARDY, "local lease ran out"))
            for lock in list(self.locks):
                if not lock.keeps_through_grace and lock.mark_lost("session in jeopardy"):
                    out.append(LockLostNotice(lock, "session in jeopardy"))
        if self.health is Health.JEOPARDY and now >= self.expires_at:
            out.extend(self._end(Health.EXPIRED, "grace period ran out"))
        return out

    def next_wakeup(self) -> float | None:
        """The next time :meth:`poll` may change something."""
        if self.health is Health.SAFE:
            return self.deadline
        if self.health is Health.JEOPARDY:
            return self.expires_at
        return None

    def _end(self, health: Health, reason: str) -> list[Notice]:
        old = self.health
        self.health = health
        out: list[Notice] = [HealthChange(old, health, reason)]
        why = "session closed" if health is Health.CLOSED else f"session expired ({reason})"
        for lock in list(self.locks):
            if health is Health.CLOSED:
                lock.mark_released()
            elif lock.mark_lost(why):
                out.append(LockLostNotice(lock, why))
        self.locks.clear()
        return out

    # -------------------------------------------------------------- keepalives

    def keepalive_plan(self, now: float) -> KeepAlivePlan:
        """Long poll while safe; quick probes of every member while in jeopardy."""
        lease = self.lease_ms / 1000.0
        if self.health is Health.SAFE and now < self.deadline:
            wait_ms = max(0, self.lease_ms // 2)
            slack = max(0.5, min(2.0, lease * 0.25))
            return KeepAlivePlan(wait_ms, wait_ms / 1000.0 + slack, self.events.ack())
        return KeepAlivePlan(0, min(1.0, max(0.3, lease / 4)), self.events.ack())

    def on_keepalive(self, sent_at: float, now: float, answer: KeepAliveAnswer,
                     leader: str | None) -> list[Notice]:
        """A KeepAlive sent at ``sent_at`` was answered at ``now``."""
        out = self.poll(now)
        if not self.alive:
            return out
        if answer.lease_ms > 0:
            self.lease_ms = answer.lease_ms
        self.deadline = max(self.deadline, local_deadline(sent_at, answer.valid_ms, self.drift))
        if self.health is Health.JEOPARDY and now < self.deadline:
            self.health = Health.SAFE
            out.append(HealthChange(Health.JEOPARDY, Health.SAFE, "keepalive answered"))
        for event in self.events.accept(answer.events, leader):
            out.append(EventNotice(event))
            if event.type == EventType.HANDLE_INVALID:
                out.extend(self.handle_gone(event.handle, "node deleted or handle invalid"))
        return out

    def on_keepalive_failure(self, now: float) -> list[Notice]:
        """A KeepAlive attempt failed (no answer, or 503)."""
        self.events.failed()
        return self.poll(now)

    def on_session_gone(self, now: float, reason: str) -> list[Notice]:
        """The cell said the session is expired or unknown."""
        out = self.poll(now)
        if self.alive:
            out.extend(self._end(Health.EXPIRED, reason))
        return out

    def on_closed(self) -> list[Notice]:
        """The user closed the session."""
        if not self.alive:
            return []
        return self._end(Health.CLOSED, "closed by the client")

    # -------------------------------------------------------------- locks

    def track(self, lock: HeldLock) -> None:
        """Start watching ``lock`` for jeopardy and expiry."""
        self.locks.append(lock)

    def untrack(self, lock: HeldLock) -> None:
        """The lock was released."""
        lock.mark_released()
        if lock in self.locks:
            self.locks.remove(lock)

    def lose(self, lock: HeldLock, reason: str) -> list[Notice]:
        """Mark ``lock`` lost for a reason found by I/O (e.g. after a master failover)."""
        if lock.mark_lost(reason):
            return [LockLostNotice(lock, reason)]
        return []

    def handle_gone(self, handle: str, reason: str) -> list[Notice]:
        """Locks of ``handle`` are lost (the cell said the handle is invalid)."""
        out: list[Notice] = []
        for lock in list(self.locks):
            if lock.handle == handle:
                out.extend(self.lose(lock, reason))
        return out
