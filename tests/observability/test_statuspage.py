"""The status page at GET /: pure rendering (escaping, states) and, in headless Chromium,
the page of a real 3-member cell showing its members, roles, leader and recent elections.

Set LOCKCELL_STATUS_SCREENSHOT=1 to also save the screenshot as docs/status-page.png (it is
always saved in the test's temporary directory).
"""

from __future__ import annotations

import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from lockcell.api.statuspage import render_status_page
from lockcell.cli.localcell import LocalCell, http_json

from .conftest import ROOT, call, drive_traffic, run_chromium, wait_until

CELL_NAME = "demo"
SCREENSHOT_ENV = "LOCKCELL_STATUS_SCREENSHOT"


class PageParser(HTMLParser):
    """Collects the member rows, event rows and the texts of elements with ids."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.members: list[dict[str, str]] = []
        self.events: list[dict[str, str]] = []
        self.texts: dict[str, str] = {}
        self.refresh: str | None = None
        self.scripts = 0
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        if tag == "meta" and a.get("http-equiv") == "refresh":
            self.refresh = a.get("content")
        if tag == "tr" and "member" in a.get("class", "").split():
            self.members.append({k[5:]: v for k, v in a.items() if k.startswith("data-")})
        if tag == "tr" and "event" in a.get("class", "").split():
            self.events.append({k[5:]: v for k, v in a.items() if k.startswith("data-")})
        if "id" in a:
            self._open.append(a["id"])
            self.texts.setdefault(a["id"], "")
        elif tag not in ("meta", "br", "img", "input", "link"):
            self._open.append("")

    def handle_endtag(self, tag: str) -> None:
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.texts[ident] += data


def parse_page(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    return parser


# --------------------------------------------------------------------------- pure rendering


def sample_view(**overrides: Any) -> dict[str, Any]:
    view: dict[str, Any] = {
        "cell": "demo", "version": "0.1.0", "generated_at": 1_800_000_100.0,
        "started_at": 1_800_000_000.0,
        "self": {"id": "m0-aa", "url": "http://127.0.0.1:7001", "state": "leader",
                 "ready": True, "reason": "ok"},
        "leader": "m0-aa", "leader_url": "http://127.0.0.1:7001", "term": 4,
        "commit_index": 120, "applied_index": 120, "last_index": 121, "joint": None,
        "quorum": {"voters": 3, "needed": 2, "healthy": 3},
        "members": [
            {"id": "m0-aa", "url": "http://127.0.0.1:7001", "role": "voter", "is_self": True,
             "is_leader": True, "match_index": 121, "state": "leader", "term": 4,
             "applied_index": 120, "reachable": True, "healthy": True, "health": "ok",
             "lag": 0},
            {"id": "m1-bb", "url": "http://127.0.0.1:7002", "role": "voter", "is_self": False,
             "is_leader": False, "match_index": 119, "state": "follower", "term": 4,
             "applied_index": 118, "reachable": True, "healthy": True, "health": "ok",
             "lag": 2},
            {"id": "m2-cc", "url": None, "role": "learner", "is_self": False,
             "is_leader": False, "match_index": None, "state": None, "term": None,
             "applied_index": None, "reachable": False, "healthy": False,
             "health": "unreachable", "lag": None},
        ],
        "counts": {"sessions": 5, "handles": 7, "nodes": 9, "locks_exclusive": 2,
                   "locks_shared": 1, "waiters": 0, "tombstones": 1},
        "events": [{"at": 1_800_000_090.0, "kind": "leader", "term": 4, "index": None,
                    "text": "m0-aa is the leader"}],
    }
    view.update(overrides)
    return view


def test_render_shows_the_view() -> None:
    page = parse_page(render_status_page(sample_view()))
    assert page.texts["cell"] == "demo"
    assert page.texts["leader"] == "m0-aa"
    assert page.texts["term"] == "4"
    assert page.texts["sessions"] == "5"
    assert page.texts["locks"] == "2 / 1"
    assert page.texts["quorum"] == "quorum"
    assert [(m["member"], m["role"], m["state"], m["health"], m["leader"])
            for m in page.members] == [
        ("m0-aa", "voter", "leader", "ok", "true"),
        ("m1-bb", "voter", "follower", "ok", "false"),
        ("m2-cc", "learner", "—", "unreachable", "false"),
    ]
    assert page.events == [{"kind": "leader"}]
    assert page.refresh is not None and int(page.refresh) > 0
    assert page.scripts == 0


def test_render_escapes_everything() -> None:
    evil = '<script>alert("x")</script>'
    members = sample_view()["members"]
    members[1] = dict(members[1], id=evil, url='http://x/"><img src=x onerror=alert(1)>',
                      health=evil)
    view = sample_view(cell=evil, leader=evil, members=members,
                       events=[{"at": 1_800_000_000.0, "kind": evil, "term": 1,
                                "index": 3, "text": evil}],
                       self={"id": evil, "state": evil, "ready": False, "reason": evil})
    html = render_status_page(view)
    assert "<script" not in html and "<img" not in html
    page = parse_page(html)
    assert page.scripts == 0
    assert page.texts["cell"] == evil and page.texts["leader"] == evil
    assert page.members[1]["member"] == evil


def test_render_says_when_quorum_is_lost_and_shows_a_joint_configuration() -> None:
    view = sample_view(leader=None, quorum={"voters": 3, "needed": 2, "healthy": 1},
                       joint={"old": ["m0-aa", "m1-bb"], "new": ["m0-aa", "m1-bb", "m2-cc"]},
                       events=[])
    page = parse_page(render_status_page(view))
    assert page.texts["quorum"] == "no quorum"
    assert page.texts["leader"] == "—"
    assert "m2-cc" in page.texts["joint"]


# --------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def busy_cell(cell: LocalCell) -> LocalCell:
    """The cell after traffic and a leadership transfer (an election to show)."""
    drive_traffic(cell)
    leader = cell.leader()
    view = call("GET", f"{leader.url}/v1/cluster", None, (200,))
    target = next(m["id"] for m in view["members"] if m["id"] != view["leader"])
    call("POST", f"{leader.url}/v1/cluster/leader", {"to": target}, (200,),
         headers={"Authorization": f"Bearer {cell.admin_token}"})
    wait_until(lambda: all(http_json("GET", f"{m.url}/v1/cluster")[1]["leader"] == target
                           for m in cell.members), 10, "every member to know the new leader")
    wait_until(lambda: all(http_json("GET", f"{m.url}/readyz")[0] == 200
                           for m in cell.members), 10, "every member to be ready")
    return cell


def test_every_replica_shows_members_roles_and_leader_in_chromium(
        busy_cell: LocalCell, chromium: str, tmp_path: Path) -> None:
    cell = busy_cell
    truth = call("GET", f"{cell.leader().url}/v1/cluster", None, (200,))
    for i, member in enumerate(cell.members):
        dom = run_chromium(chromium, tmp_path / f"profile-{i}", "--dump-dom", f"{member.url}/")
        page = parse_page(dom)
        assert page.texts["cell"] == CELL_NAME
        assert page.texts["leader"] == truth["leader"]
        assert int(page.texts["term"]) == truth["term"]
        assert page.texts["quorum"] == "quorum"
        assert int(page.texts["sessions"]) >= 2
        shown = {m["member"]: m for m in page.members}
        assert set(shown) == {m["id"] for m in truth["members"]}
        for m in truth["members"]:
            row = shown[m["id"]]
            assert row["role"] == m["role"]
            assert row["health"] == "ok", row
            want = "leader" if m["id"] == truth["leader"] else "follower"
            assert row["state"] == want
            assert row["leader"] == ("true" if m["id"] == truth["leader"] else "false")
        kinds = {e["kind"] for e in page.events}
        assert "leader" in kinds and "membership" in kinds


def test_screenshot_of_the_status_page(busy_cell: LocalCell, chromium: str,
                                       tmp_path: Path) -> None:
    follower = next(m for m in busy_cell.members if m is not busy_cell.leader())
    shot = tmp_path / "status-page.png"
    run_chromium(chromium, tmp_path / "profile-shot", "--hide-scrollbars",
                 "--window-size=1280,1000", f"--screenshot={shot}", f"{follower.url}/")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    if os.environ.get(SCREENSHOT_ENV):
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "status-page.png")
