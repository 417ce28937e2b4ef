"""Signals for the CLI's supervisors (`busy` and `run`), taken without signal handlers.

A Python signal handler runs between two bytecodes of whatever the main thread is
doing, and may interrupt another handler: one that takes a lock (threading.Event.set)
deadlocks or recurses when signals come in bursts, such as a SIGCHLD per orphan of a
child that leaves thousands. So on Linux the signals are blocked and taken one at a
time with sigtimedwait() in the supervisor's loop: no handler code ever runs. Where
there is no sigtimedwait (macOS), a handler only sets a flag in a preallocated dict
(no lock, no allocation) and set_wakeup_fd() wakes the loop's select().

Every signal that can be caught is forwarded, as tini does, except those a supervisor
keeps: SIGCHLD (reaping); the ones a fault raises in the process itself (SIGFPE,
SIGILL, SIGSEGV, SIGBUS, SIGABRT, SIGTRAP, SIGSYS: blocking them is undefined, and a
fault must end the supervisor); and SIGTTIN/SIGTTOU, which are ignored so that the
supervisor never stops on its terminal after handing it to CMD (see _terminal). A
signal the supervisor raised against itself (SIGPIPE from a write to a closed pipe,
SIGXFSZ) concerns it alone and is not forwarded.

CMD is started with posix_spawn, which sets the child's signal mask back to what it
was before the block, and resets to their defaults the signals ignored here (SIGPIPE
and SIGXFSZ by Python, SIGTTIN and SIGTTOU by us): ignored ones survive exec.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ecs_protection._terminal import Terminal

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import FrameType

# Kept by the supervisor (see the module docstring); SIGKILL and SIGSTOP cannot be caught.
KEPT = frozenset(
    {
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
)
IGNORED = (signal.SIGTTIN, signal.SIGTTOU)
# Real-time signals included: valid_signals() lists every number this system has.
FORWARDED = tuple(sorted(signal.valid_signals() - KEPT))
TAKEN = (*FORWARDED, signal.SIGCHLD)
# Ignored in this process, to be reset in CMD.
RESET_IN_CMD = (
    signal.SIGPIPE,
    *([signal.SIGXFSZ] if hasattr(signal, "SIGXFSZ") else []),
    *IGNORED,
)

EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class SignalSource(Protocol):
    @property
    def child_mask(self) -> set[int]:
        """The signal mask CMD starts with."""

    def wait(self, timeout: float) -> list[int]:
        """The signals that arrived, waiting up to `timeout` seconds for the first."""

    def wake(self) -> None:
        """Make a wait() in progress return: callable from any thread."""


class BlockedSignals:
    """Block `signals` in this thread (and threads it starts later); take them with sigtimedwait."""

    def __init__(self, signals: Iterable[int] = TAKEN) -> None:
        self._signals = set(signals)
        self._pid = os.getpid()
        self._waiter = threading.get_ident()
        self._previous = signal.pthread_sigmask(signal.SIG_BLOCK, self._signals)

    @property
    def child_mask(self) -> set[int]:
        return set(self._previous)

    def wait(self, timeout: float) -> list[int]:
        info = signal.sigtimedwait(self._signals, max(0.0, timeout))
        got: list[int] = []
        # What else is pending now: each standard signal is pending at most once, and
        # real-time ones are taken at most once a round, so this is bounded even while
        # a storm goes on (the loop then reaps and returns).
        for _ in self._signals:
            if info is None:
                break
            if info.si_pid != self._pid or info.si_signo == signal.SIGCHLD:
                got.append(info.si_signo)
            info = signal.sigtimedwait(self._signals, 0)
        return got

    def wake(self) -> None:
        # A SIGCHLD to the waiting thread: the loop reaps and looks at its state anyway.
        signal.pthread_kill(self._waiter, signal.SIGCHLD)


class WakeupSignals:
    """Portable fallback: flag-setting handlers plus set_wakeup_fd() on a pipe."""

    def __init__(self, signals: Iterable[int] = TAKEN) -> None:
        self._order = tuple(signals)
        self._flags = dict.fromkeys(self._order, False)  # preallocated: set, never resized
        self._read, write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._waiter = threading.get_ident()
        for signum in self._order:
            with contextlib.suppress(OSError, ValueError):  # one this platform does not allow
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

    def wake(self) -> None:
        signal.pthread_kill(self._waiter, signal.SIGCHLD)


def signal_source(signals: Iterable[int] = TAKEN) -> SignalSource:
    for signum in IGNORED:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "sigtimedwait"):
        return BlockedSignals(signals)
    return WakeupSignals(signals)  # pragma: no cover - not Linux


@dataclass
class Child:
    pid: int
    returncode: int | None = None
    terminal: Terminal | None = None  # handed to CMD's own process group


def spawn(cmd: list[str], source: SignalSource, log_error: Callable[[str], None]) -> Child | int:
    """Start CMD (searched on PATH); an exit code (126/127) when it cannot be started.

    On a terminal whose foreground group this process is in, CMD gets a process group
    of its own and the terminal (see _terminal).
    """
    terminal = Terminal.in_foreground()
    options: dict[str, Any] = {"setsigmask": source.child_mask, "setsigdef": RESET_IN_CMD}
    if terminal is not None:
        options["setpgroup"] = 0  # a group of its own (None is refused: leave it out)
    try:
        pid = os.posix_spawnp(cmd[0], cmd, os.environ, **options)
    except OSError as exc:
        if terminal is not None:
            terminal.take_back()
        if isinstance(exc, FileNotFoundError):
            log_error(f"command not found: {cmd[0]}")
            return EXIT_NOT_FOUND
        log_error(f"cannot execute {cmd[0]}: {exc}")
        return EXIT_CANNOT_EXECUTE
    if terminal is not None:
        terminal.give(pid)
    return Child(pid, terminal=terminal)


def exit_code(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def reap(child: Child, *, everyone: bool) -> int | None:
    """Collect exited children (all of them, or only CMD); CMD's exit code once it exited."""
    # Stops are reported only with a terminal, for job control (see Terminal.stopped).
    flags = os.WNOHANG | (os.WUNTRACED if child.terminal is not None else 0)
    while True:
        try:
            pid, status = os.waitpid(-1 if everyone else child.pid, flags)
        except ChildProcessError:
            return child.returncode
        if pid == 0:
            return child.returncode
        if os.WIFSTOPPED(status):
            if pid == child.pid and child.terminal is not None:
                child.terminal.stopped(pid, os.WSTOPSIG(status))
            continue
        if pid == child.pid:
            child.returncode = exit_code(status)
            if child.terminal is not None:
                child.terminal.take_back()
            if not everyone:
                return child.returncode


def send(child: Child, signum: int) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)
