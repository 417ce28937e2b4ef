"""The fake agent reproduces ../shared/ECS-AGENT.md row by row (it is only useful if faithful)."""

from __future__ import annotations

import json
import re

import aiohttp
import pytest

from tests.fakes import agent as fa
from tests.fakes.agent import FakeAgent

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
    now = [1_800_000_000.0]
    fake = FakeAgent(wall=lambda: now[0])
    await fake.start()
    fake.add_task()
    try:
        async with aiohttp.ClientSession() as http:
            await call(http, "PUT", url(fake), '{"ProtectionEnabled": true, "ExpiresInMinutes": 1}')
            now[0] += 30
            _, _, text = await call(
                http, "PUT", url(fake), '{"ProtectionEnabled": true, "ExpiresInMinutes": 1}'
            )
            assert '"2027-01-15T08:01:30Z"' in text
            now[0] += 61
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
        (fa.ecs_error(), 400, '"Code": "ThrottlingException", "Message": "Rate exceeded"'),
        (fa.timeout_504(), 504, '"Code": "RequestCanceled"'),
        (fa.server_error("boom"), 500, '"Code": "ServerException"'),
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


async def test_failure_also_answers_get(agent, http):
    agent.fail(fa.failure("TASK_NOT_VALID"))
    _, _, text = await call(http, "GET", url(agent))
    assert '"failure"' in text


async def test_throttling_carries_a_request_id(agent, http):
    agent.fail(fa.ecs_error())
    _, _, text = await call(http, "GET", url(agent))
    assert '"requestID"' in text


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


async def test_rate_limiter_allows_a_burst_of_60_then_429(agent, http):
    statuses = [(await call(http, "GET", url(agent)))[0] for _ in range(70)]
    assert statuses[:60] == [200] * 60
    assert 429 in statuses[60:]


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
