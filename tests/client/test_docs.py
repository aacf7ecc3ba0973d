"""Runs every ```python and ```sh example of docs/client.md and README.md against a real cell."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lockcell.cli.localcell import LocalCell

from .support import ROOT, cli_env

DOC = ROOT / "docs" / "client.md"
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(python|sh)\n(.*?)^```", re.S | re.M)


def blocks(doc: Path = DOC) -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(doc.read_text())]


def test_the_readme_has_runnable_examples() -> None:
    kinds = [kind for kind, _ in blocks(README)]
    assert kinds.count("python") >= 1 and kinds.count("sh") >= 2


def test_the_doc_has_examples() -> None:
    kinds = [kind for kind, _ in blocks()]
    assert kinds.count("python") >= 5 and kinds.count("sh") >= 4


EXAMPLES = [(DOC, i) for i in range(len(blocks(DOC)))] + [
    (README, i) for i in range(len(blocks(README)))]


@pytest.mark.parametrize(("doc", "index"), EXAMPLES,
                         ids=[f"{d.name}-{i}" for d, i in EXAMPLES])
def test_doc_example(cell: LocalCell, tmp_path: Path, doc: Path, index: int) -> None:
    kind, code = blocks(doc)[index]
    if kind == "python":
        argv = [sys.executable, "-c", code]
    else:
        argv = ["bash", "-euo", "pipefail", "-c", code]
    # shell examples run from the repository root (they name examples/...)
    done = subprocess.run(argv, cwd=tmp_path if kind == "python" else ROOT,
                          env=cli_env(cell, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=90)
    assert done.returncode == 0, f"{kind} example {index} failed:\n{code}\n{done.stderr}"
