"""A resource server that refuses writes from stale lock holders (lockcell fencing).

Run it, then write with the sequencer of the lock that guards the resource:

    python examples/resource_server.py --port 8080 [--check]
    lockcell lock /ls/local/jobs/report -- sh -c \
        'curl -sf -XPUT -H "X-Lockcell-Sequencer: $LOCKCELL_SEQUENCER" \
              --data-binary "hello" http://127.0.0.1:8080/data'

A write carrying an older lock generation than one already seen is answered 409.
With --check every sequencer is also confirmed with the cell (CheckSequencer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

from aiohttp import web

from lockcell.client import (
    SEQUENCER_HEADER,
    AsyncCell,
    FencedResource,
    LockcellError,
    StaleSequencer,
)


def make_app(fence: FencedResource) -> web.Application:
    """PUT /data (fenced by the sequencer header), GET /data (contents and write log)."""
    state: dict[str, Any] = {"data": "", "writes": []}

    async def put(request: web.Request) -> web.Response:
        sequencer = request.headers.get(SEQUENCER_HEADER, "")
        body = (await request.read()).decode(errors="replace")
        try:
            async with fence.guard_async(sequencer) as info:
                state["data"] = body
                state["writes"].append({"path": info.path, "generation": info.lock_generation,
                                        "data": body})
        except StaleSequencer as exc:
            return web.json_response({"error": str(exc)}, status=409)
        except LockcellError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True, "generation": info.lock_generation})

    async def get(request: web.Request) -> web.Response:
        return web.json_response({"data": state["data"], "highest": fence.snapshot(),
                                  "writes": state["writes"]})

    app = web.Application()
    app.router.add_put("/data", put)
    app.router.add_get("/data", get)
    return app


async def serve(host: str, port: int, check: bool, endpoints: str | None) -> None:
    """Serve until cancelled."""
    cell = AsyncCell(endpoints) if check else None
    fence = FencedResource(acheck=cell.check_sequencer if cell is not None else None)
    runner = web.AppRunner(make_app(fence))
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening on http://{host}:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        if cell is not None:
            await cell.close()


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--check", action="store_true",
                        help="also confirm every sequencer with the cell (CheckSequencer)")
    parser.add_argument("--endpoints", default=None,
                        help="cell endpoints for --check (default LOCKCELL_ENDPOINTS)")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, args.check, args.endpoints))


if __name__ == "__main__":
    main()
