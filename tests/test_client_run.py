"""`ecs-protection run` and `busy` as supervisors, on real processes and real signals.

Every catchable signal reaches CMD (as PID 1 too), the SIGTERM hold is bounded by its
timeout however slow the sidecar, and a Ctrl-C on a terminal reaches CMD once. CMD is
tests/scripts/signal_recorder.py, which writes down every signal it gets.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.client_support import FakeSidecar, StallingSidecar
from tests.support import wait_for_line, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

CLI = [sys.executable, "-m", "ecs_protection"]
RECORDER = str(Path(__file__).parent / "scripts" / "signal_recorder.py")
HOLDING = b'{"draining": true, "leases": 1}'

# What a supervisor keeps for itself, as tini does: SIGCHLD (reaping), the signals a
# fault raises in the process itself (blocking them is undefined; they must end it),
# and SIGTTIN/SIGTTOU (ignored, so that writing to a terminal it handed to CMD never
# stops it). SIGKILL and SIGSTOP cannot be caught.
KEPT = {
    signal.SIGKILL,
    signal.SIGSTOP,
    signal.SIGCHLD,
    signal.SIGFPE,
    signal.SIGILL,
    signal.SIGSEGV,
    signal.SIGBUS,
    signal.SIGABRT,
    signal.SIGTRAP,
    signal.SIGSYS,
    signal.SIGTTIN,
    signal.SIGTTOU,
}
# SIGTERM is sent last: CMD exits on it.
EVERY_FORWARDED = sorted(set(signal.valid_signals()) - KEPT - {signal.SIGTERM})


def name_of(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # not every Python names them all (SIGSTKFLT, real-time ones)
        return f"signal {signum}"


def env_for(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASK_PROTECTION_")}
    return {**env, "TASK_PROTECTION_URL": url, **extra}


class Recorded:
    """What the recorder wrote: one entry a line."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[str]:
        try:
            return self.path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def count(self, signum: int) -> int:
        return self.lines().count(str(int(signum)))

    def wait_for(self, entry: str, timeout: float = 30.0) -> None:
        wait_until(lambda: entry in self.lines(), timeout, f"{entry!r} recorded")

    def orphan(self) -> int:
        wait_until(lambda: any(line.startswith("orphan ") for line in self.lines()))
        return next(int(line.split()[1]) for line in self.lines() if line.startswith("orphan "))


@pytest.fixture
def recorded(tmp_path: Path) -> Recorded:
    return Recorded(tmp_path / "signals")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def state_of(pid: int) -> str:
    """The process state letter from /proc (R, S, T for stopped, Z for zombie, ...)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


# ---- every signal ---------------------------------------------------------------------------


@pytest.fixture(params=["run", "run as PID 1", "busy"])
def supervisor(
    request: pytest.FixtureRequest, fake: FakeSidecar, recorded: Recorded
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """The supervisor (its pid, to signal) running the recorder, and its process."""
    command = "busy" if request.param == "busy" else "run"
    args = [*CLI, command, "--", sys.executable, RECORDER, str(recorded.path)]
    if request.param == "run as PID 1":
        if not shutil.which("unshare") or os.geteuid() != 0:
            pytest.fail("needs unshare (util-linux) and root for a PID namespace")
        args = ["unshare", "--pid", "--fork", "--kill-child", *args]
    proc = subprocess.Popen(args, env=env_for(fake.url), text=True, stderr=subprocess.PIPE)
    try:
        recorded.wait_for("ready")
        pid = proc.pid
        if request.param == "run as PID 1":  # unshare forked it: PID 1 in its namespace
            (pid,) = children_of(proc.pid)
            status = Path(f"/proc/{pid}/status").read_text()
            assert status.split("NSpid:")[1].split("\n")[0].split()[-1] == "1"
        yield pid, proc
    finally:
        stop(proc)


def test_every_catchable_signal_reaches_the_command(supervisor, recorded):
    """Each signal is sent alone and must be recorded by CMD before the next is sent."""
    pid, proc = supervisor
    for signum in EVERY_FORWARDED:
        os.kill(pid, signum)
        wait_until(
            lambda signum=signum: recorded.count(signum) >= 1,
            what=f"{name_of(signum)} forwarded",
        )
    # Job-control signals for a terminal the wrapper does not read neither stop it nor
    # go to CMD (the terminal sends them to CMD's process group itself).
    for signum in (signal.SIGTTIN, signal.SIGTTOU):
        os.kill(pid, signum)
    os.kill(pid, signal.SIGUSR1)  # still supervising: a signal after them is forwarded
    wait_until(lambda: recorded.count(signal.SIGUSR1) == 2)
    assert state_of(pid) != "T"
    assert recorded.count(signal.SIGTTIN) == recorded.count(signal.SIGTTOU) == 0
    os.kill(pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "Traceback" not in (proc.stderr.read() if proc.stderr else "")


# ---- the SIGTERM hold against a hung or slow sidecar ---------------------------------------


def start_run(args: list[str], url: str, recorded: Recorded) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [*CLI, "run", *args, "--", sys.executable, RECORDER, str(recorded.path)],
        env=env_for(url),
        text=True,
        stderr=subprocess.PIPE,
    )
    recorded.wait_for("ready")
    return proc


@pytest.mark.parametrize(
    ("answers", "pending", "logged"),
    [
        pytest.param({}, "/drain", "no answer from the sidecar", id="hung"),
        pytest.param({"/drain": (200, HOLDING)}, "/state", "hold timeout passed", id="slow"),
    ],
)
def test_a_hung_or_slow_sidecar_cannot_hold_sigterm_past_the_hold_timeout(
    recorded, answers, pending, logged
):
    """SIGTERM reaches CMD at the hold timeout while the sidecar call is still unanswered.

    The client gives up on a call after 5 s; SIGTERM reaching CMD while the stand-in
    still has that call open shows that the wait did not wait for it.
    """
    hold = 0.5
    with StallingSidecar(answers) as sidecar:
        proc = start_run(
            ["--hold-timeout", str(hold), "--poll-seconds", "0.05"], sidecar.url, recorded
        )
        try:
            proc.send_signal(signal.SIGTERM)
            recorded.wait_for(str(int(signal.SIGTERM)))
            # The call never ends by itself: still open, so the forward did not wait for it
            # (the old wait ended only with the client's 5 s timeout). No clock is read.
            assert sidecar.outstanding(pending), "the call ended before SIGTERM was forwarded"
            assert proc.wait(timeout=30) == 0
            log = proc.stderr.read() if proc.stderr else ""
            assert logged in log
            assert "idle" not in log
        finally:
            stop(proc)


def test_signals_are_forwarded_and_orphans_reaped_while_a_sidecar_call_hangs(recorded):
    """During the hold, a /state call the sidecar never answers blocks nothing else."""
    with StallingSidecar({"/drain": (200, HOLDING)}) as sidecar:
        proc = start_run(["--hold-timeout", "600", "--poll-seconds", "0.05"], sidecar.url, recorded)
        try:
            os.kill(proc.pid, signal.SIGTERM)
            wait_for_line(proc.stderr, "held back")
            wait_until(lambda: sidecar.outstanding("/state"), what="a /state call hangs")
            proc.send_signal(signal.SIGUSR1)
            recorded.wait_for(str(int(signal.SIGUSR1)))
            proc.send_signal(signal.SIGUSR2)  # CMD leaves an orphan that exits at once
            orphan = recorded.orphan()
            wait_until(lambda: not Path(f"/proc/{orphan}").exists(), what="the orphan reaped")
            assert sidecar.outstanding("/state"), "the call ended before the checks"
            assert recorded.count(signal.SIGTERM) == 0  # still held
            proc.send_signal(signal.SIGTERM)  # a second one goes through at once
            assert proc.wait(timeout=30) == 0
            assert recorded.count(signal.SIGTERM) == 1
        finally:
            stop(proc)


def test_an_unreachable_sidecar_is_logged_as_unreachable_not_idle(recorded):
    with FakeSidecar() as fake:
        fake.leases.add("job")
        proc = start_run(["--poll-seconds", "0.05"], fake.url, recorded)
        try:
            proc.send_signal(signal.SIGTERM)
            wait_for_line(proc.stderr, "held back")
            fake.close()  # gone while the job runs: its leases can no longer be read
            line = wait_for_line(proc.stderr, "forwarding SIGTERM")
            assert "unreachable" in line
            assert "idle" not in line
            assert proc.wait(timeout=30) == 0
        finally:
            stop(proc)


# ---- a terminal -----------------------------------------------------------------------------

# Become the session leader of the pseudo-terminal on fd 0, as a login shell does, then
# run the command: it is the terminal's foreground process group.
TERMINAL_SESSION = (
    "import fcntl, os, sys, termios;"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0);"
    "os.execvp(sys.argv[1], sys.argv[1:])"
)


class Terminal:
    """A pseudo-terminal whose session runs `args`; what it prints is collected."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TERMINAL_SESSION, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # EIO: every slave end is closed
                return
            if not chunk:
                return
            self.output.extend(chunk)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)
        os.close(self.master)


@pytest.mark.parametrize("command", ["busy", "run"])
def test_ctrl_c_on_a_terminal_reaches_the_command_once(fake, recorded, command):
    """The terminal signals its foreground group; the supervisor must not add a copy."""
    terminal = Terminal(
        [*CLI, command, "--", sys.executable, RECORDER, str(recorded.path)], env_for(fake.url)
    )
    try:
        recorded.wait_for("ready")
        (supervised,) = children_of(terminal.proc.pid)
        # CMD has the terminal to itself: the supervisor is not in the group it signals.
        assert os.tcgetpgrp(terminal.master) == os.getpgid(supervised)
        assert os.getpgid(terminal.proc.pid) != os.getpgid(supervised)
        terminal.type(b"\x03")
        recorded.wait_for(str(int(signal.SIGINT)))
        # A copy forwarded by the supervisor would be taken before this later signal
        # (it is pending already) and so recorded before it.
        os.kill(terminal.proc.pid, signal.SIGUSR1)
        recorded.wait_for(str(int(signal.SIGUSR1)))
        assert recorded.count(signal.SIGINT) == 1, terminal.output.decode(errors="replace")
        os.kill(terminal.proc.pid, signal.SIGTERM)
        assert terminal.proc.wait(timeout=30) == 0, terminal.output.decode(errors="replace")
    finally:
        terminal.close()


STOPS_ITSELF_ON_THE_TERMINAL = (
    "import os, signal, sys;"
    "os.kill(os.getpid(), signal.SIGTTIN);"  # as a read from the terminal just too early
    "open(sys.argv[1], 'w').write('continued')"
)


def test_a_command_stopped_by_the_terminal_before_it_had_it_is_continued(fake, tmp_path):
    """CMD can touch the terminal before it is handed over: that stop must not last."""
    marker = tmp_path / "continued"
    command = [sys.executable, "-c", STOPS_ITSELF_ON_THE_TERMINAL, str(marker)]
    terminal = Terminal([*CLI, "run", "--", *command], env_for(fake.url))
    try:
        assert terminal.proc.wait(timeout=30) == 0, terminal.output.decode(errors="replace")
        assert marker.read_text() == "continued"
    finally:
        terminal.close()


SUSPENDABLE = (
    "import os, signal, sys, time;"
    "signal.signal(signal.SIGCONT, lambda *a: os.write(out, b'continued\\n'));"
    "out = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT);"
    "os.write(out, b'ready\\n')\n"
    "while True: time.sleep(0.05)"
)


@pytest.mark.parametrize("command", ["busy", "run"])
def test_ctrl_z_stops_the_job_and_the_shell_can_continue_it(fake, recorded, command):
    """The supervisor stops with CMD, so that the shell sees its job stopped, as without it."""
    terminal = Terminal(
        [*CLI, command, "--", sys.executable, "-c", SUSPENDABLE, str(recorded.path)],
        env_for(fake.url),
    )
    try:
        recorded.wait_for("ready")
        (supervised,) = children_of(terminal.proc.pid)
        terminal.type(b"\x1a")
        wait_until(lambda: state_of(terminal.proc.pid) == "T", what="the supervisor stopped")
        assert state_of(supervised) == "T"
        assert os.tcgetpgrp(terminal.master) == os.getpgid(terminal.proc.pid)
        os.killpg(os.getpgid(terminal.proc.pid), signal.SIGCONT)  # what `fg` does
        recorded.wait_for("continued")
        assert state_of(supervised) != "T"
        wait_until(lambda: os.tcgetpgrp(terminal.master) == os.getpgid(supervised))
        os.kill(terminal.proc.pid, signal.SIGTERM)
        assert terminal.proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        terminal.close()


def test_a_sigpipe_the_wrapper_raised_itself_is_not_forwarded(fake, recorded):
    """Writing its log to a closed pipe raises SIGPIPE in the wrapper: that is not CMD's."""
    fake.leases.add("job")
    proc = start_run(["--hold-timeout", "600", "--poll-seconds", "0.05"], fake.url, recorded)
    try:
        assert proc.stderr is not None
        proc.stderr.close()  # whoever read the log went away
        proc.send_signal(signal.SIGTERM)  # the wrapper logs the hold: EPIPE, SIGPIPE
        # It polls /state only after it has logged the hold.
        wait_until(lambda: fake.posts("/drain") and any(s.path == "/state" for s in fake.seen))
        # A higher number than SIGPIPE: a pending SIGPIPE would be taken, and
        # forwarded, before it.
        proc.send_signal(signal.SIGWINCH)
        recorded.wait_for(str(int(signal.SIGWINCH)))
        assert recorded.count(signal.SIGPIPE) == 0
        os.kill(proc.pid, signal.SIGPIPE)  # one sent from outside is still forwarded
        recorded.wait_for(str(int(signal.SIGPIPE)))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        stop(proc)
