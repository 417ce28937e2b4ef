"""The module map holds: the edges (HTTP, signals, stop detection) talk to the service
only, and benchmarks may use the tests' fakes but tests never import benchmarks (they run
them as programs), so the two never import each other in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("edge", ["web", "drain", "metadata", "app"])
def test_the_edges_reach_the_core_only_through_the_service(edge):
    used = imports(ROOT / "sidecar" / f"{edge}.py")
    assert "sidecar.reconciler" not in used
    if edge != "app":  # app.py builds the Policy the service runs with
        assert "sidecar.machine" not in used


def test_only_the_service_drives_the_reconciler():
    users = {
        path.name
        for path in (ROOT / "sidecar").rglob("*.py")
        if "sidecar.reconciler" in imports(path)
    }
    assert users == {"service.py"}


def test_tests_never_import_benchmarks():
    offenders = [
        path.name
        for path in (ROOT / "tests").rglob("*.py")
        if any(name == "benchmarks" or name.startswith("benchmarks.") for name in imports(path))
    ]
    assert offenders == []
