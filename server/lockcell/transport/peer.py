"""Peer transport: persistent, authenticated, batched TCP links for Raft and forwarded calls."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from lockcell.raft.types import Message, MessageType, NodeId
from lockcell.transport.codec import DecodeError, decode_messages, encode_messages

log = logging.getLogger("lockcell.transport")

FRAME_HELLO = 1
FRAME_HELLO_OK = 2
FRAME_RAFT = 3
FRAME_FORWARD = 4
FRAME_FORWARD_REPLY = 5
FRAME_REFUSED = 6

MAX_FRAME = 512 << 20
"""Largest frame a member accepts (a snapshot travels in one message)."""
FRAME_TARGET = 4 << 20
"""Batches are split into frames of about this size, so a follower catching up never
meets one giant frame."""
_FRAME = struct.Struct("<IB")
_ID = struct.Struct("<Q")
PROTOCOL = "lockcell-peer/1"
HELLO_TIMEOUT_S = 5.0
"""An inbound link that has not said HELLO by then is closed."""
MAX_HELLO = 64 << 10
"""Largest first frame accepted from a peer that has not proven the cell's secret yet."""
GONE_PROBES_S = (0.02, 0.1, 0.3)
"""After a peer's link to us closes, its address is dialled after each of these pauses; a
refused connection means nothing listens there any more: its process is gone."""
PROBE_TIMEOUT_S = 0.5


class PeerUnavailableError(ConnectionError):
    """A peer could not be reached (or dropped the link) before answering."""


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """A client call a follower hands to the leader over the peer link."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class ForwardedReply:
    """The leader's answer to a :class:`ForwardedRequest`."""

    status: int
    headers: dict[str, str]
    body: bytes


def _encode_request(req: ForwardedRequest) -> bytes:
    head = json.dumps({"m": req.method, "p": req.path, "q": req.query, "h": req.headers})
    raw = head.encode()
    return struct.pack("<I", len(raw)) + raw + req.body


def _decode_request(payload: bytes) -> ForwardedRequest:
    (n,) = struct.unpack_from("<I", payload, 0)
    head = json.loads(payload[4 : 4 + n])
    return ForwardedRequest(str(head["m"]), str(head["p"]), str(head["q"]),
                            {str(k): str(v) for k, v in head["h"].items()},
                            payload[4 + n :])


def _encode_reply(reply: ForwardedReply) -> bytes:
    raw = json.dumps({"s": reply.status, "h": reply.headers}).encode()
    return struct.pack("<I", len(raw)) + raw + reply.body


def _decode_reply(payload: bytes) -> ForwardedReply:
    (n,) = struct.unpack_from("<I", payload, 0)
    head = json.loads(payload[4 : 4 + n])
    return ForwardedReply(int(head["s"]), {str(k): str(v) for k, v in head["h"].items()},
                          payload[4 + n :])


def _host_port(address: str) -> tuple[str, int]:
    """``host:port`` (host possibly ``[v6]``) → what ``open_connection`` takes."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PeerUnavailableError(f"not a peer address (host:port): {address!r}")
    return host.strip("[]"), int(port)


def frame(kind: int, payload: bytes) -> bytes:
    """One length-prefixed frame."""
    return _FRAME.pack(len(payload), kind) + payload


def _message_size(m: Message) -> int:
    size = 96 + len(m.context)
    for e in m.entries:
        size += e.size()
    if m.snapshot is not None:
        size += len(m.snapshot.data)
    return size


def raft_frames(messages: list[Message]) -> list[bytes]:
    """Frames carrying ``messages`` in order, each about :data:`FRAME_TARGET` at most."""
    frames: list[bytes] = []
    chunk: list[Message] = []
    size = 0
    for m in messages:
        m_size = _message_size(m)
        if chunk and size + m_size > FRAME_TARGET:
            frames.append(frame(FRAME_RAFT, encode_messages(chunk)))
            chunk, size = [], 0
        chunk.append(m)
        size += m_size
    if chunk:
        frames.append(frame(FRAME_RAFT, encode_messages(chunk)))
    return frames


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one frame; raises ``DecodeError`` on an oversized frame."""
    head = await reader.readexactly(_FRAME.size)
    size, kind = _FRAME.unpack(head)
    if size > MAX_FRAME:
        raise DecodeError(f"frame of {size} bytes exceeds {MAX_FRAME}")
    return kind, await reader.readexactly(size)


RaftSink = Callable[[list[Message]], None]
ForwardHandler = Callable[[ForwardedRequest], Awaitable[ForwardedReply]]
ReportFn = Callable[[NodeId, bool], None]


@dataclass
class _Link:
    """The outbound connection to one peer."""

    peer: NodeId
    address: str
    queue: list[Message] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    writer: asyncio.StreamWriter | None = None
    pending: dict[int, asyncio.Future[ForwardedReply]] = field(default_factory=dict)
    forwards: list[bytes] = field(default_factory=list)
    failing: bool = False
    """The last dial failed and the link waits to dial again."""


class PeerTransport:
    """Carries Raft messages and forwarded client calls between the members of a cell.

    One persistent outbound connection per peer; everything queued while a write is in
    progress goes out in the next frame (batching). Inbound connections must open with a
    HELLO naming the cell and proving the cell's peer secret, or they are refused.
    """

    def __init__(
        self,
        self_id: NodeId,
        cell: str,
        secret: str,
        on_raft: RaftSink,
        on_forward: ForwardHandler,
        report_unreachable: Callable[[NodeId], None],
        report_snapshot: ReportFn,
        report_gone: Callable[[NodeId], None] | None = None,
    ) -> None:
        self.self_id = self_id
        self.cell = cell
        self._secret = secret
        self._on_raft = on_raft
        self._on_forward = on_forward
        self._report_unreachable = report_unreachable
        self._report_snapshot = report_snapshot
        self._report_gone = report_gone
        self._probing: dict[NodeId, asyncio.Task[None]] = {}
        self._links: dict[NodeId, _Link] = {}
        self._server: asyncio.base_events.Server | None = None
        self._inbound: set[_InboundLink] = set()
        self._next_id = 0
        self._closed = False
        self.refused_connections = 0
        self.advertised_address = ""
        self._known: dict[NodeId, str] = {}

    # ------------------------------------------------------------------ lifecycle

    async def listen(self, host: str, port: int) -> int:
        """Start accepting peers; returns the bound port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _InboundLink(self), host, port)
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        """Stop listening and drop every link."""
        self._closed = True
        if self._server is not None:
            self._server.close()
        for link in self._links.values():
            if link.task is not None:
                link.task.cancel()
            self._fail_pending(link)
            if link.writer is not None:
                link.writer.close()
        for inbound in list(self._inbound):
            inbound.close()
        for probe in self._probing.values():
            probe.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._server.wait_closed()

    def set_peers(self, addresses: dict[NodeId, str]) -> None:
        """Know ``addresses`` (id → host:port); links to peers no longer listed are closed."""
        self._known = dict(addresses)
        for peer in list(self._links):
            if peer not in addresses or self._links[peer].address != addresses[peer]:
                link = self._links.pop(peer)
                if link.task is not None:
                    link.task.cancel()
                self._fail_pending(link)
                if link.writer is not None:
                    link.writer.close()
        for peer, address in addresses.items():
            if peer != self.self_id and peer not in self._links:
                self._links[peer] = _Link(peer, address)

    # ------------------------------------------------------------------ sending

    def send(self, messages: list[Message] | tuple[Message, ...]) -> None:
        """Hand messages to their peers' links; never blocks.

        A link that is connected and idle gets its batch written to the socket at once
        (one frame per peer per call); otherwise the batch waits for the link's writer.
        """
        batches: dict[NodeId, list[Message]] = {}
        for m in messages:
            batches.setdefault(m.to, []).append(m)
        for peer, batch in batches.items():
            link = self._links.get(peer)
            if link is None:
                for m in batch:
                    if m.type is MessageType.SNAPSHOT:
                        self._report_snapshot(m.to, False)
                continue
            writer = link.writer
            direct = (
                writer is not None and not link.queue and not link.forwards
                and not writer.is_closing()
                and all(m.type is not MessageType.SNAPSHOT for m in batch)
            )
            if direct and writer is not None:
                writer.writelines(raft_frames(batch))
                continue
            link.queue.extend(batch)
            self._kick(link)

    async def forward(self, peer: NodeId, request: ForwardedRequest,
                      timeout: float) -> ForwardedReply:
        """Send a client call to ``peer`` and wait for its answer."""
        link = self._links.get(peer)
        if link is None:
            raise PeerUnavailableError(f"no address for member {peer}")
        if link.failing and link.writer is None:
            # Fail now rather than wait out the redial's backoff (up to a second): the
            # caller answers 503 and the client tries again, perhaps at a new leader.
            raise PeerUnavailableError(f"cannot reach member {peer}; dialling again")
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[ForwardedReply] = asyncio.get_running_loop().create_future()
        link.pending[request_id] = future
        link.forwards.append(_ID.pack(request_id) + _encode_request(request))
        self._kick(link)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            link.pending.pop(request_id, None)

    def _kick(self, link: _Link) -> None:
        link.wake.set()
        if link.task is None or link.task.done():
            link.task = asyncio.get_running_loop().create_task(self._run_link(link))

    async def _run_link(self, link: _Link) -> None:
        backoff = 0.05
        while not self._closed:
            try:
                async with asyncio.timeout(2.0):
                    reader, writer = await self._connect(link.address)
            except (TimeoutError, OSError, PeerUnavailableError, DecodeError) as exc:
                log.debug("cannot reach %s at %s: %s", link.peer, link.address, exc)
                link.failing = True
                self._drop_queue(link)
                self._fail_pending(link)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                if not link.queue and not link.forwards:
                    await link.wake.wait()
                continue
            backoff = 0.05
            link.failing = False
            link.writer = writer
            replies = asyncio.get_running_loop().create_task(self._read_replies(link, reader))
            try:
                await self._write_loop(link, writer, replies)
            except (OSError, ConnectionError) as exc:
                log.debug("link to %s broke: %s", link.peer, exc)
            finally:
                replies.cancel()
                writer.close()
                link.writer = None
                self._fail_pending(link)
                self._drop_queue(link)

    async def _connect(
        self, address: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = _host_port(address)
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_FRAME)
        hello = json.dumps({"protocol": PROTOCOL, "cell": self.cell, "from": self.self_id,
                            "address": self.advertised_address,
                            "secret": self._secret}).encode()
        writer.write(frame(FRAME_HELLO, hello))
        await writer.drain()
        kind, payload = await read_frame(reader)
        if kind != FRAME_HELLO_OK:
            writer.close()
            raise PeerUnavailableError(f"peer refused the link: {payload.decode(errors='replace')}")
        return reader, writer

    async def _write_loop(self, link: _Link, writer: asyncio.StreamWriter,
                          replies: asyncio.Task[None]) -> None:
        while not self._closed:
            if not link.queue and not link.forwards:
                link.wake.clear()
                waiter = asyncio.ensure_future(link.wake.wait())
                done, _ = await asyncio.wait({waiter, replies},
                                             return_when=asyncio.FIRST_COMPLETED)
                if replies in done:
                    waiter.cancel()
                    raise ConnectionError("peer closed the link")
                continue
            batch, link.queue = link.queue, []
            forwards, link.forwards = link.forwards, []
            chunks: list[bytes] = raft_frames(batch) if batch else []
            chunks.extend(frame(FRAME_FORWARD, f) for f in forwards)
            writer.writelines(chunks)
            await writer.drain()
            for m in batch:
                if m.type is MessageType.SNAPSHOT:
                    self._report_snapshot(m.to, True)

    async def _read_replies(self, link: _Link, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, OSError, DecodeError):
            while True:
                kind, payload = await read_frame(reader)
                if kind != FRAME_FORWARD_REPLY or len(payload) < _ID.size:
                    continue
                (request_id,) = _ID.unpack_from(payload, 0)
                future = link.pending.pop(request_id, None)
                if future is not None and not future.done():
                    try:
                        future.set_result(_decode_reply(payload[_ID.size :]))
                    except (ValueError, KeyError, struct.error) as exc:
                        future.set_exception(PeerUnavailableError(f"bad reply: {exc}"))

    def _drop_queue(self, link: _Link) -> None:
        dropped, link.queue = link.queue, []
        if dropped:
            self._report_unreachable(link.peer)
        for m in dropped:
            if m.type is MessageType.SNAPSHOT:
                self._report_snapshot(m.to, False)

    def _fail_pending(self, link: _Link) -> None:
        link.forwards.clear()
        for future in link.pending.values():
            if not future.done():
                future.set_exception(PeerUnavailableError(f"link to {link.peer} lost"))
        link.pending.clear()

    # ------------------------------------------------------------------ receiving

    def _check_hello(self, kind: int, payload: bytes) -> NodeId | None:
        """The sender's id ("" if it gave none) when an inbound link's first frame is a
        HELLO of this cell with its secret (the peer's address is learnt from it); None
        when it is not."""
        try:
            hello = json.loads(payload) if kind == FRAME_HELLO else {}
        except ValueError:
            hello = {}
        secret = hello.get("secret") if isinstance(hello, dict) else None
        ok = (
            isinstance(secret, str)
            and hmac.compare_digest(secret.encode(), self._secret.encode())
            and hello.get("cell") == self.cell
            and hello.get("protocol") == PROTOCOL
        )
        if not ok:
            self.refused_connections += 1
            return None
        sender, address = hello.get("from"), hello.get("address")
        if not isinstance(sender, str):
            return ""
        if isinstance(address, str) and address:
            self._learn(sender, address)
        return sender

    def _inbound_closed(self, peer: NodeId) -> None:
        """``peer``'s link to us closed: find out whether its process is gone."""
        link = self._links.get(peer)
        if (self._closed or self._report_gone is None or link is None
                or peer in self._probing or self._dialled_by(peer)):
            return
        task = asyncio.get_running_loop().create_task(self._probe_gone(peer, link.address))
        self._probing[peer] = task
        task.add_done_callback(lambda _task: self._probing.pop(peer, None))

    async def _probe_gone(self, peer: NodeId, address: str) -> None:
        """Dial ``address`` a few times; report ``peer`` gone once a dial is refused. A dial
        that connects (the listener may outlive the links by a moment while a process
        exits) tries again; one that fails otherwise (a timeout, no route) proves nothing."""
        for pause in GONE_PROBES_S:
            await asyncio.sleep(pause)
            if self._closed or self._dialled_by(peer):
                return  # it dialled us again: alive
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    _, writer = await asyncio.open_connection(*_host_port(address))
            except ConnectionRefusedError:
                log.info("member %s is gone: its link closed and %s refuses connections",
                         peer, address)
                if self._report_gone is not None:
                    self._report_gone(peer)
                return
            except (TimeoutError, OSError):  # (a bad address raises PeerUnavailableError)
                return
            writer.close()

    def _dialled_by(self, peer: NodeId) -> bool:
        """Whether a link ``peer`` dialled to us is open (and greeted)."""
        return any(link.peer == peer for link in self._inbound)

    def _learn(self, peer: NodeId, address: str) -> None:
        """Remember how to answer a peer that dialled us before we knew its address
        (a new member learns the leader's address this way before it has any log)."""
        if peer != self.self_id and peer not in self._known and peer not in self._links:
            self._links[peer] = _Link(peer, address)

    async def _answer_forward(self, payload: bytes, link: _InboundLink) -> None:
        if len(payload) < _ID.size:
            return
        (request_id,) = _ID.unpack_from(payload, 0)
        try:
            request = _decode_request(payload[_ID.size :])
            reply = await self._on_forward(request)
        except (ValueError, KeyError, struct.error) as exc:
            reply = ForwardedReply(400, {"Content-Type": "application/json"},
                                   json.dumps({"error": {"code": "invalid_argument",
                                                         "message": str(exc)}}).encode())
        link.write(frame(FRAME_FORWARD_REPLY, _ID.pack(request_id) + _encode_reply(reply)))


class _InboundLink(asyncio.Protocol):
    """A link a peer dialled: its HELLO is checked, then every complete Raft frame of each
    read goes to the driver at once (no reader task in between)."""

    def __init__(self, owner: PeerTransport) -> None:
        self._owner = owner
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._greeted = False
        self.peer: NodeId = ""
        """Who dialled (from its HELLO; "" until then)."""
        self._hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        self._owner._inbound.add(self)
        self._hello_timer = asyncio.get_running_loop().call_later(HELLO_TIMEOUT_S, self.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._inbound.discard(self)
        self._transport = None
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self.peer:
            self._owner._inbound_closed(self.peer)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        frames: list[tuple[int, bytes]] = []
        while len(buffer) - start >= _FRAME.size:
            size, kind = _FRAME.unpack_from(buffer, start)
            limit = MAX_FRAME if self._greeted else MAX_HELLO
            if size > limit:
                log.warning("dropping peer connection after a malformed frame: "
                            "frame of %d bytes exceeds %d", size, limit)
                self.close()
                return
            end = start + _FRAME.size + size
            if len(buffer) < end:
                break
            with memoryview(buffer) as view:
                frames.append((kind, bytes(view[start + _FRAME.size : end])))
            start = end
        if start:
            del buffer[:start]
        for kind, payload in frames:
            if self._transport is None or self._transport.is_closing():
                return
            self._on_frame(kind, payload)

    def _on_frame(self, kind: int, payload: bytes) -> None:
        owner = self._owner
        if not self._greeted:
            if self._hello_timer is not None:
                self._hello_timer.cancel()
                self._hello_timer = None
            sender = owner._check_hello(kind, payload)
            if sender is None:
                self.write(frame(FRAME_REFUSED, b"peer secret or cell name mismatch"))
                self.close()
                return
            self._greeted = True
            self.peer = sender
            self.write(frame(FRAME_HELLO_OK, b""))
        elif kind == FRAME_RAFT:
            try:
                messages = decode_messages(payload)
            except (DecodeError, ValueError) as exc:
                log.warning("dropping peer connection after a malformed frame: %s", exc)
                self.close()
                return
            owner._on_raft(messages)
        elif kind == FRAME_FORWARD:
            asyncio.get_running_loop().create_task(owner._answer_forward(payload, self))

    def write(self, data: bytes) -> None:
        """Send ``data`` unless the link is gone."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        """Close the link (after what is already written)."""
        if self._transport is not None:
            self._transport.close()
