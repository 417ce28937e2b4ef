"""Signals: SIGTERM and SIGINT drain, a second one exits at once; every other signal that
would kill the process is logged and ignored.

The handlers go in first thing at start-up (`SignalInbox.install`), before the slow
imports and long before the event loop runs: a signal that comes that early is kept and
acted on once the loop runs, so an early SIGTERM drains like a late one instead of
killing the process without a word. Earlier still, while the interpreter starts, the
image's entrypoint keeps them blocked (pending) until install() unblocks them.
Python-level handlers (not the loop's) are used throughout, so that nothing is lost or
counted twice when the loop takes over.

This module is imported before anything else: it imports nothing slow.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from types import FrameType

    from sidecar.service import ProtectionService

    _Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None

log = logging.getLogger("sidecar.drain")

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Every other signal whose default action ends the process. Left out: KILL and STOP (they
# cannot be caught), the ones the kernel raises for a fault of the process itself (SEGV,
# BUS, FPE, ILL, TRAP, SYS, ABRT: ignoring those would hide a crash) and PIPE, which
# Python already ignores because the sidecar's own writes to a closed socket raise it.
_STRAY_NAMES = (
    "SIGHUP",
    "SIGQUIT",
    "SIGUSR1",
    "SIGUSR2",
    "SIGALRM",
    "SIGVTALRM",
    "SIGPROF",
    "SIGIO",
    "SIGPWR",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGSTKFLT",
)
STRAY_SIGNALS: tuple[int, ...] = tuple(
    int(getattr(signal, name)) for name in _STRAY_NAMES if hasattr(signal, name)
) + tuple(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))


def signal_name(signum: int) -> str:
    """SIGTERM, SIGRTMIN+3, ...: as kill -l and people name them."""
    if signal.SIGRTMIN < signum < signal.SIGRTMAX:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class SignalInbox:
    """Catches the drain and stray signals from install() on; hands each to the receiver
    given to attach(), on the event loop, keeping those that came before."""

    def __init__(self) -> None:
        self._pending: list[int] = []
        # One attribute, swapped whole: the handler may run between any two bytecodes.
        self._target: tuple[asyncio.AbstractEventLoop, Callable[[int], None]] | None = None
        self._previous: dict[int, _Handler] = {}
        # While attached: the loop, and the socket pair whose byte wakes it on a signal.
        self._wakeup: tuple[asyncio.AbstractEventLoop, socket.socket, socket.socket] | None = None
        self._previous_wakeup_fd = -1

    def install(self) -> None:
        """Catch the signals from now on (main thread only).

        Then unblock them: the image starts the sidecar with every signal blocked
        (`env --block-signal`), so that one sent while Python was still starting is kept
        pending until now, instead of killing the process before any handler was in.
        """
        for signum in (*DRAIN_SIGNALS, *STRAY_SIGNALS):
            if signum not in self._previous:
                self._previous[signum] = signal.signal(signum, self._on_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (*DRAIN_SIGNALS, *STRAY_SIGNALS))

    def uninstall(self) -> None:
        """Put back the handlers install() replaced."""
        self._target = None
        while self._previous:
            signum, previous = self._previous.popitem()
            signal.signal(signum, previous)

    def attach(self, loop: asyncio.AbstractEventLoop, receive: Callable[[int], None]) -> None:
        """From now on `receive(signum)` runs on `loop` for each signal, first for those
        that came before."""
        self._target = (loop, receive)  # before taking the pending ones: none is lost
        pending, self._pending = self._pending, []
        for signum in pending:
            loop.call_soon(receive, signum)
        self._wake_loop_on_signals(loop)

    def detach(self) -> None:
        """Signals are caught and kept, no longer acted on: the process is exiting, and a
        late SIGTERM must not turn a clean exit into a kill."""
        self._target = None
        if self._wakeup is not None:
            loop, reader, writer = self._wakeup
            self._wakeup = None
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            if not loop.is_closed():
                loop.remove_reader(reader.fileno())
            reader.close()
            writer.close()

    def _wake_loop_on_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        """Python runs a signal's handler in the main thread only, between bytecodes, while
        the kernel may give the signal to any thread (the log writer's, a resolver's): the
        main thread, asleep in the loop's select(), would not run it until the loop's next
        timer. A byte on a wakeup socket the loop watches wakes it (as the loop's own
        add_signal_handler does, which cannot take the signals that came before it)."""
        reader, writer = socket.socketpair()
        for end in (reader, writer):
            end.setblocking(False)  # noqa: FBT003  (socket's own signature)
        self._previous_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._wakeup = (loop, reader, writer)
        loop.add_reader(reader.fileno(), self._empty, reader)

    @staticmethod
    def _empty(reader: socket.socket) -> None:
        # The bytes only woke the loop; the handlers themselves have run by now.
        with contextlib.suppress(OSError):
            while reader.recv(4096):
                pass

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        target = self._target
        if target is None:
            self._pending.append(signum)
            return
        loop, receive = target
        # Python runs this handler in the main thread between two bytecodes, possibly in
        # the middle of the loop's own work: hand the signal over as a thread would.
        loop.call_soon_threadsafe(receive, signum)


class SignalDrain:
    """What each signal does to the service: the first SIGTERM or SIGINT starts a drain,
    a second one exits at once, any other is logged and ignored."""

    def __init__(self, service: ProtectionService, timeout: float) -> None:
        self._service = service
        self._timeout = timeout
        self._received = 0
        self._forced: asyncio.Future[int] | None = None

    def forced(self) -> asyncio.Future[int]:
        """Resolves with the exit code (128+N) when a second signal forces the exit: for
        what still runs once protection has stopped (the switch-off before exiting)."""
        if self._forced is None:
            # The loop runs by now, so asyncio is imported: this costs nothing.
            from asyncio import get_running_loop  # noqa: PLC0415

            self._forced = get_running_loop().create_future()
        return self._forced

    def on_signal(self, signum: int) -> None:
        name = signal_name(signum)
        if signum not in DRAIN_SIGNALS:
            log.warning(
                "%s ignored: only SIGTERM and SIGINT stop the sidecar (by a drain)",
                name,
                extra={"event": "signal_ignored", "signal": name},
            )
            return
        self._received += 1
        if self._received > 1:
            held = self._service.lease_count
            log.warning(
                "%s again: exiting now with %d lease(s) held",
                name,
                held,
                extra={"event": "drain_forced", "signal": name, "leases": held},
            )
            self._service.force_exit(128 + signum, f"second {name}")
            forced = self.forced()
            if not forced.done():
                forced.set_result(128 + signum)
            return
        held = self._service.drain(exit_when_idle=True, timeout=self._timeout)
        log.warning(
            "%s: draining; new leases are refused, exiting when the last of %d lease(s) "
            "is released or after %gs",
            name,
            held,
            self._timeout,
            extra={"event": "drain_started", "source": "signal", "signal": name, "leases": held},
        )
