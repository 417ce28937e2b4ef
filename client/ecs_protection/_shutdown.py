"""The classic in-process SIGTERM pattern, done once: idle exits now, busy exits after the job.

    shutdown = GracefulShutdown().install()
    while not shutdown.requested:
        with busy():
            work()

SIGTERM while no busy() block runs raises SystemExit at once. SIGTERM while blocks
run (in any thread or task) sets `requested`; when the last block ends, SystemExit
is raised in the main thread. Jobs are counted by busy() itself.
"""

from __future__ import annotations

import _thread
import logging
import signal
import threading
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import FrameType

log = logging.getLogger("ecs_protection")


class _JobCounter:
    """Counts running busy() blocks in every thread and task of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.shutdown: GracefulShutdown | None = None

    def enter(self) -> None:
        with self._lock:
            self.active += 1

    def exit(self) -> None:
        with self._lock:
            self.active -= 1
            last = self.active == 0
        shutdown = self.shutdown
        if last and shutdown is not None and shutdown.requested:
            shutdown.last_job_ended()


jobs = _JobCounter()


class GracefulShutdown:
    """Exit on SIGTERM, but never in the middle of a busy() block."""

    def __init__(
        self, signals: Iterable[signal.Signals] = (signal.SIGTERM,), exit_code: int = 0
    ) -> None:
        self.signals = tuple(signals)
        self.exit_code = exit_code
        self._requested = threading.Event()
        self._signum = self.signals[0] if self.signals else signal.SIGTERM

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived: finish the current job, start no new one."""
        return self._requested.is_set()

    def install(self) -> Self:
        """Handle the signals (call from the main thread, before work starts)."""
        for signum in self.signals:
            signal.signal(signum, self._handle)
        jobs.shutdown = self
        return self

    def uninstall(self) -> None:
        for signum in self.signals:
            signal.signal(signum, signal.SIG_DFL)
        if jobs.shutdown is self:
            jobs.shutdown = None

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        first = not self.requested
        self._requested.set()
        self._signum = signal.Signals(signum)
        if jobs.active == 0:
            log.info("%s while idle: exiting", signal.Signals(signum).name)
            raise SystemExit(self.exit_code)
        if first:
            log.info(
                "%s while %d job(s) run: exiting when they end",
                signal.Signals(signum).name,
                jobs.active,
            )

    def last_job_ended(self) -> None:
        """Called by the job counter when the last job ends after a stop signal."""
        if threading.current_thread() is threading.main_thread():
            log.info("last job ended after %s: exiting", self._signum.name)
            raise SystemExit(self.exit_code)
        # Only the main thread can end the process cleanly: re-deliver the signal there,
        # where _handle now finds no job running. A real signal (not interrupt_main,
        # which only sets a flag) also wakes a main thread blocked in a wait.
        main = threading.main_thread().ident
        if hasattr(signal, "pthread_kill") and main is not None:
            signal.pthread_kill(main, self._signum)
        else:  # pragma: no cover - not POSIX
            _thread.interrupt_main(self._signum)
