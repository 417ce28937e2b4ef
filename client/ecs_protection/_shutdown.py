"""The classic in-process SIGTERM pattern, done once: idle exits now, busy lets the job end.

    shutdown = GracefulShutdown().install()
    while not shutdown.requested:
        message = receive()
        with busy():
            handle(message)
        delete(message)      # the ack: runs for the job that was in progress

The rule (also in docs/shutdown.md):

- SIGTERM while idle raises SystemExit at once: there is no job to lose. Idle means
  no busy() block runs and the code after the last one is done: every thread that
  ended a block has since read `shutdown.requested` (its loop's check) or started its
  next block, or `grace_seconds` have passed. A read from any other thread (a health
  check polling `requested`) says nothing about an ack.
- Otherwise the signal only sets `requested`. Nothing is raised from inside a block
  or from its exit: the job ends normally and the code after the block (the ack)
  runs. The process stops at the next safe point:
    * the loop's own `while not shutdown.requested` check ends the loop;
    * the next busy() or hold() raises SystemExit(exit_code) before any lease is
      taken (in the main thread that ends the process; in another thread it ends
      that thread, and the job is not started);
    * fallback, for a main thread that never reaches either (a thread-pool server
      blocked in serve_forever(), a loop that never checks): `grace_seconds` after
      the last block ended, the signal is delivered again to the main thread, where
      it raises SystemExit. `grace_seconds=None` turns the fallback off.

The signal handler starts no thread, takes no lock and logs nothing (the signal may
have interrupted a log call holding a lock, a QueueHandler's queue for one): it sets
flags, notes what it decided, and writes one byte to a pipe that a watcher thread
(started by install()) waits on. The watcher logs the notes, and so does the exit.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import select
import signal
import threading
import time
from typing import TYPE_CHECKING

from ecs_protection import _fork
from ecs_protection._protocol import check_seconds

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from types import FrameType

log = logging.getLogger("ecs_protection")

DEFAULT_GRACE_SECONDS = 5.0


class _JobCounter:
    """Counts running holds (busy() blocks and Hold objects) in every thread and task."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = 0
        self.last_ended: float | None = None  # GracefulShutdown's clock
        # Threads that ended a block and have not been back at their loop's check (read
        # `requested`) or at their next block since: their code after the block (the
        # ack) may still run. Changed by their own thread only; the handler reads it.
        self.unchecked: set[int] = set()
        self.shutdown: GracefulShutdown | None = None

    def enter(self) -> None:
        with self._lock:
            self.active += 1
        shutdown = self.shutdown
        if shutdown is not None:
            shutdown.deadline = None  # a job runs: nothing to hurry until it ends
            shutdown.ensure_watcher()

    def exit(self) -> None:
        shutdown = self.shutdown
        with self._lock:
            # The end time and the thread are written before the count drops: a signal
            # handler that sees no job running also sees whose ack may still run.
            if shutdown is not None:
                self.unchecked.add(threading.get_ident())
                if self.active == 1:
                    self.last_ended = shutdown.clock()
            self.active -= 1
            last = self.active == 0
        if last and shutdown is not None:
            shutdown.last_job_ended()

    def after_fork(self) -> None:
        # The parent's jobs run in the parent's threads, which the child does not have.
        self._lock = threading.Lock()
        self.active = 0
        self.last_ended = None
        self.unchecked = set()
        if self.shutdown is not None:
            self.shutdown.after_fork()


jobs = _JobCounter()
_fork.on_fork(jobs.after_fork)


def refuse_new_job() -> None:
    """Raise SystemExit instead of starting a job once a stop signal was handled."""
    jobs.unchecked.discard(threading.get_ident())  # this thread's last ack is done
    shutdown = jobs.shutdown
    if shutdown is not None and shutdown.stopping:
        log.info("not starting a new job: stopping after %s", shutdown.signal_name)
        raise SystemExit(shutdown.exit_code)


class GracefulShutdown:
    """Exit on SIGTERM, but never in the middle of a busy() block or before its ack.

    `grace_seconds` bounds how long the process may go on after the last job ended
    before the signal is delivered again to the main thread (None: never).
    """

    def __init__(
        self,
        signals: Iterable[signal.Signals] = (signal.SIGTERM,),
        exit_code: int = 0,
        grace_seconds: float | None = DEFAULT_GRACE_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_seconds("grace_seconds", grace_seconds)
        self.signals = tuple(signals)
        self.exit_code = exit_code
        self.grace_seconds = grace_seconds
        self.clock = clock
        self._requested = False
        self._forced = False
        self._signum = self.signals[0] if self.signals else signal.SIGTERM
        self.deadline: float | None = None  # when the fallback re-delivers the signal
        self._wake: tuple[int, int] | None = None  # the watcher's pipe (read, write)
        self._watcher_pid: int | None = None
        self._watcher_lock = threading.Lock()
        self._installed = False
        # What the handler decided, logged outside it (deque appends are atomic).
        self._notes: collections.deque[tuple[str, tuple[object, ...]]] = collections.deque()

    @property
    def stopping(self) -> bool:
        """Whether a stop signal arrived; unlike `requested`, reading it marks nothing."""
        return self._requested

    @property
    def requested(self) -> bool:
        """True once a stop signal arrived: finish the current job, start no new one."""
        jobs.unchecked.discard(threading.get_ident())  # this thread is past its ack
        if self._requested and threading.current_thread() is threading.main_thread():
            # The main thread has seen it and stops by itself (its cleanup after the loop
            # may take as long as it needs): the fallback is not needed any more.
            self._disarm()
        return self._requested

    @property
    def signal_name(self) -> str:
        return signal.Signals(self._signum).name

    def install(self) -> GracefulShutdown:
        """Handle the signals (call from the main thread, before work starts)."""
        jobs.shutdown = self
        self._installed = True
        atexit.register(self.flush_notes)
        self.ensure_watcher()
        for signum in self.signals:
            signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum in self.signals:
            signal.signal(signum, signal.SIG_DFL)
        if jobs.shutdown is self:
            jobs.shutdown = None
        self._installed = False
        self._close_pipe()
        atexit.unregister(self.flush_notes)
        self.flush_notes()

    # ---- in the signal handler: flags, notes and os.write only -----------------------

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self._signum = signal.Signals(signum)
        first = not self._requested
        self._requested = True
        if self._forced or self._idle():
            self._note("%s while idle: exiting", self.signal_name)
            raise SystemExit(self.exit_code)
        if not first:
            return
        if jobs.active:
            self._note("%s while %d job(s) run: stopping after them", self.signal_name, jobs.active)
        else:
            # The code after the last block (the ack) has not reached the loop's check.
            self._note("%s just after a job: stopping at the next safe point", self.signal_name)
            self._arm(jobs.last_ended)

    def _note(self, message: str, *args: object) -> None:
        self._notes.append((message, args))
        self._poke()

    def _idle(self) -> bool:
        if jobs.active:
            return False
        ended = jobs.last_ended
        if ended is None or not jobs.unchecked:
            return True
        if self.grace_seconds is None:
            return False  # no fallback: the ack may take as long as it needs
        return self.clock() - ended >= self.grace_seconds

    def _arm(self, ended: float | None) -> None:
        if self.grace_seconds is None or ended is None:
            return
        self.deadline = ended + self.grace_seconds
        self._poke()

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline = None
            self._poke()

    def _poke(self) -> None:
        """Wake the watcher to look at the deadline again."""
        wake = self._wake  # read once: _close_pipe may clear it meanwhile
        if wake is not None:
            with contextlib.suppress(OSError):  # full, or closed: it is awake anyway
                os.write(wake[1], b"\0")

    # ---- outside the handler ---------------------------------------------------------

    def flush_notes(self) -> None:
        """Log what the handler decided (from the watcher thread, and at exit)."""
        while True:
            try:
                message, args = self._notes.popleft()
            except IndexError:
                return
            log.info(message, *args)

    def last_job_ended(self) -> None:
        """Called by the job counter when the last job ends: never raises (see the rule)."""
        if self._requested:
            log.info("last job ended after %s: stopping at the next safe point", self.signal_name)
            self._arm(jobs.last_ended)

    def ensure_watcher(self) -> None:
        """Start the fallback's watcher thread in this process, unless it runs already."""
        if not self._installed or self._watcher_pid == os.getpid():
            return
        if not hasattr(signal, "pthread_kill"):  # pragma: no cover - not POSIX
            return
        with self._watcher_lock:
            if self._watcher_pid == os.getpid():
                return
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._wake = (read, write)
            threading.Thread(
                target=self._watch, args=(read,), name="ecs-protection-shutdown", daemon=True
            ).start()
            self._watcher_pid = os.getpid()

    def after_fork(self) -> None:
        # The watcher thread is the parent's; the child's next job starts its own.
        self._watcher_lock = threading.Lock()
        self._close_pipe(watcher_alive=False)
        self.deadline = None

    def _close_pipe(self, *, watcher_alive: bool = True) -> None:
        wake, self._wake = self._wake, None
        self._watcher_pid = None
        if wake is None:
            return
        # Closing the write end wakes the watcher with EOF; it closes the read end.
        for fd in wake[1:] if watcher_alive else wake:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _watch(self, read: int) -> None:
        try:
            self._wait_for_deadline(read)
        finally:
            with contextlib.suppress(OSError):
                os.close(read)

    def _wait_for_deadline(self, read: int) -> None:
        while True:
            deadline = self.deadline
            timeout = None if deadline is None else max(0.0, deadline - self.clock())
            try:
                ready, _, _ = select.select([read], [], [], timeout)
                if ready and not os.read(read, 512):
                    return
            except OSError:
                return
            self.flush_notes()
            if ready or self.deadline is None or self.clock() < self.deadline:
                continue
            if jobs.active:  # a job started after all: it re-arms when it ends
                self.deadline = None
                continue
            self._redeliver()
            return

    def _redeliver(self) -> None:
        """The fallback: the main thread never reached a safe point within the grace."""
        self._forced = True
        log.warning(
            "%s: the main thread did not stop within %ss of the last job: stopping it now",
            self.signal_name,
            self.grace_seconds,
        )
        main = threading.main_thread()
        if not main.is_alive() or main.ident is None:
            return
        # A real signal (not interrupt_main, which only sets a flag) also wakes a main
        # thread blocked in a system call; its handler now raises SystemExit. (The
        # watcher only runs where pthread_kill exists: see ensure_watcher.)
        signal.pthread_kill(main.ident, self._signum)
