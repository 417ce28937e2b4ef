"""The `ecs-protection` command on real processes: busy, run (PID-1 wrapper), state.

Also: the wrapper under storms of signals and orphans (it takes signals without any
handler code), and a shell job loop that ends cleanly on SIGTERM through POST /drain.
"""

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
from tests.support import read_line, wait_for_line

CLI = [sys.executable, "-m", "ecs_protection"]
SCRIPTS = Path(__file__).parent / "scripts"


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


def wait_for_stderr(proc: subprocess.Popen[str], needle: str, timeout: float = 30) -> str:
    return wait_for_line(proc.stderr, needle, timeout)


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
        "import signal, sys, time;"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42));"
        "print('ready', flush=True)\n"
        "while True: time.sleep(0.05)"
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
    "import signal, sys, time;"
    "signal.signal(signal.SIGTERM, lambda *a: (print('TERM', flush=True), sys.exit(0)));"
    "print('ready', flush=True)\n"
    "while True: time.sleep(0.05)"
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
    assert "held back" in proc.stderr.read()  # it was held, then let go


TERM_COUNTER = (
    "import signal, sys, time;"
    "terms = [];"
    "signal.signal(signal.SIGTERM, lambda *a: (terms.append(1), print('TERM', flush=True),"
    " len(terms) == 2 and sys.exit(0)));"
    "print('ready', flush=True)\n"
    "while True: time.sleep(0.05)"
)


def test_run_forwards_a_second_sigterm_at_once_even_after_a_hold(sidecar):
    """The app ignored the first SIGTERM (let go after the hold timeout): the next one is
    passed on at once, not held back again."""
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
            TERM_COUNTER,
        ],
        cli_env(sidecar),
    )
    assert read_line(proc.stdout) == "ready"
    proc.send_signal(signal.SIGTERM)
    assert read_line(proc.stdout) == "TERM"  # after the hold timeout
    proc.send_signal(signal.SIGTERM)
    assert read_line(proc.stdout) == "TERM"
    assert proc.wait(timeout=30) == 0
    log = proc.stderr.read()
    assert log.count("held back") == 1
    assert "second SIGTERM: forwarding it now" in log


def test_run_forwards_other_signals_immediately(sidecar):
    # SIGINT's handler set, not inherited: a shell starts a background job (this test
    # run, say) with SIGINT ignored, and an ignored signal stays ignored through exec,
    # so the forwarded SIGINT would not end the child.
    child = (
        "import signal, time;"
        "signal.signal(signal.SIGINT, signal.default_int_handler);"
        "signal.signal(signal.SIGUSR1, lambda *a: print('USR1', flush=True));"
        "print('ready', flush=True)\n"
        "while True: time.sleep(0.05)"
    )
    sidecar.post("/busy", {"lease": "job"})
    proc = start(["run", "--", sys.executable, "-c", child], cli_env(sidecar))
    assert read_line(proc.stdout) == "ready"
    proc.send_signal(signal.SIGUSR1)
    assert read_line(proc.stdout) == "USR1"
    proc.send_signal(signal.SIGINT)  # forwarded at once too: the child stops, then run
    assert proc.wait(timeout=30) == 128 + signal.SIGINT


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


# The child forks an intermediate process that forks N grandchildren and exits: they
# are re-parented to the wrapper (a child subreaper), and exit together when the
# intermediate's pipe closes, a SIGCHLD each. The child then waits until the wrapper
# has reaped them all (it has no other child, alive or zombie), says so, and waits
# for TERM.
ORPHAN_STORM = r"""
import os, signal, sys, time
signal.signal(signal.SIGUSR1, lambda *a: None)
signal.signal(signal.SIGWINCH, lambda *a: None)
signal.signal(signal.SIGTERM, lambda *a: (print("TERM", flush=True), os._exit(0)))
print("ready", flush=True)
sys.stdin.readline()
wrapper = os.getppid()
read, write = os.pipe()
middle = os.fork()
if middle == 0:
    for _ in range(int(sys.argv[1])):
        if os.fork() == 0:
            os.close(write)
            os.read(read, 1)
            os._exit(0)
    os._exit(0)
os.close(read)
os.close(write)
os.waitpid(middle, 0)

def left():
    # processes the wrapper has not reaped yet: alive or zombie, other than us
    found = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == wrapper:
                found += 1
    return found

deadline = time.monotonic() + 60
while left() and time.monotonic() < deadline:
    time.sleep(0.02)
count = left()
print("reaped" if not count else f"not reaped: {count}", flush=True)
while True:
    time.sleep(0.05)
"""


def signal_storm(pid: int, stop: threading.Event) -> threading.Thread:
    def storm() -> None:
        signals = (signal.SIGUSR1, signal.SIGWINCH, signal.SIGCHLD, signal.SIGCONT)
        sent = 0
        while not stop.is_set() and sent < 20_000:
            try:
                os.kill(pid, signals[sent % len(signals)])
            except ProcessLookupError:
                return
            sent += 1

    thread = threading.Thread(target=storm, daemon=True)
    thread.start()
    return thread


def orphan_storm_under_signal_storm(command: list[str], orphans: int) -> None:
    proc = subprocess.Popen(
        [*command, "--", sys.executable, "-c", ORPHAN_STORM, str(orphans)],
        env={**os.environ, "TASK_PROTECTION_URL": "http://127.0.0.1:9"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stop = threading.Event()
    try:
        assert read_line(proc.stdout) == "ready"
        storm = signal_storm(proc.pid, stop)
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert read_line(proc.stdout, timeout=90) == "reaped"
        stop.set()
        storm.join(30)
        proc.send_signal(signal.SIGTERM)  # still responsive: forwarded at once (idle)
        assert read_line(proc.stdout) == "TERM"
        assert proc.wait(timeout=30) == 0
        assert proc.stderr is not None
        assert "Traceback" not in proc.stderr.read()
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("attempt", range(5))
def test_run_survives_thousands_of_orphans_and_a_signal_storm(attempt):
    """Each orphan's exit is a SIGCHLD, on top of 20,000 other signals; repeated."""
    orphan_storm_under_signal_storm([*CLI, "run"], 2000)


def test_run_with_the_portable_signal_fallback_survives_the_same_storm():
    """The set_wakeup_fd() path (for platforms without sigtimedwait), forced here."""
    orphan_storm_under_signal_storm(
        [sys.executable, str(SCRIPTS / "run_wakeup_fd.py"), "run"], 2000
    )


def test_busy_forwards_signals_under_a_storm(sidecar):
    child = (
        "import signal, sys, time;"
        "signal.signal(signal.SIGUSR1, lambda *a: None);"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42));"
        "print('ready', flush=True)\n"
        "while True: time.sleep(0.05)"
    )
    proc = start(["busy", "--", sys.executable, "-c", child], cli_env(sidecar))
    stop = threading.Event()
    try:
        assert read_line(proc.stdout) == "ready"
        signal_storm(proc.pid, stop).join(60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 42
        assert sidecar.get("/state").json()["leases"] == []
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


# A job loop under `run`: each job is `ecs-protection busy`; exit 75 ends the loop. The
# trap only reports SIGTERM (a shell runs it after the current command).
JOB_LOOP = """
trap 'echo "loop got TERM"' TERM
while :; do
    "$PY" -m ecs_protection busy -- sh -c 'echo "job started"; sleep 1; echo "job done"'
    code=$?
    echo "busy exited $code"
    if [ "$code" -eq 75 ]; then exit 0; fi
done
"""


def test_run_drains_the_sidecar_so_a_busy_loop_ends_without_cutting_a_job(sidecar):
    proc = start(
        ["run", "--poll-seconds", "0.05", "--", "sh", "-c", JOB_LOOP],
        {**cli_env(sidecar), "PY": sys.executable},
    )
    try:
        assert read_line(proc.stdout) == "job started"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert proc.stdout is not None
        lines = ["job started", *proc.stdout.read().split("\n")]
        assert lines.count("job started") == 1  # no job started after SIGTERM
        assert "job done" in lines  # and the one running was not cut
        assert lines.index("busy exited 0") < lines.index("busy exited 75")
        state = sidecar.get("/state").json()
        assert state["draining"] is True
        assert state["leases"] == []
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
