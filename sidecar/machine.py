"""The protection state machine: events in, the next action out. No I/O, no sleeping.

Events are method calls (`acquire`, `release`, `start_drain`, `on_success`,
`on_failure`); `poll()` then says what to do next: call the backend, wait until a
moment, or exit. The asyncio shell (reconciler.py) runs the action and polls again.

Because `poll()` is the only place that starts a call, and it never starts one while
another is in flight, calls coalesce by construction: whatever happened meanwhile is
folded into the state, and the next poll acts on the latest desire only.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from sidecar.backends.base import BackendError, Protection, ProtectionRefusedError

if TYPE_CHECKING:
    from collections.abc import Callable

    from sidecar.clock import Clock
    from sidecar.leases import LeaseTable

log = logging.getLogger("sidecar.machine")

EXIT_DRAINED = 0
EXIT_DRAIN_TIMEOUT = 3


class Op(Enum):
    GET = "get"
    ENABLE = "enable"
    DISABLE = "disable"


@dataclass(frozen=True, slots=True)
class Call:
    op: Op
    expires_minutes: int = 0


@dataclass(frozen=True, slots=True)
class Wait:
    until: float | None  # monotonic; None: until something happens


@dataclass(frozen=True, slots=True)
class Exit:
    code: int
    reason: str


Action = Call | Wait | Exit


class DrainingError(Exception):
    """A new lease was asked for while the task is stopping."""


@dataclass(frozen=True, slots=True)
class Policy:
    expires_minutes: int = 60
    idle_grace: float = 10.0
    max_protected: float | None = None
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    slow_retry: float = 60.0
    # Floor between two renewals, so a backend that returns an expiry in the past
    # (or a wall clock far off) cannot make the sidecar renew in a tight loop.
    min_renew_gap: float = 10.0
    # Tasks started together (a deployment, a scale-out) enable in the same minute and
    # would renew in the same minute every period, against one account-wide throttle.
    # So the first renewal after start comes at a random moment of this fraction of the
    # renewal cycle (up to the margin); later ones keep the phase it picked. It costs at
    # most one early renewal per sidecar lifetime. 0: no spread.
    renew_spread: float = 0.75

    @property
    def period(self) -> float:
        return self.expires_minutes * 60.0

    @property
    def renew_margin(self) -> float:
        # Half the period, at most five minutes: room for many retries before expiry.
        return min(300.0, self.period / 2)

    @property
    def renew_window(self) -> float:
        """How much earlier than the margin the first renewal after start may come."""
        return (self.period - self.renew_margin) * self.renew_spread


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    op: str
    code: str
    message: str
    retryable: bool
    at_wall: float
    retry_in: float


@dataclass(slots=True)
class Counters:
    calls: dict[tuple[str, str], int] = field(default_factory=dict)  # (op, outcome) -> n
    retries: int = 0
    leases_expired: int = 0

    def count(self, op: Op, outcome: str) -> None:
        key = (op.value, outcome)
        self.calls[key] = self.calls.get(key, 0) + 1

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


class Machine:
    """Decides when to enable, renew and disable protection, and when to exit."""

    def __init__(
        self,
        policy: Policy,
        clock: Clock,
        leases: LeaseTable,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self.leases = leases
        self.counters = Counters()
        self._clock = clock
        self._rand = rand

        now = clock.monotonic()
        self.known = False  # whether the backend's state has been read or set yet
        self.protected_flag = False  # the last confirmed state
        self.expires: float | None = None  # monotonic
        self.expires_wall: float | None = None  # as the backend returned it
        self.renew_at: float | None = None
        self.renew_phase_chosen = False  # see Policy.renew_spread
        # No enable before this: set by each confirmed enable, so that a backend that
        # answers with an expiry already past cannot make the machine call in a loop.
        self.enable_floor: float | None = None
        self.protected_since: float | None = None
        self.capped = False
        self.idle_since: float | None = now  # nobody is busy at start
        self.inflight: Call | None = None
        self._call_started = now
        self.failures = 0  # consecutive
        self.retry_at: float | None = None
        self.last_error: ErrorInfo | None = None
        self.draining = False
        self.exit_when_idle = False
        self.drain_deadline: float | None = None

    # ---- events -------------------------------------------------------------

    def acquire(self, lease_id: str, ttl: float | None) -> bool:
        """Take or refresh a lease; True when new. Raises DrainingError, TooManyLeasesError."""
        if self.draining and lease_id not in self.leases:
            raise DrainingError(lease_id)
        created = self.leases.acquire(lease_id, ttl, self._clock.monotonic(), self._clock.wall())
        self.idle_since = None
        return created

    def release(self, lease_id: str) -> bool:
        released = self.leases.release(lease_id)
        self._note_if_idle()
        return released

    def release_all(self) -> int:
        count = self.leases.clear()
        self._note_if_idle()
        return count

    def start_drain(self, timeout: float | None, *, exit_when_idle: bool = True) -> None:
        """Refuse new leases; with exit_when_idle, poll() exits once none is held."""
        self.draining = True
        if exit_when_idle and not self.exit_when_idle:
            self.exit_when_idle = True
            if timeout is not None:
                self.drain_deadline = self._clock.monotonic() + timeout

    def on_success(self, call: Call, protection: Protection) -> None:
        now = self._clock.monotonic()
        self.inflight = None
        if call.op is Op.ENABLE and not protection.enabled:
            self.on_failure(
                call,
                BackendError(
                    "NotProtected",
                    "the backend answered an enable with protection off",
                    retryable=False,
                ),
            )
            return
        self.counters.count(call.op, "ok")
        self.failures = 0
        self.retry_at = None
        self.last_error = None
        self.known = True
        if not protection.enabled:
            if self.protected_flag:
                log.info("protection disabled", extra={"op": call.op.value})
            self._clear_protection()
            self.enable_floor = None
            return

        wall_now = self._clock.wall()
        if protection.expires_at is None:
            # ECS always sends a date with protection on; without one, renew as if the
            # requested period had been granted from the moment the call started.
            expires = self._call_started + self.policy.period
        else:
            expires = now + (protection.expires_at.timestamp() - wall_now)
            if call.op is Op.ENABLE:
                # ECS cannot grant more than was asked from when the call started:
                # this guards against a local clock behind ECS's.
                expires = min(expires, self._call_started + call.expires_minutes * 60.0)
        was_protected = self.protected_flag
        self.protected_flag = True
        self.expires = expires
        self.expires_wall = (
            protection.expires_at.timestamp() if protection.expires_at else wall_now + expires - now
        )
        renew_at = expires - self.policy.renew_margin
        if not self.renew_phase_chosen:
            self.renew_phase_chosen = True
            # 1 - rand: a rand of 1 keeps the latest moment. Only ever earlier: the margin
            # before expiry is never cut.
            renew_at -= (1.0 - self._rand()) * self.policy.renew_window
        self.renew_at = max(renew_at, now + self.policy.min_renew_gap)
        if call.op is Op.ENABLE:
            self.enable_floor = now + self.policy.min_renew_gap
        if self.protected_since is None:
            self.protected_since = now
        log.info(
            "protection %s",
            "renewed" if was_protected else "enabled",
            extra={"op": call.op.value, "expires_in_s": round(expires - now, 1)},
        )

    def on_failure(self, call: Call, error: BackendError) -> None:
        now = self._clock.monotonic()
        self.inflight = None
        self.counters.count(
            call.op,
            "refused"
            if isinstance(error, ProtectionRefusedError)
            else "retryable"
            if error.retryable
            else "error",
        )
        self.failures += 1
        if error.retryable:
            delay = min(
                self.policy.backoff_cap, self.policy.backoff_base * 2 ** min(self.failures - 1, 30)
            )
        else:
            delay = self.policy.slow_retry
        delay = delay / 2 + self._rand() * delay / 2  # equal jitter: spread, yet bounded below
        self.retry_at = now + delay
        if isinstance(error, ProtectionRefusedError) and call.op is Op.GET:
            # The agent answers GET with a failure for tasks ECS cannot protect:
            # such a task is certainly not protected now.
            self.known = True
            self._clear_protection()
        self.last_error = ErrorInfo(
            call.op.value,
            error.code,
            error.message,
            error.retryable,
            self._clock.wall(),
            round(delay, 3),
        )
        log_at = logging.WARNING if error.retryable else logging.ERROR
        log.log(
            log_at,
            "backend %s failed: %s: %s; next try in %.1fs",
            call.op.value,
            error.code,
            error.message,
            delay,
            extra={
                "op": call.op.value,
                "code": error.code,
                "status": error.status,
                "retryable": error.retryable,
                "attempt": self.failures,
            },
        )

    # ---- the decision -------------------------------------------------------

    def poll(self) -> Action:
        now = self._clock.monotonic()
        expired = self.leases.expire(now)
        if expired:
            self.counters.leases_expired += len(expired)
            log.warning(
                "%d lease(s) expired without a heartbeat: %s",
                len(expired),
                ", ".join(expired[:10]),
                extra={"leases_expired": len(expired)},
            )
            self._note_if_idle(now)

        if self.draining and self.exit_when_idle:
            if not self.leases:
                return Exit(EXIT_DRAINED, "drained: no lease held")
            if self.drain_deadline is not None and now >= self.drain_deadline:
                held = [lease.id for lease in self.leases.leases()]
                return Exit(
                    EXIT_DRAIN_TIMEOUT,
                    f"drain timeout with {len(held)} lease(s) held: {', '.join(held[:20])}",
                )

        timers = [self.leases.next_expiry(), self.drain_deadline]
        if self.inflight is not None:
            return Wait(_earliest(timers))

        call, wake = self._desired(now)
        if call is not None and self.retry_at is not None and now < self.retry_at:
            call, wake = None, self.retry_at
        if call is not None:
            if self.failures:
                self.counters.retries += 1
            self.inflight = call
            self._call_started = now
            return call
        return Wait(_earliest([*timers, wake]))

    def _desired(self, now: float) -> tuple[Call | None, float | None]:  # noqa: PLR0911
        """The call the state needs now, or when to look again."""
        if self.protected_flag and self.expires is not None and self.expires <= now:
            log.warning("protection expired", extra={"busy": bool(self.leases)})
            self._clear_protection()

        if self.leases:
            if self.enable_floor is not None and now < self.enable_floor:
                return None, self.enable_floor
            if not self.protected_flag or self.renew_at is None or now >= self.renew_at:
                minutes = self._enable_minutes(now)
                if minutes is None:
                    return None, None
                return Call(Op.ENABLE, minutes), None
            return None, self.renew_at

        if self.capped:
            self.capped = False
        if not self.known:
            return Call(Op.GET), None
        if self.protected_flag:
            grace_end = (self.idle_since if self.idle_since is not None else now) + (
                self.policy.idle_grace
            )
            if now >= grace_end:
                return Call(Op.DISABLE), None
            return None, min(grace_end, self.expires) if self.expires else grace_end
        return None, None

    def _enable_minutes(self, now: float) -> int | None:
        """Minutes to ask for: the period, cut short so protection ends at the cap.

        None once the cap is reached. The last renewal before the cap asks for just the
        minutes left, and no renewal is made inside the final margin, so protection
        ends close to `protected_since + max_protected`, not a whole period later.
        """
        period = self.policy.expires_minutes
        cap = self.policy.max_protected
        if self.capped:
            return None
        if cap is None:
            return period
        since = now if self.protected_since is None else self.protected_since
        left = since + cap - now
        if self.protected_since is not None and left <= self.policy.renew_margin:
            self.capped = True
            log.warning(
                "protected continuously for %.0fs (TASK_PROTECTION_MAX_PROTECTED_SECONDS="
                "%g): not renewing, so deployments and scale-in are no longer blocked",
                now - self.protected_since,
                cap,
                extra={"leases": len(self.leases)},
            )
            return None
        return max(1, min(period, math.ceil(left / 60.0)))

    # ---- queries -------------------------------------------------------------

    def protected(self) -> bool:
        return (
            self.protected_flag
            and self.expires is not None
            and self.expires > self._clock.monotonic()
        )

    def gives_up_before(self, deadline: float) -> bool:
        """Whether protection cannot come before `deadline`: no call will be tried by then."""
        if self.capped:
            return True
        return self.inflight is None and self.retry_at is not None and self.retry_at >= deadline

    # ---- internals ------------------------------------------------------------

    def _clear_protection(self) -> None:
        self.protected_flag = False
        self.expires = None
        self.expires_wall = None
        self.renew_at = None
        self.protected_since = None

    def _note_if_idle(self, now: float | None = None) -> None:
        if not self.leases and self.idle_since is None:
            self.idle_since = self._clock.monotonic() if now is None else now


def _earliest(times: list[float | None]) -> float | None:
    real = [t for t in times if t is not None]
    return min(real) if real else None
