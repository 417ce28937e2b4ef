"""The fleet simulation: its ECS model against the real agent's behaviour (as the fake agent
reproduces it), and a reduced fleet (100 tasks) that must meet the fleet goals with the
sidecar's real machine, run as users run it (`python -m benchmarks.fleet --json`).
Simulated time only: the whole reduced fleet takes a couple of seconds."""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.backends.agent import parse_answer
from sidecar.backends.base import BackendError
from tests.fakes.fleet_ecs import (
    AGENT_BURST,
    AGENT_DEADLINE,
    Agent,
    Answer,
    Ecs,
    Outcome,
    Retry,
    TokenBucket,
)

ROOT = Path(__file__).parent.parent
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
    # Surfacing after ~1.8 s is typical for the real agent; retries past 4 s are not rare.
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


def fleet(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.fleet", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=check,
    )


def last_json(result: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def reduced():
    """100 tasks, every scenario: 6 h steady, the storm at 30 min, seed 1."""
    run = fleet("--tasks", "100", "--hours", "6", "--storm-hours", "1", "--json")
    return last_json(run)


def test_a_deployment_protects_every_task_before_its_first_job_starts(reduced):
    """100 tasks start in a minute, busy at once: no job waits past the agent's latency."""
    deployment = reduced["scenarios"]["deployment"]
    assert deployment["jobs_started_unprotected"] == 0
    assert deployment["busy_periods_never_protected"] == 0
    assert deployment["seconds_to_protect_all"] <= 0.5  # one ECS call, no throttling here
    assert deployment["throttled_calls"] == 0


def test_steady_state_stays_near_the_minimum_with_renewals_spread_out(reduced):
    """6 hours of busy periods: calls near the minimum, no lapse, renewals not in waves."""
    steady = reduced["scenarios"]["steady"]
    assert steady["theoretical_min"]["renewals"] > 100  # busy periods outlast the expiry
    # The 5-minute renewal margin costs 6-7 % here, the spread of the first renewal ~4 %
    # (README, "Fleet scale"); calls per job would be ~50x the minimum.
    assert steady["calls_over_minimum"] <= 0.12
    assert steady["protection_lapses"] == 0
    assert steady["jobs_started_unprotected"] == 0
    # Started together, the tasks must not renew together: before the spread 77 of the
    # 100 renewed in the same minute, every 55 minutes.
    assert steady["renewals_busiest_minute"] <= 10


def test_after_a_storm_every_busy_task_is_protected_again_within_a_minute(reduced):
    """ECS throttles everything for 2 minutes mid-run; nobody is left unprotected after it."""
    storm = reduced["scenarios"]["storm"]
    assert storm["ecs_calls_during_storm"] > 0
    assert storm["seconds_to_reprotect_after_storm"] is not None
    assert storm["seconds_to_reprotect_after_storm"] <= 60.0
    assert storm["protection_lapses"] == 0  # renewals due in the storm are retried in time


def test_a_storm_during_the_deployment_leaves_no_task_unprotected_for_long(reduced):
    """Every task waits for its first enable as the storm ends; all are protected in 60 s."""
    storm = reduced["scenarios"]["deploy-storm"]
    assert storm["busy_unprotected_at_storm_end"] == 100
    assert storm["seconds_to_reprotect_after_storm"] <= 60.0


def test_the_headline_numbers_are_on_the_last_line_and_the_same_seed_repeats(reduced):
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
        assert key in reduced, key
    assert (reduced["tasks"], reduced["simulated_hours"]) == (100, 6.0)
    assert set(reduced["scenarios"]) == {"deployment", "steady", "storm", "deploy-storm"}
    small = ["--tasks", "20", "--hours", "1", "--scenarios", "steady", "--seed", "7", "--json"]
    first, again = last_json(fleet(*small)), last_json(fleet(*small))
    first.pop("wall_seconds")
    again.pop("wall_seconds")
    assert first == again


@pytest.mark.parametrize(
    "bad",
    [["--tasks", "0"], ["--hours", "-1"], ["--scenarios", "steady,nope"], ["--refill", "x"]],
)
def test_bad_options_exit_2_with_a_message(bad):
    result = fleet(*bad, check=False)
    assert result.returncode == 2
    assert "error:" in result.stderr
