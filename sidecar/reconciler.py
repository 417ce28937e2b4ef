"""The asyncio shell around the machine: runs its calls, waits its timers, wakes its waiters.

Only the service (service.py) drives it: each event changes the machine there, then
`wake()` makes the loop poll again and `notify()` makes waiters look at the state again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from sidecar.backends.base import BackendError
from sidecar.machine import Call, Exit, Machine, Op, Wait

if TYPE_CHECKING:
    from sidecar.backends.base import Backend
    from sidecar.clock import Clock

log = logging.getLogger("sidecar.reconciler")


class Reconciler:
    """Drives a Machine: one loop that polls it and does what it says.

    A `Call` runs as a task (at most one at a time: the machine asks for no other while
    one is in flight) whose answer goes back into the machine; a `Wait` sleeps until its
    moment or the next `wake()`; an `Exit` ends `run()`. Whoever waits for the state to
    move (`wait_protected`, `wait_changed`) waits on `_changed`, an event set and
    replaced by `notify()`: after every backend answer, and whenever a poll expired
    leases or moved the protection state.
    """

    def __init__(self, machine: Machine, backend: Backend, clock: Clock) -> None:
        self._machine = machine
        self._backend = backend
        self._clock = clock
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        # Set while the loop sleeps with nothing in flight and nothing due: lets tests
        # (and the drill) wait for the reconciler to act on an event instead of sleeping.
        self._settled = asyncio.Event()
        self._call_task: asyncio.Task[None] | None = None
        self._forced: Exit | None = None

    @property
    def settled(self) -> bool:
        return self._settled.is_set()

    async def wait_settled(self) -> None:
        await self._settled.wait()

    def wake(self) -> None:
        self._settled.clear()
        self._wake.set()

    def notify(self) -> None:
        """Wake everyone waiting in wait_protected() to look at the state again."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, at_most: float) -> None:
        """Until the next notify(), or `at_most` seconds."""
        # asyncio.timeout, never wait_for: on 3.11 wait_for loses a cancellation that
        # comes as the event is set (a drain does both at once), and the task it ran in,
        # EMF for one, then never ends and the sidecar never exits.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await self._changed.wait()

    def force_exit(self, code: int, reason: str) -> None:
        if self._forced is None:  # the first reason stands: later signals change nothing
            self._forced = Exit(code, reason)
        self.wake()

    async def run(self) -> Exit:
        try:
            return await self._loop()
        finally:
            if self._call_task is not None:
                self._call_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._call_task

    async def _loop(self) -> Exit:
        machine = self._machine
        while True:
            self._wake.clear()
            if self._forced is not None:
                return self._forced
            expired_before = machine.counters.leases_expired
            state_before = machine.state()
            action = machine.poll()
            if machine.counters.leases_expired != expired_before:
                self.notify()  # a waiter's own lease may be gone
            elif machine.state() != state_before:
                self.notify()  # protection expired, or a disable went out
            if isinstance(action, Exit):
                return action
            if isinstance(action, Call):
                self._call_task = asyncio.create_task(self._perform(action))
                continue
            assert isinstance(action, Wait)  # noqa: S101  (narrowing for the type checker)
            if machine.inflight is None:
                self._settled.set()
            timeout = None
            if action.until is not None:
                timeout = max(0.0, action.until - self._clock.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def _perform(self, call: Call) -> None:
        try:
            if call.op is Op.GET:
                result = await self._backend.get()
            else:
                result = await self._backend.set(call.op is Op.ENABLE, call.expires_minutes)
        except BackendError as error:
            self._machine.on_failure(call, error)
        except Exception as error:
            # A bug in a backend must not wedge the sidecar: count it as a transient failure.
            log.exception(
                "backend %s raised unexpectedly", call.op.value, extra={"event": "backend_crashed"}
            )
            self._machine.on_failure(
                call, BackendError("InternalError", repr(error)[:200], retryable=True)
            )
        else:
            self._machine.on_success(call, result)
        self.notify()
        self.wake()

    async def wait_protected(self, lease_id: str, wait_seconds: float) -> bool:
        """Wait until protection is confirmed, the lease is gone, or waiting is pointless."""
        machine = self._machine
        deadline = self._clock.monotonic() + wait_seconds
        while True:
            # A lease whose TTL passed while waiting is not held, even before a poll has
            # dropped it: protection confirmed now is not protection for it.
            if not machine.holds(lease_id):
                return False
            if machine.protected():
                return True
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0 or machine.gives_up_before(deadline):
                return False
            changed = self._changed
            try:
                async with asyncio.timeout(remaining):
                    await changed.wait()
            except TimeoutError:
                return machine.holds(lease_id) and machine.protected()
