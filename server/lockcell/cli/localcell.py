"""A local N-replica cell on loopback: one `lockcell serve` process per member."""

from __future__ import annotations

import http.client
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class LocalMember:
    """One member process of a local cell."""

    index: int
    client_port: int
    peer_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Client URL."""
        return f"http://127.0.0.1:{self.client_port}"


@dataclass
class LocalCell:
    """Starts, stops, kills and restarts the members of a cell on 127.0.0.1."""

    root: Path
    size: int = 3
    client_base: int = 7001
    peer_base: int = 7101
    cell: str = "demo"
    lease_ms: int = 12000
    tick_ms: int = 100
    extra_env: dict[str, str] = field(default_factory=dict)
    members: list[LocalMember] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "pids").mkdir(exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.admin_token = self._secret("admin-token")
        self.peer_secret = self._secret("peer-secret")
        self.members = [
            LocalMember(i, self.client_base + i, self.peer_base + i, self.root / f"member-{i}")
            for i in range(self.size)
        ]

    def _secret(self, name: str) -> str:
        path = self.root / name
        if not path.exists():
            path.write_text(secrets.token_hex(16))
            path.chmod(0o600)
        return path.read_text().strip()

    @property
    def endpoints(self) -> list[str]:
        """Client URLs of every member."""
        return [m.url for m in self.members]

    def command(self, member: LocalMember) -> list[str]:
        """The `lockcell serve` command line of ``member``."""
        args = [
            sys.executable, "-m", "lockcell.cli.main", "serve",
            "--cell", self.cell,
            "--data-dir", str(member.data_dir),
            "--name", f"m{member.index}",
            "--client-listen", f"127.0.0.1:{member.client_port}",
            "--peer-listen", f"127.0.0.1:{member.peer_port}",
            "--lease-ms", str(self.lease_ms),
            "--tick-ms", str(self.tick_ms),
        ]
        if member.index == 0:
            args.append("--bootstrap")
        else:
            for other in self.members:
                if other is not member:
                    args += ["--join", other.url]
        return args

    def environment(self, member: LocalMember) -> dict[str, str]:
        """The environment of ``member``'s process."""
        env = dict(os.environ)
        env.update({"LOCKCELL_ADMIN_TOKEN": self.admin_token,
                    "LOCKCELL_PEER_SECRET": self.peer_secret})
        env.update(self.extra_env)
        return env

    def start_member(self, member: LocalMember) -> None:
        """Start (or restart) one member's process."""
        env = self.environment(member)
        log = open(self.root / "logs" / f"member-{member.index}.log", "ab")  # noqa: SIM115
        member.process = subprocess.Popen(
            self.command(member), env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        (self.root / "pids" / f"member-{member.index}.pid").write_text(str(member.process.pid))

    def start(self, timeout: float = 60.0) -> None:
        """Start every member and wait until all are voters and ready."""
        for member in self.members:
            self.start_member(member)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0, voters: int | None = None) -> dict[str, Any]:
        """Wait until every running member is ready and the cell has ``voters`` voters."""
        want = self.size if voters is None else voters
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            try:
                running = [m for m in self.members if m.process and m.process.poll() is None]
                if not running:
                    raise TimeoutError("no member process is running (see the logs)")
                for member in running:
                    if http_json("GET", f"{member.url}/readyz", timeout=2)[0] != 200:
                        raise RuntimeError(f"member {member.index} not ready")
                _, view = http_json("GET", f"{running[0].url}/v1/cluster", timeout=2)
                voter_count = sum(1 for m in view["members"] if m["role"] == "voter")
                if view["leader"] and voter_count == want and view["joint"] is None:
                    return dict(view)
                last_error = f"{voter_count} voters, leader {view['leader']}"
            except (OSError, RuntimeError, KeyError, ValueError, http.client.HTTPException) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise TimeoutError(f"cell not ready after {timeout}s: {last_error}")

    def leader(self) -> LocalMember:
        """The member that currently leads (asked of any live member)."""
        for member in self.members:
            if member.process is None or member.process.poll() is not None:
                continue
            try:
                _, view = http_json("GET", f"{member.url}/v1/cluster", timeout=2)
            except OSError:
                continue
            leader_id = view.get("leader")
            for m in view["members"]:
                if m["id"] == leader_id:
                    for candidate in self.members:
                        if m["url"] in self.urls_of(candidate):
                            return candidate
        raise RuntimeError("no leader known")

    def urls_of(self, member: LocalMember) -> tuple[str, ...]:
        """The client URLs the cell may name ``member`` by."""
        return (member.url,)

    def kill(self, member: LocalMember, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (default SIGKILL) to a member."""
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                member.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop every member (SIGINT: the whole cell stops, no leader hands over; then
        SIGKILL)."""
        for member in self.members:
            if member.process is not None and member.process.poll() is None:
                member.process.send_signal(signal.SIGCONT)
                member.process.send_signal(signal.SIGINT)
        for member in self.members:
            if member.process is not None:
                try:
                    member.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    member.process.kill()
                    member.process.wait()


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports (Linux default if unknown)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def port_is_free(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:``port`` now (with SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_base(offsets: Iterable[int], rng: random.Random | None = None,
                   attempts: int = 2000) -> int:
    """A base port B with every B + offset free on loopback, chosen below the ephemeral range.

    Listening ports must stay out of the range the kernel draws source ports from: a client
    polling a port nobody listens on yet can otherwise be connected to itself (TCP
    simultaneous open), read its own request back as the response, and hold the port so the
    server cannot bind it.
    """
    spread = sorted(set(offsets))
    rng = rng or random.Random(os.getpid() ^ time.monotonic_ns())
    low, high = 10000, min(ephemeral_port_range()[0], 65536) - 1 - spread[-1]
    if high <= low:
        raise RuntimeError("no room for listening ports below the ephemeral port range")
    for _ in range(attempts):
        base = rng.randrange(low, high)
        if all(port_is_free(base + offset) for offset in spread):
            return base
    raise RuntimeError(f"no free loopback ports with offsets {spread} in {low}-{high}")


def http_json(method: str, url: str, body: Any = None, timeout: float = 10.0,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """A small blocking JSON call (for tooling and tests); returns (status, decoded body)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw) if raw else None
        except ValueError:
            return exc.code, raw.decode(errors="replace")
