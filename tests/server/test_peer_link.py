"""Inbound peer links over real sockets: frames split or batched any way arrive whole and
in order, forwarded calls are answered, strangers and oversized greetings are refused."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from lockcell.raft.types import Entry, EntryKind, Message, MessageType
from lockcell.transport import peer
from lockcell.transport.codec import encode_messages
from lockcell.transport.peer import (
    FRAME_FORWARD,
    FRAME_FORWARD_REPLY,
    FRAME_HELLO,
    FRAME_HELLO_OK,
    FRAME_RAFT,
    FRAME_REFUSED,
    ForwardedReply,
    ForwardedRequest,
    PeerTransport,
    frame,
)

pytestmark = pytest.mark.asyncio


class Member:
    """One listening transport and what reached it."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self.gone: list[str] = []
        self.transport = PeerTransport("m1", "demo", "s3cret", on_raft=self.received.extend,
                                       on_forward=self.answer,
                                       report_unreachable=lambda _peer: None,
                                       report_snapshot=lambda _peer, _ok: None,
                                       report_gone=self.gone.append)
        self.port = 0

    async def answer(self, request: ForwardedRequest) -> ForwardedReply:
        return ForwardedReply(200, {"Content-Type": "text/plain"},
                              f"{request.method} {request.path}?{request.query}".encode()
                              + request.body)


@pytest_asyncio.fixture
async def member() -> AsyncIterator[Member]:
    m = Member()
    m.port = await m.transport.listen("127.0.0.1", 0)
    try:
        yield m
    finally:
        await m.transport.close()


def _hello(secret: str = "s3cret", cell: str = "demo") -> bytes:
    return frame(FRAME_HELLO, json.dumps({"protocol": peer.PROTOCOL, "cell": cell,
                                          "from": "m0", "address": "127.0.0.1:1",
                                          "secret": secret}).encode())


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readexactly(5), 5)
    size, kind = int.from_bytes(head[:4], "little"), head[4]
    return kind, await asyncio.wait_for(reader.readexactly(size), 5)


def _appends(first: int, count: int) -> list[Message]:
    return [Message(type=MessageType.APPEND, to="m1", sender="m0", term=3, index=i - 1,
                    log_term=3, commit=i - 1,
                    entries=(Entry(index=i, term=3, kind=EntryKind.NORMAL,
                                   data=b"x" * (i % 7)),))
            for i in range(first, first + count)]


async def _until(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_frames_split_byte_by_byte_or_batched_arrive_whole_in_order(
        member: Member) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", member.port)
    writer.write(_hello())
    assert (await _read_frame(reader))[0] == FRAME_HELLO_OK
    stream = b"".join(frame(FRAME_RAFT, encode_messages(_appends(i, 2))) for i in (1, 3, 5))
    for byte in stream[:40]:  # the first frame trickles in
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0)
    writer.write(stream[40:])  # the rest lands in one read
    await _until(lambda: len(member.received) == 6)
    assert [m.entries[0].index for m in member.received] == [1, 2, 3, 4, 5, 6]
    assert member.received == _appends(1, 6)
    writer.close()


async def test_forwarded_call_is_answered_on_the_same_link(member: Member) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", member.port)
    writer.write(_hello())
    assert (await _read_frame(reader))[0] == FRAME_HELLO_OK
    request = ForwardedRequest("PUT", "/v1/x", "a=1", {"X-Request-Id": "r"}, b"body")
    payload = (7).to_bytes(8, "little") + peer._encode_request(request)
    writer.write(frame(FRAME_FORWARD, payload))
    kind, answer = await _read_frame(reader)
    assert kind == FRAME_FORWARD_REPLY
    assert int.from_bytes(answer[:8], "little") == 7
    reply = peer._decode_reply(answer[8:])
    assert reply.status == 200 and reply.body == b"PUT /v1/x?a=1body"
    writer.close()


@pytest.mark.parametrize("greeting", [_hello(secret="wrong"), _hello(cell="other"),
                                      frame(FRAME_RAFT, encode_messages(_appends(1, 1)))])
async def test_strangers_are_refused_and_deliver_nothing(member: Member,
                                                         greeting: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", member.port)
    writer.write(greeting + frame(FRAME_RAFT, encode_messages(_appends(1, 1))))
    kind, _ = await _read_frame(reader)
    assert kind == FRAME_REFUSED
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
    assert member.received == []
    assert member.transport.refused_connections == 1


async def test_oversized_greeting_is_dropped_unread(member: Member) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", member.port)
    writer.write((peer.MAX_HELLO + 1).to_bytes(4, "little") + bytes([FRAME_HELLO]))
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert member.received == []


async def test_silent_dialler_is_closed_after_the_hello_timeout(
        member: Member, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer, "HELLO_TIMEOUT_S", 0.2)
    reader, _ = await asyncio.open_connection("127.0.0.1", member.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""


async def test_two_transports_replicate_over_a_dialled_link(member: Member) -> None:
    sender = PeerTransport("m0", "demo", "s3cret", on_raft=lambda _: None,
                           on_forward=member.answer, report_unreachable=lambda _peer: None,
                           report_snapshot=lambda _peer, _ok: None)
    sender.set_peers({"m1": f"127.0.0.1:{member.port}"})
    try:
        for batch in range(5):
            sender.send(_appends(1 + 10 * batch, 10))
            await asyncio.sleep(0)
        await _until(lambda: len(member.received) == 50)
        assert [m.entries[0].index for m in member.received] == list(range(1, 51))
        reply = await sender.forward("m1", ForwardedRequest("GET", "/v1/cluster", "", {}, b""),
                                     5.0)
        assert reply.body == b"GET /v1/cluster?"
    finally:
        await sender.close()


async def _listening_sender(member: Member) -> PeerTransport:
    """A transport "m0" that listens, has dialled ``member`` and delivered to it."""
    sender = PeerTransport("m0", "demo", "s3cret", on_raft=lambda _: None,
                           on_forward=member.answer, report_unreachable=lambda _peer: None,
                           report_snapshot=lambda _peer, _ok: None)
    port = await sender.listen("127.0.0.1", 0)
    sender.advertised_address = f"127.0.0.1:{port}"
    sender.set_peers({"m1": f"127.0.0.1:{member.port}"})
    sender.send(_appends(1, 3))
    await _until(lambda: len(member.received) == 3)
    return sender


async def test_a_peer_whose_link_closes_and_whose_address_refuses_is_reported_gone(
        member: Member) -> None:
    """Its process went away (here: it shut down): the link it dialled closed and nothing
    listens at its address any more."""
    sender = await _listening_sender(member)
    await sender.close()
    await _until(lambda: member.gone == ["m0"], timeout=3.0)
    await asyncio.sleep(0.5)
    assert member.gone == ["m0"]  # reported once


@pytest.mark.parametrize("redials", [True, False])
async def test_a_peer_that_still_listens_is_not_reported_gone(member: Member,
                                                              redials: bool) -> None:
    """Only its link dropped: it dials again at once, or it does not but its address
    still answers every probe. Nothing is reported."""
    sender = await _listening_sender(member)
    try:
        writer = sender._links["m1"].writer
        assert writer is not None
        probes = 0
        real_probe = member.transport._probe_gone

        async def counted(peer_id: str, address: str) -> None:
            nonlocal probes
            probes += 1
            await real_probe(peer_id, address)

        member.transport._probe_gone = counted  # type: ignore[method-assign]
        if redials:
            writer.transport.abort()
        else:
            sender.set_peers({})  # drops the link for good; still listening
        await _until(lambda: probes == 1)
        await asyncio.sleep(sum(peer.GONE_PROBES_S) + 0.3)
        assert member.gone == []
        sender.set_peers({"m1": f"127.0.0.1:{member.port}"})
        sender.send(_appends(4, 1))  # and it comes back
        await _until(lambda: len(member.received) == 4)
    finally:
        await sender.close()


async def test_a_forward_to_a_peer_being_redialled_fails_at_once() -> None:
    """While a link waits out its redial backoff (up to a second), a forwarded call does
    not wait with it: it fails at once, so the client can try again (at a new leader)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]  # nothing listens here once closed
    sender = PeerTransport("m0", "demo", "s3cret", on_raft=lambda _: None,
                           on_forward=lambda _r: asyncio.sleep(0, ForwardedReply(200, {}, b"")),
                           report_unreachable=lambda _peer: None,
                           report_snapshot=lambda _peer, _ok: None)
    sender.set_peers({"m1": f"127.0.0.1:{dead}"})
    request = ForwardedRequest("PUT", "/v1/x", "", {}, b"")
    try:
        with pytest.raises(peer.PeerUnavailableError, match="lost"):
            await sender.forward("m1", request, 5.0)  # waits for the first dial
        for _ in range(3):
            with pytest.raises(peer.PeerUnavailableError, match="dialling again"):
                await sender.forward("m1", request, 5.0)
    finally:
        await sender.close()
