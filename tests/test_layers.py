"""Keeps the layers pointing one way: pure cores import no I/O, clocks, asyncio or packages
(orjson, a codec like json, aside)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server" / "lockcell"
OPERATOR = ROOT / "operator" / "lockcell_operator"

# Modules a pure, deterministic core may use: the standard library's, and orjson.
PURE_ALLOWED = {
    "__future__", "abc", "base64", "binascii", "bisect", "collections", "dataclasses",
    "enum", "functools", "hashlib", "heapq", "itertools", "json", "math", "operator", "re",
    "struct", "typing", "zlib", "random", "string", "copy", "types",
    "orjson",  # a JSON codec like ``json`` (deterministic, no I/O): every replica's per-entry codec
}
# Forbidden even though they are standard library: I/O, time, concurrency, OS access.
PURE_FORBIDDEN = {
    "asyncio", "time", "datetime", "os", "io", "socket", "threading", "subprocess",
    "pathlib", "select", "selectors", "signal", "secrets", "shutil", "tempfile", "logging",
}

# Which lockcell packages each layer may import (DESIGN.md §1: api → node → transport |
# storage → statemachine | raft; client uses only the public HTTP API).
LAYER_IMPORTS = {
    "raft": {"raft"},
    "statemachine": {"statemachine"},
    "storage": {"storage", "raft"},
    "transport": {"transport", "raft"},
    "node": {"node", "raft", "statemachine", "storage", "transport", "observability"},
    "observability": {"observability", "node", "raft", "statemachine"},
    "api": {"api", "node", "raft", "statemachine", "storage", "transport", "observability"},
    "client": {"client"},
}


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append(("." * node.level + (node.module or ""), node.lineno))
            else:
                found.append((node.module or "", node.lineno))
    return found


def _modules(package: str) -> list[Path]:
    return sorted((SERVER / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["raft", "statemachine"])
def test_pure_cores_import_nothing_impure(package: str) -> None:
    problems = []
    for path in _modules(package):
        for name, line in _imports(path):
            if name.startswith("."):
                continue
            top = name.split(".")[0]
            if top == "lockcell":
                layer = name.split(".")[1] if "." in name else ""
                if layer != package:
                    problems.append(f"{path.name}:{line} imports {name}")
            elif top in PURE_FORBIDDEN or top not in PURE_ALLOWED:
                problems.append(f"{path.name}:{line} imports {name}")
    assert not problems, "pure core imports I/O, clocks or packages:\n" + "\n".join(problems)


@pytest.mark.parametrize("layer", sorted(LAYER_IMPORTS))
def test_layers_point_one_way(layer: str) -> None:
    allowed = LAYER_IMPORTS[layer]
    problems = []
    for path in _modules(layer):
        for name, line in _imports(path):
            parts = name.split(".")
            if parts[0] == "lockcell" and len(parts) > 1 and parts[1] not in allowed:
                problems.append(f"{path.relative_to(SERVER)}:{line} imports {name}")
    assert not problems, f"{layer} reaches a layer it must not:\n" + "\n".join(problems)


def test_operator_never_imports_the_server_package() -> None:
    problems = []
    for path in sorted(OPERATOR.rglob("*.py")):
        for name, line in _imports(path):
            if name == "lockcell" or name.startswith("lockcell."):
                problems.append(f"{path.relative_to(OPERATOR)}:{line} imports {name}")
    assert not problems, "the operator talks to cells over HTTP only:\n" + "\n".join(problems)


def test_every_module_opens_with_a_docstring() -> None:
    missing = []
    for root in (SERVER, OPERATOR):
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text())
            if ast.get_docstring(tree) is None:
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, "modules without a docstring:\n" + "\n".join(missing)


def test_the_checker_catches_a_bad_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('"""x."""\nimport time\nfrom asyncio import sleep\n')
    names = {name for name, _ in _imports(bad)}
    assert names & PURE_FORBIDDEN == {"time", "asyncio"}
