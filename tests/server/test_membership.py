"""Membership through the admin API of a real cell: removing a follower and the leader
(joint consensus, auto-leave, a removed leader steps down, removed servers do not
disrupt), and a member coming back with an empty disk joins under a new id
(DESIGN.md §2 membership/identity, §4 admin routes)."""

from __future__ import annotations

import shutil
import signal
import time

import pytest

from lockcell.cli.localcell import LocalCell, LocalMember

from .kit import (
    Api,
    expect,
    followers,
    heal,
    kill,
    member_id,
    request,
    serving_leader,
    start_joining,
    uniq,
    view,
    wait_until,
)

CELL_OPTIONS = {"lease_ms": 12000}
ROOT = "/ls/local"


def _admin(cell: LocalCell) -> dict[str, str]:
    return {"Authorization": f"Bearer {cell.admin_token}"}


def _voters(member: LocalMember) -> set[str]:
    return {m["id"] for m in view(member)["members"] if m["role"] == "voter"}


def _rejoin_with_an_empty_disk(cell: LocalCell, member: LocalMember, old_id: str) -> None:
    kill(member, signal.SIGTERM)
    shutil.rmtree(member.data_dir)
    start_joining(cell, member)
    cell.wait_ready(90, voters=3)
    new_id = member_id(member)
    assert new_id != old_id, "a member with an empty disk must come back under a new id"
    leader = serving_leader(cell)
    ids = {m["id"] for m in view(leader)["members"]}
    assert new_id in ids and old_id not in ids


@pytest.mark.parametrize("which", ["follower", "leader"])
def test_remove_a_member_and_let_it_rejoin_with_an_empty_disk(cell: LocalCell,
                                                              which: str) -> None:
    heal(cell)
    leader = serving_leader(cell)
    api = Api(leader.url)
    s = api.session(60000)
    h = api.handle(s, f"{ROOT}/{uniq('members')}", "file", data=b"before")
    victim = leader if which == "leader" else followers(cell, leader)[0]
    victim_id = member_id(victim)
    reply = request(leader.url, "DELETE", f"/v1/cluster/members/{victim_id}",
                    headers=_admin(cell), timeout=30)
    expect(reply, 200)
    survivors = [m for m in cell.members if m is not victim]
    new_leader = serving_leader(cell, exclude=victim)
    assert new_leader in survivors
    wait_until(lambda: view(new_leader)["joint"] is None and
               victim_id not in {m["id"] for m in view(new_leader)["members"]}, 20,
               message="the removal to complete (joint consensus left)")
    assert _voters(new_leader) == {member_id(m) for m in survivors}
    # the removed member, still running, does not disrupt the others
    term = view(new_leader)["term"]
    napi = Api(new_leader.url)
    started = time.monotonic()
    while time.monotonic() - started < 3.0:
        expect(napi.set(s, h, b"after removal"), 200)
        time.sleep(0.1)
    assert view(new_leader)["term"] == term
    assert serving_leader(cell, exclude=victim) is new_leader
    if which == "leader":
        assert view(victim)["self"]["role"] != "leader", "a removed leader must step down"
    # removing it again: it is no longer a member
    again = request(new_leader.url, "DELETE", f"/v1/cluster/members/{victim_id}",
                    headers=_admin(cell), timeout=30)
    expect(again, 404, "not_found")
    _rejoin_with_an_empty_disk(cell, victim, victim_id)
    final = Api(serving_leader(cell).url)
    assert final.contents(s, h) == b"after removal"


def test_transfer_leadership_to_the_best_candidate_and_back(cell: LocalCell) -> None:
    heal(cell)
    leader = serving_leader(cell)
    leader_id = member_id(leader)
    api = Api(leader.url)
    s = api.session(60000)
    h = api.handle(s, f"{ROOT}/{uniq('transfer')}", "file", data=b"kept")
    moved = request(leader.url, "POST", "/v1/cluster/leader", {}, headers=_admin(cell),
                    timeout=30)
    expect(moved, 200)
    new = serving_leader(cell, exclude=leader)
    assert moved.body["leader"] == member_id(new) != leader_id
    back = request(new.url, "POST", "/v1/cluster/leader", {"to": leader_id},
                   headers=_admin(cell), timeout=30)
    expect(back, 200)
    assert back.body["leader"] == leader_id
    assert serving_leader(cell) is leader
    assert Api(leader.url).contents(s, h) == b"kept"
    # a transfer to something that is not a voter is refused
    bad = request(leader.url, "POST", "/v1/cluster/leader", {"to": "nobody"},
                  headers=_admin(cell), timeout=30)
    assert bad.status in (400, 404, 409), bad
    assert serving_leader(cell) is leader


def test_removing_the_leader_answers_once_it_has_handed_over(cell: LocalCell) -> None:
    """Last in this module: leaves the cell with two voters."""
    heal(cell)
    leader = serving_leader(cell)
    reply = request(leader.url, "DELETE", f"/v1/cluster/members/{member_id(leader)}",
                    headers=_admin(cell), timeout=30)
    expect(reply, 200)
    new = serving_leader(cell, exclude=leader)
    # the handover itself takes about an election timeout or less
    assert reply.elapsed < 5.0, f"answered after {reply.elapsed:.1f}s"
    # The answer is the removed member's own view: it left the configuration, so it hears
    # from no leader any more and must not name itself (DESIGN §4: the answering member's view).
    assert reply.body["leader"] in (None, member_id(new))
    assert member_id(leader) not in [m["id"] for m in reply.body["members"]]
