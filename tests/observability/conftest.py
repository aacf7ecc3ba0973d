"""Fixtures of the observability tests: a real local cell with traffic, helm, Chromium.

Each module that needs a cell starts its own (ports drawn at random in 30000-40000) and
stops it in the finalizer. Under xdist, whole modules go to one worker, so a cell is never
started twice for one module.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockcell.cli.localcell import LocalCell, http_json
from lockcell.cli.localcell import free_port_base as localcell_free_port_base

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
CHART = ROOT / "charts" / "lockcell"
FETCH = ROOT / "tools" / "fetch-k8s-binaries.sh"
CELL_SIZE = 3


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Hand out whole modules to workers: a module's tests share its cell."""
    from xdist.scheduler import LoadScopeScheduling

    return LoadScopeScheduling(config, log)


# --------------------------------------------------------------------------- ports and cells


def free_port_base(count: int, rng: random.Random | None = None) -> int:
    """A random port base with the ``count`` ports from it all free."""
    return localcell_free_port_base(range(count), rng)


def start_cell(root: Path, name: str = "obs", env: dict[str, str] | None = None) -> LocalCell:
    """A running 3-member cell on random free loopback ports."""
    client = free_port_base(2 * CELL_SIZE)
    cell = LocalCell(root, size=CELL_SIZE, client_base=client, peer_base=client + CELL_SIZE,
                     cell=name, extra_env=dict(env or {}))
    try:
        cell.start(timeout=60)
    except BaseException:
        cell.stop()
        raise
    return cell


def call(method: str, url: str, body: Any = None, expect: tuple[int, ...] = (),
         headers: dict[str, str] | None = None) -> Any:
    status, answer = http_json(method, url, body, timeout=15, headers=headers)
    if expect:
        assert status in expect, f"{method} {url}: {status} {answer}"
    return answer


def wait_until(check: Any, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {message}")


def drive_traffic(cell: LocalCell) -> dict[str, Any]:
    """Sessions, handles, writes, shared and exclusive locks, a queued acquire, events, a
    KeepAlive, an expired session and a lock-delay refusal, bad calls, the status page."""
    leader = cell.leader()
    follower = next(m for m in cell.members if m is not leader)
    lead, other = leader.url, follower.url
    a = call("POST", f"{other}/v1/sessions", {}, (201,))["session"]  # forwarded
    b = call("POST", f"{lead}/v1/sessions", {}, (201,))["session"]
    path = f"/ls/local/obs-{random.randrange(1 << 30)}"
    ha = call("POST", f"{lead}/v1/sessions/{a}/handles",
              {"path": path, "create": {"kind": "file"}}, (201,))["handle"]
    hb = call("POST", f"{lead}/v1/sessions/{b}/handles",
              {"path": path, "events": ["contents_modified", "lock_acquired"]},
              (200,))["handle"]
    call("POST", f"{lead}/v1/sessions/{a}/handles/{ha}/lock", {"mode": "exclusive"}, (200,))
    call("POST", f"{lead}/v1/sessions/{b}/handles/{hb}/lock", {"wait_ms": 0}, (409,))
    call("PUT", f"{lead}/v1/sessions/{a}/handles/{ha}", {"data": "aGVsbG8="}, (200,))
    # A blocking acquire queues at the leader until the holder releases.
    waited: dict[str, Any] = {}

    def blocking() -> None:
        waited["answer"] = http_json("POST", f"{lead}/v1/sessions/{b}/handles/{hb}/lock",
                                     {"mode": "exclusive", "wait_ms": 10000}, timeout=20)

    thread = threading.Thread(target=blocking)
    thread.start()
    time.sleep(0.3)
    call("DELETE", f"{lead}/v1/sessions/{a}/handles/{ha}/lock", None, (204,))
    thread.join(20)
    assert waited["answer"][0] == 200, waited
    events = call("POST", f"{lead}/v1/sessions/{b}/keepalive", {"wait_ms": 0}, (200,))
    # Shared mode on a second file.
    shared = f"{path}-shared"
    hs = call("POST", f"{lead}/v1/sessions/{a}/handles",
              {"path": shared, "create": {"kind": "file"}}, (201,))["handle"]
    call("POST", f"{lead}/v1/sessions/{a}/handles/{hs}/lock", {"mode": "shared"}, (200,))
    # A session that expires while holding a lock: lock-delay then refuses the next taker.
    c = call("POST", f"{lead}/v1/sessions", {"lease_ms": 1000}, (201,))["session"]
    delayed = f"{path}-delayed"
    hc = call("POST", f"{lead}/v1/sessions/{c}/handles",
              {"path": delayed, "create": {"kind": "file"}, "lock_delay_ms": 30000},
              (201,))["handle"]
    call("POST", f"{lead}/v1/sessions/{c}/handles/{hc}/lock", {}, (200,))
    hd = call("POST", f"{lead}/v1/sessions/{a}/handles", {"path": delayed}, (200,))["handle"]
    # (A read does not renew the lease; a KeepAlive would.)
    wait_until(lambda: http_json("GET", f"{lead}/v1/sessions/{c}/handles/{hc}/stat")[0] == 410,
               15, "the short session to expire")
    call("POST", f"{lead}/v1/sessions/{a}/handles/{hd}/lock", {"wait_ms": 0}, (409,))
    # Errors: a bad body, an unknown session, an unknown route.
    call("POST", f"{lead}/v1/sessions", {"lease_ms": "soon"}, (400,))
    call("POST", f"{lead}/v1/sessions/{'0' * 32}/keepalive", {}, (404,))
    call("GET", f"{lead}/no/such/route", None, (404,))
    for member in cell.members:
        with urllib.request.urlopen(f"{member.url}/", timeout=10) as page:
            assert page.status == 200
    return {"sessions": [a, b], "path": path, "events": events["events"]}


def scrape(cell: LocalCell) -> dict[str, str]:
    """Member URL → its /metrics text."""
    texts = {}
    for member in cell.members:
        with urllib.request.urlopen(f"{member.url}/metrics", timeout=10) as response:
            texts[member.url] = response.read().decode()
    return texts


@pytest.fixture(scope="module")
def cell(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCell]:
    """A running 3-member cell for one module (named by the module's CELL_NAME, with the
    member environment in its CELL_ENV)."""
    name = str(getattr(request.module, "CELL_NAME", "obs"))
    env = dict(getattr(request.module, "CELL_ENV", {}))
    started = start_cell(tmp_path_factory.mktemp("cell"), name, env)
    try:
        yield started
    finally:
        started.stop()


# --------------------------------------------------------------------------- tools


@pytest.fixture(scope="session")
def k8s_bin() -> Path:
    """Directory with helm (tools/fetch-k8s-binaries.sh, cached in .cache/k8s-bin)."""
    proc = subprocess.run(["bash", str(FETCH)], capture_output=True, text=True, timeout=300,
                          check=False)
    if proc.returncode == 2:
        pytest.skip(f"helm unavailable here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip().splitlines()[-1])
    assert (path / "helm").exists()
    return path


def _apt_install(package: str) -> str:
    """Install a Debian package; '' on success, else why not."""
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    if os.geteuid() != 0:
        return "not root, cannot apt-get install"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-q", package]
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900,
                          check=False)
    if proc.returncode == 0:
        return ""
    subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env,
                   timeout=600, check=False)
    proc = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900,
                          check=False)
    if proc.returncode == 0:
        return ""
    return f"apt-get install {package} failed: {proc.stderr.strip()[-500:]}"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path of Debian's headless-capable Chromium, installed with apt-get if missing."""
    found = shutil.which("chromium")
    if found is None:
        why = _apt_install("chromium")
        found = shutil.which("chromium")
        if found is None:
            pytest.skip(f"Chromium is not installed and could not be: {why}")
    return found


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def run_chromium(chromium: str, profile: Path, *args: str, timeout: float = 60) -> str:
    """Run headless Chromium with a fresh profile directory; returns its stdout."""
    profile.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout
