"""Deterministic snapshot of :class:`~.state.CellData` to bytes, and its restoration.

The image is JSON with sorted keys and no spaces. Nodes are listed by path; handles,
sessions, remembered request ids, lock holders and tombstones in their insertion order,
which is what every replica iterates in, so a restored cell behaves (and snapshots)
exactly like the original. Derived indexes (children, per-node and per-session handles,
lock counters) are rebuilt on restore.
"""

from __future__ import annotations

import binascii
import json
import re
from collections.abc import Callable
from typing import Any

from .sequencer import SequencerRef, parse_sequencer
from .state import NOTHING, CellConfig, CellData, Handle, Node, Session, Tombstone
from .values import LockMode, NodeKind, SessionEndReason

SNAPSHOT_FORMAT = 1


def _node_image(node: Node) -> dict[str, Any]:
    return {
        "path": node.path,
        "kind": node.kind.value,
        "ephemeral": node.ephemeral,
        "instance": node.instance,
        "content_generation": node.content_generation,
        "lock_generation": node.lock_generation,
        "acl_generation": node.acl_generation,
        "data": binascii.b2a_base64(node.data, newline=False).decode("ascii"),
        "checksum": node.checksum,
        "lock_mode": None if node.lock_mode is None else node.lock_mode.value,
        "lock_delay_until_ms": node.lock_delay_until_ms,
        "holders": list(node.holders),
    }


def _handle_image(handle: Handle) -> dict[str, Any]:
    return {
        "handle": handle.handle_id,
        "session": handle.session_id,
        "path": handle.path,
        "instance": handle.instance,
        "event_mask": handle.event_mask,
        "lock_delay_ms": handle.lock_delay_ms,
        "poisoned": handle.poisoned,
        "lock_mode": None if handle.lock_mode is None else handle.lock_mode.value,
        "lock_generation": handle.lock_generation,
        "sequencer": None if handle.sequencer is None else handle.sequencer.encode(),
    }


ImageEncoder = Callable[[dict[str, Any]], bytes]
"""Writes the image's JSON value with sorted keys and no spaces (the member passes orjson,
several times faster, which writes what :func:`encode_image` writes for ASCII text)."""


def encode_image(image: dict[str, Any]) -> bytes:
    """The image's bytes with the json module: sorted keys, no spaces."""
    return json.dumps(image, sort_keys=True, separators=(",", ":")).encode()


def dump_cell(data: CellData, encode: ImageEncoder = encode_image) -> bytes:
    """The snapshot image of ``data`` (identical state gives identical bytes)."""
    config = data.config
    image = {
        "format": SNAPSHOT_FORMAT,
        "config": {
            "cell_name": config.cell_name,
            "max_lock_delay_ms": config.max_lock_delay_ms,
            "default_lease_ms": config.default_lease_ms,
            "grace_ms": config.grace_ms,
            "tombstone_ms": config.tombstone_ms,
            "request_ids_per_session": config.request_ids_per_session,
        },
        "now_ms": data.now_ms,
        "instance_counter": data.instance_counter,
        "content_generation_high": data.content_generation_high,
        "lock_generation_high": data.lock_generation_high,
        "nodes": [_node_image(data.nodes[path]) for path in sorted(data.nodes)],
        "handles": [_handle_image(handle) for handle in data.handles.values()],
        "sessions": [
            {
                "session": session.session_id,
                "lease_ms": session.lease_ms,
                "created_ms": session.created_ms,
                "requests": [[key, answer] for key, answer in session.requests.items()],
            }
            for session in data.sessions.values()
        ],
        "tombstones": [
            [tomb.session_id, tomb.reason.value, tomb.ended_ms, tomb.purge_at_ms]
            for tomb in data.tombstones.values()
        ],
    }
    return encode(image)


_KINDS = {kind.value: kind for kind in NodeKind}
_MODES: dict[Any, LockMode | None] = {mode.value: mode for mode in LockMode}
_MODES[None] = None


def _load_node(image: dict[str, Any], parents: dict[str, str]) -> Node:
    """One node; ``parents`` shares one string per parent path across its children."""
    path = image["path"]
    parent, _, name = path.rpartition("/")
    parent = parents.setdefault(parent, parent)
    holders = image["holders"]
    text = image["data"]
    return Node(
        path, parent, name, _KINDS[image["kind"]], bool(image["ephemeral"]),
        int(image["instance"]), int(image["content_generation"]),
        int(image["lock_generation"]), int(image["acl_generation"]),
        binascii.a2b_base64(text, strict_mode=True) if text else b"",
        str(image["checksum"]), _MODES[image["lock_mode"]],
        int(image["lock_delay_until_ms"]),
        dict.fromkeys(map(str, holders)) if holders else NOTHING,
    )


def _load_handle(image: dict[str, Any]) -> Handle:
    sequencer: SequencerRef | None = None
    if image["sequencer"] is not None:
        sequencer = parse_sequencer(image["sequencer"])
        if sequencer is None:
            raise ValueError("snapshot holds a garbled sequencer")
    return Handle(
        handle_id=str(image["handle"]),
        session_id=str(image["session"]),
        path=str(image["path"]),
        instance=int(image["instance"]),
        event_mask=int(image["event_mask"]),
        lock_delay_ms=int(image["lock_delay_ms"]),
        poisoned=bool(image["poisoned"]),
        lock_mode=_MODES[image["lock_mode"]],
        lock_generation=int(image["lock_generation"]),
        sequencer=sequencer,
    )


_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, pos: int, token: str = "") -> int:
    """Skip whitespace, then ``token`` if given (which must be there)."""
    pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]  # always matches
    if token:
        if not text.startswith(token, pos):
            raise ValueError(f"malformed snapshot: expected {token!r} at {pos}")
        pos = _WHITESPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
    return pos


def _load_nodes(text: str, pos: int, data: CellData) -> int:
    """Build the nodes from the image's ``nodes`` array one element at a time, so that
    each element's parsed form is freed before the next is read (a large cell's image
    would otherwise double the memory a restore needs, and fragment it)."""
    nodes = data.nodes
    root = data.config.root
    parents: dict[str, str] = {}
    pos = _skip(text, pos, "[")
    if text.startswith("]", pos):
        return pos + 1
    while True:
        node_image, pos = _DECODER.raw_decode(text, pos)
        node = _load_node(node_image, parents)
        nodes[node.path] = node
        if node.path != root:
            nodes[node.parent].add_child(node.name)
        if node.lock_mode is not None:
            if node.lock_mode is LockMode.EXCLUSIVE:
                data.locks_exclusive += 1
            else:
                data.locks_shared += 1
                data.shared_holders += len(node.holders)
        pos = _skip(text, pos)
        if text.startswith("]", pos):
            return pos + 1
        pos = _skip(text, pos, ",")


def _load(text: str) -> CellData:
    """Parse the top-level object, streaming its ``nodes`` (which ``dump_cell``'s sorted
    keys put after ``config``), then attach sessions, handles and tombstones."""
    image: dict[str, Any] = {}
    data: CellData | None = None
    pos = _skip(text, 0, "{")
    while not text.startswith("}", pos):
        key, pos = _DECODER.raw_decode(text, pos)
        if type(key) is not str:
            raise ValueError("malformed snapshot: a key is not a string")
        pos = _skip(text, pos, ":")
        if key == "nodes" and data is None:
            if image.get("format") not in (None, SNAPSHOT_FORMAT):
                break
            data = CellData(config=CellConfig(**image["config"]))
            pos = _load_nodes(text, pos, data)
        else:
            image[key], pos = _DECODER.raw_decode(text, pos)
        pos = _skip(text, pos)
        if not text.startswith("}", pos):
            pos = _skip(text, pos, ",")
    else:
        if _skip(text, pos + 1) != len(text):
            raise ValueError("malformed snapshot: data after the image")
    if image.get("format") != SNAPSHOT_FORMAT:
        raise ValueError(f"unknown snapshot format {image.get('format')!r}")
    if data is None:
        raise ValueError("snapshot has no nodes")
    data.now_ms = int(image["now_ms"])
    data.instance_counter = int(image["instance_counter"])
    data.content_generation_high = int(image["content_generation_high"])
    data.lock_generation_high = int(image["lock_generation_high"])
    if data.config.root not in data.nodes:
        raise ValueError("snapshot has no root directory")
    for session_image in image["sessions"]:
        session = Session(
            session_id=str(session_image["session"]),
            lease_ms=int(session_image["lease_ms"]),
            created_ms=int(session_image["created_ms"]),
            requests={str(key): str(answer) for key, answer in session_image["requests"]},
        )
        data.sessions[session.session_id] = session
    for handle_image in image["handles"]:
        handle = _load_handle(handle_image)
        data.handles[handle.handle_id] = handle
        data.sessions[handle.session_id].handles[handle.handle_id] = handle
        bound = data.nodes.get(handle.path)
        if bound is not None and bound.instance == handle.instance:
            bound.attach(handle)
    for session_id, reason, ended_ms, purge_at_ms in image["tombstones"]:
        data.tombstones[str(session_id)] = Tombstone(
            str(session_id), SessionEndReason(reason), int(ended_ms), int(purge_at_ms)
        )
    return data


def load_cell(snapshot: bytes) -> CellData:
    """Rebuild the state :func:`dump_cell` wrote; raises ``ValueError`` if it is malformed."""
    try:
        return _load(snapshot.decode("utf-8"))
    except (KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise ValueError(f"malformed snapshot: {exc!r}") from exc
