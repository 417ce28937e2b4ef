"""Signals for the CLI's supervisors (`busy` and `run`), taken without signal handlers.

A Python signal handler runs between two bytecodes of whatever the main thread is
doing, and may interrupt another handler: one that takes a lock (threading.Event.set)
deadlocks or recurses when signals come in bursts, such as a SIGCHLD per orphan of a
child that leaves thousands. So on Linux the signals are blocked and taken one at a
time with sigtimedwait() in the supervisor's loop: no handler code ever runs. Where
there is no sigtimedwait (macOS), a handler only sets a flag in a preallocated dict
(no lock, no allocation) and set_wakeup_fd() wakes the loop's select().

CMD is started with posix_spawn, which sets the child's signal mask back to what it
was before the block, and resets SIGPIPE (which Python ignores) to its default.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import FrameType

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
TAKEN = (*FORWARDED, signal.SIGCHLD)

EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class SignalSource(Protocol):
    @property
    def child_mask(self) -> set[int]:
        """The signal mask CMD starts with."""

    def wait(self, timeout: float) -> list[int]:
        """The signals that arrived, waiting up to `timeout` seconds for the first."""


class BlockedSignals:
    """Block `signals` in this thread (and threads it starts later); take them with sigtimedwait."""

    def __init__(self, signals: Iterable[int] = TAKEN) -> None:
        self._signals = set(signals)
        self._previous = signal.pthread_sigmask(signal.SIG_BLOCK, self._signals)

    @property
    def child_mask(self) -> set[int]:
        return set(self._previous)

    def wait(self, timeout: float) -> list[int]:
        info = signal.sigtimedwait(self._signals, max(0.0, timeout))
        if info is None:
            return []
        got = [info.si_signo]
        # What else is pending now: each standard signal is pending at most once, so
        # this is bounded even while a storm goes on (the loop then reaps and returns).
        for _ in self._signals:
            info = signal.sigtimedwait(self._signals, 0)
            if info is None:
                break
            got.append(info.si_signo)
        return got


class WakeupSignals:
    """Portable fallback: flag-setting handlers plus set_wakeup_fd() on a pipe."""

    def __init__(self, signals: Iterable[int] = TAKEN) -> None:
        self._order = tuple(signals)
        self._flags = dict.fromkeys(self._order, False)  # preallocated: set, never resized
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in self._order:
            signal.signal(signum, self._flag)

    @property
    def child_mask(self) -> set[int]:
        return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))

    def _flag(self, signum: int, _frame: FrameType | None) -> None:
        self._flags[signum] = True

    def wait(self, timeout: float) -> list[int]:
        if not any(self._flags.values()):
            with contextlib.suppress(InterruptedError):
                select.select([self._read], [], [], max(0.0, timeout))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass
        got = []
        for signum in self._order:
            if self._flags[signum]:
                self._flags[signum] = False  # cleared before acting: a new one is kept
                got.append(signum)
        return got


def signal_source(signals: Iterable[int] = TAKEN) -> SignalSource:
    if hasattr(signal, "sigtimedwait"):
        return BlockedSignals(signals)
    return WakeupSignals(signals)  # pragma: no cover - not Linux


@dataclass
class Child:
    pid: int
    returncode: int | None = None


def spawn(cmd: list[str], source: SignalSource, log_error: Callable[[str], None]) -> Child | int:
    """Start CMD (searched on PATH); an exit code (126/127) when it cannot be started."""
    resets = [signal.SIGPIPE] + ([signal.SIGXFSZ] if hasattr(signal, "SIGXFSZ") else [])
    try:
        pid = os.posix_spawnp(
            cmd[0], cmd, os.environ, setsigmask=source.child_mask, setsigdef=resets
        )
    except FileNotFoundError:
        log_error(f"command not found: {cmd[0]}")
        return EXIT_NOT_FOUND
    except OSError as exc:
        log_error(f"cannot execute {cmd[0]}: {exc}")
        return EXIT_CANNOT_EXECUTE
    return Child(pid)


def exit_code(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def reap(child: Child, *, everyone: bool) -> int | None:
    """Collect exited children (all of them, or only CMD); CMD's exit code once it exited."""
    while True:
        try:
            pid, status = os.waitpid(-1 if everyone else child.pid, os.WNOHANG)
        except ChildProcessError:
            return child.returncode
        if pid == 0:
            return child.returncode
        if pid == child.pid:
            child.returncode = exit_code(status)
            if not everyone:
                return child.returncode


def send(child: Child, signum: int) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)
