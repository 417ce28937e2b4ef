"""`ecs-protection`: busy -- CMD, run -- CMD (a PID-1 wrapper), state.

Exit codes: CMD's own code (128+N when a signal N ended it); 2 usage; 69 the sidecar is
unreachable (state) or protection is required and unavailable; 75 the task is
draining, so CMD was not started; 126/127 CMD could not be executed / was not found.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from ecs_protection._busy import Busy
from ecs_protection._errors import (
    ProtectionUnavailableError,
    SidecarUnavailableError,
    TaskDrainingError,
)
from ecs_protection._sync import Client

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

log = logging.getLogger("ecs_protection.cli")

EXIT_UNAVAILABLE = 69
EXIT_DRAINING = 75
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

# Everything a supervisor might send that the app should see. SIGKILL and SIGSTOP
# cannot be caught; SIGCHLD is ours (reaping).
FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCONT,
    signal.SIGALRM,
)
PR_SET_CHILD_SUBREAPER = 36


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecs-protection",
        description="Talk to the ecs-protection sidecar (TASK_PROTECTION_URL, default "
        "http://127.0.0.1:31680).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    busy = commands.add_parser("busy", help="hold a lease while CMD runs; exit with its code")
    busy.add_argument(
        "--ttl",
        type=float,
        default=60.0,
        help="lease TTL in seconds, refreshed every ttl/3 (0: none; default 60)",
    )
    busy.add_argument("--lease-prefix", default="cli")
    busy.add_argument(
        "--wait-seconds",
        type=float,
        default=None,
        help="how long to wait for confirmed protection (sidecar default 10)",
    )
    busy.add_argument(
        "--require-protection",
        action="store_true",
        help="do not run CMD unless protection is confirmed (exit 69)",
    )
    busy.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")

    run = commands.add_parser(
        "run",
        help="PID-1 wrapper: forward signals, reap zombies, hold SIGTERM while busy",
    )
    run.add_argument(
        "--hold-timeout",
        type=float,
        default=float(os.environ.get("TASK_PROTECTION_DRAIN_TIMEOUT_SECONDS") or 120),
        help="longest time to hold SIGTERM back while the sidecar reports leases "
        "(default: TASK_PROTECTION_DRAIN_TIMEOUT_SECONDS or 120)",
    )
    run.add_argument(
        "--poll-seconds",
        type=float,
        default=0.5,
        help="how often to ask the sidecar while holding SIGTERM",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS")

    commands.add_parser("state", help="print the sidecar's state as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ecs-protection: %(message)s", stream=sys.stderr)
    if args.command == "state":
        return _state()
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        parser.error(f"{args.command}: give a command after --")
    if args.command == "busy":
        return _busy(cmd, args)
    return Wrapper(cmd, Client(), args.hold_timeout, args.poll_seconds).run()


def run() -> None:
    """The console script."""
    sys.exit(main())


def _state() -> int:
    try:
        state = Client(strict=True).state()
    except SidecarUnavailableError as exc:
        log.error("%s", exc)  # noqa: TRY400  (the message is the whole story)
        return EXIT_UNAVAILABLE
    assert state is not None  # noqa: S101  (strict clients raise instead)
    sys.stdout.write(json.dumps(state.raw, indent=2) + "\n")
    return 0


def _busy(cmd: list[str], args: argparse.Namespace) -> int:
    holder = Busy(
        client=Client(),
        ttl=args.ttl or None,
        lease_prefix=args.lease_prefix,
        wait_seconds=args.wait_seconds,
        require_protection=args.require_protection,
    )
    try:
        with holder:
            return _run_forwarding(cmd)
    except TaskDrainingError:
        log.error("the task is stopping (sidecar is draining): not starting %s", cmd[0])  # noqa: TRY400
        return EXIT_DRAINING
    except (ProtectionUnavailableError, SidecarUnavailableError) as exc:
        log.error("not starting %s: %s", cmd[0], exc)  # noqa: TRY400
        return EXIT_UNAVAILABLE


def _spawn(cmd: list[str]) -> subprocess.Popen[bytes] | int:
    try:
        return subprocess.Popen(cmd)  # noqa: S603  (running the user's command is the point)
    except FileNotFoundError:
        log.error("command not found: %s", cmd[0])  # noqa: TRY400
        return EXIT_NOT_FOUND
    except OSError as exc:
        log.error("cannot execute %s: %s", cmd[0], exc)  # noqa: TRY400
        return EXIT_CANNOT_EXECUTE


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _run_forwarding(cmd: list[str]) -> int:
    """Run CMD, passing every forwarded signal on to it; return its exit code."""
    proc = _spawn(cmd)
    if isinstance(proc, int):
        return proc

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


class Wrapper:
    """`ecs-protection run`: what tini does, plus holding SIGTERM while the task is busy.

    Signals are queued by a handler and acted on in one loop, which also reaps every
    exited child (as PID 1, or as a child subreaper, orphans are re-parented to us).
    """

    def __init__(
        self, cmd: list[str], client: Client, hold_timeout: float, poll_seconds: float
    ) -> None:
        self.cmd = cmd
        self.client = client
        self.hold_timeout = hold_timeout
        self.poll_seconds = poll_seconds
        self._pending: deque[int] = deque()
        self._wakeup = threading.Event()
        self._hold_deadline: float | None = None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._pending.append(signum)
        self._wakeup.set()

    def run(self) -> int:
        _become_subreaper()
        for sig in (*FORWARDED, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        proc = _spawn(self.cmd)
        if isinstance(proc, int):
            return proc
        while True:
            self._wakeup.clear()
            code = self._reap(proc)
            if code is not None:
                return code
            self._dispatch(proc)
            if self._hold_deadline is not None:
                self._check_hold(proc)
            self._wakeup.wait(self.poll_seconds if self._hold_deadline is not None else 5.0)

    def _dispatch(self, proc: subprocess.Popen[bytes]) -> None:
        while self._pending:
            signum = self._pending.popleft()
            if signum == signal.SIGCHLD:
                continue
            if signum == signal.SIGTERM and self._hold_deadline is None:
                leases = self._leases_held()
                if leases:
                    self._hold_deadline = time.monotonic() + self.hold_timeout
                    log.info(
                        "SIGTERM held back from %s while the sidecar reports %d "
                        "lease(s) (at most %gs)",
                        self.cmd[0],
                        leases,
                        self.hold_timeout,
                    )
                    continue
            elif signum == signal.SIGTERM:
                log.info("second SIGTERM: forwarding it now")
                self._hold_deadline = None
            self._send(proc, signum)

    def _check_hold(self, proc: subprocess.Popen[bytes]) -> None:
        assert self._hold_deadline is not None  # noqa: S101
        if time.monotonic() >= self._hold_deadline:
            log.warning("hold timeout passed with leases still held: forwarding SIGTERM")
        elif self._leases_held():
            return
        else:
            log.info("sidecar is idle: forwarding SIGTERM")
        self._hold_deadline = None
        self._send(proc, signal.SIGTERM)

    def _leases_held(self) -> int:
        try:
            state = self.client.state()
        except Exception as exc:  # noqa: BLE001  (never let a sidecar problem wedge the stop)
            log.warning("cannot read the sidecar state (%s): not holding SIGTERM", exc)
            return 0
        return state.leases if state is not None else 0

    @staticmethod
    def _send(proc: subprocess.Popen[bytes], signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signum)

    @staticmethod
    def _reap(proc: subprocess.Popen[bytes]) -> int | None:
        """Collect every exited child; return CMD's exit code once it has exited."""
        result = None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return result
            if pid == 0:
                return result
            if pid == proc.pid:
                result = _exit_code(status)
                proc.returncode = result


def _become_subreaper() -> None:
    """Adopt orphaned grandchildren even when not PID 1 (Linux), so they are reaped here."""
    if os.getpid() == 1 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
