"""The protection state machine: events in, the next action out. No I/O, no sleeping.

Events are method calls (`acquire`, `release`, `start_drain`, `on_success`,
`on_failure`); `poll()` then says what to do next: call the backend, wait until a
moment, or exit. The asyncio shell (reconciler.py) runs the action and polls again.

Because `poll()` is the only place that starts a call, and it never starts one while
another is in flight, calls coalesce by construction: whatever happened meanwhile is
folded into the state, and the next poll acts on the latest desire only.

The state is in three parts: `belief` (what ECS has, as far as answers tell), `retry`
(the current run of failures) and `drain`. Events and `poll()` change them; the
queries and `_desired()` only read them.
"""

from __future__ import annotations

import functools
import logging
import math
import random
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar, cast

from sidecar.backends.base import BackendError, Protection, ProtectionRefusedError
from sidecar.clock import rfc3339

if TYPE_CHECKING:
    from collections.abc import Callable

    from sidecar.clock import Clock
    from sidecar.leases import LeaseTable

log = logging.getLogger("sidecar.machine")

P = ParamSpec("P")
R = TypeVar("R")

EXIT_DRAINED = 0
EXIT_DRAIN_TIMEOUT = 3
# ECS grants at most 2880 minutes: an answer promising more is not believed beyond that.
MAX_PROTECTION_SECONDS = 2880 * 60.0


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
    # Answers that are usually permanent but sometimes clear in seconds (the agent's 403
    # right after it restarted): retried from `ramp_base`, at most every `ramp_hold`
    # seconds during the first `ramp_window` of the failure, then slowing to slow_retry.
    ramp_base: float = 1.0
    ramp_hold: float = 8.0
    ramp_window: float = 60.0
    # Floor between two renewals, so a backend that returns an expiry in the past
    # (or a wall clock far off) cannot make the sidecar renew in a tight loop. An
    # expiry still ahead but closer than twice this is renewed half-way to it instead:
    # the floor must never push a renewal past the expiry.
    min_renew_gap: float = 10.0
    # Tasks started together (a deployment, a scale-out) enable in the same minute and
    # would renew in the same minute every period, against one account-wide throttle.
    # So the first renewal after start comes at a random moment of this fraction of the
    # renewal cycle (up to the margin); later ones keep the phase it picked. It costs at
    # most one early renewal per sidecar lifetime. 0: no spread.
    renew_spread: float = 0.9
    # A change whose answer was lost (a timeout, a 504) may still land at ECS a little
    # later, even after a later call was confirmed. For this long after such a loss the
    # sidecar claims nothing a late disable could undo, and then reads the state again.
    settle_window: float = 10.0

    @property
    def period(self) -> float:
        return self.expires_minutes * 60.0

    @property
    def renew_margin(self) -> float:
        # Half the period, at most four minutes: room for a dozen retries (and a two-minute
        # throttling storm) before expiry. Every minute more costs about 1.5 % more calls
        # (benchmarks/fleet.py): renewals every 56 minutes for a 60-minute expiry.
        return min(240.0, self.period / 2)

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
    refused_draining: int = 0  # new leases refused because the task is stopping
    # Seconds during which a lease was held without confirmed protection (closed
    # intervals; Machine.unprotected_busy_seconds() adds the one in progress).
    unprotected_busy_seconds: float = 0.0

    def count(self, op: Op, outcome: str) -> None:
        key = (op.value, outcome)
        self.calls[key] = self.calls.get(key, 0) + 1

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


@dataclass(slots=True)
class Belief:
    """What ECS has, as far as the backend's answers tell."""

    known: bool = False  # read, set or confirmed since start or the last lost answer
    # A change call's answer was lost (timeout, dropped connection, 5xx): ECS may be
    # protected although nothing confirmed it, so "off" must be re-established.
    uncertain: bool = False
    on: bool = False  # confirmed on (until `expires`)
    expires: float | None = None  # monotonic; the earliest the answers allow
    # The latest moment the answers allow (clocks disagreeing): until then ECS may still
    # have protection on, so an idle sidecar must switch it off, not forget it.
    latest: float | None = None
    expires_wall: float | None = None  # as the backend returned it, for people
    renew_at: float | None = None
    # No enable before this: set by each confirmed enable, so that a backend that
    # answers with an expiry already past cannot make the machine call in a loop.
    enable_floor: float | None = None
    since: float | None = None  # continuously protected since (for the cap)
    capped: bool = False  # the cap was reached in this busy period: no more renewals
    phase_chosen: bool = False  # the first renewal was spread (Policy.renew_spread)
    # After a lost answer: a read at this moment settles whatever may still land.
    verify_at: float | None = None
    late_off_possible: bool = False  # the lost call was a disable: claim nothing until then

    def off(self) -> None:
        self.on = False
        self.expires = self.expires_wall = self.renew_at = self.since = self.latest = None


@dataclass(slots=True)
class Retry:
    """The current run of failed calls."""

    failures: int = 0  # consecutive
    failing_since: float | None = None
    at: float | None = None  # no call before this
    last_error: ErrorInfo | None = None

    def reset(self) -> None:
        self.failures = 0
        self.failing_since = self.at = self.last_error = None


@dataclass(slots=True)
class Drain:
    draining: bool = False  # new leases are refused
    exit_when_idle: bool = False  # SIGTERM: exit once no lease is held
    deadline: float | None = None  # ... or at this moment at the latest


def _accounted(
    method: Callable[Concatenate[Machine, P], R],
) -> Callable[Concatenate[Machine, P], R]:
    """Around an event: count the unprotected busy time up to it, then note the new state."""

    @functools.wraps(method)
    def event(self: Machine, *args: P.args, **kwargs: P.kwargs) -> R:
        now = self._clock.monotonic()
        self._account(now)
        try:
            return method(self, *args, **kwargs)
        finally:
            self._mark(now)

    return cast("Callable[Concatenate[Machine, P], R]", event)


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
        self.belief = Belief()
        self.retry = Retry()
        self.drain = Drain()
        self.idle_since: float | None = clock.monotonic()  # nobody is busy at start
        self.inflight: Call | None = None
        self._call_started = clock.monotonic()
        self._clock = clock
        self._rand = rand
        # (since, confirmed until) at the last event while busy: between events only
        # time passes, so the unprotected part of that stretch is exact.
        self._busy_mark: tuple[float, float | None] | None = None

    # ---- events -------------------------------------------------------------

    @_accounted
    def acquire(self, lease_id: str, ttl: float | None) -> bool:
        """Take or refresh a lease; True when new. Raises DrainingError, TooManyLeasesError."""
        if self.drain.draining and lease_id not in self.leases:
            self.counters.refused_draining += 1
            raise DrainingError(lease_id)
        created = self.leases.acquire(lease_id, ttl, self._clock.monotonic(), self._clock.wall())
        self.idle_since = None
        return created

    @_accounted
    def release(self, lease_id: str) -> bool:
        released = self.leases.release(lease_id)
        self._note_if_idle(self._clock.monotonic())
        return released

    @_accounted
    def release_all(self) -> int:
        count = self.leases.clear()
        self._note_if_idle(self._clock.monotonic())
        return count

    @_accounted
    def expire_leases(self) -> int:
        """Drop the leases whose TTL has passed (poll() does it too); return how many."""
        return self._expire_leases(self._clock.monotonic())

    def start_drain(self, timeout: float | None, *, exit_when_idle: bool = True) -> None:
        """Refuse new leases; with exit_when_idle, poll() exits once none is held."""
        drain = self.drain
        drain.draining = True
        if exit_when_idle and not drain.exit_when_idle:
            drain.exit_when_idle = True
            if timeout is not None:
                drain.deadline = self._clock.monotonic() + timeout

    @_accounted
    def on_success(self, call: Call, protection: Protection) -> None:
        """A confirmed answer. The backend has checked it (an enable answered 'on')."""
        now = self._clock.monotonic()
        belief = self.belief
        if call.op is Op.ENABLE and protection.enabled:
            expired = self._expired_on_arrival(call, protection, now)
            if expired is not None:
                self._enable_not_confirmed(call, expired)
                return
        self.inflight = None
        self.counters.count(call.op, "ok")
        self.retry.reset()
        belief.known = True
        belief.uncertain = False
        if belief.verify_at is not None and self._call_started >= belief.verify_at:
            # Started after anything lost could still land: this answer is the truth.
            belief.verify_at = None
            belief.late_off_possible = False
        if not protection.enabled:
            if belief.on:
                log.info(
                    "protection disabled",
                    extra={"event": "protection_disabled", "op": call.op.value},
                )
            belief.off()
            belief.enable_floor = None
            return

        expires, latest, expires_wall = self._expiry(call, protection, now)
        was_on = belief.on
        belief.on = True
        belief.expires = expires
        belief.latest = latest
        belief.expires_wall = expires_wall
        belief.renew_at = self._renewal_time(now, expires)
        if call.op is Op.ENABLE:
            belief.enable_floor = belief.renew_at
        if belief.since is None:
            belief.since = now
        log.info(
            "protection %s",
            "renewed" if was_on else "enabled",
            extra={
                "event": "protection_renewed" if was_on else "protection_enabled",
                "op": call.op.value,
                "expires_in_s": round(expires - now, 1),
            },
        )

    @_accounted
    def on_failure(self, call: Call, error: BackendError) -> None:
        now = self._clock.monotonic()
        retry = self.retry
        self.inflight = None
        self.counters.count(
            call.op,
            "refused"
            if isinstance(error, ProtectionRefusedError)
            else "retryable"
            if error.retryable
            else "error",
        )
        retry.failures += 1
        if retry.failing_since is None:
            retry.failing_since = now
        delay = self._retry_delay(now, error)
        retry.at = now + delay
        if isinstance(error, ProtectionRefusedError) and call.op is Op.GET:
            # The agent answers GET with a failure for tasks ECS cannot protect:
            # such a task is certainly not protected now.
            self.belief.known = True
            self.belief.uncertain = False
            self.belief.off()
        if error.uncertain:
            self._outcome_unknown(call)
        retry.last_error = ErrorInfo(
            call.op.value,
            error.code,
            error.message,
            error.retryable,
            self._clock.wall(),
            round(delay, 3),
        )
        persistent = not error.retryable and not (
            error.maybe_transient and now - retry.failing_since < self.policy.ramp_window
        )
        log.log(
            logging.ERROR if persistent else logging.WARNING,
            "backend %s failed: %s: %s; next try in %.1fs",
            call.op.value,
            error.code,
            error.message,
            delay,
            extra={
                "event": "backend_failure",
                "op": call.op.value,
                "code": error.code,
                "status": error.status,
                "retryable": error.retryable,
                "uncertain": error.uncertain,
                "attempt": retry.failures,
            },
        )

    def _expired_on_arrival(
        self, call: Call, protection: Protection, now: float
    ) -> BackendError | None:
        """An enable answered "on" with an expiry that has already passed by the server's
        clock: nothing is confirmed. Counted as a failure (with back-off), or the machine
        would enable again at every renewal floor for as long as it lasts."""
        expires, _, _ = self._expiry(call, protection, now)
        if expires > now:
            return None
        shown = rfc3339(protection.expires_at.timestamp()) if protection.expires_at else "none"
        local_left = (
            None
            if protection.expires_at is None
            else protection.expires_at.timestamp() - self._clock.wall()
        )
        if protection.remaining is not None and local_left is not None and local_left > 0:
            ahead = round(local_left - protection.remaining)
            return BackendError(
                "ClockSkew",
                f"the backend's clock (its Date header) is {ahead} s ahead of this sidecar's: "
                f"by it the expiry ECS granted ({shown}) has already passed, so protection "
                "cannot be confirmed; fix the clock of the ECS agent's host or this task",
                retryable=False,
                maybe_transient=True,
            )
        return BackendError(
            "ExpiredOnArrival",
            f"the backend answered the enable with an expiry already past ({shown})",
            retryable=False,
            maybe_transient=True,
        )

    def _enable_not_confirmed(self, call: Call, error: BackendError) -> None:
        """An enable that landed at ECS yet confirms nothing: a failure, and ECS may now
        be protected, so an idle sidecar must switch it off rather than forget it."""
        self.on_failure(call, error)
        belief = self.belief
        if not belief.on:  # a renewal keeps the expiry it had: an enable only extends it
            belief.known = False
            belief.uncertain = True

    # ---- the decision -------------------------------------------------------

    @_accounted
    def poll(self) -> Action:
        now = self._clock.monotonic()
        self._observe(now)
        drain = self.drain
        if drain.draining and drain.exit_when_idle:
            if not self.leases:
                return Exit(EXIT_DRAINED, "drained: no lease held")
            if drain.deadline is not None and now >= drain.deadline:
                held = [lease.id for lease in self.leases.leases()]
                return Exit(
                    EXIT_DRAIN_TIMEOUT,
                    f"drain timeout with {len(held)} lease(s) held: {', '.join(held[:20])}",
                )

        timers = [self.leases.next_expiry(), drain.deadline]
        if self.inflight is not None:
            return Wait(_earliest(timers))

        call, wake = self._desired(now)
        if call is not None and self.retry.at is not None and now < self.retry.at:
            call, wake = None, self.retry.at
        if call is not None:
            if self.retry.failures:
                self.counters.retries += 1
            self.inflight = call
            self._call_started = now
            return call
        return Wait(_earliest([*timers, wake]))

    def _observe(self, now: float) -> None:
        """What the passing of time changed: leases and protection expired, the cap."""
        self._expire_leases(now)
        belief = self.belief
        if belief.on and belief.expires is not None and belief.expires <= now:
            log.warning(
                "protection expired",
                extra={"event": "protection_expired", "busy": bool(self.leases)},
            )
            maybe_still_on = belief.latest is not None and belief.latest > now
            belief.off()
            if maybe_still_on:  # by the other clock it has not: switch it off when idle
                belief.known = False
                belief.uncertain = True
        if not self.leases:
            belief.capped = False  # the cap counts one busy period
        elif self._cap_reached(now):
            belief.capped = True
            assert belief.since is not None  # noqa: S101  (_cap_reached checks it)
            log.warning(
                "protected continuously for %.0fs (TASK_PROTECTION_MAX_PROTECTED_SECONDS="
                "%g): not renewing, so deployments and scale-in are no longer blocked",
                now - belief.since,
                self.policy.max_protected,
                extra={"event": "protection_capped", "leases": len(self.leases)},
            )

    def _expire_leases(self, now: float) -> int:
        expired = self.leases.expire(now)
        if expired:
            self.counters.leases_expired += len(expired)
            log.warning(
                "%d lease(s) expired without a heartbeat: %s",
                len(expired),
                ", ".join(expired[:10]),
                extra={"event": "leases_expired", "leases_expired": len(expired)},
            )
            self._note_if_idle(now)
        return len(expired)

    def _cap_reached(self, now: float) -> bool:
        """Whether protection has lasted so long that the final margin of the cap is here:
        no renewal is made inside it, so protection ends close to since + cap."""
        belief, cap = self.belief, self.policy.max_protected
        if cap is None or belief.capped or belief.since is None:
            return False
        return belief.since + cap - now <= self.policy.renew_margin

    def _desired(self, now: float) -> tuple[Call | None, float | None]:
        """The call the state needs now, or when to look again."""
        call, wake = self._while_busy(now) if self.leases else self._while_idle(now)
        verify_at = self.belief.verify_at
        if call is None and verify_at is not None:
            if now >= verify_at:
                return Call(Op.GET), None  # settle what a lost call may have done since
            wake = _earliest([wake, verify_at])
        return call, wake

    def _while_busy(self, now: float) -> tuple[Call | None, float | None]:
        belief = self.belief
        if belief.enable_floor is not None and now < belief.enable_floor:
            return None, belief.enable_floor
        if belief.on and belief.renew_at is not None and now < belief.renew_at:
            return None, belief.renew_at
        if belief.capped:
            return None, None
        return Call(Op.ENABLE, self._enable_minutes(now)), None

    def _while_idle(self, now: float) -> tuple[Call | None, float | None]:
        belief = self.belief
        if not belief.known and not belief.uncertain:
            return Call(Op.GET), None  # start-up: adopt whatever protection is in force
        if not belief.on and not belief.uncertain:
            return None, None
        # On, or maybe on after a lost answer: off once the grace has passed. An explicit
        # disable settles an unknown state in one call, whichever way the lost call went.
        idle_since = self.idle_since if self.idle_since is not None else now
        grace_end = idle_since + self.policy.idle_grace
        if now >= grace_end:
            return Call(Op.DISABLE), None
        return None, min(grace_end, belief.expires) if belief.expires else grace_end

    def _enable_minutes(self, now: float) -> int:
        """Minutes to ask for: the period, cut short so that protection ends at the cap."""
        period, cap = self.policy.expires_minutes, self.policy.max_protected
        if cap is None:
            return period
        since = now if self.belief.since is None else self.belief.since
        return max(1, min(period, math.ceil((since + cap - now) / 60.0)))

    def _expiry(self, call: Call, protection: Protection, now: float) -> tuple[float, float, float]:
        """(earliest, latest) monotonic expiry the answer allows, and the earliest as the
        backend's wall time for people.

        The agent's Date header measures what is left by the server's clock, immune to a
        wrong local clock; the local wall clock gives a second estimate. An enable cannot
        have been granted more than was asked from when the call started. A read has no
        such bound, so it takes the earlier of the two clocks; the later one only keeps
        the sidecar from forgetting protection it must still switch off. Nothing counts
        beyond ECS's 2880-minute maximum.
        """
        by_wall = None
        if protection.expires_at is not None:
            by_wall = protection.expires_at.timestamp() - self._clock.wall()
        estimates = [e for e in (protection.remaining, by_wall) if e is not None]
        if not estimates:
            # ECS always sends a date with protection on; without one, as if the requested
            # period had been granted from the moment the call started.
            estimates = [self._call_started + self.policy.period - now]
        if call.op is Op.ENABLE:
            asked = self._call_started + call.expires_minutes * 60.0 - now
            earliest = min(estimates[0], asked)  # the server's clock when there is one
        else:
            earliest = min(estimates)
        reported = estimates[0]
        earliest = min(earliest, MAX_PROTECTION_SECONDS)
        latest = min(max(estimates), MAX_PROTECTION_SECONDS)
        wall = self._clock.wall() + earliest
        if protection.expires_at is not None:
            # ECS's own expiry, moved earlier by whatever this sidecar does not believe.
            wall = protection.expires_at.timestamp() - max(0.0, reported - earliest)
        return now + earliest, now + max(earliest, latest), wall

    def _renewal_time(self, now: float, expires: float) -> float:
        """When to renew an expiry: a margin before it, never sooner than the floor, and
        never after it while it is still ahead."""
        ahead = expires - now
        gap = self.policy.min_renew_gap
        if ahead <= 0:
            return now + gap  # already past (a lying backend or clock): no tight loop
        if ahead < 2 * gap:
            return now + ahead / 2
        renew_at = expires - self.policy.renew_margin
        if not self.belief.phase_chosen:
            self.belief.phase_chosen = True
            # 1 - rand: a rand of 1 keeps the latest moment. Only ever earlier: the margin
            # before expiry is never cut.
            renew_at -= (1.0 - self._rand()) * self.policy.renew_window
        return max(renew_at, now + gap)

    def _retry_delay(self, now: float, error: BackendError) -> float:
        policy, retry = self.policy, self.retry
        exponent = min(retry.failures - 1, 30)
        if error.retryable:
            delay = min(policy.backoff_cap, policy.backoff_base * 2.0**exponent)
        elif error.maybe_transient:
            delay = min(policy.slow_retry, policy.ramp_base * 2.0**exponent)
            if retry.failing_since is not None and now - retry.failing_since < policy.ramp_window:
                delay = min(delay, policy.ramp_hold)
        else:
            delay = policy.slow_retry
        return delay / 2 + self._rand() * delay / 2  # equal jitter: spread, yet bounded below

    def _outcome_unknown(self, call: Call) -> None:
        """A change call may have reached ECS without an answer saying so, or may reach it
        later: read again once the settle window has passed."""
        belief = self.belief
        if call.op is Op.GET:
            return  # a read changes nothing
        belief.verify_at = self._clock.monotonic() + self.policy.settle_window
        if call.op is Op.DISABLE:
            belief.late_off_possible = True
        if call.op is Op.ENABLE and belief.on and belief.expires is not None:
            # A renewal: the old expiry holds if it did not land, and one that landed set
            # at least start + period. Protection is certain until the earlier of the two.
            belief.expires = min(belief.expires, self._call_started + call.expires_minutes * 60.0)
            return
        # A first enable may have turned protection on; a disable may not have turned it
        # off. Either way nothing may be claimed, and "off" must be made certain.
        log.warning(
            "the outcome of the %s call is unknown: protection may be on or off until "
            "the next call settles it",
            call.op.value,
            extra={"event": "outcome_unknown", "op": call.op.value},
        )
        belief.off()
        belief.enable_floor = None
        belief.known = False
        belief.uncertain = True

    def _unprotected_since_mark(self, now: float) -> float:
        if self._busy_mark is None:
            return 0.0
        since, until = self._busy_mark
        start = since if until is None else max(since, until)
        return max(0.0, now - start)

    def _account(self, now: float) -> None:
        self.counters.unprotected_busy_seconds += self._unprotected_since_mark(now)
        self._busy_mark = None

    def _mark(self, now: float) -> None:
        self._busy_mark = (now, self.confirmed_until()) if self.leases else None

    def _note_if_idle(self, now: float) -> None:
        if not self.leases and self.idle_since is None:
            self.idle_since = now

    # ---- queries -------------------------------------------------------------

    def confirmed_until(self) -> float | None:
        """Until when (monotonic) ECS certainly has the task protected; None if not now.

        A disable in flight may land at any moment, so nothing is certain during one. A
        renewal in flight may shorten the expiry (the capped last renewal), so only the
        earlier of the current expiry and what the renewal sets is certain.
        """
        belief = self.belief
        if not belief.on or belief.expires is None or belief.late_off_possible:
            return None
        until = belief.expires
        call = self.inflight
        if call is not None:
            if call.op is Op.DISABLE:
                return None
            if call.op is Op.ENABLE:
                until = min(until, self._call_started + call.expires_minutes * 60.0)
        return until if until > self._clock.monotonic() else None

    def protected(self) -> bool:
        return self.confirmed_until() is not None

    def holds(self, lease_id: str) -> bool:
        """Whether `lease_id` is held now: taken, not released, its TTL not yet passed
        (even when no poll() has dropped it yet)."""
        return self.leases.holds(lease_id, self._clock.monotonic())

    def unprotected_busy_seconds(self) -> float:
        """Seconds so far with a lease held and protection not confirmed."""
        now = self._clock.monotonic()
        return self.counters.unprotected_busy_seconds + self._unprotected_since_mark(now)

    def confirmed_until_wall(self) -> float | None:
        """confirmed_until() as the backend's wall time, for people and `expires_at`."""
        until = self.confirmed_until()
        belief = self.belief
        if until is None or belief.expires is None or belief.expires_wall is None:
            return None
        return belief.expires_wall - (belief.expires - until)

    def state(self) -> str:
        """'on' (confirmed), 'off' (known off) or 'unknown' (never read, a lost answer,
        or a disable in flight)."""
        if self.protected():
            return "on"
        disabling = self.inflight is not None and self.inflight.op is Op.DISABLE
        if not self.belief.known or disabling or self.belief.late_off_possible:
            return "unknown"
        return "off"

    def gives_up_before(self, deadline: float) -> bool:
        """Whether protection cannot come before `deadline`: no call will be tried by then."""
        if self.belief.capped:
            return True
        retry_at = self.retry.at
        return self.inflight is None and retry_at is not None and retry_at >= deadline

    def may_be_protected(self) -> bool:
        """Whether ECS may have protection on now, as far as anyone knows: confirmed on,
        never read, or a change whose answer was lost (or is still out) may have set it."""
        belief = self.belief
        changing = self.inflight is not None and self.inflight.op is not Op.GET
        return (
            belief.on
            or belief.uncertain
            or belief.late_off_possible
            or not belief.known
            or changing
        )


def _earliest(times: list[float | None]) -> float | None:
    real = [t for t in times if t is not None]
    return min(real) if real else None
