"""Signals on the real process: SIGTERM and SIGINT drain (exit codes, second signal),
every other signal that would kill it is logged and ignored, and a signal during
start-up is acted on like a late one; config errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from sidecar.drain import SignalInbox
from tests.processes import SidecarProcess, sidecar_python


@pytest.fixture
def spawn():
    started: list[SidecarProcess] = []

    def _spawn(env: dict[str, str] | None = None, args: tuple[str, ...] = ()) -> SidecarProcess:
        process = SidecarProcess(env, args)
        started.append(process)
        return process.start()

    yield _spawn
    for process in started:
        process.stop()


def test_idle_sigterm_exits_zero_at_once(spawn):
    # "At once": on the drain itself, not after its timeout, which is far beyond the
    # wait below; the exit's reason says which it was (no clock is read).
    sidecar = spawn({"TASK_PROTECTION_DRAIN_TIMEOUT_SECONDS": "3600"})
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(timeout=120) == 0
    exiting = sidecar.wait_for_log("exiting with code 0")
    assert exiting["exit_code"] == 0
    assert exiting["message"] == "exiting with code 0: drained: no lease held"


def test_sigint_drains_like_sigterm(spawn):
    sidecar = spawn()
    sidecar.signal(signal.SIGINT)
    assert sidecar.wait() == 0


def test_busy_sidecar_keeps_serving_until_idle_then_exits_zero(spawn):
    sidecar = spawn()
    assert sidecar.post("/busy", {"lease": "job"}).status_code == 200
    sidecar.signal(signal.SIGTERM)
    sidecar.wait_for_log("SIGTERM: draining")

    state = sidecar.get("/state").json()
    assert (state["draining"], state["busy"]) == (True, True)
    assert state["drain_deadline"] is not None
    refused = sidecar.post("/busy", {"lease": "new-job"})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "Draining"
    assert sidecar.post("/busy", {"lease": "job"}).status_code == 200  # a heartbeat still works
    assert sidecar.get("/healthz").json() == {"status": "ok"}
    assert sidecar.proc.poll() is None

    assert sidecar.post("/idle", {"lease": "job"}).json() == {"released": True, "leases": 0}
    assert sidecar.wait() == 0


def test_drain_timeout_exits_three_and_names_the_leases(spawn):
    sidecar = spawn({"TASK_PROTECTION_DRAIN_TIMEOUT_SECONDS": "1"})
    sidecar.post("/busy", {"lease": "stuck-worker"})
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait() == 3
    line = sidecar.wait_for_log("exiting with code 3")
    assert "stuck-worker" in line["message"]


def test_second_signal_exits_at_once(spawn):
    sidecar = spawn()
    sidecar.post("/busy", {"lease": "job"})
    sidecar.signal(signal.SIGTERM)
    sidecar.wait_for_log("SIGTERM: draining")
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait() == 128 + signal.SIGTERM


def test_a_waiting_busy_request_does_not_hold_the_exit(spawn):
    """A /busy still waiting for confirmation is cut off when the process exits."""
    sidecar = spawn({"ECS_AGENT_URI": "http://127.0.0.1:9/api/none"})  # nothing listens there
    outcome: dict[str, object] = {}

    def wait_for_busy() -> None:
        try:
            outcome["status"] = sidecar.post(
                "/busy", {"lease": "j", "wait_seconds": 60}
            ).status_code
        except requests.RequestException as exc:
            outcome["error"] = exc

    waiter = threading.Thread(target=wait_for_busy)
    waiter.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not sidecar.get("/state").json()["busy"]:
        time.sleep(0.05)
    sidecar.signal(signal.SIGTERM)
    # Two pending SIGTERMs merge into one in the kernel: wait until the first is handled.
    sidecar.wait_for_log("SIGTERM: draining")
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait(timeout=60) == 128 + signal.SIGTERM
    waiter.join(timeout=60)
    assert not waiter.is_alive()


def test_startup_logs_the_configuration_in_one_line(spawn):
    sidecar = spawn({"TASK_PROTECTION_EXPIRES_MINUTES": "15", "TASK_PROTECTION_TOKEN": "t" * 20})
    line = sidecar.wait_for_log("listening on")
    assert line["level"] == "INFO"
    assert line["config"]["expires_minutes"] == 15
    assert line["config"]["backend"] == "local"
    assert line["config"]["token"] == "set"
    assert "t" * 20 not in "".join(sidecar.raw)
    assert "loopback only" in line["message"]


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_invalid_configuration_exits_two_naming_every_problem():
    result = run_cli(
        {"TASK_PROTECTION_EXPIRES_MINUTES": "0", "TASK_PROTECTION_IDLE_GRACE_SECONDS": "soon"}
    )
    assert result.returncode == 2
    assert (
        "TASK_PROTECTION_EXPIRES_MINUTES='0': expected an integer from 1 to 2880" in result.stderr
    )
    assert "TASK_PROTECTION_IDLE_GRACE_SECONDS='soon'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_flags_override_the_environment_and_are_validated_too():
    result = run_cli({"TASK_PROTECTION_PORT": "31680"}, "--port", "70000")
    assert result.returncode == 2
    assert "TASK_PROTECTION_PORT='70000'" in result.stderr


def test_a_port_in_use_exits_one(spawn):
    with socket.socket() as busy_port:
        busy_port.bind(("127.0.0.1", 0))
        busy_port.listen()
        port = busy_port.getsockname()[1]
        process = SidecarProcess({"TASK_PROTECTION_PORT": str(port)})
        try:
            assert process.wait() == 1
            assert process.wait_for_log("cannot listen")
        finally:
            process.stop()


def test_refuses_a_non_loopback_address_without_a_token():
    result = run_cli({"TASK_PROTECTION_HOST": "0.0.0.0"})  # noqa: S104
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr
    assert "TASK_PROTECTION_TOKEN" in result.stderr


def signal_name(signum: int) -> str:
    if signal.SIGRTMIN < signum < signal.SIGRTMAX:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
    return signal.Signals(signum).name


# Every signal whose default action ends the process, but for the two that drain and the
# ones the kernel raises for a fault of the process itself (SEGV, BUS, FPE, ILL, TRAP, SYS,
# ABRT): these would otherwise kill the sidecar with a lease held.
STRAY_SIGNALS = [
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGIO,
    signal.SIGPWR,
    signal.SIGXCPU,
    signal.SIGXFSZ,
    signal.SIGSTKFLT,
    signal.SIGRTMIN,
    signal.SIGRTMIN + 3,
    signal.SIGRTMAX,
]


def test_stray_signals_are_logged_and_ignored_while_a_lease_is_held(spawn):
    sidecar = spawn()
    assert sidecar.post("/busy", {"lease": "job"}).status_code == 200
    for signum in STRAY_SIGNALS:
        sidecar.signal(signum)
        line = sidecar.wait_for_log(f"{signal_name(signum)} ignored")
        assert (line["event"], line["signal"]) == ("signal_ignored", signal_name(signum))
    sidecar.signal(signal.SIGPIPE)  # ignored silently: the sidecar's own writes raise it
    state = sidecar.state()
    assert (state["busy"], state["draining"]) == (True, False)
    assert sidecar.proc.poll() is None
    sidecar.post("/idle", {"lease": "job"})
    sidecar.signal(signal.SIGTERM)
    assert sidecar.wait() == 0


def early_sidecar() -> SidecarProcess:
    """A sidecar that reports its imports on stderr: a line naming aiohttp means it is
    still starting, long before its event loop runs or it listens."""
    process = SidecarProcess({"PYTHONPROFILEIMPORTTIME": "1"})
    process.wait_for_log("aiohttp")
    return process


def test_a_sigterm_during_start_up_drains_like_a_late_one():
    sidecar = early_sidecar()
    try:
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait() == 0
        assert sidecar.wait_for_log("SIGTERM: draining")["event"] == "drain_started"
        assert sidecar.wait_for_log("exiting with code 0")["exit_code"] == 0
    finally:
        sidecar.stop()


def test_a_stray_signal_during_start_up_is_ignored():
    sidecar = early_sidecar()
    try:
        sidecar.signal(signal.SIGHUP)
        sidecar.start()  # it goes on to listen
        sidecar.wait_for_log("SIGHUP ignored")
        assert sidecar.post("/busy", {"lease": "job"}).status_code == 200
        sidecar.post("/idle", {"lease": "job"})
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait() == 0
    finally:
        sidecar.stop()


def image_entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT, to run here with the venv's commands."""
    dockerfile = (Path(__file__).parent.parent / "Dockerfile").read_text()
    (line,) = [line for line in dockerfile.splitlines() if line.startswith("ENTRYPOINT ")]
    return json.loads(line.removeprefix("ENTRYPOINT "))


def test_the_images_entrypoint_keeps_a_sigterm_that_comes_before_python_runs():
    """Before the interpreter runs a line of the sidecar (tens of milliseconds, longer
    on a busy machine) a SIGTERM kills it: exit 143 and not a line, where a drain was
    due. The image starts it with signals blocked, so the signal waits for the handlers.

    Sent as soon as the process is Python: what the entrypoint set up before it (the
    blocked signals) is in place, and Python's own start-up has only begun.
    """
    command = image_entrypoint()
    bin_dir = Path(sidecar_python()).parent  # where the venv puts the console script
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    sidecar = SidecarProcess(env, command=command)
    try:
        cmdline = Path(f"/proc/{sidecar.proc.pid}/cmdline")
        deadline = time.monotonic() + 60
        while not Path(cmdline.read_bytes().split(b"\0")[0].decode()).name.startswith("python"):
            assert time.monotonic() < deadline, "the entrypoint never ran Python"
        sidecar.signal(signal.SIGTERM)
        assert sidecar.wait() == 0
        assert sidecar.wait_for_log("SIGTERM: draining")["event"] == "drain_started"
    finally:
        sidecar.stop()


async def test_a_signal_taken_by_another_thread_still_reaches_the_loop_at_once():
    """The kernel gives a process's signal to any thread that does not block it: the
    sidecar has others (its log writer). Python's handler runs only in the main thread,
    between bytecodes, so a loop asleep in epoll must be woken for it; otherwise the
    signal waits for the loop's next timer (seconds, or here a minute)."""
    loop = asyncio.get_running_loop()
    received: asyncio.Future[int] = loop.create_future()
    main = threading.get_native_id()
    inbox = SignalInbox()
    inbox.install()

    def signal_this_thread_once_the_loop_sleeps() -> None:
        wchan = Path(f"/proc/self/task/{main}/wchan")  # where the main thread waits
        deadline = time.monotonic() + 60
        while "epoll" not in wchan.read_text() and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

    other = threading.Thread(target=signal_this_thread_once_the_loop_sleeps, daemon=True)
    try:
        inbox.attach(loop, lambda signum: received.done() or received.set_result(signum))
        # The only other thing that wakes the loop: a timer a minute away, which must not
        # be what brought the signal in.
        deadline = loop.create_future()
        timer = loop.call_later(60, deadline.set_result, None)
        other.start()
        await asyncio.wait([received, deadline], return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        assert not deadline.done(), "the signal waited for the loop's next timer"
        assert received.result() == signal.SIGUSR1
    finally:
        inbox.detach()
        inbox.uninstall()
        other.join(10)
