"""The cell admin client against the in-test fake cell, and the answer parsers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from op_fakecell import FakeCell, free_port

from lockcell_operator.cellapi import (
    CellApiError,
    CellClient,
    CellUnreachable,
    MalformedAnswer,
    parse_cluster,
    parse_health,
)
from lockcell_operator.model import JointConfig
from lockcell_operator.reconcile import leader_view

TOKEN = "t0k3n"


def urls(pod: str) -> tuple[str, str]:
    return f"http://{pod}.c-peers.ns.svc.cluster.local:7001", \
        f"http://{pod}.c-peers.ns.svc.cluster.local:7101"


def test_parse_cluster_full_shape() -> None:
    view = parse_cluster({
        "leader": "a", "term": 3, "commit_index": 42,
        "members": [
            {"id": "a", "url": "u1", "peer_url": "p1", "role": "voter", "match_index": 42},
            {"id": "b", "url": "u2", "peer_url": "p2", "role": "learner", "match_index": 7},
        ],
        "joint": {"old": ["a"], "new": ["a", "b"]},
    })
    assert view.leader == "a" and view.term == 3 and view.commit_index == 42
    assert [m.id for m in view.voters] == ["a"] and [m.id for m in view.learners] == ["b"]
    assert view.joint == JointConfig(("a",), ("a", "b"))
    assert view.member("b") is not None and view.member("zz") is None
    assert parse_cluster({"leader": None, "members": []}).leader is None
    # A member whose address or progress the answering server does not know: nulls.
    view = parse_cluster({"leader": None, "term": 3, "commit_index": 7, "members": [
        {"id": "a", "url": None, "peer_url": None, "role": "voter", "match_index": None}],
        "joint": None, "self": {"id": "a"}})
    assert view.members[0].url == "" and view.members[0].match_index == 0


@pytest.mark.parametrize("bad", [
    [], {"members": "x"}, {"members": [{"id": "a"}]}, {"leader": 1, "members": []},
    {"members": [{"id": "a", "url": "u", "peer_url": "p", "role": "boss"}]},
    {"members": [], "term": "1"}, {"members": [], "joint": {"old": "a", "new": []}},
    {"members": [], "joint": 3},
])
def test_parse_cluster_rejects_malformed(bad: Any) -> None:
    with pytest.raises(MalformedAnswer):
        parse_cluster(bad)


def test_parse_health() -> None:
    assert parse_health({"status": "ok", "id": "m1"}) == "m1"
    with pytest.raises(MalformedAnswer):
        parse_health({"status": "ok"})
    with pytest.raises(MalformedAnswer):
        parse_health("ok")


def test_leader_view_needs_the_leader_itself() -> None:
    a = parse_cluster({"leader": "a", "term": 2, "members": []})
    b = parse_cluster({"leader": "b", "term": 3, "members": []})
    assert leader_view({"p0": a, "p1": a}, {"p0": "a", "p1": "x"}) is a
    assert leader_view({"p1": a}, {"p1": "x"}) is None  # a follower's word is not enough
    assert leader_view({"p0": a, "p1": b}, {"p0": "a", "p1": "b"}) is b  # higher term wins


@pytest.mark.asyncio
async def test_client_drives_membership_on_the_fake_cell() -> None:
    async with FakeCell(token=lambda: TOKEN, url_of=urls) as cell, CellClient() as client:
        first = await cell.start("c-0", bootstrap=True)
        second = await cell.start("c-1")
        leader_url = cell.base_url("c-0")
        assert await client.health(leader_url) == first
        assert await client.health(cell.base_url("c-1")) == second
        view = await client.cluster(leader_url)
        assert view.leader == first and [m.id for m in view.voters] == [first]
        with pytest.raises(CellApiError) as err:  # not a member yet
            await client.cluster(cell.base_url("c-1"))
        assert (err.value.status, err.value.code) == (503, "unavailable")

        url, peer = urls("c-1")
        with pytest.raises(CellApiError) as err:
            await client.add_learner(leader_url, "wrong", member_id=second, url=url,
                                     peer_url=peer)
        assert (err.value.status, err.value.code) == (401, "unauthorized")
        await client.add_learner(leader_url, TOKEN, member_id=second, url=url, peer_url=peer)
        assert cell.calls[-1] == ("add", "/v1/cluster/members",
                                  {"id": second, "url": url, "peer_url": peer})
        with pytest.raises(CellApiError) as err:
            await client.add_learner(leader_url, TOKEN, member_id=second, url=url,
                                     peer_url=peer)
        assert err.value.code == "conflict"

        for _ in range(100):
            view = await client.cluster(leader_url)
            learner = view.member(second)
            assert learner is not None
            if view.commit_index - learner.match_index <= 100:
                break
            await asyncio.sleep(0.02)
        await client.promote(leader_url, TOKEN, second)
        view = await client.cluster(leader_url)
        assert view.joint is not None and set(view.joint.new) == {first, second}
        while (await client.cluster(leader_url)).joint is not None:
            await asyncio.sleep(0.02)

        await client.transfer_leader(leader_url, TOKEN, second)
        assert (await client.cluster(leader_url)).leader == second
        await client.remove_member(cell.base_url("c-1"), TOKEN, first)
        assert cell.calls[-1] == ("remove", f"/v1/cluster/members/{first}", first)
        with pytest.raises(CellApiError) as err:
            await client.promote(cell.base_url("c-1"), TOKEN, "nobody")
        assert (err.value.status, err.value.code) == (404, "not_found")


@pytest.mark.asyncio
async def test_unreachable_member() -> None:
    async with CellClient(timeout=0.5) as client:
        with pytest.raises(CellUnreachable):
            await client.health(f"http://127.0.0.1:{free_port()}")
