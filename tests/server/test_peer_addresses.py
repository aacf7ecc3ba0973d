"""A peer link to a malformed address fails its calls cleanly and keeps retrying quietly."""

from __future__ import annotations

import asyncio

import pytest

from lockcell.transport.peer import ForwardedRequest, PeerTransport, PeerUnavailableError


@pytest.mark.parametrize("address", ["y", "host:", ":7000", "host:notaport", "host:99999"])
def test_malformed_peer_address_fails_calls_without_crashing_the_link(address: str) -> None:
    async def scenario() -> None:
        unreachable: list[str] = []
        transport = PeerTransport("m0", "demo", "secret", on_raft=lambda _: None,
                                  on_forward=_no_forward,
                                  report_unreachable=unreachable.append,
                                  report_snapshot=lambda _peer, _ok: None)
        transport.set_peers({"m1": address})
        try:
            with pytest.raises(PeerUnavailableError):
                await transport.forward("m1", ForwardedRequest("GET", "/v1/cluster", "", {},
                                                               b""), 3.0)
            await asyncio.sleep(0.2)  # the link keeps retrying with back-off
            link_task = transport._links["m1"].task
            assert link_task is not None and not link_task.done()
        finally:
            await transport.close()

    asyncio.run(scenario())


async def _no_forward(_request: ForwardedRequest) -> object:
    raise AssertionError("nothing is forwarded to this member")

