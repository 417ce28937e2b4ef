"""Every way the agent (and ECS behind it) can answer badly, end to end through the sidecar.

For each row of ECS-AGENT.md's table, and for the agent down, hanging, resetting the
connection and sending truncated JSON: `/busy` answers 503 ProtectionUnavailable and
keeps the lease, `/state` and the log name the cause, retries back off (fast for
transient faults, slowly for the others), the sidecar keeps serving, and protection
converges once the fault clears. Time is a fake clock shared with the agent.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from tests.fakes import agent as fa
from tests.fakes.agent import DECODE_ERROR, FakeAgent
from tests.fakes.clock import FakeClock
from tests.sidecar_fixture import Running, running_sidecar

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class Row:
    name: str
    inject: Callable[[FakeAgent], None]
    heal: Callable[[FakeAgent], None]
    code: str
    retryable: bool


def sticky(fault: fa.Fault) -> Callable[[FakeAgent], None]:
    return lambda agent: agent.fail_always(fault)


def heal(agent: FakeAgent) -> None:
    agent.heal()


def no_role(agent: FakeAgent) -> None:
    agent.tasks["task-1"].has_role = False


def role_back(agent: FakeAgent) -> None:
    agent.tasks["task-1"].has_role = True


ERROR = '{{"error": {{"Code": "{code}", "Message": "{message}"}}}}'
ROWS = [
    Row(
        "200 failure TASK_NOT_VALID",
        sticky(fa.failure("TASK_NOT_VALID")),
        heal,
        "TASK_NOT_VALID",
        False,
    ),
    Row(
        "200 failure DEPLOYMENT_BLOCKED",
        sticky(fa.failure("DEPLOYMENT_BLOCKED", "deploying")),
        heal,
        "DEPLOYMENT_BLOCKED",
        False,
    ),
    Row("200 failure MISSING", sticky(fa.failure("MISSING")), heal, "MISSING", False),
    Row(
        "400 decode error",
        sticky(
            fa.answer(400, ERROR.format(code="InvalidParameterException", message=DECODE_ERROR))
        ),
        heal,
        "InvalidParameterException",
        False,
    ),
    Row(
        "400 ProtectionEnabled missing",
        sticky(
            fa.answer(
                400,
                ERROR.format(
                    code="InvalidParameterException",
                    message="Invalid request: does not contain 'ProtectionEnabled' field",
                ),
            )
        ),
        heal,
        "InvalidParameterException",
        False,
    ),
    Row("403 no task role", no_role, role_back, "AccessDeniedException", False),
    Row("400 ECS ThrottlingException", sticky(fa.ecs_error()), heal, "ThrottlingException", True),
    Row(
        "400 ECS AccessDeniedException",
        sticky(fa.ecs_error("AccessDeniedException", 400, "not authorized")),
        heal,
        "AccessDeniedException",
        False,
    ),
    Row("504 ECS deadline", sticky(fa.timeout_504()), heal, "RequestCanceled", True),
    Row("500 agent error", sticky(fa.server_error()), heal, "ServerException", True),
    Row("429 agent rate limiter", sticky(fa.rate_limited()), heal, "HTTP429", True),
    Row("agent hangs past the timeout", sticky(fa.hang()), heal, "Timeout", True),
    Row("connection reset", sticky(fa.reset()), heal, "ConnectionError", True),
    Row("truncated mid-answer", sticky(fa.truncated()), heal, "ConnectionError", True),
    Row("complete answer, truncated JSON", sticky(fa.garbled()), heal, "InvalidResponse", True),
]


@pytest.fixture
async def shared_clock_agent():
    clock = FakeClock()
    agent = FakeAgent(wall=clock.wall)
    await agent.start()
    agent.add_task("task-1")
    yield clock, agent
    await agent.close()


async def next_attempt(sidecar: Running, clock: FakeClock) -> None:
    """Move the fake clock to the scheduled retry and let the reconciler make it."""
    retry_at = sidecar.machine.retry_at
    assert retry_at is not None
    clock.advance(max(0.0, retry_at - clock.monotonic()))
    sidecar.reconciler.wake()
    await sidecar.settle()


async def check_failing(
    sidecar: Running,
    clock: FakeClock,
    code: str,
    retryable: bool,
    caplog: pytest.LogCaptureFixture,
    *,
    op: str = "enable",
) -> None:
    status, body = await sidecar.post("/busy", {"lease": "job", "wait_seconds": 0.3})
    assert (status, body["error"]["code"]) == (503, "ProtectionUnavailable")
    assert (body["lease"], body["protected"], body["leases"]) == ("job", False, 1)
    await sidecar.settle()

    _, state = await sidecar.get("/state")
    error = state["protection"]["last_error"]
    assert (error["code"], error["retryable"], error["op"]) == (code, retryable, op)
    assert state["busy"] is True
    assert state["protection"]["enabled"] is False

    delay = sidecar.machine.retry_at - clock.monotonic()
    first_failures = sidecar.machine.failures
    if retryable:
        assert 0.0 < delay <= 0.5 * 2 ** (first_failures - 1)
    else:
        assert 30.0 <= delay <= 60.0  # slowly: no spinning against a refusal
    records = [r for r in caplog.records if r.name == "sidecar.machine" and code in r.message]
    assert records
    assert records[-1].levelno == (logging.WARNING if retryable else logging.ERROR)

    await next_attempt(sidecar, clock)  # still failing: the next delay grows (or stays slow)
    assert sidecar.machine.failures == first_failures + 1
    later = sidecar.machine.retry_at - clock.monotonic()
    assert later >= (delay if retryable else 30.0) / 2
    assert (await sidecar.get("/healthz")) == (200, {"status": "ok"})
    assert not sidecar.task.done()  # the reconciler never died


async def check_converges(sidecar: Running, clock: FakeClock) -> None:
    await next_attempt(sidecar, clock)
    _, state = await sidecar.get("/state")
    assert state["protection"]["enabled"] is True
    assert state["protection"]["last_error"] is None
    status, body = await sidecar.post("/busy", {"lease": "job", "wait_seconds": 0})
    assert (status, body["protected"]) == (200, True)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
async def test_fault_row(aiohttp_client, shared_clock_agent, caplog, row):
    clock, agent = shared_clock_agent
    caplog.set_level(logging.INFO)
    async with running_sidecar(aiohttp_client, agent, clock=clock, backend_timeout=0.3) as sidecar:
        row.inject(agent)
        await check_failing(sidecar, clock, row.code, row.retryable, caplog)
        row.heal(agent)
        await check_converges(sidecar, clock)
        assert agent.tasks["task-1"].enabled


async def test_unknown_endpoint_id_then_the_task_appears(
    aiohttp_client, shared_clock_agent, caplog
):
    clock, agent = shared_clock_agent
    caplog.set_level(logging.INFO)
    async with running_sidecar(
        aiohttp_client, agent, clock=clock, agent_uri=agent.uri("late-task")
    ) as sidecar:
        # The start-up read failed with 404, and the retry slot holds the enable back.
        await check_failing(sidecar, clock, "ResourceNotFoundException", False, caplog, op="get")
        agent.add_task("late-task")
        await check_converges(sidecar, clock)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_agent_down_then_up(aiohttp_client, caplog):
    clock = FakeClock()
    port = free_port()
    agent = FakeAgent(wall=clock.wall)
    uri = f"http://127.0.0.1:{port}/api/task-1"
    caplog.set_level(logging.INFO)
    async with running_sidecar(aiohttp_client, agent, clock=clock, agent_uri=uri) as sidecar:
        await check_failing(sidecar, clock, "ConnectionError", True, caplog, op="get")
        await agent.start(port=port)
        agent.add_task("task-1")
        try:
            await check_converges(sidecar, clock)
        finally:
            await agent.close()


async def test_disable_failures_are_retried_until_protection_is_off(
    aiohttp_client, shared_clock_agent
):
    """Faults on the way down: the disable is retried, never forgotten."""
    clock, agent = shared_clock_agent
    async with running_sidecar(aiohttp_client, agent, clock=clock) as sidecar:
        await sidecar.post("/busy", {"lease": "job"})
        await sidecar.post("/idle", {"lease": "job"})
        agent.fail_always(fa.ecs_error())
        clock.advance(10)
        sidecar.reconciler.wake()
        await sidecar.settle()
        assert sidecar.machine.last_error is not None
        assert agent.tasks["task-1"].enabled
        agent.heal()
        await next_attempt(sidecar, clock)
        assert not agent.tasks["task-1"].enabled
        assert json.loads(agent.calls[-1].body) == {"ProtectionEnabled": False}
