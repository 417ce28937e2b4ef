"""The fake agent answers as the real agent's task-protection handler does, row by row (it is
only useful if faithful): aws/amazon-ecs-agent, ecs-agent/tmds/handlers/taskprotection."""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import time
from datetime import datetime

import aiohttp
import pytest

from tests.fakes import agent as fa
from tests.fakes.agent import FakeAgent
from tests.fakes.clock import FakeClock

ENABLE = '{"ProtectionEnabled": true, "ExpiresInMinutes": 5}'
EXPIRATION = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,2}[1-9])?Z$")


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http, method, url, body=None):
    data = body if isinstance(body, bytes | None) else body.encode()
    async with http.request(method, url, data=data, allow_redirects=False) as response:
        text = await response.text()
        return response.status, response.headers, text


def url(agent: FakeAgent, endpoint: str = "task-1") -> str:
    return agent.uri(endpoint) + "/task-protection/v1/state"


async def test_put_enable_answers_protection_with_trimmed_milliseconds(agent, http):
    """Success: 200 with a protection object and an agent-style ExpirationDate."""
    status, headers, text = await call(
        http, "PUT", url(agent), '{"ProtectionEnabled": true, "ExpiresInMinutes": 5}'
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    doc = json.loads(text)
    assert doc["protection"]["ProtectionEnabled"] is True
    assert doc["protection"]["TaskArn"] == agent.tasks["task-1"].arn
    assert EXPIRATION.match(doc["protection"]["ExpirationDate"])


def test_expiration_format_trims_trailing_zeros():
    """`.895Z`, `.89Z` and no fraction at all, as the agent prints them."""
    assert fa.format_expiration(1_800_000_000.895) == "2027-01-15T08:00:00.895Z"
    assert fa.format_expiration(1_800_000_000.89) == "2027-01-15T08:00:00.89Z"
    assert fa.format_expiration(1_800_000_000.0) == "2027-01-15T08:00:00Z"


async def test_get_reports_null_expiration_when_not_protected(agent, http):
    status, _, text = await call(http, "GET", url(agent))
    arn = agent.tasks["task-1"].arn
    expected = (
        '{"protection": {"ExpirationDate": null, "ProtectionEnabled": false, '
        f'"TaskArn": "{arn}"}}}}'
    )
    assert (status, text) == (200, expected)


async def test_each_enable_resets_the_expiry_and_expiry_is_honoured():
    """A second enable moves the expiry; past it, GET says not protected."""
    clock = FakeClock(wall=1_800_000_000.0)
    fake = FakeAgent(clock)
    await fake.start()
    fake.add_task()
    try:
        async with aiohttp.ClientSession() as http:
            await call(http, "PUT", url(fake), '{"ProtectionEnabled": true, "ExpiresInMinutes": 1}')
            clock.advance(30)
            _, _, text = await call(
                http, "PUT", url(fake), '{"ProtectionEnabled": true, "ExpiresInMinutes": 1}'
            )
            assert '"2027-01-15T08:01:30Z"' in text
            clock.advance(61)
            _, _, text = await call(http, "GET", url(fake))
            assert '"ProtectionEnabled": false' in text
    finally:
        await fake.close()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'{"ProtectionEnabled": true, "Extra": 1}',
        b'{"ProtectionEnabled": "yes"}',
        b'{"ProtectionEnabled": true, "ExpiresInMinutes": 1.5}',
        b"[true]",
    ],
)
async def test_undecodable_bodies_are_400_decode_errors(agent, http, body):
    status, _, text = await call(http, "PUT", url(agent), body)
    assert status == 400
    assert text == (
        '{"error": {"Code": "InvalidParameterException", '
        '"Message": "UpdateTaskProtection: failed to decode request"}}'
    )


async def test_keys_match_case_insensitively_and_only_the_first_value_is_read(agent, http):
    status, _, _ = await call(
        http, "PUT", url(agent), '{"protectionenabled": true, "EXPIRESINMINUTES": 3} trailing'
    )
    assert status == 200
    assert agent.tasks["task-1"].enabled


@pytest.mark.parametrize("body", ['{"ExpiresInMinutes": 5}', '{"ProtectionEnabled": null}'])
async def test_missing_protection_enabled_is_400_with_the_arn(agent, http, body):
    status, _, text = await call(http, "PUT", url(agent), body)
    assert status == 400
    assert f'"Arn": "{agent.tasks["task-1"].arn}"' in text
    assert "does not contain 'ProtectionEnabled' field" in text


async def test_unknown_endpoint_is_404_but_a_bad_body_is_checked_first(agent, http):
    status, _, text = await call(http, "GET", url(agent, "nope"))
    assert status == 404
    assert "ResourceNotFoundException" in text
    status, _, _ = await call(http, "PUT", url(agent, "nope"), "garbage")
    assert status == 400


async def test_task_without_role_is_403(agent, http):
    agent.add_task("no-role", has_role=False)
    status, _, text = await call(http, "GET", url(agent, "no-role"))
    assert status == 403
    assert "AccessDeniedException" in text


@pytest.mark.parametrize(
    ("fault", "status", "needle"),
    [
        (fa.failure("TASK_NOT_VALID"), 200, '"Reason": "TASK_NOT_VALID"'),
        (fa.failure("DEPLOYMENT_BLOCKED", "busy"), 200, '"Reason": "DEPLOYMENT_BLOCKED"'),
        (fa.server_error(), 500, '"Code": "ServerException"'),
        (fa.two_failures(), 500, '"Message": "Unexpected error occurred"'),
        (fa.rate_limited(), 429, "You have reached maximum request limit."),
    ],
)
async def test_injected_faults_answer_like_the_agent(agent, http, fault, status, needle):
    agent.fail(fault)
    got_status, headers, text = await call(
        http, "PUT", url(agent), '{"ProtectionEnabled": true, "ExpiresInMinutes": 5}'
    )
    assert (got_status, needle in text) == (status, True)
    if status == 429:
        assert headers["Content-Type"].startswith("text/plain")
    # a fault is used once: the next request succeeds
    assert (await call(http, "GET", url(agent)))[0] == 200


@pytest.fixture
async def timed():
    """The fake agent on a fake clock that only the test moves."""
    clock = FakeClock()
    fake = FakeAgent(clock)
    await fake.start()
    fake.add_task()
    async with aiohttp.ClientSession() as session:
        yield fake, clock, session
    await fake.close()


async def timed_call(timed, method="PUT", body=ENABLE):
    """Send one request and move the fake clock in 10 ms steps until it is answered:
    (status, text, fake seconds it took, ECS calls the agent made for it)."""
    fake, clock, session = timed
    started, calls_before = clock.monotonic(), fake.ecs_calls
    request = asyncio.ensure_future(call(session, method, url(fake), body))
    while not request.done():
        await asyncio.sleep(0.001)  # let the server reach its next sleep on the fake clock
        if clock.sleeping:
            clock.advance(0.01)
        assert clock.monotonic() - started < 30, "the agent never answered"
    status, _, text = await request
    return status, text, round(clock.monotonic() - started, 2), fake.ecs_calls - calls_before


async def test_one_ecs_throttle_is_retried_away_by_the_sdk_and_only_costs_latency(timed):
    fake, _, _ = timed
    fake.fail(fa.ecs_error())
    status, text, took, ecs_calls = await timed_call(timed)
    assert (status, '"ProtectionEnabled": true' in text, ecs_calls) == (200, True, 2)
    assert 0.5 <= took <= 1.5  # "about 1 s late"


async def test_one_ecs_5xx_is_retried_away_too(timed):
    fake, _, _ = timed
    fake.fail(fa.ecs_server_error())
    status, _, took, ecs_calls = await timed_call(timed)
    assert (status, ecs_calls) == (200, 2)
    assert 0.5 <= took <= 1.5


async def test_persistent_throttling_is_a_400_after_three_ecs_calls_and_about_1_8_s(timed):
    fake, _, _ = timed
    fake.fail_always(fa.ecs_error())
    status, text, took, ecs_calls = await timed_call(timed)
    doc = json.loads(text)
    assert (status, doc["error"]["Code"], ecs_calls) == (400, "ThrottlingException", 3)
    assert doc["error"]["Arn"] == fake.tasks["task-1"].arn
    assert "requestID" in doc
    assert 1.5 <= took <= 2.2
    assert not fake.tasks["task-1"].enabled


@pytest.mark.parametrize(
    ("status", "code"), [(500, "ServerException"), (503, "ServiceUnavailableException")]
)
async def test_persistent_ecs_5xx_surfaces_after_about_3_5_s(timed, status, code):
    fake, _, _ = timed
    fake.fail_always(fa.ecs_server_error(status))
    got, text, took, ecs_calls = await timed_call(timed)
    assert (got, json.loads(text)["error"]["Code"], ecs_calls) == (status, code, 3)
    assert 3.0 <= took < 4.0


async def test_ecs_unreachable_is_a_500_with_the_dial_error_after_about_2_4_s(timed):
    fake, _, _ = timed
    fake.fail_always(fa.ecs_unreachable())
    status, text, took, ecs_calls = await timed_call(timed)
    error = json.loads(text)["error"]
    assert (status, error["Code"], ecs_calls) == (500, "ServerException", 3)
    assert "dial tcp" in error["Message"]
    assert error["Arn"] == fake.tasks["task-1"].arn
    assert 2.2 <= took <= 2.6


async def test_ecs_slower_than_the_deadline_is_a_504_yet_the_change_lands(timed):
    """The answer is lost to the 4 s deadline; ECS applied the enable all the same."""
    fake, _, _ = timed
    fake.fail(fa.timeout_504())
    status, text, took, ecs_calls = await timed_call(timed)
    error = json.loads(text)["error"]
    assert (status, error["Code"], ecs_calls) == (504, "RequestCanceled", 1)
    assert error["Message"] == "Timed out calling ECS Task Protection API"
    assert error["Arn"] == fake.tasks["task-1"].arn
    assert 3.99 <= took <= 4.05
    assert fake.tasks["task-1"].enabled


async def test_a_non_retryable_ecs_error_is_passed_on_at_once(timed):
    fake, _, _ = timed
    fake.fail_always(fa.ecs_error("AccessDeniedException", 400, "not authorized"))
    status, text, took, ecs_calls = await timed_call(timed)
    assert (status, json.loads(text)["error"]["Code"], ecs_calls) == (
        400,
        "AccessDeniedException",
        1,
    )
    assert took < 0.2


async def test_a_lost_answer_closes_the_connection_after_the_change_landed(agent, http):
    agent.fail(fa.lost_answer(), times=2)  # aiohttp repeats an idempotent PUT once
    with pytest.raises(aiohttp.ClientError):
        async with http.put(url(agent), data=ENABLE) as response:
            await response.read()
    assert agent.tasks["task-1"].enabled


async def test_after_a_restart_the_agent_answers_403_until_it_has_credentials(timed):
    """The transient 403: the same body as a task without a role, for a few seconds."""
    fake, clock, _ = timed
    fake.restart(credentials_after=3.0)
    status, text, _, ecs_calls = await timed_call(timed)
    assert (status, ecs_calls) == (403, 0)
    assert "no task IAM role credentials available" in text
    clock.advance(3.0)
    assert (await timed_call(timed))[0] == 200


async def test_every_answer_carries_the_agents_own_date(timed):
    fake, clock, session = timed
    clock.jump_wall(-7200)  # the agent's clock, whatever anyone else's says
    _, headers, _ = await call(session, "GET", url(fake))
    assert email.utils.parsedate_to_datetime(headers["Date"]).timestamp() == int(clock.wall())


async def test_rate_limiter_is_per_path_and_refills_at_40_per_second(timed):
    fake, clock, session = timed
    fake.add_task("task-2")
    statuses = [(await call(session, "GET", url(fake)))[0] for _ in range(61)]
    assert statuses == [200] * 60 + [429]
    assert (await call(session, "GET", url(fake, "task-2")))[0] == 200  # another bucket
    clock.advance(0.5)  # 20 tokens back
    statuses = [(await call(session, "GET", url(fake)))[0] for _ in range(21)]
    assert statuses == [200] * 20 + [429]


async def test_minutes_beyond_32_bits_wrap_as_in_go(agent, http):
    status, _, text = await call(
        http, "PUT", url(agent), '{"ProtectionEnabled": true, "ExpiresInMinutes": 4294967297}'
    )
    assert status == 200
    expires = json.loads(text)["protection"]["ExpirationDate"]
    left = datetime.fromisoformat(expires).timestamp() - time.time()
    assert 0 < left <= 60  # one minute


async def test_failure_also_answers_get(agent, http):
    agent.fail(fa.failure("TASK_NOT_VALID"))
    _, _, text = await call(http, "GET", url(agent))
    assert '"failure"' in text


async def test_other_methods_are_405_with_an_empty_body_and_no_allow(agent, http):
    status, headers, text = await call(http, "POST", url(agent), "{}")
    assert (status, text, "Allow" in headers) == (405, "", False)


async def test_trailing_slash_is_a_text_404(agent, http):
    status, headers, text = await call(http, "GET", url(agent) + "/")
    assert (status, text) == (404, "404 page not found")
    assert headers["Content-Type"].startswith("text/plain")


async def test_double_slash_redirects_to_the_cleaned_path(agent, http):
    status, headers, _ = await call(
        http, "GET", agent.base_url + "/api/task-1//task-protection/v1/state"
    )
    assert (status, headers["Location"]) == (301, "/api/task-1/task-protection/v1/state")


async def test_rate_limiter_allows_a_burst_of_60_then_429(http):
    """On a clock that stands still, exactly 60 pass; a second later 40 more have refilled.

    The clock is the test's: with real time, a slow machine refills the bucket while the
    70 calls are made, and the 429 never comes.
    """
    clock = FakeClock()
    fake = FakeAgent(clock)
    await fake.start()
    fake.add_task()
    try:
        statuses = [(await call(http, "GET", url(fake)))[0] for _ in range(70)]
        assert statuses == [200] * 60 + [429] * 10
        clock.advance(1.0)
        statuses = [(await call(http, "GET", url(fake)))[0] for _ in range(45)]
        assert statuses == [200] * 40 + [429] * 5
    finally:
        await fake.close()


async def test_out_of_range_minutes_are_rejected_by_ecs_not_the_agent(agent, http):
    status, _, text = await call(
        http, "PUT", url(agent), '{"ProtectionEnabled": true, "ExpiresInMinutes": 2881}'
    )
    assert status == 400
    assert '"Code": "InvalidParameterException"' in text
    assert '"requestID"' in text


async def test_calls_are_recorded(agent, http):
    await call(http, "PUT", url(agent), '{"ProtectionEnabled": false}')
    assert [(c.method, c.status, c.endpoint) for c in agent.calls] == [("PUT", 200, "task-1")]
    assert agent.puts() == [{"ProtectionEnabled": False}]
