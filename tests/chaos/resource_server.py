"""A fenced resource server for the chaos tests: its own process, recording every admission.

Run ``python tests/chaos/resource_server.py --endpoints URL,URL,URL [--check] [--port 0]
[--direct ADVERTISED=URL,...]``; it prints ``listening on http://HOST:PORT`` once it serves.
``--direct`` maps the client URLs members advertise (the chaos harness's client proxy) to
their own ports: the resource knows the members by the URLs the cell names (leader hints,
``GET /v1/cluster``) but connects around the proxy, so cutting the clients off from the
cell leaves it able to confirm sequencers.

* ``PUT /write`` with the lock's sequencer in ``X-Lockcell-Sequencer`` and a JSON body
  ``{"owner": str, "section": int, "late"?: bool}``: a
  :class:`lockcell.client.FencedResource` admits the sequencer (refusing one older than
  the newest generation seen for that lock; with ``--check`` also confirming it with the
  cell's CheckSequencer, as ``docs/client.md`` describes) and runs the protected operation
  (a short sleep) under its guard, so no other admission can slip in meanwhile. Answers
  200 ``{"generation"}``, 409 when the sequencer is stale, 503 when the cell could not
  confirm it, 400 when it is no sequencer. ``late`` marks a write whose grant the writer
  had released already: it must be refused (the record keeps the mark for the checker).
* ``GET /record``: every admission (accepted and refused, with the resource's own clock:
  start and end of each accepted operation) and the table of highest generations.

The chaos harness starts it, points the lock workers at it, and checks the record with
:func:`tests.chaos.checkers.check_lock_safety` at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from typing import Any

from aiohttp import web

from lockcell.client import (
    SEQUENCER_HEADER,
    AsyncCell,
    FencedResource,
    LockcellError,
    StaleSequencer,
    parse_sequencer,
)
from lockcell.client.core import Answer, Request, normalize_endpoint

OPERATION_S = 0.003
"""How long the protected operation takes (the window a stale writer would need)."""


class DirectCell(AsyncCell):
    """An :class:`AsyncCell` whose every HTTP attempt goes to the member's own port when
    ``direct`` maps the URL it picked (an advertised one) to it."""

    def __init__(self, endpoints: str, direct: dict[str, str], **options: Any) -> None:
        super().__init__(endpoints, **options)
        self.direct = {normalize_endpoint(k): normalize_endpoint(v) for k, v in direct.items()}

    async def send(self, url: str, request: Request, *, timeout: float,
                   request_id: str | None = None) -> Answer:
        url = self.direct.get(normalize_endpoint(url), url)
        return await super().send(url, request, timeout=timeout, request_id=request_id)


def parse_direct(text: str) -> dict[str, str]:
    """``ADVERTISED=URL,...`` -> {advertised: url}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"--direct wants ADVERTISED=URL pairs: {text!r}")
    return {a.strip(): b.strip() for a, b in pairs}


def make_app(fence: FencedResource) -> web.Application:
    """The resource's routes over ``fence``; admissions are kept in memory."""
    admissions: list[dict[str, Any]] = []

    async def write(request: web.Request) -> web.Response:
        sequencer = request.headers.get(SEQUENCER_HEADER, "")
        try:
            doc = json.loads(await request.read() or b"{}")
            owner, section = str(doc["owner"]), int(doc["section"])
            late = bool(doc.get("late", False))
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad body: {exc}"}, status=400)
        parsed = parse_sequencer(sequencer)
        started = time.monotonic()
        try:
            async with fence.guard_async(sequencer) as info:
                started = time.monotonic()
                await asyncio.sleep(OPERATION_S)  # the protected operation
                admissions.append({"t": started, "owner": owner, "path": info.path,
                                   "generation": info.lock_generation, "accepted": True,
                                   "section": section, "end": time.monotonic(),
                                   "late": late})
        except StaleSequencer as exc:
            admissions.append({"t": started, "owner": owner,
                               "path": parsed.path if parsed else "?",
                               "generation": parsed.lock_generation if parsed else -1,
                               "accepted": False, "section": section, "end": None,
                               "late": late})
            return web.json_response({"error": str(exc)}, status=409)
        except LockcellError as exc:  # the cell could not say (unavailable, timeout ...)
            status = 400 if exc.code == "invalid_argument" else 503
            return web.json_response({"error": f"{exc.code}: {exc}"}, status=status)
        except Exception as exc:  # a transport error the client did not wrap
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=503)
        return web.json_response({"generation": info.lock_generation})

    async def record(request: web.Request) -> web.Response:
        return web.json_response({"admissions": admissions, "highest": fence.snapshot()})

    app = web.Application()
    app.router.add_put("/write", write)
    app.router.add_get("/record", record)
    return app


async def serve(host: str, port: int, endpoints: str, check: bool,
                direct: dict[str, str] | None = None) -> None:
    """Serve until cancelled (SIGTERM / SIGINT)."""
    cell = DirectCell(endpoints, direct or {}, request_timeout=2.0, retry_timeout=1.0,
                      connect_timeout=1.0, retry_for=3.0) if check else None
    fence = FencedResource(acheck=cell.check_sequencer if cell is not None else None)
    runner = web.AppRunner(make_app(fence))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"listening on http://{host}:{runner.addresses[0][1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if cell is not None:
            await cell.close()


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--endpoints", required=True, help="the cell's client URLs")
    parser.add_argument("--check", action="store_true",
                        help="confirm every sequencer with the cell (CheckSequencer)")
    parser.add_argument("--direct", default="", type=parse_direct,
                        help="ADVERTISED=URL,...: connect to URL whenever the cell names "
                             "a member by ADVERTISED (the chaos client proxy)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.endpoints, args.check, args.direct))


if __name__ == "__main__":
    main()
