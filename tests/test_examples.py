"""The examples the README shows, run as a new user would run them."""

from __future__ import annotations

import json
import os
import re
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
    """The worker is included whole (its page cannot drift); the app image as users write it."""
    page = (ROOT / "docs" / "client.md").read_text()
    assert '--8<-- "examples/worker.py"' in page
    assert users_form_of_the_app_image() in page


def users_form_of_the_app_image() -> str:
    """examples/Dockerfile.app as users write it: the published client installed directly
    (the file takes it as a build argument, which the project's tests set to its wheel)."""
    text = (ROOT / "examples" / "Dockerfile.app").read_text().split("\n", 3)[3]
    pin = re.search(r'^ARG CLIENT=("ecs-protection==[\w.]+")$', text, flags=re.MULTILINE)
    assert pin, "Dockerfile.app takes the client as ARG CLIENT, the release by default"
    hook = re.search(
        r"(?:^# .*\n)*^ARG CLIENT=.*\n(?:^# .*\n)*^RUN --mount=type=bind,target=/context (.*)\n",
        text,
        flags=re.MULTILINE,
    )
    assert hook, "Dockerfile.app installs ${CLIENT} with the build context mounted"
    install = hook[1].replace('"${CLIENT}"', pin[1])
    return text[: hook.start()] + f"RUN {install}\n" + text[hook.end() :]


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
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "TASK_PROTECTION_URL": sidecar.url,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "JOB_SECONDS": "2",
    }
    worker = str(ROOT / "examples" / "worker.sh")
    app = subprocess.Popen(
        [str(bindir / "ecs-protection"), "run", "--poll-seconds", "0.05", "--", worker],
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
        assert app.stdout.read().splitlines() == ["job done", "job acked"]  # no new job
        assert sidecar.get("/state").json()["leases"] == []
    finally:
        if app.poll() is None:
            app.kill()
        app.wait(10)


def test_worker_shell_example_acks_a_job_when_sigterm_comes_right_after_it(tmp_path):
    """SIGTERM reaches worker.sh once no lease is held, which can be after the job and
    before its ack: the ack still runs, and the loop ends after it without a new job.
    A stand-in `ecs-protection` sends that SIGTERM as it exits, so the moment is exact."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "ecs-protection"
    fake.write_text('#!/bin/sh\necho "job ran"\nkill -TERM "$PPID"\nexit 0\n')
    fake.chmod(0o755)
    result = subprocess.run(
        [str(ROOT / "examples" / "worker.sh")],
        env={**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.splitlines() == ["job ran", "job acked"]
    assert result.returncode == 0


def test_task_definition_holds_sigterm_for_less_than_the_apps_stop_timeout():
    """The hold timeout leaves the app time to stop before ECS sends SIGKILL."""
    definition = json.loads((ROOT / "ecs" / "task-definition.json").read_text())
    app = next(c for c in definition["containerDefinitions"] if c["name"] == "app")
    env = {e["name"]: e["value"] for e in app["environment"]}
    hold = float(env["TASK_PROTECTION_HOLD_TIMEOUT_SECONDS"])
    assert 0 < hold <= app["stopTimeout"] - 5
    assert "TASK_PROTECTION_DRAIN_TIMEOUT_SECONDS" not in env  # the sidecar's, not run's
