"""Local cells for the benchmark: started on free loopback ports, members found by role."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from pathlib import Path

from lockcell.cli.localcell import LocalCell, LocalMember, free_port_base, http_json

START_TIMEOUT_S = 120.0
_LIVE: set[BenchCell] = set()


class BenchCell:
    """A running :class:`LocalCell` (fsync on, default lease) owned by the benchmark."""

    def __init__(self, local: LocalCell) -> None:
        self.local = local

    @classmethod
    def start(cls, root: Path, size: int, lease_ms: int = 12000) -> BenchCell:
        """Start a ``size``-replica cell under ``root`` and wait until every member is ready."""
        last: BaseException | None = None
        for attempt in range(3):
            base = free_port_base([*range(size), *range(100, 100 + size)])
            local = LocalCell(root / f"cell{size}-{attempt}", size=size, client_base=base,
                              peer_base=base + 100, lease_ms=lease_ms)
            try:
                local.start(timeout=START_TIMEOUT_S)
                cell = cls(local)
                _LIVE.add(cell)
                return cell
            except TimeoutError as exc:  # e.g. a port taken between the probe and the bind
                last = exc
                _stop(local)
        assert last is not None
        raise last

    @property
    def size(self) -> int:
        """Configured number of replicas."""
        return self.local.size

    @property
    def root(self) -> Path:
        """Data, logs and pid files."""
        return self.local.root

    def leader(self, timeout: float = 30.0) -> LocalMember:
        """The member that leads now (waits for one)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.local.leader()
            except (RuntimeError, OSError, KeyError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def follower(self) -> LocalMember:
        """A running member that does not lead."""
        leader = self.leader()
        return next(m for m in self.running() if m is not leader)

    def running(self) -> list[LocalMember]:
        """Members whose process runs."""
        return [m for m in self.local.members if m.process and m.process.poll() is None]

    def pid(self, member: LocalMember) -> int:
        """Process id of a running member."""
        assert member.process is not None
        return member.process.pid

    def pids(self) -> list[int]:
        """Process ids of every running member."""
        return [self.pid(m) for m in self.running()]

    def kill(self, member: LocalMember) -> None:
        """kill -9 one member and reap it."""
        self.local.kill(member, signal.SIGKILL)

    def signal_member(self, member: LocalMember, sig: int = signal.SIGTERM) -> None:
        """Send a signal to one member (SIGTERM: it stops as in a rolling restart)."""
        assert member.process is not None
        member.process.send_signal(sig)

    def reap(self, member: LocalMember, timeout: float = 30.0) -> None:
        """Wait until a signalled member's process has exited."""
        assert member.process is not None
        member.process.wait(timeout=timeout)

    def restart(self, member: LocalMember) -> None:
        """Start a stopped member's process again on its data directory."""
        self.local.start_member(member)

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until every running member is ready and all ``size`` members are voters."""
        self.local.wait_ready(timeout)

    def readyz(self, member: LocalMember) -> int:
        """The status of ``member``'s /readyz."""
        try:
            return http_json("GET", member.url + "/readyz", timeout=2)[0]
        except OSError:
            return 0

    def data_bytes(self, member: LocalMember) -> int:
        """Bytes on disk under ``member``'s data directory."""
        return sum(p.stat().st_size for p in member.data_dir.rglob("*") if p.is_file())

    def snapshot_bytes(self, member: LocalMember) -> int:
        """Size of ``member``'s newest snapshot file (0 if it has none)."""
        snaps = sorted(member.data_dir.rglob("snapshot-*.snap"))
        return snaps[-1].stat().st_size if snaps else 0

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of every member's log (for failure notes)."""
        out = []
        for member in self.local.members:
            path = self.root / "logs" / f"member-{member.index}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- member {member.index} ---\n" + "\n".join(tail))
        return "\n".join(out)

    def grep_logs(self, *words: str) -> list[str]:
        """Log lines of every member that contain one of ``words``."""
        hits = []
        for member in self.local.members:
            path = self.root / "logs" / f"member-{member.index}.log"
            if path.exists():
                for line in path.read_text(errors="replace").splitlines():
                    if any(w in line for w in words):
                        hits.append(f"m{member.index}: {line}")
        return hits

    def stop(self, keep_logs: Path | None = None) -> None:
        """Stop every member, copy the members' logs to ``keep_logs``, remove the data."""
        _LIVE.discard(self)
        _stop(self.local)
        if keep_logs is not None:
            shutil.rmtree(keep_logs, ignore_errors=True)
            shutil.copytree(self.root / "logs", keep_logs)
        shutil.rmtree(self.root, ignore_errors=True)


def stop_all() -> None:
    """Stop every cell still running (the run was interrupted)."""
    for cell in list(_LIVE):
        cell.stop()


def _stop(local: LocalCell) -> None:
    for member in local.members:
        if member.process is not None and member.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                member.process.send_signal(signal.SIGCONT)
    try:
        local.stop()
    except subprocess.TimeoutExpired:
        for member in local.members:
            if member.process is not None and member.process.poll() is None:
                member.process.kill()
