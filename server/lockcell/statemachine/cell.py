"""The cell's state machine: applies commands to the namespace, handles, locks and sessions."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from typing import Any

from .commands import (
    Acquire,
    Close,
    CloseSession,
    Command,
    CreateSession,
    Delete,
    ExpireSession,
    Grant,
    GrantLocks,
    Open,
    Poison,
    Release,
    SessionCommand,
    SetContents,
    SetSequencer,
    Tick,
    decode_command,
)
from .errors import CellError, ErrorCode
from .paths import normalize_path, parent_and_name
from .results import (
    ApplyResult,
    CellCounts,
    Effect,
    GrantSkipped,
    HandleClosed,
    HandleInfo,
    JsonDict,
    LockDelayArmed,
    LockGranted,
    LockHolder,
    LockInfo,
    LockReleased,
    NodeDeleted,
    SessionEnded,
    SessionEvent,
    SessionInfo,
    SessionStarted,
)
from .sequencer import SequencerRef, parse_sequencer
from .snapshot import ImageEncoder, dump_cell, encode_image, load_cell
from .state import (
    DEFAULT_LOCK_DELAY_MS,
    EMPTY_CHECKSUM,
    MAX_CONTENTS_BYTES,
    MAX_LEASE_MS,
    MAX_LOCK_DELAY_MS,
    MIN_LEASE_MS,
    MIN_REQUEST_IDS_PER_SESSION,
    MIN_TOMBSTONE_MS,
    CellConfig,
    CellData,
    Handle,
    Node,
    Session,
    Tombstone,
    content_checksum,
)
from .values import EventType, LockMode, NodeKind, SessionEndReason, event_mask

_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{32,128}")
"""Session and handle ids: chosen by the leader, at least 128 random bits (32 hex chars)."""

MAX_REQUEST_ID_LENGTH = 256


def _check_id(value: str, what: str) -> None:
    if _ID_PATTERN.fullmatch(value) is None:
        raise CellError(
            ErrorCode.INVALID_ARGUMENT, f"{what} id must be 32-128 characters of [A-Za-z0-9_-]"
        )


def _compact_json(value: JsonDict) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class CellState:
    """The replicated state of one cell, applied identically on every replica.

    Pure and deterministic: time comes only from the commands' ``now_ms`` (never going
    back), ids from the leader. Writes go through :meth:`apply` (log entries); the query
    methods serve linearizable reads and raise :class:`CellError` with the same session and
    handle rules as writes.
    """

    def __init__(
        self,
        cell_name: str,
        max_lock_delay_ms: int = MAX_LOCK_DELAY_MS,
        default_lease_ms: int = 12000,
        grace_ms: int = 45000,
        tombstone_ms: int = MIN_TOMBSTONE_MS,
        request_ids_per_session: int = MIN_REQUEST_IDS_PER_SESSION,
    ) -> None:
        config = CellConfig(
            cell_name=cell_name,
            max_lock_delay_ms=max_lock_delay_ms,
            default_lease_ms=default_lease_ms,
            grace_ms=grace_ms,
            tombstone_ms=tombstone_ms,
            request_ids_per_session=request_ids_per_session,
        )
        data = CellData(config=config, instance_counter=1, content_generation_high=1)
        data.nodes[config.root] = Node(
            path=config.root,
            parent="",
            name=cell_name,
            kind=NodeKind.DIR,
            ephemeral=False,
            instance=1,
            content_generation=1,
            lock_generation=0,
        )
        self._setup(data)

    @classmethod
    def restore(cls, snapshot: bytes) -> CellState:
        """A cell equal to the one whose :meth:`snapshot` gave ``snapshot``.

        Raises ``ValueError`` for a malformed image.
        """
        state = cls.__new__(cls)
        state._setup(load_cell(snapshot))
        return state

    def _setup(self, data: CellData) -> None:
        self._data = data
        self._now = data.now_ms
        self._events: list[SessionEvent] = []
        self._effects: list[Effect] = []
        self._handlers: dict[type[Command], Callable[[Any], JsonDict]] = {
            Tick: self._tick,
            CreateSession: self._create_session,
            CloseSession: self._close_session,
            ExpireSession: self._expire_session,
            Open: self._open,
            Close: self._close,
            Poison: self._poison,
            SetContents: self._set_contents,
            Delete: self._delete,
            Acquire: self._acquire,
            Release: self._release,
            GrantLocks: self._grant_locks,
            SetSequencer: self._set_sequencer,
        }

    # --- public surface -----------------------------------------------------------------

    @property
    def config(self) -> CellConfig:
        """The cell's settings."""
        return self._data.config

    @property
    def cell_name(self) -> str:
        """The cell's name (``/ls/<cell_name>`` is its root)."""
        return self._data.config.cell_name

    @property
    def now_ms(self) -> int:
        """The state machine's clock: the largest time stamp applied so far."""
        return self._data.now_ms

    def snapshot(self, encode: ImageEncoder = encode_image) -> bytes:
        """A deterministic image of the whole replicated state."""
        return dump_cell(self._data, encode)

    def apply(self, index: int, command_bytes: bytes) -> ApplyResult:
        """Decode and apply one committed log entry (empty data is the leader's no-op).

        Never raises for bad input: a malformed command gives an ``invalid_argument``
        result. A refused command leaves the state unchanged.
        """
        if not command_bytes:
            return ApplyResult(index, value={})
        try:
            command = decode_command(command_bytes)
        except CellError as exc:
            return ApplyResult(index, error=exc.failure)
        return self.apply_command(index, command)

    def apply_command(self, index: int, command: Command) -> ApplyResult:
        """Apply an already decoded command (what :meth:`apply` does after decoding)."""
        self._events = []
        self._effects = []
        handler = self._handlers.get(type(command))
        if handler is None:
            return ApplyResult(
                index,
                error=CellError(ErrorCode.INVALID_ARGUMENT, "unknown command").failure,
            )
        data = self._data
        request_id: str | None = None
        try:
            if command.now_ms < 0:
                raise CellError(ErrorCode.INVALID_ARGUMENT, "now_ms must not be negative")
            self._now = max(data.now_ms, command.now_ms)
            if isinstance(command, SessionCommand) and command.request_id is not None:
                request_id = command.request_id
                if not 0 < len(request_id) <= MAX_REQUEST_ID_LENGTH:
                    raise CellError(
                        ErrorCode.INVALID_ARGUMENT, "request id must be 1-256 characters"
                    )
                session = data.sessions.get(command.session)
                if session is not None:
                    remembered = session.requests.get(request_id)
                    if remembered is not None:
                        return ApplyResult(index, value=json.loads(remembered), duplicate=True)
            value = handler(command)
        except CellError as exc:
            return ApplyResult(index, error=exc.failure, events=tuple(self._events))
        data.now_ms = self._now
        self._purge_tombstones()
        if request_id is not None:
            assert isinstance(command, SessionCommand)
            self._remember(command.session, request_id, value)
        return ApplyResult(
            index, value=value, events=tuple(self._events), effects=tuple(self._effects)
        )

    # --- queries (served after ReadIndex) -----------------------------------------------

    def get_contents_and_stat(self, session: str, handle: str) -> JsonDict:
        """``{"data": <base64>, "stat"}`` of the handle's node."""
        node = self._valid_handle(self._live_session(session), handle)[1]
        return {"data": base64.b64encode(node.data).decode("ascii"), "stat": node.stat()}

    def get_contents(self, session: str, handle: str) -> bytes:
        """The raw contents of the handle's node."""
        return self._valid_handle(self._live_session(session), handle)[1].data

    def get_stat(self, session: str, handle: str) -> JsonDict:
        """``{"stat"}`` of the handle's node."""
        node = self._valid_handle(self._live_session(session), handle)[1]
        return {"stat": node.stat()}

    def read_dir(self, session: str, handle: str) -> JsonDict:
        """``{"children": [{"name", "stat"}]}`` of the handle's directory, sorted by name."""
        node = self._valid_handle(self._live_session(session), handle)[1]
        if node.kind is not NodeKind.DIR:
            raise CellError(ErrorCode.CONFLICT, f"{node.path} is a file, not a directory")
        nodes = self._data.nodes
        return {
            "children": [
                {"name": name, "stat": nodes[f"{node.path}/{name}"].stat()}
                for name in sorted(node.children)
            ]
        }

    def get_sequencer(self, session: str, handle: str) -> JsonDict:
        """``{"sequencer", "lock_generation", "mode"}`` of the lock the handle holds."""
        handle_record, node = self._valid_handle(self._live_session(session), handle)
        if handle_record.lock_mode is None:
            raise CellError(ErrorCode.CONFLICT, "the handle holds no lock")
        return self._lock_answer(handle_record, node)

    def check_sequencer(self, sequencer: str) -> JsonDict:
        """``{"valid": bool}``: whether ``sequencer`` is current (garbage is just invalid)."""
        reference = parse_sequencer(sequencer)
        return {"valid": reference is not None and self._sequencer_current(reference)}

    def session_info(self, session: str) -> SessionInfo:
        """A live session; ``not_found`` / ``session_expired`` otherwise."""
        record = self._live_session(session)
        return SessionInfo(
            record.session_id, record.lease_ms, record.created_ms, len(record.handles)
        )

    def live_sessions(self) -> tuple[SessionInfo, ...]:
        """Every live session, oldest first (O(sessions): for a new leader, not per request)."""
        return tuple(
            SessionInfo(record.session_id, record.lease_ms, record.created_ms, len(record.handles))
            for record in self._data.sessions.values()
        )

    def describe_handle(self, handle: str) -> HandleInfo | None:
        """Where an open handle points (``None`` once it is closed)."""
        record = self._data.handles.get(handle)
        if record is None:
            return None
        valid = not record.poisoned and self._bound_node(record) is not None
        if valid and record.sequencer is not None:
            valid = self._sequencer_current(record.sequencer)
        return HandleInfo(
            handle=record.handle_id,
            session=record.session_id,
            path=record.path,
            instance=record.instance,
            lock_mode=record.lock_mode,
            lock_generation=record.lock_generation,
            lock_delay_ms=record.lock_delay_ms,
            valid=valid,
        )

    def lock_info(self, path: str) -> LockInfo | None:
        """The lock state of the node at ``path`` (``None`` when it does not exist)."""
        nodes = self._data.nodes
        node = nodes.get(path)  # callers mostly pass a node's own (canonical) path
        if node is None:
            node = nodes.get(normalize_path(path, self.cell_name))
            if node is None:
                return None
        handles = self._data.handles
        return LockInfo(
            path=node.path,
            instance=node.instance,
            mode=node.lock_mode,
            lock_generation=node.lock_generation,
            holders=tuple(
                LockHolder(handles[holder].session_id, holder) for holder in node.holders
            ),
            lock_delay_until_ms=node.lock_delay_until_ms,
        )

    def counts(self) -> CellCounts:
        """Sizes for metrics."""
        data = self._data
        return CellCounts(
            sessions=len(data.sessions),
            tombstones=len(data.tombstones),
            handles=len(data.handles),
            nodes=len(data.nodes),
            locks_exclusive=data.locks_exclusive,
            locks_shared=data.locks_shared,
            shared_holders=data.shared_holders,
        )

    # --- lookups shared by commands and queries -----------------------------------------

    def _live_session(self, session_id: str) -> Session:
        session = self._data.sessions.get(session_id)
        if session is not None and not session.ending:
            return session
        tombstone = self._data.tombstones.get(session_id)
        if tombstone is not None:
            raise CellError(
                ErrorCode.SESSION_EXPIRED, f"session {session_id} was {tombstone.reason.value}"
            )
        raise CellError(ErrorCode.NOT_FOUND, f"unknown session {session_id}")

    def _own_handle(self, session: Session, handle_id: str) -> Handle | None:
        handle = self._data.handles.get(handle_id)
        if handle is not None and handle.session_id != session.session_id:
            raise CellError(ErrorCode.NOT_FOUND, f"handle {handle_id} is not this session's")
        return handle

    def _bound_node(self, handle: Handle) -> Node | None:
        node = self._data.nodes.get(handle.path)
        if node is None or node.instance != handle.instance:
            return None
        return node

    def _valid_handle(self, session: Session, handle_id: str) -> tuple[Handle, Node]:
        handle = self._own_handle(session, handle_id)
        if handle is None:
            raise CellError(ErrorCode.HANDLE_INVALID, f"handle {handle_id} is closed")
        if handle.poisoned:
            raise CellError(ErrorCode.HANDLE_INVALID, f"handle {handle_id} is poisoned")
        node = self._bound_node(handle)
        if node is None:
            raise CellError(
                ErrorCode.HANDLE_INVALID, f"the node of handle {handle_id} was deleted"
            )
        if handle.sequencer is not None and not self._sequencer_current(handle.sequencer):
            raise CellError(
                ErrorCode.HANDLE_INVALID, f"the sequencer set on handle {handle_id} is stale"
            )
        return handle, node

    def _sequencer_current(self, reference: SequencerRef) -> bool:
        node = self._data.nodes.get(reference.path)
        return (
            node is not None
            and node.instance == reference.instance
            and node.lock_mode is reference.mode
            and node.lock_generation == reference.lock_generation
        )

    @staticmethod
    def _lock_answer(handle: Handle, node: Node) -> JsonDict:
        assert handle.lock_mode is not None
        reference = SequencerRef(node.path, handle.lock_mode, handle.lock_generation, node.instance)
        return {
            "sequencer": reference.encode(),
            "lock_generation": handle.lock_generation,
            "mode": handle.lock_mode.value,
        }

    # --- bookkeeping --------------------------------------------------------------------

    def _purge_tombstones(self) -> None:
        tombstones = self._data.tombstones
        while tombstones:
            oldest = next(iter(tombstones.values()))
            if oldest.purge_at_ms > self._data.now_ms:
                return
            del tombstones[oldest.session_id]

    def _remember(self, session_id: str, request_id: str, value: JsonDict) -> None:
        session = self._data.sessions.get(session_id)
        if session is None:
            return
        session.requests[request_id] = _compact_json(value)
        if len(session.requests) > self._data.config.request_ids_per_session:
            del session.requests[next(iter(session.requests))]

    def _notify(self, node: Node, event: EventType, path: str) -> None:
        watching = node.watchers.get(event)
        if not watching:
            return
        sessions = self._data.sessions
        for handle in watching.values():
            if handle.poisoned or sessions[handle.session_id].ending:
                continue
            self._events.append(SessionEvent(handle.session_id, event, handle.handle_id, path))

    # --- namespace ----------------------------------------------------------------------

    def _create_node(
        self, parent: Node, name: str, kind: NodeKind, ephemeral: bool, contents: bytes
    ) -> Node:
        data = self._data
        data.instance_counter += 1
        data.content_generation_high += 1
        node = Node(
            path=f"{parent.path}/{name}",
            parent=parent.path,
            name=name,
            kind=kind,
            ephemeral=ephemeral,
            instance=data.instance_counter,
            content_generation=data.content_generation_high,
            lock_generation=data.lock_generation_high,
            data=contents,
            checksum=content_checksum(contents) if contents else EMPTY_CHECKSUM,
        )
        data.nodes[node.path] = node
        parent.add_child(name)
        self._notify(parent, EventType.CHILD_ADDED, node.path)
        return node

    def _delete_node(self, node: Node) -> None:
        data = self._data
        for handle in node.handles.values():
            handle.lock_mode = None
        self._notify(node, EventType.HANDLE_INVALID, node.path)
        if node.lock_mode is LockMode.EXCLUSIVE:
            data.locks_exclusive -= 1
        elif node.lock_mode is LockMode.SHARED:
            data.locks_shared -= 1
            data.shared_holders -= len(node.holders)
        del data.nodes[node.path]
        parent = data.nodes[node.parent]
        parent.remove_child(node.name)
        self._notify(parent, EventType.CHILD_REMOVED, node.path)
        self._effects.append(NodeDeleted(node.path, node.instance))

    def _collect_ephemeral(self, node: Node) -> None:
        """Delete ``node`` and then its ancestors while they are unused ephemeral nodes."""
        while node.ephemeral and not node.handles and not node.children:
            parent = self._data.nodes[node.parent]
            self._delete_node(node)
            node = parent

    # --- handles and sessions -----------------------------------------------------------

    def _close_handle(self, handle: Handle, *, arm_lock_delay: bool) -> None:
        node = self._bound_node(handle)
        if node is not None:
            if handle.lock_mode is not None:
                self._release_lock(node, handle, arm_lock_delay=arm_lock_delay)
            node.detach(handle)
            self._collect_ephemeral(node)
        del self._data.handles[handle.handle_id]
        del self._data.sessions[handle.session_id].handles[handle.handle_id]

    def _end_session(self, session: Session, reason: SessionEndReason) -> int:
        data = self._data
        session.ending = True
        handle_ids = tuple(session.handles)
        for handle_id in handle_ids:
            self._close_handle(
                session.handles[handle_id],
                arm_lock_delay=reason is SessionEndReason.EXPIRED,
            )
        del data.sessions[session.session_id]
        data.tombstones[session.session_id] = Tombstone(
            session.session_id, reason, self._now, self._now + data.config.tombstone_ms
        )
        self._effects.append(SessionEnded(session.session_id, reason, handle_ids))
        return len(handle_ids)

    # --- locks --------------------------------------------------------------------------

    def _grant_refusal(self, node: Node, mode: LockMode) -> CellError | None:
        if node.lock_mode is not None and (
            mode is LockMode.EXCLUSIVE or node.lock_mode is LockMode.EXCLUSIVE
        ):
            return CellError(
                ErrorCode.LOCK_BUSY, f"{node.path} is held in {node.lock_mode.value} mode"
            )
        if node.lock_delay_until_ms > self._now:
            return CellError(
                ErrorCode.LOCK_DELAY,
                f"{node.path} is in lock-delay after its holder's session expired",
                lock_delay_until_ms=node.lock_delay_until_ms,
            )
        return None

    def _grant(self, node: Node, handle: Handle, mode: LockMode) -> None:
        data = self._data
        if node.lock_mode is None:
            node.lock_generation += 1
            data.lock_generation_high = max(data.lock_generation_high, node.lock_generation)
            node.lock_mode = mode
            if mode is LockMode.EXCLUSIVE:
                data.locks_exclusive += 1
            else:
                data.locks_shared += 1
        if mode is LockMode.SHARED:
            data.shared_holders += 1
        node.add_holder(handle.handle_id)
        handle.lock_mode = mode
        handle.lock_generation = node.lock_generation
        self._notify(node, EventType.LOCK_ACQUIRED, node.path)
        self._effects.append(
            LockGranted(
                handle.session_id, handle.handle_id, node.path, node.instance, mode,
                node.lock_generation,
            )
        )

    def _release_lock(self, node: Node, handle: Handle, *, arm_lock_delay: bool) -> None:
        data = self._data
        mode = handle.lock_mode
        assert mode is not None
        node.remove_holder(handle.handle_id)
        if mode is LockMode.SHARED:
            data.shared_holders -= 1
        if not node.holders:
            if node.lock_mode is LockMode.EXCLUSIVE:
                data.locks_exclusive -= 1
            else:
                data.locks_shared -= 1
            node.lock_mode = None
        handle.lock_mode = None
        self._effects.append(
            LockReleased(
                handle.session_id, handle.handle_id, node.path, node.instance, mode,
                handle.lock_generation, len(node.holders),
            )
        )
        if arm_lock_delay and handle.lock_delay_ms > 0:
            until = self._now + handle.lock_delay_ms
            if until > node.lock_delay_until_ms:
                node.lock_delay_until_ms = until
                self._effects.append(LockDelayArmed(node.path, node.instance, until))

    def _apply_grants(self, grants: tuple[Grant, ...]) -> list[JsonDict]:
        answers: list[JsonDict] = []
        for grant in grants:
            answer: JsonDict = {
                "session": grant.session,
                "handle": grant.handle,
                "mode": grant.mode.value,
            }
            try:
                handle, node = self._valid_handle(self._live_session(grant.session), grant.handle)
                if handle.lock_mode is None:
                    refusal = self._grant_refusal(node, grant.mode)
                    if refusal is not None:
                        raise refusal
                    self._grant(node, handle, grant.mode)
                elif handle.lock_mode is not grant.mode:
                    raise CellError(
                        ErrorCode.CONFLICT,
                        f"the handle already holds the lock in {handle.lock_mode.value} mode",
                    )
            except CellError as exc:
                answer["granted"] = False
                answer["error"] = exc.failure.to_json()["error"]
                self._effects.append(
                    GrantSkipped(grant.session, grant.handle, grant.mode, exc.failure)
                )
            else:
                answer["granted"] = True
                answer.update(self._lock_answer(handle, node))
            answers.append(answer)
        return answers

    # --- command handlers: validate everything, then mutate -----------------------------

    def _tick(self, command: Tick) -> JsonDict:
        return {}

    def _create_session(self, command: CreateSession) -> JsonDict:
        data = self._data
        _check_id(command.session, "session")
        if command.session in data.sessions or command.session in data.tombstones:
            raise CellError(ErrorCode.CONFLICT, f"session {command.session} already exists")
        if command.lease_ms is None:
            lease_ms = data.config.default_lease_ms
        else:
            lease_ms = min(max(command.lease_ms, MIN_LEASE_MS), MAX_LEASE_MS)
        data.sessions[command.session] = Session(command.session, lease_ms, self._now)
        self._effects.append(SessionStarted(command.session, lease_ms))
        return {
            "session": command.session,
            "lease_ms": lease_ms,
            "valid_ms": lease_ms,
            "grace_ms": data.config.grace_ms,
        }

    def _close_session(self, command: CloseSession) -> JsonDict:
        data = self._data
        session = data.sessions.get(command.session)
        if session is None:
            tombstone = data.tombstones.get(command.session)
            if tombstone is None or tombstone.reason is not SessionEndReason.CLOSED:
                self._live_session(command.session)  # raises not_found / session_expired
        else:
            self._end_session(session, SessionEndReason.CLOSED)
        return {"grants": self._apply_grants(command.grant_next)}

    def _expire_session(self, command: ExpireSession) -> JsonDict:
        session = self._live_session(command.session)
        closed = self._end_session(session, SessionEndReason.EXPIRED)
        return {
            "session": command.session,
            "handles_closed": closed,
            "grants": self._apply_grants(command.grant_next),
        }

    def _granted_lock_delay(self, requested: int | None) -> int:
        limit = self._data.config.max_lock_delay_ms
        if requested is None:
            return min(DEFAULT_LOCK_DELAY_MS, limit)
        if not 0 <= requested <= MAX_LOCK_DELAY_MS:
            raise CellError(ErrorCode.INVALID_ARGUMENT, "lock_delay_ms must be within 0-60000")
        return min(requested, limit)

    def _open(self, command: Open) -> JsonDict:
        data = self._data
        session = self._live_session(command.session)
        path = normalize_path(command.path, data.config.cell_name)
        _check_id(command.handle, "handle")
        lock_delay_ms = self._granted_lock_delay(command.lock_delay_ms)
        create = command.create
        if create is not None:
            if len(create.data) > MAX_CONTENTS_BYTES:
                raise CellError(ErrorCode.TOO_LARGE, "contents are larger than 256 KiB")
            if create.kind is NodeKind.DIR and create.data:
                raise CellError(ErrorCode.INVALID_ARGUMENT, "a directory has no contents")
        if command.handle in data.handles:
            raise CellError(ErrorCode.CONFLICT, f"handle {command.handle} already exists")
        node = data.nodes.get(path)
        if node is None:
            if create is None:
                raise CellError(ErrorCode.NOT_FOUND, f"{path} does not exist")
            parent_path, name = parent_and_name(path)
            parent = data.nodes.get(parent_path)
            if parent is None:
                raise CellError(ErrorCode.NOT_FOUND, f"directory {parent_path} does not exist")
            if parent.kind is not NodeKind.DIR:
                raise CellError(ErrorCode.NOT_FOUND, f"{parent_path} is a file, not a directory")
            node = self._create_node(parent, name, create.kind, create.ephemeral, create.data)
            created = True
        else:
            if create is not None and create.kind is not node.kind:
                raise CellError(ErrorCode.CONFLICT, f"{path} exists as a {node.kind.value}")
            created = False
        handle = Handle(
            handle_id=command.handle,
            session_id=session.session_id,
            path=path,
            instance=node.instance,
            event_mask=event_mask(command.events),
            lock_delay_ms=lock_delay_ms,
        )
        data.handles[handle.handle_id] = handle
        session.handles[handle.handle_id] = handle
        node.attach(handle)
        return {
            "handle": handle.handle_id,
            "created": created,
            "lock_delay_ms": lock_delay_ms,
            "stat": node.stat(),
        }

    def _close(self, command: Close) -> JsonDict:
        session = self._live_session(command.session)
        handle = self._own_handle(session, command.handle)
        if handle is not None:
            self._close_handle(handle, arm_lock_delay=False)
            self._effects.append(HandleClosed(session.session_id, handle.handle_id))
        return {"grants": self._apply_grants(command.grant_next)}

    def _poison(self, command: Poison) -> JsonDict:
        session = self._live_session(command.session)
        handle = self._own_handle(session, command.handle)
        if handle is None:
            raise CellError(ErrorCode.HANDLE_INVALID, f"handle {command.handle} is closed")
        handle.poisoned = True
        return {}

    def _set_contents(self, command: SetContents) -> JsonDict:
        data = self._data
        node = self._valid_handle(self._live_session(command.session), command.handle)[1]
        if len(command.data) > MAX_CONTENTS_BYTES:
            raise CellError(ErrorCode.TOO_LARGE, "contents are larger than 256 KiB")
        if node.kind is not NodeKind.FILE:
            raise CellError(ErrorCode.CONFLICT, f"{node.path} is a directory")
        if command.if_generation is not None and command.if_generation != node.content_generation:
            raise CellError(
                ErrorCode.CONFLICT,
                f"content generation is {node.content_generation}, not {command.if_generation}",
            )
        node.data = command.data
        node.checksum = content_checksum(command.data) if command.data else EMPTY_CHECKSUM
        node.content_generation += 1
        data.content_generation_high = max(data.content_generation_high, node.content_generation)
        self._notify(node, EventType.CONTENTS_MODIFIED, node.path)
        parent = data.nodes.get(node.parent)
        if parent is not None:
            self._notify(parent, EventType.CHILD_MODIFIED, node.path)
        return {"stat": node.stat()}

    def _delete(self, command: Delete) -> JsonDict:
        data = self._data
        session = self._live_session(command.session)
        node = self._valid_handle(session, command.handle)[1]
        if node.path == data.config.root:
            raise CellError(ErrorCode.INVALID_ARGUMENT, "the cell's root cannot be deleted")
        if node.children:
            raise CellError(ErrorCode.CONFLICT, f"directory {node.path} is not empty")
        for holder in node.holders:
            if data.handles[holder].session_id != session.session_id:
                raise CellError(ErrorCode.CONFLICT, f"{node.path} is locked by another session")
        parent = data.nodes[node.parent]
        self._delete_node(node)
        self._collect_ephemeral(parent)
        return {}

    def _acquire(self, command: Acquire) -> JsonDict:
        handle, node = self._valid_handle(self._live_session(command.session), command.handle)
        if handle.lock_mode is command.mode:
            return self._lock_answer(handle, node)
        if handle.lock_mode is not None:
            raise CellError(
                ErrorCode.CONFLICT,
                f"the handle already holds the lock in {handle.lock_mode.value} mode",
            )
        refusal = self._grant_refusal(node, command.mode)
        if refusal is not None:
            if refusal.code is ErrorCode.LOCK_BUSY:
                self._tell_holders_of_conflict(node, handle.session_id)
            raise refusal
        self._grant(node, handle, command.mode)
        return self._lock_answer(handle, node)

    def _tell_holders_of_conflict(self, node: Node, requester_session: str) -> None:
        watching = node.watchers.get(EventType.CONFLICTING_LOCK)
        if not watching:
            return
        for holder in node.holders:
            handle = watching.get(holder)
            if handle is None or handle.poisoned:
                continue
            if handle.session_id != requester_session:
                self._events.append(
                    SessionEvent(
                        handle.session_id, EventType.CONFLICTING_LOCK, handle.handle_id, node.path
                    )
                )

    def _release(self, command: Release) -> JsonDict:
        handle, node = self._valid_handle(self._live_session(command.session), command.handle)
        if handle.lock_mode is None:
            raise CellError(ErrorCode.CONFLICT, "the handle holds no lock")
        if command.generation is not None and command.generation != handle.lock_generation:
            raise CellError(
                ErrorCode.CONFLICT,
                f"the handle holds lock generation {handle.lock_generation}, "
                f"not {command.generation}",
            )
        generation = handle.lock_generation
        self._release_lock(node, handle, arm_lock_delay=False)
        return {"lock_generation": generation, "grants": self._apply_grants(command.grant_next)}

    def _grant_locks(self, command: GrantLocks) -> JsonDict:
        return {"grants": self._apply_grants(command.grants)}

    def _set_sequencer(self, command: SetSequencer) -> JsonDict:
        handle = self._valid_handle(self._live_session(command.session), command.handle)[0]
        if command.sequencer is None:
            handle.sequencer = None
            return {"sequencer": None}
        reference = parse_sequencer(command.sequencer)
        if reference is None:
            raise CellError(ErrorCode.INVALID_ARGUMENT, "not a lockcell sequencer")
        if not self._sequencer_current(reference):
            raise CellError(ErrorCode.CONFLICT, "the sequencer is not current")
        handle.sequencer = reference
        return {"sequencer": command.sequencer}
