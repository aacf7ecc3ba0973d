"""The status page at ``GET /``: this member's view of the cell, as plain server-rendered HTML.

:func:`gather_status_view` collects a view dict (this member's Raft and cell state, every
other member's own ``/v1/cluster`` answer, the recent leader and membership changes);
:func:`render_status_page` is a pure function of that dict. No scripts, no build step: the
page refreshes itself, and everything it shows is escaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

import lockcell
from lockcell.node.member import Member
from lockcell.raft.types import Role

REFRESH_SECONDS = 5
PEER_TIMEOUT_SECONDS = 0.8
MAX_EVENTS = 20


async def _peer_view(http: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        async with http.get(f"{url.rstrip('/')}/v1/cluster") as response:
            if response.status == 200:
                doc = await response.json()
                if isinstance(doc, dict):
                    return doc
    return None


async def gather_status_view(member: Member,
                             timeout: float = PEER_TIMEOUT_SECONDS) -> dict[str, Any]:
    """The view :func:`render_status_page` shows, asking the other members for theirs."""
    local = member.cluster_view()
    others = [m for m in local["members"] if m["id"] != member.id and m.get("url")]
    peers: dict[str, dict[str, Any] | None] = {}
    if others:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(timeout=client_timeout) as http:
            answers = await asyncio.gather(*(_peer_view(http, str(m["url"])) for m in others))
        peers = {str(m["id"]): answer for m, answer in zip(others, answers, strict=True)}
    return build_status_view(member, local, peers)


def build_status_view(member: Member, local: Mapping[str, Any],
                      peers: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any]:
    """Combine this member's state with the other members' answers (None: no answer)."""
    status = member.driver.status()
    ready, reason = member.readiness()
    leader = local.get("leader")
    leading = status.role is Role.LEADER
    leader_view: Mapping[str, Any] | None = local if leading else (
        peers.get(str(leader)) if leader is not None else None)
    leader_commit = leader_view.get("commit_index") if leader_view is not None else None
    leader_match: dict[str, Any] = {}
    if leader_view is not None:
        leader_match = {str(m.get("id")): m.get("match_index")
                        for m in leader_view.get("members") or [] if isinstance(m, Mapping)}
    members = []
    for entry in local["members"]:
        member_id = str(entry["id"])
        is_self = member_id == member.id
        peer = None if is_self else peers.get(member_id)
        row: dict[str, Any] = {
            "id": member_id,
            "url": entry.get("url"),
            "role": entry.get("role"),
            "is_self": is_self,
            "is_leader": member_id == leader,
            "match_index": leader_match.get(member_id),
        }
        if is_self:
            row.update(state=status.role.value, term=status.term, applied_index=status.applied,
                       reachable=True, healthy=ready, health="ok" if ready else reason)
        elif peer is None:
            row.update(state=None, term=None, applied_index=None, reachable=False,
                       healthy=False, health="unreachable")
        else:
            own = peer.get("self") or {}
            peer_leader = peer.get("leader")
            healthy = peer_leader is not None
            health = "ok" if healthy else "no leader known"
            if healthy and leader is not None and peer_leader != leader:
                health = f"follows {peer_leader}"
            row.update(state=own.get("role"), term=peer.get("term"),
                       applied_index=peer.get("applied_index"), reachable=True,
                       healthy=healthy, health=health)
        if leading and not is_self:
            progress = status.progress.get(member_id)
            if progress is not None and not progress.recent_active:
                row.update(healthy=False, health="not answering the leader")
        lag = None
        if isinstance(leader_commit, int):
            applied = row["applied_index"]
            match = row["match_index"]
            if isinstance(applied, int):
                lag = max(0, leader_commit - applied)
            elif isinstance(match, int):
                lag = max(0, leader_commit - match)
        row["lag"] = lag
        members.append(row)
    voters = [m for m in members if m["role"] == "voter"]
    counts = member.service.state.counts()
    events = [
        {"at": e.at, "kind": e.kind, "term": e.term, "text": e.text, "index": e.index}
        for e in reversed(member.events.events())
    ][:MAX_EVENTS]
    return {
        "cell": member.config.cell,
        "version": lockcell.__version__,
        "generated_at": time.time(),
        "started_at": member.started_at,
        "self": {"id": member.id, "url": member.config.advertised_client_url,
                 "state": status.role.value, "ready": ready, "reason": reason},
        "leader": leader,
        "leader_url": member.leader_url(),
        "term": status.term,
        "commit_index": status.commit,
        "applied_index": status.applied,
        "last_index": status.last_index,
        "joint": local.get("joint"),
        "quorum": {"voters": len(voters), "needed": len(voters) // 2 + 1,
                   "healthy": sum(1 for m in voters if m["healthy"])},
        "members": members,
        "counts": {
            "sessions": counts.sessions,
            "handles": counts.handles,
            "nodes": counts.nodes,
            "locks_exclusive": counts.locks_exclusive,
            "locks_shared": counts.locks_shared,
            "waiters": member.service.total_waiters() if member.service.serving else None,
            "tombstones": counts.tombstones,
        },
        "events": events,
    }


# --------------------------------------------------------------------------- rendering

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
 background:#f5f6f8;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;align-items:baseline;
 gap:16px;flex-wrap:wrap}
header h1{font-size:20px;margin:0}
header .sub{color:#b8c0d0}
main{padding:16px 24px;max-width:1200px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:12px 16px;
 margin-bottom:16px}
h2{font-size:15px;margin:0 0 8px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:16px}
.card{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:10px 14px;
 min-width:120px}
.card .label{color:#5c667a;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .value{font-size:20px;font-weight:600}
.card .value .muted{font-size:13px;font-weight:400}
td.when{white-space:nowrap}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #eceef2;vertical-align:top}
th{color:#5c667a;font-weight:600;font-size:12px;text-transform:uppercase}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;
 font-weight:600}
.ok{background:#dff3e4;color:#17692f}.bad{background:#fbe0e0;color:#9b1c1c}
.warn{background:#fff1cc;color:#7a5200}.leader{background:#dbe8ff;color:#1a46a0}
.muted{color:#8a93a5}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:13px}
footer{color:#8a93a5;padding:0 24px 24px;font-size:12px}
"""


def _e(value: Any) -> str:
    """Escape anything for HTML text and attribute values; None shows as a dash."""
    return "—" if value is None else html.escape(str(value), quote=True)


def _utc(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _ago(now: float, then: float) -> str:
    delta = max(0, int(now - then))
    if delta < 60:
        return f"{delta}s ago"
    if delta < 3600:
        return f"{delta // 60}m {delta % 60}s ago"
    return f"{delta // 3600}h {delta % 3600 // 60}m ago"


def _card(label: str, value: Any, ident: str) -> str:
    return (f'<div class="card"><div class="label">{_e(label)}</div>'
            f'<div class="value" id="{_e(ident)}">{_e(value)}</div></div>')


def _member_rows(members: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for m in members:
        name = f"<code>{_e(m.get('id'))}</code>"
        if m.get("is_self"):
            name += ' <span class="muted">(this member)</span>'
        state = m.get("state")
        state_html = _e(state)
        if m.get("is_leader"):
            state_html = f'<span class="badge leader">{_e(state or "leader")}</span>'
        health_class = "ok" if m.get("healthy") else "bad"
        rows.append(
            f'<tr class="member" data-member="{_e(m.get("id"))}" data-role="{_e(m.get("role"))}"'
            f' data-state="{_e(state)}" data-health="{_e(m.get("health"))}"'
            f' data-leader="{"true" if m.get("is_leader") else "false"}">'
            f"<td>{name}</td><td>{_e(m.get('role'))}</td><td>{state_html}</td>"
            f'<td><span class="badge {health_class}">{_e(m.get("health"))}</span></td>'
            f'<td class="num">{_e(m.get("term"))}</td>'
            f'<td class="num">{_e(m.get("applied_index"))}</td>'
            f'<td class="num">{_e(m.get("match_index"))}</td>'
            f'<td class="num">{_e(m.get("lag"))}</td>'
            f"<td><code>{_e(m.get('url'))}</code></td></tr>"
        )
    return "".join(rows)


def _event_rows(events: Sequence[Mapping[str, Any]], now: float) -> str:
    if not events:
        return ('<tr><td colspan="5" class="muted">nothing yet: leader and membership changes '
                "this member sees appear here</td></tr>")
    rows = []
    for ev in events:
        at = float(ev.get("at") or 0)
        rows.append(
            f'<tr class="event" data-kind="{_e(ev.get("kind"))}">'
            f'<td class="when" title="{_e(_utc(at))}">{_e(_ago(now, at))}</td>'
            f"<td>{_e(ev.get('kind'))}</td><td class=\"num\">{_e(ev.get('term'))}</td>"
            f'<td class="num">{_e(ev.get("index"))}</td><td>{_e(ev.get("text"))}</td></tr>'
        )
    return "".join(rows)


def render_status_page(view: Mapping[str, Any]) -> str:
    """The whole page for ``view`` (as :func:`build_status_view` makes it)."""
    now = float(view.get("generated_at") or 0)
    me = view.get("self") or {}
    counts = view.get("counts") or {}
    quorum = view.get("quorum") or {}
    members = view.get("members") or []
    leader = view.get("leader")
    has_quorum = quorum.get("healthy", 0) >= quorum.get("needed", 1) and leader is not None
    quorum_badge = (f'<span class="badge {"ok" if has_quorum else "bad"}" id="quorum">'
                    f'{"quorum" if has_quorum else "no quorum"}</span>')
    joint = view.get("joint")
    joint_html = ""
    if isinstance(joint, Mapping):
        joint_html = (
            '<p id="joint"><span class="badge warn">joint configuration</span> old voters '
            f"<code>{_e(', '.join(map(str, joint.get('old') or [])))}</code>, new voters "
            f"<code>{_e(', '.join(map(str, joint.get('new') or [])))}</code></p>"
        )
    ready = me.get("ready")
    ready_badge = (f'<span class="badge {"ok" if ready else "warn"}" id="ready">'
                   f'{"ready" if ready else _e(me.get("reason") or "not ready")}</span>')
    locks = f"{_e(counts.get('locks_exclusive'))} / {_e(counts.get('locks_shared'))}"
    return "".join([
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>lockcell {_e(view.get('cell'))} — {_e(me.get('id'))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f'<header><h1>lockcell cell <span id="cell">{_e(view.get("cell"))}</span></h1>',
        f'<span class="sub">member <code id="self">{_e(me.get("id"))}</code> · '
        f"{_e(me.get('state'))} · {ready_badge}</span></header><main>",
        '<div class="cards">',
        f'<div class="card"><div class="label">leader</div><div class="value">'
        f'<code id="leader">{_e(leader)}</code></div></div>',
        _card("term", view.get("term"), "term"),
        f'<div class="card"><div class="label">quorum</div><div class="value">'
        f"{quorum_badge} <span class=\"muted\">{_e(quorum.get('healthy'))} of "
        f"{_e(quorum.get('voters'))} voters ok, {_e(quorum.get('needed'))} needed"
        "</span></div></div>",
        _card("commit / applied", f"{view.get('commit_index')} / {view.get('applied_index')}",
              "indexes"),
        _card("sessions", counts.get("sessions"), "sessions"),
        '<div class="card"><div class="label">locks exclusive / shared</div>'
        f'<div class="value" id="locks">{locks}</div></div>',
        _card("waiters (leader)", counts.get("waiters"), "waiters"),
        _card("handles", counts.get("handles"), "handles"),
        _card("nodes", counts.get("nodes"), "nodes"),
        "</div>",
        joint_html,
        '<section><h2>Members</h2><table id="members"><thead><tr><th>member</th>'
        "<th>membership</th><th>raft role</th><th>health</th><th>term</th><th>applied</th>"
        "<th>match</th><th>lag</th><th>client URL</th></tr></thead><tbody>",
        _member_rows(members),
        "</tbody></table>",
        '<p class="muted">lag: entries the member has not applied yet of what the leader has '
        "committed; match: the leader's view of the member's log (known on the leader's "
        "page and on every member that reaches the leader).</p></section>",
        '<section><h2>Recent elections and membership changes</h2><table id="events">'
        "<thead><tr><th>when</th><th>what</th><th>term</th><th>log index</th><th>detail</th>"
        "</tr></thead><tbody>",
        _event_rows(view.get("events") or [], now),
        "</tbody></table></section></main>",
        f"<footer>lockcell {_e(view.get('version'))} · rendered {_e(_utc(now))} · member "
        f"started {_e(_ago(now, float(view.get('started_at') or now)))} · refreshes every "
        f"{REFRESH_SECONDS}s · <a href=\"/metrics\">metrics</a> · "
        '<a href="/v1/cluster">cluster JSON</a></footer>',
        "</body></html>",
    ])
