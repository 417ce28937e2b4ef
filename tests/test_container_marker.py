"""Where podman cannot run, the container tests say so in one line, and under CI=true they
fail: a CI run that quietly skipped them would prove nothing about the image."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
REASON = "podman is not installed"


def run_marked_test(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_marked.py"
    test.write_text("import pytest\n\n@pytest.mark.container\ndef test_x():\n    pass\n")
    environ = {k: v for k, v in os.environ.items() if k != "CI"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", str(test), "--noconftest", "-p",
         "tests.container_fixtures", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path)],
        cwd=ROOT,
        # Only the plugin under test: the installed ones take seconds to load.
        env={**environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
             "ECS_PROTECTION_NO_CONTAINERS": REASON, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )  # fmt: skip


def test_without_podman_one_line_says_the_container_tests_did_not_run(tmp_path):
    result = run_marked_test(tmp_path)
    assert result.returncode == 0, result.stdout
    assert f"CONTAINER TESTS DID NOT RUN: {REASON}" in result.stdout
    assert "1 skipped" in result.stdout


def test_under_ci_without_podman_the_container_tests_fail(tmp_path):
    result = run_marked_test(tmp_path, CI="true")
    assert result.returncode != 0
    assert f"container tests cannot run under CI: {REASON}" in result.stdout
