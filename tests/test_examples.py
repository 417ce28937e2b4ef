"""The examples the README shows, run as a new user would run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import SidecarProcess
from tests.test_cli import read_line

ROOT = Path(__file__).parent.parent


@pytest.fixture
def sidecar():
    process = SidecarProcess().start()
    yield process
    process.stop()


def test_readme_shows_the_worker_example_verbatim():
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "examples" / "worker.py").read_text() in readme
    assert (ROOT / "examples" / "Dockerfile.app").read_text().split("\n", 3)[3] in readme


def test_worker_example_finishes_its_job_after_sigterm(sidecar):
    env = {**os.environ, "TASK_PROTECTION_URL": sidecar.url}
    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "worker.py")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert read_line(worker.stdout).startswith("working for")
        assert sidecar.get("/state").json()["busy"] is True
        worker.send_signal(signal.SIGTERM)
        assert read_line(worker.stdout) == "done"
        assert worker.wait(timeout=30) == 0
        assert sidecar.get("/state").json()["busy"] is False
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(10)


def test_worker_shell_example_runs_under_the_wrapper(sidecar, tmp_path):
    """examples/worker.sh under `ecs-protection run`: SIGTERM waits for the running job."""
    # One short job, then idle: outside ECS nothing drains the sidecar, so a looping
    # script would keep starting jobs (on ECS, stop detection refuses them).
    script = (ROOT / "examples" / "worker.sh").read_text()
    script = script.replace("sleep 20", "sleep 1").replace("while true; do", "for _ in 1; do")
    fast = tmp_path / "worker.sh"
    fast.write_text(script + "exec sleep 60\n")
    fast.chmod(0o755)
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "TASK_PROTECTION_URL": sidecar.url,
        "PATH": f"{bindir}:{os.environ['PATH']}",
    }
    app = subprocess.Popen(
        [str(bindir / "ecs-protection"), "run", "--poll-seconds", "0.05", "--", str(fast)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert read_line(app.stdout) == "job started"
        app.send_signal(signal.SIGTERM)
        assert read_line(app.stdout) == "job done"
        assert app.wait(timeout=30) == 128 + signal.SIGTERM  # the script itself is then stopped
    finally:
        if app.poll() is None:
            app.kill()
        app.wait(10)
