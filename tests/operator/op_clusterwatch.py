"""Records a cell's membership as its members report it (`GET /v1/cluster`), in its own process.

A joint configuration lasts from the commit of C_old,new to the commit of the automatic
leave: one replication round, milliseconds on loopback. The test's own process is busy
(kmock, kopf, the kubelet, the traffic, all under one GIL), so the watch runs here, in a
process of its own, told what to poll through its stdin (JSON lines):

- `{"endpoints": [url, ...]}`: the members' client URLs (the live pods);
- `{"hot": +1}` / `{"hot": -1}`: a membership call of the operator starts / has answered.
  The server answers promote and remove once the joint phase is over, so the joint window
  lies inside the call: while one is in flight every member is polled back to back;
- `{"stop": true}`.

Otherwise the leader is polled every 20 ms (following `leader`) and the other members every
250 ms. Each member's distinct views go to the output file as JSON lines
`{"t": <CLOCK_MONOTONIC seconds>, "url": ..., "view": <the answer>}`; CLOCK_MONOTONIC is
system-wide, so the test compares these times with its own `time.monotonic()`.

`ClusterWatch` is the test's handle on the process; its `hot()` may be called from any thread
(the operator runs in kopf's thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import aiohttp

LEADER_PERIOD = 0.02
MEMBER_PERIOD = 0.25


class _Watch:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.endpoints: list[str] = []
        self.hot = 0
        self.stopped = False
        self.wake = asyncio.Event()
        self.leader_url: str | None = None
        self.urls: dict[str, str] = {}  # member id → client URL
        self.last: dict[str, Any] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def record(self, url: str, body: dict[str, Any]) -> None:
        me = body.get("self", {}).get("id")
        for m in body.get("members") or []:
            if m.get("url"):
                self.urls[str(m["id"])] = str(m["url"])
        leader = body.get("leader")
        if leader is not None and leader == me:
            self.leader_url = url
        elif leader is not None and leader in self.urls:
            self.leader_url = self.urls[leader]
        # match_index and commit_index move all the time: only membership changes count.
        key = (leader, sorted((m["id"], m["role"]) for m in body.get("members") or []),
               body.get("joint"))
        if self.last.get(url) != key:
            self.last[url] = key
            self.out.write(json.dumps({"t": time.monotonic(), "url": url, "view": body}) + "\n")
            self.out.flush()

    async def poll(self, http: aiohttp.ClientSession, url: str) -> None:
        while not self.stopped and url in self.endpoints:
            try:
                async with http.get(f"{url}/v1/cluster",
                                    timeout=aiohttp.ClientTimeout(total=2.0)) as resp:
                    if resp.status == 200:
                        self.record(url, await resp.json())
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError):
                pass
            if self.hot > 0:
                await asyncio.sleep(0)
                continue
            period = LEADER_PERIOD if url == self.leader_url else MEMBER_PERIOD
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), period)

    async def commands(self, http: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            cmd = json.loads(line)
            if "endpoints" in cmd:
                self.endpoints = list(cmd["endpoints"])
                for url in self.endpoints:
                    task = self.tasks.get(url)
                    if task is None or task.done():
                        self.tasks[url] = asyncio.create_task(self.poll(http, url))
            if "hot" in cmd:
                self.hot += int(cmd["hot"])
                self.wake.set()
            if cmd.get("stop"):
                break
        self.stopped = True
        self.wake.set()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


async def _main(out_path: str) -> None:
    with open(out_path, "w") as out:
        watch = _Watch(out)
        async with aiohttp.ClientSession() as http:
            await watch.commands(http)


class ClusterWatch:
    """The test's handle on the watch process."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._lock = threading.Lock()
        self._endpoints: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(out)], stdin=subprocess.PIPE, text=True,
            start_new_session=True,
        )

    def _send(self, **cmd: Any) -> None:
        with self._lock:
            stdin = self.process.stdin
            if stdin is None or stdin.closed or self.process.poll() is not None:
                return
            with contextlib.suppress(BrokenPipeError):
                stdin.write(json.dumps(cmd) + "\n")
                stdin.flush()

    def endpoints(self, urls: list[str]) -> None:
        if urls != self._endpoints:
            self._endpoints = list(urls)
            self._send(endpoints=urls)

    def hot(self, delta: int) -> None:
        self._send(hot=delta)

    def stop(self) -> list[tuple[float, str, dict[str, Any]]]:
        """Stop the process; every recorded (time, url, view)."""
        self._send(stop=True)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        out = []
        for line in self.out.read_text().splitlines():
            item = json.loads(line)
            out.append((float(item["t"]), str(item["url"]), item["view"]))
        return out

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1]))
