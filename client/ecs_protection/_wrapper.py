"""`ecs-protection run`: what tini does, plus holding SIGTERM back while the task is busy.

One loop takes every signal (see _signals: no handler code runs), reaps every exited
child (as PID 1, or as a child subreaper, orphans are re-parented to us) and forwards
signals to CMD. The first SIGTERM is special:

1. POST /drain: the sidecar refuses new leases from now on, so `ecs-protection busy`
   in CMD's job loop exits 75 instead of starting a job that SIGTERM would then cut;
2. while the sidecar reports leases held, SIGTERM is held back from CMD, for at most
   the hold timeout, then forwarded. A second SIGTERM is forwarded at once.

The sidecar is asked on a worker thread, one call at a time, and the loop never waits
for an answer: a slow or hung sidecar can neither hold SIGTERM past the hold timeout
nor stop the loop from forwarding other signals and reaping meanwhile. The worker wakes
the loop when an answer comes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import queue
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Union

from ecs_protection import _signals
from ecs_protection._protocol import State

if TYPE_CHECKING:
    from collections.abc import Callable

    from ecs_protection._sync import Client

log = logging.getLogger("ecs_protection.cli")

PR_SET_CHILD_SUBREAPER = 36
IDLE_WAIT_SECONDS = 5.0  # a safety net: SIGCHLD wakes the loop when anything exits

# What a call to the sidecar came back with: its answer (None: unreachable) or its error.
Outcome = Union[int, State, None, Exception]


class SidecarCalls:
    """One sidecar call at a time on a daemon thread; `wake` is called when it ends.

    A call the sidecar never answers ends with the client's own timeout; the thread
    is not waited for, and no second call starts while one is out.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._done: queue.SimpleQueue[tuple[str, Outcome]] = queue.SimpleQueue()
        self.busy = False

    def start(self, name: str, call: Callable[[], Outcome]) -> None:
        self.busy = True

        def work() -> None:
            try:
                outcome = call()
            except Exception as exc:  # noqa: BLE001  (handed to the loop, which logs it)
                outcome = exc
            self._done.put((name, outcome))
            self._wake()

        threading.Thread(target=work, name=f"ecs-protection-{name}", daemon=True).start()

    def answers(self) -> list[tuple[str, Outcome]]:
        got = []
        with contextlib.suppress(queue.Empty):
            while True:
                got.append(self._done.get_nowait())
        if got:
            self.busy = False
        return got


class Wrapper:
    def __init__(  # noqa: PLR0913  (all explicit settings)
        self,
        cmd: list[str],
        client: Client,
        *,
        hold_timeout: float,
        poll_seconds: float,
        source: _signals.SignalSource,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cmd = cmd
        self.client = client
        self.hold_timeout = hold_timeout
        self.poll_seconds = poll_seconds
        self.source = source
        self.clock = clock
        self._calls = SidecarCalls(source.wake)
        self._hold_deadline: float | None = None  # set while SIGTERM is held back
        self._leases_seen = False  # the sidecar said leases are held (not just asked)
        self._next_poll = 0.0
        self._term_seen = False  # a second SIGTERM is always forwarded at once

    def run(self) -> int:
        become_subreaper()
        child = _signals.spawn(self.cmd, self.source, log.error)
        if isinstance(child, int):
            return child
        while True:
            code = _signals.reap(child, everyone=True)
            if code is not None:
                return code
            for signum in self.source.wait(self._timeout()):
                self._on_signal(child, signum)
            for name, outcome in self._calls.answers():
                self._on_answer(child, name, outcome)
            self._check_hold(child)

    def _timeout(self) -> float:
        if self._hold_deadline is None:
            return IDLE_WAIT_SECONDS
        until = self._hold_deadline
        if self._leases_seen and not self._calls.busy:
            until = min(until, self._next_poll)
        return max(0.0, until - self.clock())

    def _on_signal(self, child: _signals.Child, signum: int) -> None:
        if signum == signal.SIGCHLD:
            return  # the loop reaps
        if signum != signal.SIGTERM:
            _signals.send(child, signum)
            return
        if self._term_seen:
            log.info("second SIGTERM: forwarding it now")
            self._hold_deadline = None
            _signals.send(child, signum)
            return
        self._term_seen = True
        self._hold_deadline = self.clock() + self.hold_timeout
        self._calls.start("drain", self.client.drain)  # its answer counts the leases

    def _on_answer(self, child: _signals.Child, name: str, outcome: Outcome) -> None:
        if self._hold_deadline is None:
            return  # SIGTERM went on already
        if isinstance(outcome, Exception):
            if name == "drain":
                # A sidecar older than POST /drain (or one that failed it) may still
                # hold leases: ask it the way older clients did.
                log.warning("could not tell the sidecar to drain (%s): new jobs may start", outcome)
                self._calls.start("state", self.client.state)
            else:
                self._forward(child, f"cannot read the sidecar state ({outcome})", logging.WARNING)
            return
        if outcome is None:
            self._forward(child, "the sidecar is unreachable", logging.WARNING)
            return
        if isinstance(outcome, State):
            leases = outcome.leases
        else:
            leases = outcome
            log.info("sidecar is draining: new jobs are refused, %d lease(s) held", leases)
        if not leases:
            self._forward(child, "sidecar is idle")
            return
        if not self._leases_seen:
            log.info(
                "SIGTERM held back from %s while the sidecar reports %d lease(s) (at most %gs)",
                self.cmd[0],
                leases,
                self.hold_timeout,
            )
            self._leases_seen = True
        self._next_poll = self.clock() + self.poll_seconds

    def _check_hold(self, child: _signals.Child) -> None:
        if self._hold_deadline is None:
            return
        now = self.clock()
        if now >= self._hold_deadline:
            if self._leases_seen:
                reason = "hold timeout passed with leases still held"
            else:
                reason = (
                    f"no answer from the sidecar within the hold timeout ({self.hold_timeout:g}s)"
                )
            self._forward(child, reason, logging.WARNING)
        elif self._leases_seen and not self._calls.busy and now >= self._next_poll:
            self._calls.start("state", self.client.state)

    def _forward(self, child: _signals.Child, reason: str, level: int = logging.INFO) -> None:
        log.log(level, "%s: forwarding SIGTERM", reason)
        self._hold_deadline = None
        _signals.send(child, signal.SIGTERM)


def become_subreaper() -> None:
    """Adopt orphaned grandchildren even when not PID 1 (Linux), so they are reaped here."""
    if os.getpid() == 1 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
