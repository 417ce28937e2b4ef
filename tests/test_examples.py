"""The examples the docs show, run as a new user would run them."""

from __future__ import annotations

import json
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


def test_the_docs_show_the_worker_example_and_the_app_image():
    """The worker is included whole (its page cannot drift); the app image as written."""
    page = (ROOT / "docs" / "client.md").read_text()
    assert '--8<-- "examples/worker.py"' in page
    assert (ROOT / "examples" / "Dockerfile.app").read_text().split("\n", 3)[3] in page


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
        assert read_line(worker.stdout).startswith("acked")  # the ack after the block
        assert worker.wait(timeout=30) == 0
        assert sidecar.get("/state").json()["busy"] is False
    finally:
        if worker.poll() is None:
            worker.kill()
        worker.wait(10)


def test_worker_shell_example_runs_under_the_wrapper(sidecar, tmp_path):
    """examples/worker.sh under `ecs-protection run`: SIGTERM lets the running job end,
    no new job starts (the sidecar drains), and the loop ends by itself."""
    script = (ROOT / "examples" / "worker.sh").read_text()
    fast = tmp_path / "worker.sh"
    fast.write_text(script.replace("sleep 20", "sleep 2"))
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
        assert app.wait(timeout=60) == 0  # the loop ended by itself
        assert app.stdout is not None
        assert app.stdout.read().split() == ["job", "done"]  # finished; no new job
        assert sidecar.get("/state").json()["leases"] == []
    finally:
        if app.poll() is None:
            app.kill()
        app.wait(10)


def test_task_definition_holds_sigterm_for_less_than_the_apps_stop_timeout():
    """The hold timeout leaves the app time to stop before ECS sends SIGKILL."""
    definition = json.loads((ROOT / "ecs" / "task-definition.json").read_text())
    app = next(c for c in definition["containerDefinitions"] if c["name"] == "app")
    env = {e["name"]: e["value"] for e in app["environment"]}
    hold = float(env["TASK_PROTECTION_HOLD_TIMEOUT_SECONDS"])
    assert 0 < hold <= app["stopTimeout"] - 5
    assert "TASK_PROTECTION_DRAIN_TIMEOUT_SECONDS" not in env  # the sidecar's, not run's
