"""The storage benchmark runs end to end (tiny durations) and reports every configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("where", ["", "not/yet/made"])
def test_storage_bench_quick_run(tmp_path: Path, where: str) -> None:
    """Runs in an existing --dir and in one it has to create first."""
    directory = tmp_path / where
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.storage_bench",
            "--quick",
            "--json",
            "--duration",
            "0.02",
            "--dir",
            str(directory),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = json.loads(result.stdout)
    appends = {(r["backend"], r["batch_size"]): r for r in rows if r["op"] == "append"}
    for backend in ("lockcell-wal", "sqlite3-wal-full"):
        for batch in (1, 8, 64, 512):
            row = appends[(backend, batch)]
            assert row["appends_per_s"] > 0
            assert row["entries_per_s"] >= row["appends_per_s"] * batch * 0.99
    assert not list(directory.iterdir())  # cleaned up after itself
