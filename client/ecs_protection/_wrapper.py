"""`ecs-protection run`: what tini does, plus holding SIGTERM back while the task is busy.

One loop takes every signal (see _signals: no handler code runs), reaps every exited
child (as PID 1, or as a child subreaper, orphans are re-parented to us) and forwards
signals to CMD. The first SIGTERM is special:

1. POST /drain: the sidecar refuses new leases from now on, so `ecs-protection busy`
   in CMD's job loop exits 75 instead of starting a job that SIGTERM would then cut;
2. while the sidecar reports leases held, SIGTERM is held back from CMD, for at most
   the hold timeout, then forwarded. A second SIGTERM is forwarded at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING

from ecs_protection import _signals

if TYPE_CHECKING:
    from collections.abc import Callable

    from ecs_protection._sync import Client

log = logging.getLogger("ecs_protection.cli")

PR_SET_CHILD_SUBREAPER = 36
IDLE_WAIT_SECONDS = 5.0  # a safety net: SIGCHLD wakes the loop when anything exits


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
        self._hold_deadline: float | None = None
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
            self._check_hold(child)

    def _timeout(self) -> float:
        if self._hold_deadline is None:
            return IDLE_WAIT_SECONDS
        return max(0.0, min(self._next_poll, self._hold_deadline) - self.clock())

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
        deadline = self.clock() + self.hold_timeout
        leases = self._drain()  # its answer counts the leases: no second request
        if not leases:
            _signals.send(child, signum)
            return
        self._hold_deadline = deadline
        self._next_poll = self.clock() + self.poll_seconds
        log.info(
            "SIGTERM held back from %s while the sidecar reports %d lease(s) (at most %gs)",
            self.cmd[0],
            leases,
            self.hold_timeout,
        )

    def _check_hold(self, child: _signals.Child) -> None:
        if self._hold_deadline is None:
            return
        now = self.clock()
        if now >= self._hold_deadline:
            log.warning("hold timeout passed with leases still held: forwarding SIGTERM")
        elif now < self._next_poll:
            return
        elif self._leases_held():
            self._next_poll = self.clock() + self.poll_seconds
            return
        else:
            log.info("sidecar is idle: forwarding SIGTERM")
        self._hold_deadline = None
        _signals.send(child, signal.SIGTERM)

    def _drain(self) -> int:
        """POST /drain; the leases still held (0 when the sidecar cannot say)."""
        try:
            leases = self.client.drain()
        except Exception as exc:  # noqa: BLE001  (never let a sidecar problem wedge the stop)
            # A sidecar older than POST /drain (or one that failed it) may still hold
            # leases: ask it the way older clients did.
            log.warning("could not tell the sidecar to drain (%s): new jobs may start", exc)
            return self._leases_held()
        if leases is None:
            return 0
        log.info("sidecar is draining: new jobs are refused, %d lease(s) held", leases)
        return leases

    def _leases_held(self) -> int:
        try:
            state = self.client.state()
        except Exception as exc:  # noqa: BLE001  (never let a sidecar problem wedge the stop)
            log.warning("cannot read the sidecar state (%s): not holding SIGTERM", exc)
            return 0
        return state.leases if state is not None else 0


def become_subreaper() -> None:
    """Adopt orphaned grandchildren even when not PID 1 (Linux), so they are reaped here."""
    if os.getpid() == 1 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
