"""The protection state machine, driven by events and a fake clock: exact calls, no sleeping."""

from __future__ import annotations

import itertools

import pytest

from sidecar.backends.base import BackendError, ProtectionRefusedError
from sidecar.leases import TooManyLeasesError
from sidecar.machine import (
    EXIT_DRAIN_TIMEOUT,
    EXIT_DRAINED,
    Call,
    DrainingError,
    Exit,
    Op,
    Policy,
    Wait,
)
from tests.harness import Harness

GET, ENABLE, DISABLE = Op.GET, Op.ENABLE, Op.DISABLE
# Seconds between renewals with the defaults: the 60-minute period less the 4-minute margin.
CYCLE = Policy().period - Policy().renew_margin


def throttled() -> BackendError:
    return BackendError("ThrottlingException", "Rate exceeded", retryable=True, status=400)


def denied() -> BackendError:
    return BackendError("AccessDeniedException", "no task role", retryable=False, status=403)


def started() -> Harness:
    """A harness whose machine has read the (unprotected) state at start."""
    h = Harness()
    h.settle()
    return h


def test_start_reads_the_backend_once_then_waits_for_work():
    """At start the machine asks for the current protection once, then does nothing while idle."""
    h = Harness()
    action = h.settle()
    assert h.ops() == [GET]
    assert action == Wait(None)
    h.run_for(3600)
    assert h.ops() == [GET]


def test_thousand_busy_idle_pairs_within_the_grace_make_one_enable():
    """1,000 back-to-back jobs inside the idle grace cost exactly one enable call."""
    h = started()
    for i in range(1000):
        h.busy(f"job-{i}")
        h.run_for(0.005)
        h.idle(f"job-{i}")
        h.run_for(0.004)
    assert h.ops() == [GET, ENABLE]
    h.run_for(h.policy.idle_grace)
    assert h.ops() == [GET, ENABLE, DISABLE]


def test_three_hour_job_makes_exactly_the_renewals_it_needs():
    """A 3-hour job with 60-minute expiry renews at 56, 112 and 168 minutes, never lapsing."""
    h = started()
    h.busy()
    h.run_for(3 * 3600, check=True)
    h.idle()
    h.run_for(60)
    assert [(m.op, m.at) for m in h.made] == [
        (GET, 0.0),
        (ENABLE, 0.0),
        (ENABLE, CYCLE),
        (ENABLE, 2 * CYCLE),
        (ENABLE, 3 * CYCLE),
        (DISABLE, 10800.0 + h.policy.idle_grace),
    ]


def test_renewal_follows_the_expiry_ecs_returned():
    """When ECS grants less than asked, renewal is scheduled from what it returned."""
    h = started()
    h.grant_minutes = 20
    h.busy()
    h.run_for(3600, check=True)
    enables = [m.at for m in h.made if m.op is ENABLE]
    step = 20 * 60 - h.policy.renew_margin  # a margin before each 20-minute expiry
    assert enables == [0.0, step, 2 * step, 3 * step]


def test_renewal_is_not_late_when_the_local_clock_lags_ecs():
    """A returned expiry later than requested (clock skew) cannot delay renewal past the period."""
    h = started()
    h.busy()
    h.clock.jump_wall(-600)  # the local wall clock falls 10 minutes behind ECS
    h.run_for(7200, check=True)
    enables = [m.at for m in h.made if m.op is ENABLE]
    assert enables == [0.0, CYCLE, 2 * CYCLE]


def test_an_expiry_in_the_past_does_not_make_the_machine_spin():
    """A backend that returns an already-past expiry: a failure, retried with back-off."""
    h = started()
    h.reported_skew = -7200.0  # ECS reports an expiry an hour in the past
    h.busy()
    h.run_for(60)
    enables = [m.at for m in h.made if m.op is ENABLE]
    assert enables == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0, 31.0, 39.0, 47.0, 55.0]
    assert not h.machine.protected()
    error = h.machine.retry.last_error
    assert error is not None
    assert error.code == "ExpiredOnArrival"


def test_an_agent_clock_hours_ahead_is_backed_off_and_reported():
    """The agent's Date header 2 h ahead: by its clock every enable is already expired, so
    /busy is never confirmed. The repeats back off (exponentially, capped at the slow
    retry) instead of an enable every 10 s, and last_error names the clock difference."""
    h = started()
    h.date_skew = -7200.0  # the agent's Date is two hours ahead of ECS's clock
    h.busy()
    h.run_for(3600)
    enables = [m.at for m in h.made if m.op is ENABLE]
    assert enables[:6] == [0.0, 1.0, 3.0, 7.0, 15.0, 23.0]
    assert len(enables) <= 3600 / h.policy.slow_retry + 12  # was 361: one per 10 s
    gaps = [b - a for a, b in itertools.pairwise(enables)]
    assert gaps[-1] == h.policy.slow_retry
    assert not h.machine.protected()  # nothing is claimed that the agent's clock denies
    error = h.machine.retry.last_error
    assert error is not None
    assert error.code == "ClockSkew"
    assert "7200 s ahead" in error.message
    h.idle()
    h.run_for(h.policy.idle_grace)
    assert h.ops()[-1] is DISABLE  # ECS may well be protected: switched off when idle
    assert not h.ecs_protected()


def test_a_job_within_the_grace_makes_no_call():
    """Protection stays on through a short idle gap: no disable, no re-enable."""
    h = started()
    h.busy("a")
    h.idle("a")
    h.run_for(h.policy.idle_grace - 0.001)
    h.busy("b")
    h.run_for(600)
    assert h.ops() == [GET, ENABLE]


def test_idle_disables_exactly_at_the_end_of_the_grace():
    """Not busy for the whole grace: one disable, at the grace's end."""
    h = started()
    h.busy()
    h.run_for(5)
    h.idle()
    h.run_for(h.policy.idle_grace - 0.5)
    assert h.ops() == [GET, ENABLE]
    h.run_for(1)
    assert [(m.op, m.at) for m in h.made][-1] == (DISABLE, 5 + h.policy.idle_grace)
    assert not h.ecs_protected()


def test_retryable_failures_back_off_exponentially():
    """Throttling is retried after 0.5, 1 and 2 seconds, then protection is confirmed."""
    h = started()
    h.errors.extend([throttled(), throttled(), throttled()])
    h.busy()
    h.run_for(10)
    assert [(m.op, m.at) for m in h.made][1:] == [
        (ENABLE, 0.0),
        (ENABLE, 0.5),
        (ENABLE, 1.5),
        (ENABLE, 3.5),
    ]
    assert h.machine.protected()
    assert h.machine.retry.last_error is None
    assert h.machine.counters.retries == 3


def test_backoff_is_capped_and_jittered():
    """Delays stop growing at the cap, and jitter keeps them within [delay/2, delay]."""
    h = Harness(policy=Policy(renew_spread=0))  # rand 0 would also pull the renewal early
    h.settle()
    h.rand = 0.0  # the lowest jitter: half of each delay
    h.errors.extend([throttled()] * 12)
    h.busy()
    h.run_for(600)
    times = [m.at for m in h.made if m.op is ENABLE]
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0, 15.0, 15.0, 15.0, 15.0]


def test_a_non_retryable_failure_is_retried_slowly_and_reported():
    """403 does not spin: one try per slow-retry period, with the error kept for /state."""
    h = started()
    h.errors.extend([denied()] * 100)
    h.busy()
    h.run_for(600)
    enables = [m.at for m in h.made if m.op is ENABLE]
    assert enables == [60.0 * i for i in range(11)]
    error = h.machine.retry.last_error
    assert error is not None
    assert (error.code, error.retryable, error.op) == ("AccessDeniedException", False, "enable")


def test_failures_do_not_multiply_calls_per_job():
    """While the backend throttles, a flood of jobs makes no more calls than the back-off allows."""
    h = started()
    h.errors.extend([throttled()] * 1000)
    for i in range(500):
        h.busy(f"j{i}")
        h.run_for(0.01)
        h.idle(f"j{i}")
    # 5 seconds of back-off: tries at 0, 0.5, 1.5, 3.5.
    assert len([m for m in h.made if m.op is ENABLE]) == 4


def test_task_not_valid_on_get_means_not_protected():
    """A `failure` answer to the start-up read counts as known and unprotected."""
    h = Harness()
    h.errors.append(ProtectionRefusedError("TASK_NOT_VALID", None))
    h.settle()
    assert h.machine.belief.known
    assert not h.machine.protected()
    assert h.machine.retry.last_error is not None
    assert h.machine.retry.last_error.code == "TASK_NOT_VALID"
    h.run_for(3600)
    assert h.ops() == [GET]


def test_deployment_blocked_on_renewal_keeps_the_current_protection():
    """A refused renewal is reported, retried slowly, and the existing protection still counts."""
    h = started()
    h.busy()
    h.run_for(CYCLE - 1)
    h.errors.append(ProtectionRefusedError("DEPLOYMENT_BLOCKED", "deployment in progress"))
    h.run_for(2)
    assert h.machine.protected()
    assert h.machine.retry.last_error is not None
    assert h.machine.retry.last_error.code == "DEPLOYMENT_BLOCKED"
    assert "replaced soon" in h.machine.retry.last_error.message
    h.run_for(60)
    assert [m.at for m in h.made if m.op is ENABLE] == [0.0, CYCLE, CYCLE + 60]
    assert h.machine.retry.last_error is None


def test_events_during_a_call_coalesce_into_the_latest_desire():
    """Jobs that start and end while the enable is in flight cause no extra call."""
    h = started()
    h.machine.acquire("a", None)
    call = h.machine.poll()
    assert call == Call(ENABLE, 60)
    for i in range(100):
        h.machine.acquire(f"x{i}", None)
        assert isinstance(h.machine.poll(), Wait)
        h.machine.release(f"x{i}")
    h.answer(call)
    h.run_for(5)
    assert h.ops() == [GET, ENABLE]


def test_busy_during_a_disable_enables_right_after():
    """A job arriving while a disable is in flight gets protection as soon as it returns."""
    h = started()
    h.busy()
    h.idle()
    h.clock.advance(h.policy.idle_grace)
    call = h.machine.poll()
    assert call == Call(DISABLE)
    h.machine.acquire("late", None)
    assert isinstance(h.machine.poll(), Wait)  # one call at a time
    # The disable may land at any moment: nothing is confirmed until the re-enable is.
    assert not h.machine.protected()
    assert h.machine.state() == "unknown"
    h.answer(call)
    h.settle()
    assert h.ops() == [GET, ENABLE, DISABLE, ENABLE]
    assert h.machine.protected()


def test_existing_protection_is_adopted_then_dropped_after_the_grace():
    """A restarted sidecar with no lease finds protection on and disables it after the grace."""
    h = Harness()
    h.ecs_expires_wall = h.clock.wall() + 1800
    h.settle()
    assert h.machine.protected()
    h.run_for(h.policy.idle_grace)
    assert h.ops() == [GET, DISABLE]


def test_adopted_protection_serves_a_job_without_a_new_call():
    """A job arriving at a restarted sidecar uses the protection it adopted."""
    h = Harness()
    h.ecs_expires_wall = h.clock.wall() + 1800
    h.settle()
    h.busy()
    h.run_for(1000, check=True)
    assert h.ops() == [GET]
    h.run_for(600, check=True)  # renewal due a margin before the adopted expiry
    assert [(m.op, m.at) for m in h.made] == [(GET, 0.0), (ENABLE, 1800.0 - h.policy.renew_margin)]


def test_busy_before_the_first_read_enables_directly():
    """No need to read the state first when the desire is already known."""
    h = Harness()
    h.machine.acquire("job", None)
    h.settle()
    assert h.ops() == [ENABLE]


def test_ttl_expiry_drops_the_lease_and_then_protection():
    """A lease not refreshed within its TTL goes; the grace then runs from that moment."""
    h = started()
    h.busy("worker", ttl=30)
    h.run_for(29)
    assert "worker" in h.machine.leases
    h.busy("worker", ttl=30)  # heartbeat at 29 s
    h.run_for(30)
    assert "worker" not in h.machine.leases
    assert h.machine.counters.leases_expired == 1
    h.run_for(h.policy.idle_grace)
    assert [(m.op, m.at) for m in h.made][-1] == (DISABLE, 59 + h.policy.idle_grace)


def test_drain_without_leases_exits_at_once():
    """SIGTERM while idle: exit 0 on the next poll."""
    h = started()
    h.machine.start_drain(120)
    assert h.settle() == Exit(EXIT_DRAINED, "drained: no lease held")


def test_drain_waits_for_the_last_lease():
    """While draining, refreshes are fine, new leases are refused, and the last release exits."""
    h = started()
    h.busy("a")
    h.busy("b")
    h.machine.start_drain(120)
    assert isinstance(h.settle(), Wait)
    h.busy("a")  # refresh: allowed
    with pytest.raises(DrainingError):
        h.machine.acquire("new", None)
    assert "new" not in h.machine.leases
    assert isinstance(h.idle("a"), Wait)
    assert h.idle("b") == Exit(EXIT_DRAINED, "drained: no lease held")


def test_drain_timeout_exits_non_zero_naming_the_leases():
    """Past the drain timeout the machine exits with code 3 and names what was held."""
    h = started()
    h.busy("stuck-job")
    h.machine.start_drain(120)
    action = h.run_for(300, check=True)
    assert isinstance(action, Exit)
    assert action.code == EXIT_DRAIN_TIMEOUT
    assert "stuck-job" in action.reason
    assert h.now == 120


def test_stop_detection_drains_without_exiting():
    """Draining entered by stop detection refuses new work but never exits by itself."""
    h = started()
    h.machine.start_drain(None, exit_when_idle=False)
    with pytest.raises(DrainingError):
        h.machine.acquire("job", None)
    assert isinstance(h.run_for(3600), Wait)
    h.machine.start_drain(120)  # then SIGTERM arrives
    assert isinstance(h.settle(), Exit)


def test_cap_stops_renewing_at_max_protected_seconds():
    """With a 2-hour cap the last renewal asks only for the minutes left, then none follows."""
    h = Harness(policy=Policy(max_protected=7200))
    h.settle()
    h.busy()
    h.run_for(4 * 3600)
    assert [(m.op, m.at, m.minutes) for m in h.made if m.op is ENABLE] == [
        (ENABLE, 0.0, 60),
        (ENABLE, CYCLE, 60),
        (ENABLE, 2 * CYCLE, 8),  # the minutes left to the cap
    ]
    assert h.machine.belief.capped
    assert not h.ecs_protected()
    h.idle()
    h.busy("next")  # a new busy period after going idle starts a fresh cap
    assert h.machine.protected()


def test_lease_table_is_bounded():
    """Past the capacity a new lease is refused; refreshing an existing one still works."""
    h = Harness(capacity=2)
    h.busy("a")
    h.busy("b")
    with pytest.raises(TooManyLeasesError):
        h.machine.acquire("c", None)
    h.busy("a")
    assert len(h.machine.leases) == 2


def test_enable_answered_with_protection_off_is_an_error_not_a_loop():
    """A backend that says 'off' to an enable is reported and retried slowly."""
    h = started()
    h.grant_minutes = -1  # ECS answers the enable with an expiry already gone: 'off'
    h.busy()
    h.run_for(120)
    assert [m.at for m in h.made if m.op is ENABLE] == [0.0, 60.0, 120.0]
    assert h.machine.retry.last_error is not None
    assert h.machine.retry.last_error.code == "NotProtected"


def lost_403() -> BackendError:
    return BackendError(
        "AccessDeniedException",
        "no task IAM role credentials available",
        retryable=False,
        status=403,
        maybe_transient=True,
    )


def test_an_enable_whose_answer_was_lost_does_not_leave_ecs_protected():
    """The enable landed, its answer did not; the job ends in the back-off: protection is
    switched off after the grace, never left on for the whole expiry."""
    h = started()
    h.lose_answers = 1
    h.busy("job")
    assert h.ecs_protected()  # it landed
    assert h.machine.state() == "unknown"
    assert not h.machine.protected()
    h.idle("job")
    h.run_for(h.policy.idle_grace + 1)
    assert not h.ecs_protected()
    assert h.ops() == [GET, ENABLE, DISABLE]
    assert h.machine.state() == "off"


def test_an_unknown_state_while_busy_is_settled_by_a_confirmed_enable():
    """With the lease still held, the retry of the enable confirms protection."""
    h = started()
    h.lose_answers = 1
    h.busy("job")
    h.run_for(5, check=True)
    assert h.ops() == [GET, ENABLE, ENABLE]
    assert h.machine.protected()


def test_a_disable_whose_answer_was_lost_claims_nothing_and_is_repeated():
    """Lost disable answer: a new job gets its enable at once, but is not told 'protected'
    until a read after the settle window shows no late disable undid it; with no job a
    second disable settles the state."""
    h = started()
    h.busy("a")
    h.idle("a")
    h.lose_answers = 1
    h.run_for(h.policy.idle_grace)
    assert h.ops() == [GET, ENABLE, DISABLE]
    assert h.machine.state() == "unknown"
    h.machine.acquire("b", None)
    assert not h.machine.protected()

    def claims_only_the_truth() -> None:
        assert h.ecs_protected() or not h.machine.protected()

    h.run_for(2, check=claims_only_the_truth)
    assert h.ops() == [GET, ENABLE, DISABLE, ENABLE]
    assert h.ecs_protected()  # protected in fact at once...
    assert not h.machine.protected()  # ...but not claimed while a late disable may land
    h.run_for(h.policy.settle_window, check=claims_only_the_truth)
    assert h.ops() == [GET, ENABLE, DISABLE, ENABLE, GET]
    assert h.machine.protected()
    h.idle("b")
    h.lose_answers = 1
    h.run_for(h.policy.idle_grace + h.policy.settle_window + 1)
    assert h.ops() == [GET, ENABLE, DISABLE, ENABLE, GET, DISABLE, DISABLE, GET]
    assert h.machine.state() == "off"


def test_a_disable_that_lands_after_the_re_enable_is_caught_by_the_settling_read():
    """The disable's answer is a 504 and it lands 5 s later, after a new job's enable was
    confirmed: nothing is claimed meanwhile, and the read after the settle window finds
    protection gone and enables again, all while the job holds its lease."""
    h = started()
    h.busy("a")
    h.idle("a")
    h.lose_late(5.0)
    h.run_for(h.policy.idle_grace)  # the disable goes out, answered 504
    h.machine.acquire("b", None)

    def claims_only_the_truth() -> None:
        assert h.ecs_protected() or not h.machine.protected()

    h.run_for(30, check=claims_only_the_truth)
    assert h.ops() == [GET, ENABLE, DISABLE, ENABLE, GET, ENABLE]
    assert h.ecs_protected()
    assert h.machine.protected()


def test_an_enable_that_lands_after_the_disable_is_switched_off_again():
    """The enable's answer is a 504 and it lands after the job ended and the disable was
    confirmed: the settling read finds protection on and the sidecar disables it."""
    h = Harness(policy=Policy(idle_grace=1.0))
    h.settle()
    h.lose_late(5.0)
    h.busy("job")
    h.idle("job")
    h.run_for(6)  # the disable after the grace is confirmed at 1; the enable lands at 5
    assert h.ops() == [GET, ENABLE, DISABLE]
    assert h.ecs_protected()
    h.run_for(60)
    assert h.ops() == [GET, ENABLE, DISABLE, GET, DISABLE]
    assert not h.ecs_protected()
    assert h.machine.state() == "off"


def test_a_read_trusts_the_earlier_of_two_disagreeing_clocks():
    """Adopted protection 5 s from its end by the local clock, an hour by the agent's
    Date (its clock an hour behind ECS's): renewed before the 5 s pass, not an hour later."""
    h = Harness(date_skew=3600.0)
    h.ecs_expires_wall = h.clock.wall() + 5
    h.settle()
    h.busy()
    h.run_for(60, check=True)
    assert [m.at for m in h.made if m.op is ENABLE] == [2.5]


def test_an_absurd_expiry_is_not_believed_beyond_what_ecs_can_grant():
    """An answer claiming protection until the year 9999: believed for 2880 minutes at most."""
    h = Harness()
    h.ecs_expires_wall = h.clock.wall() + 5
    h.reported_skew = 250_000_000_000.0  # ECS reports an expiry millennia away
    h.settle()
    until = h.machine.confirmed_until()
    assert until is not None
    assert until - h.clock.monotonic() <= 2880 * 60


def test_a_renewal_whose_answer_was_lost_keeps_the_protection_it_had():
    """An unanswered renewal cannot have removed protection: the old expiry still holds."""
    h = started()
    h.busy()
    h.run_for(3299)
    h.lose_answers = 1
    h.run_for(2, check=True)
    assert h.machine.protected()
    assert h.machine.state() == "on"
    h.run_for(3600, check=True)


def test_a_short_returned_expiry_is_renewed_before_it_passes():
    """Adopted protection 5 s from its end: the 10 s floor must not push renewal past it."""
    h = Harness()
    h.ecs_expires_wall = h.clock.wall() + 5
    h.settle()
    h.busy()
    h.run_for(120, check=True)
    assert [m.at for m in h.made if m.op is ENABLE] == [2.5]


def test_an_expiry_shorter_than_twice_the_floor_is_renewed_half_way():
    """ECS granting 15 s (less than twice the 10 s floor): renewals every 7.5 s, no lapse."""
    h = started()
    h.grant_minutes = 0.25  # type: ignore[assignment]
    h.busy()
    h.run_for(30, check=True)
    assert [m.at for m in h.made if m.op is ENABLE] == [0.0, 7.5, 15.0, 22.5, 30.0]


def test_a_local_clock_hours_ahead_neither_loses_protection_nor_spins():
    """The expiry is measured by the server's own clock, so 2 h of local skew change nothing."""
    h = started()
    h.clock.jump_wall(7200)
    h.busy()
    h.run_for(3600, check=True)
    assert [m.at for m in h.made if m.op is ENABLE] == [0.0, CYCLE]


def test_a_403_that_clears_is_followed_within_seconds():
    """The agent's 403 right after a restart: retried from a second on, at most 8 s apart
    in the first minute, so protection follows within ~10 s of it clearing."""
    h = started()
    h.failing = lost_403()
    h.busy()
    h.run_for(20)
    h.failing = None
    h.run_for(30)
    first_after = next(m.at for m in h.made if m.op is ENABLE and m.at >= 20)
    assert first_after - 20 <= 8.0
    assert h.machine.protected()
    early = [m.at for m in h.made if m.op is ENABLE and m.at < 20]
    assert early[:4] == [0.0, 1.0, 3.0, 7.0]


def test_a_403_that_persists_slows_down_to_the_slow_retry():
    """A task without a role: no more than a few calls a minute after the first minute."""
    h = started()
    h.failing = lost_403()
    h.busy()
    h.run_for(600)
    enables = [m.at for m in h.made if m.op is ENABLE]
    late = [b - a for a, b in itertools.pairwise(enables) if a >= 120]
    assert late
    assert all(gap == 60.0 for gap in late)
    assert len([t for t in enables if t < 60]) <= 12


def test_busy_time_without_confirmed_protection_is_counted_exactly():
    """Throttled for the first 20 s: the job is unprotected until the retry at 31.5 s
    succeeds (back-off 0.5, 1, 2, 4, 8, 16); protected or idle time never counts."""
    h = started()
    h.failing = throttled()
    h.busy()
    h.run_for(20)
    h.failing = None
    h.run_for(3600)
    assert h.machine.unprotected_busy_seconds() == 31.5
    h.idle()
    h.run_for(600)
    assert h.machine.unprotected_busy_seconds() == 31.5


def test_unprotected_time_in_progress_is_visible_before_the_next_event():
    h = started()
    h.failing = denied()
    h.busy()
    h.clock.advance(12.5)  # no event since the failure at 0
    assert h.machine.unprotected_busy_seconds() == 12.5


def test_leases_refused_while_draining_are_counted():
    h = started()
    h.machine.start_drain(None, exit_when_idle=False)
    for lease in ("a", "b"):
        with pytest.raises(DrainingError):
            h.machine.acquire(lease, None)
    assert h.machine.counters.refused_draining == 2
