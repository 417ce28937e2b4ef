"""The `ecs-protection` command on real processes: busy, run (PID-1 wrapper), state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.processes import SidecarProcess

CLI = [sys.executable, "-m", "ecs_protection"]


@pytest.fixture
def sidecar():
    process = SidecarProcess().start()
    yield process
    process.post("/release")
    process.stop()


def cli_env(sidecar: SidecarProcess) -> dict[str, str]:
    return {**os.environ, "TASK_PROTECTION_URL": sidecar.url}


def start(args: list[str], env: dict[str, str], **kwargs) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, *args], env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs
    )


def read_line(stream, timeout: float = 30) -> str:
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert got, "no line in time"
    return got[0].strip()


def wait_for_stderr(proc: subprocess.Popen[str], needle: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = read_line(proc.stderr, deadline - time.monotonic())
        if needle in line:
            return
    raise AssertionError(f"{needle!r} not logged")


LEASES_SEEN_BY_CHILD = (
    "import json, os, sys, urllib.request;"
    "s = json.load(urllib.request.urlopen(os.environ['TASK_PROTECTION_URL'] + '/state'));"
    "print(len(s['leases']), s['protection']['enabled']); sys.exit(7)"
)


def test_busy_holds_a_lease_while_cmd_runs_and_exits_with_its_code(sidecar):
    result = subprocess.run(
        [*CLI, "busy", "--", sys.executable, "-c", LEASES_SEEN_BY_CHILD],
        env=cli_env(sidecar),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 7
    assert result.stdout.strip() == "1 True"
    assert sidecar.get("/state").json()["leases"] == []


def test_busy_forwards_sigterm_to_cmd(sidecar):
    child = (
        "import signal, sys;"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42));"
        "print('ready', flush=True); signal.pause()"
    )
    proc = start(["busy", "--", sys.executable, "-c", child], cli_env(sidecar))
    assert read_line(proc.stdout) == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 42
    assert sidecar.get("/state").json()["leases"] == []


def test_busy_does_not_start_cmd_while_the_task_drains(sidecar, tmp_path: Path):
    sidecar.post("/busy", {"lease": "other-job"})
    sidecar.signal(signal.SIGTERM)
    sidecar.wait_for_log("draining")
    marker = tmp_path / "ran"
    result = subprocess.run(
        [*CLI, "busy", "--", "touch", str(marker)],
        env=cli_env(sidecar),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 75
    assert "stopping" in result.stderr
    assert not marker.exists()


def test_state_prints_json_and_unreachable_exits_69(sidecar):
    result = subprocess.run(
        [*CLI, "state"],
        env=cli_env(sidecar),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert '"busy": false' in result.stdout
    result = subprocess.run(
        [*CLI, "state"],
        env={**os.environ, "TASK_PROTECTION_URL": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 69
    assert "unreachable" in result.stderr


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("import sys; sys.exit(5)", 5),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + 9),
    ],
)
def test_run_propagates_the_exit_code(sidecar, code, expected):
    result = subprocess.run(
        [*CLI, "run", "--", sys.executable, "-c", code],
        env=cli_env(sidecar),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == expected


def test_run_reports_a_missing_command():
    result = subprocess.run(
        [*CLI, "run", "--", "no-such-command-xyz"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 127


TERM_REPORTER = (
    "import signal, sys;"
    "signal.signal(signal.SIGTERM, lambda *a: (print('TERM', flush=True), sys.exit(0)));"
    "print('ready', flush=True)\n"
    "while True: signal.pause()"
)


def test_run_holds_sigterm_while_a_lease_is_held(sidecar):
    sidecar.post("/busy", {"lease": "job"})
    proc = start(
        ["run", "--poll-seconds", "0.05", "--", sys.executable, "-c", TERM_REPORTER],
        cli_env(sidecar),
    )
    assert read_line(proc.stdout) == "ready"
    proc.send_signal(signal.SIGTERM)
    wait_for_stderr(proc, "SIGTERM held back")
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.5)  # the child has not been told
    sidecar.post("/idle", {"lease": "job"})
    assert read_line(proc.stdout) == "TERM"
    assert proc.wait(timeout=30) == 0


def test_run_forwards_sigterm_at_once_when_idle(sidecar):
    proc = start(["run", "--", sys.executable, "-c", TERM_REPORTER], cli_env(sidecar))
    assert read_line(proc.stdout) == "ready"
    proc.send_signal(signal.SIGTERM)
    assert read_line(proc.stdout) == "TERM"
    assert proc.wait(timeout=30) == 0


def test_run_stops_holding_after_the_hold_timeout(sidecar):
    sidecar.post("/busy", {"lease": "stuck"})
    proc = start(
        [
            "run",
            "--hold-timeout",
            "0.3",
            "--poll-seconds",
            "0.05",
            "--",
            sys.executable,
            "-c",
            TERM_REPORTER,
        ],
        cli_env(sidecar),
    )
    assert read_line(proc.stdout) == "ready"
    proc.send_signal(signal.SIGTERM)
    assert read_line(proc.stdout) == "TERM"
    assert proc.wait(timeout=30) == 0


def test_run_forwards_other_signals_immediately(sidecar):
    child = (
        "import signal;"
        "signal.signal(signal.SIGUSR1, lambda *a: print('USR1', flush=True));"
        "print('ready', flush=True)\n"
        "while True: signal.pause()"
    )
    sidecar.post("/busy", {"lease": "job"})
    proc = start(["run", "--", sys.executable, "-c", child], cli_env(sidecar))
    assert read_line(proc.stdout) == "ready"
    proc.send_signal(signal.SIGUSR1)
    assert read_line(proc.stdout) == "USR1"
    proc.kill()
    proc.wait(10)


# The grandchild outlives its parent, waits to be re-parented, says to whom, then exits:
# unless the new parent reaps it, it stays a zombie.
ORPHAN_MAKER = (
    "import os, sys, time\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    parent = os.getpid()\n"
    "    if os.fork() == 0:\n"
    "        while os.getppid() == parent:\n"
    "            time.sleep(0.01)\n"
    "        print(os.getpid(), os.getppid(), flush=True)\n"
    "        os._exit(0)\n"
    "    os._exit(0)\n"
    "os.waitpid(pid, 0)\n"
    "sys.stdin.readline()\n"
)


def test_run_reaps_orphaned_grandchildren(sidecar):
    proc = start(
        ["run", "--", sys.executable, "-c", ORPHAN_MAKER], cli_env(sidecar), stdin=subprocess.PIPE
    )
    grandchild, new_parent = map(int, read_line(proc.stdout).split())
    assert new_parent == proc.pid  # adopted by the wrapper (a child subreaper), not init
    status = Path(f"/proc/{grandchild}/status")
    deadline = time.monotonic() + 30
    while status.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not status.exists(), status.read_text()  # reaped, not left a zombie
    assert proc.stdin is not None
    proc.stdin.write("done\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0
