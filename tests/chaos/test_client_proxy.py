"""The client proxy of the chaos harness: members advertise it, it really cuts the clients
off (open connections closed, new ones refused) while the harness and the resource server
still reach the cell, and a lock holder cut off from the cell is fenced by the resource."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lockcell.cli.localcell import http_json
from lockcell.client import Cell, Health, LockcellError, StaleSequencer

from .checkers import check_lock_safety
from .harness import ChaosCell, ClientProxy, PeerProxy, ResourceServer, start_chaos_cell, stop_all

Started = tuple[ChaosCell, PeerProxy, ClientProxy]

NOBODYS_SEQUENCER = "lc1:" + base64.urlsafe_b64encode(
    json.dumps(["/ls/local/nobody", "exclusive", 1, 1]).encode()).decode().rstrip("=")


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    cell, peers, clients = start_chaos_cell(tmp_path_factory.mktemp("client-proxy"), seed=5)
    try:
        yield cell, peers, clients
    finally:
        stop_all(cell, peers, clients)


def quick_client(cell: ChaosCell) -> Cell:
    return Cell(cell.client_endpoints, request_timeout=1.0, retry_timeout=0.5,
                connect_timeout=0.5, retry_for=1.5)


def test_client_proxy_cuts_clients_off_and_heals(started: Started) -> None:
    cell, _, clients = started
    everyone = {m.index for m in cell.members}
    first = cell.client_url(cell.members[0])
    with quick_client(cell) as c:
        view = c.cluster()
        # the cell names its members by the proxy's ports: the client never learns others
        assert {m.url for m in view.members} == set(cell.client_endpoints)
        assert view.leader_url in cell.client_endpoints
        assert set(c.endpoints) == set(cell.client_endpoints)
        # a kept-alive connection through the proxy
        kept = http.client.HTTPConnection("127.0.0.1", clients.listen[0], timeout=3)
        kept.request("GET", "/v1/cluster")
        assert kept.getresponse().read()
        assert kept.sock is not None
        before = dict(clients.stats)
        clients.cut(everyone)
        try:
            kept.sock.settimeout(3)
            with contextlib.suppress(ConnectionResetError):
                assert kept.sock.recv(1) == b""  # closed by the proxy, not left hanging
            with pytest.raises((OSError, http.client.HTTPException)):
                http_json("GET", f"{first}/v1/cluster", timeout=3)
            t0 = time.monotonic()
            with pytest.raises(LockcellError):
                c.cluster()
            assert time.monotonic() - t0 < 10
            # the harness's own view is direct
            assert cell.leader() in cell.members
            for m in cell.members:
                assert http_json("GET", f"{m.url}/readyz", timeout=3)[0] == 200
            assert clients.stats["cut"] > before["cut"]
            assert clients.stats["refused"] > before["refused"]
        finally:
            clients.heal()
            kept.close()
        assert c.cluster().leader_url in cell.client_endpoints
        assert http_json("GET", f"{first}/v1/cluster", timeout=3)[0] == 200


def test_holder_cut_off_from_the_cell_is_fenced_by_the_resource(started: Started,
                                                              tmp_path: Path) -> None:
    """The resource server is not behind the proxy: while a lock holder is cut off from
    every member, the resource still confirms its sequencer with the cell (accepts while
    the session lives) and refuses it once the session expired; after the heal the client
    library reports the session expired, and another session gets the lock."""
    cell, _, clients = started
    resource = ResourceServer(cell, tmp_path / "resource-server.log")
    path = "/ls/local/proxy-fenced"
    try:
        with quick_client(cell) as c:
            session = c.session(lease_ms=2000)
            lock = session.open(path, create="file", lock_delay_ms=200).acquire()
            resource.write(lock.sequencer, "holder", 1)
            clients.cut({m.index for m in cell.members})
            try:
                cut_at = time.monotonic()
                resource.write(lock.sequencer, "holder", 1)  # the grant still lives
                refused_at = None
                while refused_at is None and time.monotonic() - cut_at < 10:
                    try:
                        resource.write(lock.sequencer, "holder", 1)
                    except StaleSequencer:
                        refused_at = time.monotonic()
                    time.sleep(0.1)
                assert refused_at is not None, "the resource never refused the cut-off holder"
                assert session.health is not Health.SAFE  # it heard nothing meanwhile
            finally:
                clients.heal()
            assert session.wait_health(Health.EXPIRED, Health.SAFE,
                                       timeout=15) is Health.EXPIRED
            other = c.session(lease_ms=2000)
            taken = other.open(path).acquire(wait_ms=5000)
            resource.write(taken.sequencer, "successor", 1)
            with pytest.raises(StaleSequencer):
                resource.write(lock.sequencer, "holder", 1, late=True)
        record = resource.record()
    finally:
        resource.close()
    assert [(a.owner, a.accepted) for a in record][-2:] == [("successor", True),
                                                            ("holder", False)]
    assert any(not a.accepted for a in record if a.owner == "holder" and not a.late)
    assert check_lock_safety(record).ok


def test_clients_cut_from_the_leader_fail_over_to_followers(started: Started) -> None:
    cell, _, clients = started
    leader = cell.leader()
    with quick_client(cell) as c:
        c.cluster()
        clients.cut({leader.index})
        try:
            for m in cell.members:  # the followers answer through the proxy and forward
                if m is not leader:
                    st, body = http_json("POST", f"{cell.client_url(m)}/v1/sequencers/check",
                                         {"sequencer": NOBODYS_SEQUENCER}, timeout=3)
                    assert st == 200 and body["valid"] is False, (st, body)
            c.check_sequencer(NOBODYS_SEQUENCER)
        finally:
            clients.heal()
    # a session outlives a cut from the leader longer than its lease: its KeepAlives and
    # writes go through a follower that forwards them
    with Cell(cell.client_endpoints, request_timeout=1.0, retry_timeout=0.5,
              connect_timeout=0.5, retry_for=3.0) as c:
        session = c.session(lease_ms=1000)
        handle = session.open(f"/ls/local/relay-{time.monotonic_ns()}", create="file")
        leader = cell.leader()
        clients.cut({leader.index})
        try:
            written = 0
            until = time.monotonic() + 3.0
            while time.monotonic() < until:
                handle.set(f"v{written}".encode())
                written += 1
            assert session.health is not Health.EXPIRED
            assert handle.get().data == f"v{written - 1}".encode()
        finally:
            clients.heal()
        assert written > 10
        session.close()
