"""Runs one member as a process: the HTTP front end on the client port plus the Member."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal

from lockcell.api.http import HttpApi, error_response
from lockcell.api.wire import HttpServer
from lockcell.node.member import Member, MemberConfig

log = logging.getLogger("lockcell.server")

WANTED_FILE_DESCRIPTORS = 65536


def raise_file_limit(wanted: int = WANTED_FILE_DESCRIPTORS) -> int:
    """Lift the soft open-file limit toward ``wanted`` (10,000 clients need it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def serve(config: MemberConfig, ready: asyncio.Event | None = None) -> None:
    """Run a member until SIGTERM (a leader hands over first) or SIGINT."""
    limit = raise_file_limit()
    member = Member(config)
    api = HttpApi(member)
    member.set_forward_handler(api.handle_forwarded)
    await member.start()
    http = HttpServer(api.answer, error_response, idle_timeout=75.0)
    await http.start(config.client_host, config.client_port, backlog=4096)
    log.info("member %s of cell %s serving clients on %s, peers on %s (fd limit %d)",
             member.id, config.cell, config.advertised_client_url,
             config.advertised_peer_url, limit)
    loop = asyncio.get_running_loop()
    first_signal: asyncio.Future[int] = loop.create_future()

    def stop_on(sig: int) -> None:
        if not first_signal.done():
            first_signal.set_result(sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop_on, sig)
    if ready is not None:
        ready.set()
    try:
        received = await first_signal
        log.info("member %s stopping", member.id)
        if received != signal.SIGINT:
            # SIGTERM (a rolling restart): the cell goes on, so a leader hands over first.
            # SIGINT (Ctrl-C on a local cell, which stops every member): it need not.
            await member.hand_over()
    finally:
        await http.close()
        await member.stop()
