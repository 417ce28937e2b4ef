"""The fleet simulation: its ECS model against ../shared/ECS-AGENT.md, and a reduced fleet
(100 tasks) that must meet the fleet goals with the sidecar's real machine. Simulated
time only: each run takes well under a second."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from benchmarks import fleet
from benchmarks.fleet_model import (
    AGENT_BURST,
    AGENT_DEADLINE,
    Agent,
    Answer,
    Ecs,
    Outcome,
    Retry,
    TokenBucket,
)
from benchmarks.fleet_sim import Account, Scenario, simulate
from sidecar.backends.agent import parse_answer
from sidecar.backends.base import BackendError

ACCOUNT = Account(burst=fleet.DEFAULT_BURST, refill=fleet.DEFAULT_REFILL)
OK = Outcome()
THROTTLED = Outcome(throttled=True)
FAILED = Outcome(server_error=True)


def seeded(seed: int = 0) -> random.Random:
    return random.Random(seed)  # noqa: S311  (a reproducible model, not cryptography)


BODY = Agent("0", seeded()).protection_body(1_800_000_000.0)


def agent_call(outcomes: list[Outcome], seed: int = 0) -> tuple[Answer, int]:
    """One agent call whose ECS attempts meet `outcomes` in turn: (answer, ECS calls)."""
    agent = Agent("0", seeded(seed))
    step = agent.begin(0.0)
    attempts = 0
    while isinstance(step, Retry):
        step = agent.after_attempt(step.at, outcomes[attempts], BODY)
        attempts += 1
    return step, attempts


def error_code(answer: Answer) -> str:
    with pytest.raises(BackendError) as caught:
        parse_answer(answer.status, answer.body)
    return caught.value.code


# ---- the ECS model ---------------------------------------------------------------


def test_bucket_admits_its_burst_then_its_refill_rate():
    """A full bucket serves `burst` at once, then `rate` a second; refused calls take none."""
    bucket = TokenBucket(burst=50, rate=20)
    assert sum(bucket.take(0.0) for _ in range(80)) == 50
    assert sum(bucket.take(1.0) for _ in range(80)) == 20
    assert sum(bucket.take(100.0) for _ in range(80)) == 50  # never more than the burst


def test_a_storm_throttles_every_call_whatever_the_bucket():
    ecs = Ecs(burst=50, refill=20, storms=((10.0, 130.0),))
    rng = seeded()
    assert ecs.admit(5.0, rng) == OK
    assert all(ecs.admit(10.0 + i, rng).throttled for i in range(120))
    assert ecs.admit(130.0, rng) == OK
    assert (ecs.calls, ecs.throttled) == (122, 120)


def test_a_call_ecs_serves_is_one_ecs_call_answered_in_a_fraction_of_a_second():
    answer, calls = agent_call([OK])
    assert (answer.status, calls) == (200, 1)
    assert 0.1 <= answer.at <= 0.41
    assert parse_answer(answer.status, answer.body).enabled


def test_a_single_throttle_is_invisible_but_for_about_a_second():
    """The SDK retries it away: a 200 after two ECS calls, about 1 s late on average."""
    answers = [agent_call([THROTTLED, OK], seed) for seed in range(400)]
    assert {(answer.status, calls) for answer, calls in answers} == {(200, 2)}
    extra = statistics.mean(answer.at for answer, _ in answers) - 0.25
    assert 0.8 <= extra <= 1.3


def test_a_persistent_throttle_is_three_ecs_calls_then_400_or_504_past_the_deadline():
    answers = [agent_call([THROTTLED] * 3, seed) for seed in range(400)]
    throttled = [a for a, calls in answers if a.status == 400 and calls == 3]
    canceled = [a for a, _ in answers if a.status == 504]
    assert len(throttled) + len(canceled) == len(answers)
    assert {error_code(a) for a in throttled} == {"ThrottlingException"}
    assert {error_code(a) for a in canceled} == {"RequestCanceled"}
    assert all(a.at < AGENT_DEADLINE + 0.01 for a in throttled)
    assert all(a.at == pytest.approx(AGENT_DEADLINE, abs=0.01) for a in canceled)
    # Surfacing after ~1.8 s is typical (ECS-AGENT.md); retries past 4 s are not rare.
    assert 1.2 <= statistics.mean(a.at for a in throttled) <= 3.0
    assert 0.1 <= len(canceled) / len(answers) <= 0.5


def test_a_persistent_server_error_surfaces_as_500_after_three_ecs_calls_or_504():
    answers = [agent_call([FAILED] * 3, seed) for seed in range(200)]
    assert {a.status for a, _ in answers} == {500, 504}
    assert {error_code(a) for a, calls in answers if a.status == 500 and calls == 3} == {
        "ServerException"
    }


def test_the_agent_rate_limiter_answers_429_past_its_burst():
    """60 requests in one instant pass; the 61st gets the limiter's plain-text 429."""
    agent = Agent("0", seeded())
    steps = [agent.begin(0.0) for _ in range(int(AGENT_BURST) + 1)]
    assert all(isinstance(step, Retry) for step in steps[:-1])
    last = steps[-1]
    assert isinstance(last, Answer)
    assert last.status == 429
    assert error_code(last) == "HTTP429"


# ---- a reduced fleet, with the sidecar's own machine ---------------------------------


def test_a_deployment_protects_every_task_before_its_first_job_starts():
    """100 tasks start in a minute, busy at once: no job waits past the agent's latency."""
    result = simulate(Scenario("deployment", 100, 600.0), ACCOUNT)
    assert result.jobs_started_unprotected == 0
    assert len(result.first_protect_delays) == 100
    assert result.seconds_to_protect_all <= 0.5  # one ECS call, no throttling at this size
    assert result.throttled_calls == 0


def test_steady_state_stays_near_the_minimum_with_renewals_spread_out():
    """6 hours of busy periods: calls near the minimum, no lapse, renewals not in waves."""
    result = simulate(Scenario("steady", 100, 6 * 3600.0), ACCOUNT)
    calls = result.calls
    assert calls.renewals > 100  # busy periods outlast the expiry: renewals do happen
    # The 5-minute renewal margin costs 6-7 % here, the spread of the first renewal ~4 %
    # (README, "Fleet scale"); calls per job would be ~50x the minimum.
    assert calls.ecs_calls <= calls.minimum_calls * 1.12
    assert result.lapses == 0
    assert result.jobs_started_unprotected == 0
    # Started together, the tasks must not renew together: before the spread 77 of the
    # 100 renewed in the same minute, every 55 minutes.
    assert max(result.renewals_per_minute) <= 10


def test_after_a_storm_every_busy_task_is_protected_again_within_a_minute():
    """ECS throttles everything for 2 minutes mid-run; nobody is left unprotected after it."""
    storm = (1800.0, 1920.0)
    result = simulate(Scenario("storm", 100, 3600.0, storm=storm), ACCOUNT)
    assert result.storm_ecs_calls > 0
    assert result.reprotect_after_storm is not None
    assert result.reprotect_after_storm <= 60.0
    assert result.lapses == 0  # renewals due in the storm are retried inside the margin


def test_a_storm_during_the_deployment_leaves_no_task_unprotected_for_long():
    """Every task waits for its first enable as the storm ends; all are protected in 60 s."""
    result = simulate(Scenario("deploy-storm", 100, 600.0, storm=(0.0, 120.0)), ACCOUNT)
    assert result.unprotected_at_storm_end == 100
    assert result.reprotect_after_storm is not None
    assert result.reprotect_after_storm <= 60.0


def test_the_same_seed_gives_the_same_fleet():
    first = simulate(Scenario("steady", 20, 3600.0), ACCOUNT, seed=7)
    again = simulate(Scenario("steady", 20, 3600.0), ACCOUNT, seed=7)
    assert (first.jobs, first.ecs_calls, first.renewals_per_minute) == (
        again.jobs,
        again.ecs_calls,
        again.renewals_per_minute,
    )


# ---- the command ---------------------------------------------------------------------


def test_json_prints_one_object_with_every_headline_number_on_the_last_line(capsys):
    args = ["--tasks", "20", "--hours", "1", "--storm-hours", "0.5", "--deployment-minutes", "2"]
    assert fleet.main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "tasks",
        "simulated_hours",
        "seconds_to_protect_all",
        "jobs_started_unprotected",
        "ecs_calls",
        "ecs_calls_per_task_hour",
        "theoretical_min_per_task_hour",
        "renewal_peak_to_mean",
        "throttled_calls",
        "seconds_to_reprotect_after_storm",
    ):
        assert key in doc, key
    assert (doc["tasks"], doc["simulated_hours"]) == (20, 1.0)
    assert set(doc["scenarios"]) == set(fleet.SCENARIOS)
    assert doc["ecs_calls"] >= 20  # every task enabled at least once


@pytest.mark.parametrize(
    "bad",
    [["--tasks", "0"], ["--hours", "-1"], ["--scenarios", "steady,nope"], ["--refill", "x"]],
)
def test_bad_options_exit_2_with_a_message(bad, capsys):
    with pytest.raises(SystemExit) as exited:
        fleet.main(bad)
    assert exited.value.code == 2
    assert "error:" in capsys.readouterr().err
