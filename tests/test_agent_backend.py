"""AgentBackend against the fake agent: every answer maps to a Protection or a classified error."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sidecar.backends.agent import AgentBackend, parse_answer
from sidecar.backends.base import BackendError, ProtectionRefusedError
from tests.fakes import agent as fa
from tests.fakes.agent import FakeAgent
from tests.fakes.clock import FakeClock


@pytest.fixture
async def backend(agent):
    b = AgentBackend(agent.uri("task-1"), timeout=2.0)
    yield b
    await b.close()


async def test_enable_then_get_then_disable(agent, backend):
    """The agent's answers become Protection values; the PUT bodies are what the agent expects."""
    before = datetime.now(UTC)
    enabled = await backend.set(True, 5)
    after = datetime.now(UTC)
    assert enabled.enabled
    assert enabled.expires_at is not None
    # 5 minutes from the call, whenever it was answered (whole seconds: 1 s less).
    lifetime = timedelta(minutes=5)
    assert before + lifetime - timedelta(seconds=1) <= enabled.expires_at <= after + lifetime
    assert (await backend.get()).enabled
    disabled = await backend.set(False, 5)
    assert (disabled.enabled, disabled.expires_at) == (False, None)
    assert agent.puts() == [
        {"ProtectionEnabled": True, "ExpiresInMinutes": 5},
        {"ProtectionEnabled": False},
    ]


@pytest.fixture
async def instant_agent():
    """The fake agent on a clock that moves itself: its latencies cost no real time."""
    fake = FakeAgent(FakeClock(auto_advance=True))
    await fake.start()
    fake.add_task("task-1")
    yield fake
    await fake.close()


@pytest.mark.parametrize(
    ("fault", "code", "retryable", "uncertain"),
    [
        (fa.ecs_error(), "ThrottlingException", True, False),
        (
            fa.ecs_error("AccessDeniedException", 400, "not authorized"),
            "AccessDeniedException",
            False,
            False,
        ),
        (fa.timeout_504(), "RequestCanceled", True, True),
        (fa.ecs_server_error(), "ServerException", True, True),
        (fa.ecs_server_error(503), "ServiceUnavailableException", True, True),
        (fa.ecs_unreachable(), "ServerException", True, True),
        (fa.server_error(), "ServerException", True, True),
        (fa.two_failures(), "ServerException", True, True),
        (fa.rate_limited(), "HTTP429", True, False),
        (fa.truncated(), "ConnectionError", True, True),
        (fa.reset(), "ConnectionError", True, True),
        (fa.lost_answer(), "ConnectionError", True, True),
        (fa.garbled(), "InvalidResponse", True, True),
    ],
)
async def test_faults_are_classified(instant_agent, fault, code, retryable, uncertain):
    """Each failure says whether to retry fast, and whether ECS may have changed anyway."""
    instant_agent.fail_always(fault)
    backend = AgentBackend(instant_agent.uri("task-1"), timeout=2.0)
    try:
        with pytest.raises(BackendError) as caught:
            await backend.set(True, 5)
    finally:
        await backend.close()
    assert (caught.value.code, caught.value.retryable, caught.value.uncertain) == (
        code,
        retryable,
        uncertain,
    )


@pytest.mark.parametrize("reason", ["TASK_NOT_VALID", "DEPLOYMENT_BLOCKED", "MISSING"])
async def test_failures_are_refusals(agent, backend, reason):
    agent.fail(fa.failure(reason, "detail text"))
    with pytest.raises(ProtectionRefusedError) as caught:
        await backend.set(True, 5)
    assert (caught.value.reason, caught.value.retryable) == (reason, False)
    assert "detail text" in caught.value.message


async def test_no_task_role_is_not_retryable(agent):
    agent.add_task("lonely", has_role=False)
    backend = AgentBackend(agent.uri("lonely"))
    try:
        with pytest.raises(BackendError) as caught:
            await backend.get()
    finally:
        await backend.close()
    assert (caught.value.code, caught.value.status, caught.value.retryable) == (
        "AccessDeniedException",
        403,
        False,
    )
    # Not proof of a missing role: right after an agent restart it clears in seconds.
    assert caught.value.maybe_transient
    assert "no task role" in caught.value.message
    assert "agent restarted" in caught.value.message


async def test_unknown_endpoint_is_not_retryable(agent):
    backend = AgentBackend(agent.uri("gone"))
    try:
        with pytest.raises(BackendError) as caught:
            await backend.get()
    finally:
        await backend.close()
    assert (caught.value.code, caught.value.retryable) == ("ResourceNotFoundException", False)


async def test_a_hanging_agent_times_out_as_retryable(agent):
    agent.fail(fa.hang())
    backend = AgentBackend(agent.uri("task-1"), timeout=0.2)
    try:
        with pytest.raises(BackendError) as caught:
            await backend.get()
    finally:
        await backend.close()
    assert (caught.value.code, caught.value.retryable) == ("Timeout", True)


async def test_agent_down_is_a_retryable_connection_error():
    backend = AgentBackend("http://127.0.0.1:9/api/x")  # discard port: nothing listens
    try:
        with pytest.raises(BackendError) as caught:
            await backend.get()
    finally:
        await backend.close()
    assert (caught.value.code, caught.value.retryable) == ("ConnectionError", True)
    assert not caught.value.uncertain  # never connected: nothing can have changed


def test_agent_timeout_is_longer_than_the_agents_own_deadline():
    assert AgentBackend("http://x")._timeout > 5.0


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"{not json", "InvalidResponse"),
        (b"[]", "InvalidResponse"),
        (b"{}", "InvalidResponse"),
        (b'{"protection": {"ProtectionEnabled": "yes"}}', "InvalidResponse"),
        (
            b'{"protection": {"ProtectionEnabled": true, "ExpirationDate": "soon"}}',
            "InvalidResponse",
        ),
        (
            b'{"protection": {"ProtectionEnabled": true, "ExpirationDate": "2026-01-01T00:00:00"}}',
            "InvalidResponse",
        ),
    ],
)
def test_malformed_success_answers_are_retryable(payload, code):
    with pytest.raises(BackendError) as caught:
        parse_answer(200, payload)
    assert (caught.value.code, caught.value.retryable) == (code, True)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-27T21:30:33.895Z", datetime(2026, 11, 27, 21, 30, 33, 895000, UTC)),
        ("2026-11-27T21:30:33.89Z", datetime(2026, 11, 27, 21, 30, 33, 890000, UTC)),
        ("2026-11-27T21:30:33Z", datetime(2026, 11, 27, 21, 30, 33, tzinfo=UTC)),
    ],
)
def test_expiration_dates_in_every_agent_spelling(raw, expected):
    answer = parse_answer(
        200, f'{{"protection": {{"ProtectionEnabled": true, "ExpirationDate": "{raw}"}}}}'.encode()
    )
    assert answer.expires_at == expected


def test_other_400s_are_not_retryable_and_keep_the_agents_message():
    with pytest.raises(BackendError) as caught:
        parse_answer(400, b'{"error": {"Code": "InvalidParameterException", "Message": "bad"}}')
    assert (caught.value.code, caught.value.message, caught.value.retryable) == (
        "InvalidParameterException",
        "bad",
        False,
    )


async def test_an_answer_larger_than_any_agent_answer_is_refused_not_buffered(agent):
    """A megabyte where the agent sends a few hundred bytes: not read into memory."""
    agent.fail(fa.answer(200, '{"protection": {"x": "' + "y" * 1_000_000 + '"}}'))
    backend = AgentBackend(agent.uri("task-1"))
    try:
        with pytest.raises(BackendError) as caught:
            await backend.get()
    finally:
        await backend.close()
    assert caught.value.code == "InvalidResponse"
    assert "larger than" in caught.value.message
