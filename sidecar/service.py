"""The one object the edges talk to: HTTP, signals and stop detection each call one verb.

`ProtectionService` owns the state machine, its asyncio shell (the reconciler) and the
backend, all three private. Each verb sends one event into the machine, then wakes the
reconciler to act on it and, when others may be waiting on the state (a /busy for
confirmation, EMF for a change), notifies them. What the outside may see of the state
is a `View`, built here in one place for /state, /metrics and EMF alike.

    POST /busy -> busy() -> Machine.acquire -> Reconciler.wake -> Machine.poll -> Call
              -> backend -> Machine.on_success -> Reconciler.notify
              -> wait_protected() returns -> BusyOutcome -> HTTP answer
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from sidecar.leases import Lease, LeaseTable, TooManyLeasesError
from sidecar.machine import DrainingError, Machine
from sidecar.reconciler import Reconciler

if TYPE_CHECKING:
    from collections.abc import Callable

    from sidecar.backends.base import Backend
    from sidecar.clock import Clock
    from sidecar.machine import ErrorInfo, Exit, Policy

log = logging.getLogger("sidecar.service")

# Requests waiting for confirmation at once, at most: past this a /busy answers at once
# (its lease is kept), so a flood of waiting requests cannot exhaust memory.
MAX_WAITERS = 1000


@dataclass(frozen=True, slots=True)
class BusyOutcome:
    """What became of a busy request."""

    status: Literal["protected", "unconfirmed", "draining", "full"]
    lease: str
    leases: int  # held after the request
    expires_wall: float | None = None  # protected: confirmed until then
    reason: str = ""  # unconfirmed: why
    kept: bool = True  # unconfirmed: the lease is still held (not released meanwhile)


@dataclass(frozen=True, slots=True)
class LeaseView:
    id: str
    since_wall: float
    expires_wall: float | None
    ttl: float | None


@dataclass(frozen=True, slots=True)
class View:
    """The state as people and monitoring see it, read from the machine in one place."""

    leases: tuple[LeaseView, ...]  # the oldest first, at most the limit asked for
    lease_count: int
    protected: bool
    state: str  # on, off, unknown
    expires_wall: float | None  # confirmed protection ends then
    seconds_left: float  # of confirmed protection
    backend: str
    last_error: ErrorInfo | None
    calls: dict[tuple[str, str], int]  # (op, outcome) -> n
    retries: int
    failures: int  # consecutive failed calls, 0 after a success
    leases_expired: int
    refused_draining: int  # new leases refused while draining
    unprotected_busy_seconds: float  # busy without confirmed protection, in all
    in_flight: str | None
    renew_at_wall: float | None
    next_retry_wall: float | None
    capped: bool
    idle_since_wall: float | None
    draining: bool
    drain_deadline_wall: float | None

    @property
    def busy(self) -> bool:
        return self.lease_count > 0


class ProtectionService:
    """Leases in, protection confirmed (or not) out; drain and exit on request."""

    def __init__(
        self,
        policy: Policy,
        backend: Backend,
        clock: Clock,
        *,
        max_leases: int,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._backend = backend
        self._machine = Machine(policy, clock, LeaseTable(max_leases), rand)
        self._reconciler = Reconciler(self._machine, backend, clock)
        self._clock = clock
        self._waiting = 0

    # ---- verbs ------------------------------------------------------------------

    async def busy(self, lease: str, ttl: float | None, wait: float) -> BusyOutcome:
        """Take or refresh `lease`; wait up to `wait` seconds for confirmed protection."""
        machine = self._machine
        try:
            machine.acquire(lease, ttl)
        except DrainingError:
            return BusyOutcome("draining", lease, len(machine.leases))
        except TooManyLeasesError:
            return BusyOutcome("full", lease, len(machine.leases))
        protected = machine.protected()
        if ttl is not None or not protected:
            self._reconciler.wake()  # a new TTL timer, or protection to ask for
        crowded = self._waiting >= MAX_WAITERS
        if not protected and wait > 0 and not crowded:
            self._waiting += 1
            try:
                protected = await self._reconciler.wait_protected(lease, wait)
            finally:
                self._waiting -= 1
        if machine.expire_leases():  # a TTL that passed while waiting: gone now
            self._reconciler.notify()
            self._reconciler.wake()
        kept = lease in machine.leases
        if protected and kept:
            return BusyOutcome(
                "protected", lease, len(machine.leases), machine.confirmed_until_wall()
            )
        reason = self._unconfirmed_reason(kept=kept, crowded=crowded, wait=wait)
        return BusyOutcome("unconfirmed", lease, len(machine.leases), reason=reason, kept=kept)

    def _unconfirmed_reason(self, *, kept: bool, crowded: bool, wait: float) -> str:
        """Why a /busy is answered without protection, the most specific cause first."""
        if not kept:
            return "the lease was released or its TTL passed before protection was confirmed"
        if crowded:
            return f"{MAX_WAITERS} requests are already waiting for confirmation"
        error = self._machine.retry.last_error
        if error is not None:
            return f"{error.code}: {error.message}"
        if self._machine.belief.capped:
            return "protection stopped at TASK_PROTECTION_MAX_PROTECTED_SECONDS"
        return f"not confirmed within {wait:g}s"

    def idle(self, lease: str) -> tuple[bool, int]:
        """Release `lease`: (whether it was held, leases still held)."""
        machine = self._machine
        released = machine.release(lease)
        if released:
            self._reconciler.notify()  # a /busy may be waiting on this very lease
            if not machine.leases:
                self._reconciler.wake()  # start the idle grace timer
        return released, len(machine.leases)

    def release_all(self) -> int:
        """The operator's override: drop every lease; protection ends after the grace."""
        count = self._machine.release_all()
        if count:
            log.warning(
                "operator released all %d lease(s)",
                count,
                extra={"event": "leases_released", "released": count},
            )
            self._reconciler.notify()
            self._reconciler.wake()
        return count

    def drain(self, *, exit_when_idle: bool, timeout: float | None = None) -> int:
        """Refuse new leases from now on; with exit_when_idle, run() ends once none is held
        (or after `timeout`). Idempotent. Returns the leases held."""
        self._machine.start_drain(timeout, exit_when_idle=exit_when_idle)
        self._reconciler.notify()  # draining is part of the state others watch (EMF)
        self._reconciler.wake()
        return len(self._machine.leases)

    def force_exit(self, code: int, reason: str) -> None:
        self._reconciler.force_exit(code, reason)

    def recheck(self) -> None:
        """Look at the timers again now. The reconciler sleeps in real seconds computed
        from the injected clock; when that clock jumps (a fake clock in tests),
        this is how the sidecar learns that a moment it waits for has come."""
        self._reconciler.wake()

    @property
    def settled(self) -> bool:
        """Whether the sidecar has acted on everything so far: no call in flight, none due."""
        return self._reconciler.settled

    async def wait_settled(self) -> None:
        """Until the sidecar has acted on everything that happened so far."""
        await self._reconciler.wait_settled()

    def holds(self, lease: str) -> bool:
        """Whether `lease` is held now (taken, not released, its TTL not passed)."""
        return self._machine.holds(lease)

    @property
    def backend_name(self) -> str:
        return self._backend.name

    @property
    def draining(self) -> bool:
        return self._machine.drain.draining

    @property
    def lease_count(self) -> int:
        return len(self._machine.leases)

    async def wait_changed(self, at_most: float) -> None:
        """Return when the state may have changed (a backend answer, leases gone, the
        protection state moved), or after `at_most` seconds."""
        await self._reconciler.wait_changed(at_most)

    async def run(self) -> Exit:
        """Drive protection until drained or forced to exit."""
        return await self._reconciler.run()

    async def close(self) -> None:
        await self._backend.close()

    # ---- the exit (after run() has ended) ------------------------------------------

    def protection_left_on(self) -> bool:
        """Whether the sidecar would leave ECS protecting the task with no lease held."""
        return not self._machine.leases and self._machine.may_be_protected()

    async def switch_off(self) -> None:
        """One disable call, outside the reconciler (which has stopped): raises
        BackendError when it fails."""
        await self._backend.set(enabled=False, expires_minutes=0)

    # ---- the view ---------------------------------------------------------------

    def snapshot(self, lease_limit: int) -> View:
        """The state now; at most `lease_limit` leases listed (the oldest), all counted."""
        machine = self._machine
        now, wall = self._clock.monotonic(), self._clock.wall()

        def wall_of(moment: float | None) -> float | None:
            return None if moment is None else wall + moment - now

        # One pass, no sort: the table keeps leases in creation order, the oldest first.
        oldest: list[Lease] = []
        live = 0
        for lease in machine.leases.leases():
            if lease.expires is not None and lease.expires <= now:
                continue  # expired, not yet reaped
            live += 1
            if len(oldest) < lease_limit:
                oldest.append(lease)
        until = machine.confirmed_until()
        belief = machine.belief
        return View(
            leases=tuple(
                LeaseView(lease.id, lease.since_wall, lease.expires_wall, lease.ttl)
                for lease in oldest
            ),
            lease_count=live,
            protected=until is not None,
            state=machine.state(),
            expires_wall=machine.confirmed_until_wall(),
            seconds_left=0.0 if until is None else max(0.0, until - now),
            backend=self._backend.name,
            last_error=machine.retry.last_error,
            calls=dict(machine.counters.calls),
            retries=machine.counters.retries,
            failures=machine.retry.failures,
            leases_expired=machine.counters.leases_expired,
            refused_draining=machine.counters.refused_draining,
            unprotected_busy_seconds=machine.unprotected_busy_seconds(),
            in_flight=machine.inflight.op.value if machine.inflight else None,
            renew_at_wall=wall_of(belief.renew_at) if until is not None else None,
            next_retry_wall=wall_of(machine.retry.at),
            capped=belief.capped,
            idle_since_wall=wall_of(machine.idle_since),
            draining=machine.drain.draining,
            drain_deadline_wall=wall_of(machine.drain.deadline),
        )
