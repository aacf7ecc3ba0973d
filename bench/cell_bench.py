"""End-to-end figures of a real local 3-replica cell: lock cycles, handovers, writes."""

from __future__ import annotations

import asyncio
import base64
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from lockcell.cli.localcell import LocalCell


class _Client:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url
        self.session = ""

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.url + path, json=body) as response:
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")
            return await response.json() if response.status != 204 else None

    async def open(self, path: str, kind: str = "file") -> str:
        if not self.session:
            self.session = (await self.call("POST", "/v1/sessions", {"lease_ms": 60000}))["session"]
        answer = await self.call("POST", f"/v1/sessions/{self.session}/handles",
                                 {"path": path, "create": {"kind": kind}, "lock_delay_ms": 0})
        return str(answer["handle"])


async def _closed_loop(workers: int, seconds: float, op: Any) -> dict[str, Any]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(i) for i in range(workers)))
    latencies.sort()
    count = len(latencies)
    return {"ops": count, "ops_per_s": round(count / seconds, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 2) if count else None,
            "p99_ms": round(latencies[int(count * 0.99) - 1] * 1000, 2) if count else None}


async def _run(cell: LocalCell, quick: bool) -> list[dict[str, Any]]:
    seconds = 2.0 if quick else 8.0
    leader = cell.leader().url
    results: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        setup = _Client(http, leader)
        await setup.open("/ls/local/bench", "dir")
        for workers in (1, 64) if not quick else (1, 16):
            clients = [_Client(http, leader) for _ in range(workers)]
            handles = [await c.open(f"/ls/local/bench/u{i}") for i, c in enumerate(clients)]

            async def cycle(i: int, clients: list[_Client] = clients,
                            handles: list[str] = handles) -> None:
                c, h = clients[i], handles[i]
                await c.call("POST", f"/v1/sessions/{c.session}/handles/{h}/lock",
                             {"mode": "exclusive"})
                await c.call("DELETE", f"/v1/sessions/{c.session}/handles/{h}/lock")

            figures = await _closed_loop(workers, seconds, cycle)
            results.append({"bench": "cell_uncontended_lock_cycle", "clients": workers,
                            **figures})
        workers = 16
        clients = [_Client(http, leader) for _ in range(workers)]
        handles = [await c.open("/ls/local/bench/one") for c in clients]

        async def handover(i: int) -> None:
            c, h = clients[i], handles[i]
            await c.call("POST", f"/v1/sessions/{c.session}/handles/{h}/lock",
                         {"mode": "exclusive", "wait_ms": 60000})
            await c.call("DELETE", f"/v1/sessions/{c.session}/handles/{h}/lock")

        figures = await _closed_loop(workers, seconds, handover)
        results.append({"bench": "cell_contended_handover", "clients": workers, **figures})
        data = base64.b64encode(b"v" * 100).decode()

        async def put(i: int) -> None:
            c, h = clients[i], handles[i]
            await c.call("PUT", f"/v1/sessions/{c.session}/handles/{h}", {"data": data})

        figures = await _closed_loop(workers, seconds, put)
        results.append({"bench": "cell_write_100b", "clients": workers, **figures})
    return results


def run(quick: bool = False, base_port: int = 27001) -> list[dict[str, Any]]:
    """Start a local cell, run the workloads, stop it."""
    with tempfile.TemporaryDirectory(prefix="lockcell-bench-") as root:
        cell = LocalCell(Path(root), size=3, client_base=base_port, peer_base=base_port + 100)
        cell.start(timeout=60)
        try:
            return asyncio.run(_run(cell, quick))
        finally:
            cell.stop()


if __name__ == "__main__":
    for row in run():
        print(row)
