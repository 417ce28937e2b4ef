"""The protection core against a simple model, under random interleavings (hypothesis).

Rules: jobs take and drop leases (with and without TTL), time passes in steps from a
millisecond to two hours, the backend fails (throttling, refusal, timeouts) and
recovers, the agent's clock runs hours ahead (every grant already expired by it) and is
set right, an answer is lost after its call took effect, the wall clock jumps, SIGTERM
arrives. Invariants, checked after every rule and at every timer the machine wakes for:

- what the machine claims (protected), ECS has;
- the leases are exactly the model's (TTL expiry included);
- never unprotected while a lease is held and the backend has been healthy for
  longer than the slowest retry;
- protection off within the grace after the last lease, once healthy;
- backend calls bounded by busy periods, renewals and failure back-off, never by jobs;
- a drain exits exactly when the last lease goes (or at its deadline).
"""

from __future__ import annotations

import math

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from sidecar.backends.base import BackendError, ProtectionRefusedError
from sidecar.machine import EXIT_DRAIN_TIMEOUT, EXIT_DRAINED, DrainingError, Exit, Op, Policy
from tests.harness import Harness

LEASES = ("a", "b", "c", "d")
POLICY = Policy(expires_minutes=60, idle_grace=10.0)
# After the backend recovers, the next try comes at most this late (slow retry, 60 s).
RECOVERY = POLICY.slow_retry + 1.0
DRAIN_TIMEOUT = 120.0
EPSILON = 1e-6  # the model counts from the start, the machine from its epoch
FAULTS = {
    "throttled": BackendError("ThrottlingException", "Rate exceeded", retryable=True, status=400),
    "refused": ProtectionRefusedError("DEPLOYMENT_BLOCKED", None),
    "down": BackendError("ConnectionError", "refused", retryable=True),
    "timeout": BackendError("Timeout", "no answer", retryable=True, uncertain=True),
}


class ProtectionModel(RuleBasedStateMachine):
    @initialize(jitter=st.floats(0.0, 1.0))
    def start(self, jitter: float) -> None:
        self.h = Harness(policy=POLICY, rand=jitter)
        self.model: dict[str, float | None] = {}  # lease -> expiry (harness seconds)
        self.ttls: dict[str, float | None] = {}  # lease -> the TTL it was last given
        self.healthy_since: float | None = 0.0
        self.last_busy_at: float = -math.inf  # last moment a lease was held
        self.busy_periods = 0
        self.unhealthy_periods = 0
        self.unhealthy_time = 0.0
        self.lost_answers = 0
        self.drain_deadline: float | None = None
        self.exit: Exit | None = None
        self.act(self.h.settle())

    # ---- helpers -------------------------------------------------------------------

    def act(self, action: object) -> None:
        if isinstance(action, Exit):
            self.exit = action

    def expire_model(self, now: float) -> None:
        for lease, expiry in list(self.model.items()):
            if expiry is not None and expiry <= now:
                self.last_busy_at = max(self.last_busy_at, expiry)
                del self.model[lease]

    def check_now(self) -> None:
        """The promises that must hold at this very moment."""
        h = self.h
        now = h.now
        self.expire_model(now)
        if self.model:
            self.last_busy_at = now
        # The promise behind every 200: what the machine claims, ECS has.
        assert not h.machine.protected() or h.ecs_protected(), f"claims protection at t={now}"
        healthy_since = self.healthy_since
        if h.landings:  # a late change is on its way to ECS: a fault until it lands
            healthy_since = None
        elif h.landed and healthy_since is not None:  # then the settling read repairs it
            healthy_since = max(healthy_since, h.landed[-1] + POLICY.settle_window)
        healthy_for = -math.inf if healthy_since is None else now - healthy_since
        if self.model and healthy_for > RECOVERY and not h.machine.belief.capped:
            assert h.ecs_protected(), f"busy and healthy but unprotected at t={now}"
        idle_for = now - self.last_busy_at
        settle_time = POLICY.idle_grace + RECOVERY
        if not self.model and idle_for > settle_time and healthy_for > settle_time:
            assert not h.ecs_protected(), f"idle since t={self.last_busy_at}, still protected"

    # ---- rules --------------------------------------------------------------------------

    @precondition(lambda self: self.exit is None)
    @rule(lease=st.sampled_from(LEASES), ttl=st.none() | st.sampled_from([5.0, 30.0, 600.0]))
    def acquire(self, lease: str, ttl: float | None) -> None:
        h = self.h
        self.expire_model(h.now)
        new = lease not in self.model
        if h.machine.drain.draining and new:
            try:
                h.machine.acquire(lease, ttl)
            except DrainingError:
                return
            raise AssertionError("a new lease was accepted while draining")
        if not self.model:
            self.busy_periods += 1
        h.machine.acquire(lease, ttl)
        if ttl is None and not new:  # a refresh without a TTL keeps the lease's own
            ttl = self.ttls[lease]
        self.ttls[lease] = ttl
        self.model[lease] = None if ttl is None else h.now + ttl
        self.act(h.settle())

    @precondition(lambda self: self.exit is None)
    @rule(lease=st.sampled_from(LEASES))
    def release(self, lease: str) -> None:
        h = self.h
        self.expire_model(h.now)
        released = h.machine.release(lease)
        assert released == (lease in self.model)
        if lease in self.model:
            del self.model[lease]
            self.last_busy_at = h.now
        self.act(h.settle())

    @precondition(lambda self: self.exit is None)
    @rule(seconds=st.sampled_from([0.001, 0.4, 3.0, 9.9, 10.0, 11.0, 61.0, 299.0, 3300.0, 7200.0]))
    def advance(self, seconds: float) -> None:
        if self.healthy_since is None:
            self.unhealthy_time += seconds
        self.act(self.h.run_for(seconds, check=self.check_now))

    @precondition(lambda self: self.exit is None and self.healthy_since is not None)
    @rule(fault=st.sampled_from(sorted(FAULTS)))
    def backend_fails(self, fault: str) -> None:
        self.h.failing = FAULTS[fault]
        self.healthy_since = None
        self.unhealthy_periods += 1

    @precondition(lambda self: self.exit is None and self.healthy_since is None)
    @rule()
    def backend_recovers(self) -> None:
        self.h.failing = None
        self.h.date_skew = 0.0
        self.healthy_since = self.h.now

    @precondition(lambda self: self.exit is None and self.healthy_since is not None)
    @rule(ahead=st.sampled_from([3600.0, 7200.0]))
    def agent_clock_runs_ahead(self, ahead: float) -> None:
        """The agent's Date header hours ahead of ECS: by it every grant has expired."""
        self.h.date_skew = -ahead
        self.healthy_since = None
        self.unhealthy_periods += 1

    @precondition(lambda self: self.exit is None and self.healthy_since is not None)
    @rule()
    def next_answer_is_lost(self) -> None:
        """The next call reaches ECS and takes effect, but its answer never comes back."""
        self.h.lose_answers = 1
        self.lost_answers += 1  # at most one failed call more

    @precondition(lambda self: self.exit is None and self.healthy_since is not None)
    @rule(seconds=st.sampled_from([0.5, 2.0, 5.0]))
    def next_change_lands_late(self, seconds: float) -> None:
        """The next change call is answered 504 and reaches ECS `seconds` later, possibly
        after other calls were made and confirmed (within the agent's deadline + ECS)."""
        self.h.lose_late(seconds)
        self.lost_answers += 1

    @rule(seconds=st.sampled_from([-600.0, -5.0, 5.0, 600.0]))  # valid even after an exit
    def wall_clock_jumps(self, seconds: float) -> None:
        self.h.clock.jump_wall(seconds)

    @precondition(lambda self: self.exit is None and self.drain_deadline is None)
    @rule()
    def sigterm(self) -> None:
        self.h.machine.start_drain(DRAIN_TIMEOUT)
        self.drain_deadline = self.h.now + DRAIN_TIMEOUT
        self.act(self.h.settle())

    # ---- invariants ---------------------------------------------------------------------

    @invariant()
    def leases_match_the_model(self) -> None:
        if self.exit is None:
            self.expire_model(self.h.now)
            assert {lease.id for lease in self.h.machine.leases.leases()} == set(self.model)

    @invariant()
    def protection_promises_hold(self) -> None:
        if self.exit is None:
            self.check_now()

    @invariant()
    def calls_are_bounded_by_periods_not_jobs(self) -> None:
        h = self.h
        ok_enables = (
            sum(1 for m in h.made if m.op is Op.ENABLE)
            - h.machine.counters.calls.get(("enable", "retryable"), 0)
            - h.machine.counters.calls.get(("enable", "refused"), 0)
            - h.machine.counters.calls.get(("enable", "error"), 0)
        )
        renewals = h.now / 2000.0  # one per (period - margin), with room for clock skew
        assert ok_enables <= 2 * self.busy_periods + renewals + 2
        failed = h.machine.counters.total_calls - sum(
            n for (_, outcome), n in h.machine.counters.calls.items() if outcome == "ok"
        )
        # Each failure waits at least backoff_base/2 before the next try.
        assert (
            failed
            <= self.unhealthy_time / (POLICY.backoff_base / 2)
            + (3 * self.unhealthy_periods)
            + self.lost_answers
            + 1
        )

    @invariant()
    def drain_exits_exactly_when_the_last_lease_goes(self) -> None:
        if self.drain_deadline is None:
            assert self.exit is None
            return
        if self.exit is None:
            assert self.model, "draining with no lease held but not exited"
            assert self.h.now < self.drain_deadline + EPSILON
        elif self.exit.code == EXIT_DRAINED:
            assert not self.model
        else:
            assert self.exit.code == EXIT_DRAIN_TIMEOUT
            assert self.model
            assert self.h.now >= self.drain_deadline - EPSILON


ProtectionModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestProtectionModel = ProtectionModel.TestCase
