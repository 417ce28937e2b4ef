"""Every way the agent (and ECS behind it) can answer badly, end to end through the sidecar.

For each row of the agent's table of answers (tests/fakes/agent.py), and for the agent
down, hanging, resetting the connection and sending truncated JSON: `/busy` answers 503
ProtectionUnavailable and keeps the lease, `/state` and the log name the cause, retries
back off (fast for transient faults, slowly for the others), the sidecar keeps serving,
and protection converges once the fault clears. Time is a fake clock shared with the agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from tests.fakes import agent as fa
from tests.fakes.agent import DECODE_ERROR, FakeAgent
from tests.fakes.clock import FakeClock
from tests.sidecar_fixture import Running, running_sidecar
from tests.support import free_port

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class Row:
    name: str
    inject: Callable[[FakeAgent], None]
    heal: Callable[[FakeAgent], None]
    code: str
    retry: str  # "fast" (back-off from 0.5 s), "ramp" (from 1 s, held at 8 s), "slow" (60 s)
    uncertain: bool = False  # the enable may have landed: the state is unknown, not off


def sticky(fault: fa.Fault) -> Callable[[FakeAgent], None]:
    return lambda agent: agent.fail_always(fault)


def heal(agent: FakeAgent) -> None:
    agent.heal()


def no_role(agent: FakeAgent) -> None:
    agent.tasks["task-1"].has_role = False


def role_back(agent: FakeAgent) -> None:
    agent.tasks["task-1"].has_role = True


def agent_restarted(agent: FakeAgent) -> None:
    agent.restart(credentials_after=3600)


ERROR = '{{"error": {{"Code": "{code}", "Message": "{message}"}}}}'
ROWS = [
    Row(
        "200 failure TASK_NOT_VALID",
        sticky(fa.failure("TASK_NOT_VALID")),
        heal,
        "TASK_NOT_VALID",
        "slow",
    ),
    Row(
        "200 failure DEPLOYMENT_BLOCKED",
        sticky(fa.failure("DEPLOYMENT_BLOCKED", "deploying")),
        heal,
        "DEPLOYMENT_BLOCKED",
        "slow",
    ),
    Row("200 failure MISSING", sticky(fa.failure("MISSING")), heal, "MISSING", "slow"),
    Row(
        "400 decode error",
        sticky(
            fa.answer(400, ERROR.format(code="InvalidParameterException", message=DECODE_ERROR))
        ),
        heal,
        "InvalidParameterException",
        "slow",
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
        "slow",
    ),
    Row("403 no task role", no_role, role_back, "AccessDeniedException", "ramp"),
    Row("403 after an agent restart", agent_restarted, heal, "AccessDeniedException", "ramp"),
    Row(
        "400 ECS ThrottlingException, persistent",
        sticky(fa.ecs_error()),
        heal,
        "ThrottlingException",
        "fast",
    ),
    Row(
        "400 ECS AccessDeniedException",
        sticky(fa.ecs_error("AccessDeniedException", 400, "not authorized")),
        heal,
        "AccessDeniedException",
        "slow",
    ),
    Row(
        "500 ECS ServerException, persistent",
        sticky(fa.ecs_server_error()),
        heal,
        "ServerException",
        "fast",
        uncertain=True,
    ),
    Row(
        "503 ECS ServiceUnavailable, persistent",
        sticky(fa.ecs_server_error(503)),
        heal,
        "ServiceUnavailableException",
        "fast",
        uncertain=True,
    ),
    Row(
        "500 ECS unreachable",
        sticky(fa.ecs_unreachable()),
        heal,
        "ServerException",
        "fast",
        uncertain=True,
    ),
    Row(
        "504 ECS deadline (the enable lands)",
        sticky(fa.timeout_504()),
        heal,
        "RequestCanceled",
        "fast",
        uncertain=True,
    ),
    Row("500 agent error", sticky(fa.server_error()), heal, "ServerException", "fast", True),
    Row(
        "500 more than one failure",
        sticky(fa.two_failures()),
        heal,
        "ServerException",
        "fast",
        uncertain=True,
    ),
    Row("429 agent rate limiter", sticky(fa.rate_limited()), heal, "HTTP429", "fast"),
    Row("agent hangs past the timeout", sticky(fa.hang()), heal, "Timeout", "fast", True),
    Row("connection reset", sticky(fa.reset()), heal, "ConnectionError", "fast", True),
    Row(
        "answer lost after the enable landed",
        sticky(fa.lost_answer()),
        heal,
        "ConnectionError",
        "fast",
        uncertain=True,
    ),
    Row("truncated mid-answer", sticky(fa.truncated()), heal, "ConnectionError", "fast", True),
    Row(
        "complete answer, truncated JSON",
        sticky(fa.garbled()),
        heal,
        "InvalidResponse",
        "fast",
        uncertain=True,
    ),
]


@pytest.fixture
async def shared_clock_agent():
    clock = FakeClock()
    agent = FakeAgent(clock)
    await agent.start()
    agent.add_task("task-1")
    yield clock, agent
    await agent.close()


async def pump(sidecar: Running, clock: FakeClock) -> None:
    """Let the call in flight finish, moving the shared fake clock through the agent's
    latencies and back-off (it only moves while the agent sleeps on it)."""
    async with asyncio.timeout(30):
        while not (sidecar.service.settled and sidecar.view().in_flight is None):
            await asyncio.sleep(0.001)
            wake = clock.next_wake()
            if wake is not None and sidecar.view().in_flight is not None:
                clock.advance(max(0.0, min(0.05, wake - clock.monotonic())))


async def next_attempt(sidecar: Running, clock: FakeClock) -> None:
    """Move the fake clock to the scheduled retry and let the reconciler make it."""
    # A millisecond more: the wall time /state shows is rounded at 1.8e9 s, and a retry
    # missed by a rounding error would not be made.
    clock.advance(max(0.0, retry_in(sidecar, clock)) + 0.001)
    sidecar.service.recheck()
    await pump(sidecar, clock)


def retry_in(sidecar: Running, clock: FakeClock) -> float:
    """Seconds until the scheduled retry (the fake clock's wall and monotonic time move
    together, so the wall time /state shows measures it exactly)."""
    retry_at = sidecar.view().next_retry_wall
    assert retry_at is not None
    return retry_at - clock.wall()


async def busy(sidecar: Running, clock: FakeClock, body: dict) -> tuple[int, dict]:
    """POST /busy while the clock is pumped, so a slow agent can answer."""
    request = asyncio.ensure_future(sidecar.post("/busy", body))
    await sidecar.holds(body["lease"])
    await pump(sidecar, clock)
    return await request


async def check_failing(
    sidecar: Running,
    clock: FakeClock,
    row: Row,
    caplog: pytest.LogCaptureFixture,
    *,
    op: str = "enable",
) -> None:
    status, body = await busy(sidecar, clock, {"lease": "job", "wait_seconds": 0.3})
    assert (status, body["error"]["code"]) == (503, "ProtectionUnavailable")
    assert (body["lease"], body["protected"], body["leases"]) == ("job", False, 1)

    _, state = await sidecar.get("/state")
    error = state["protection"]["last_error"]
    retryable = row.retry == "fast"
    assert (error["code"], error["retryable"], error["op"]) == (row.code, retryable, op)
    assert state["busy"] is True
    assert state["protection"]["enabled"] is False
    # After an answer that may hide a landed enable, nothing says "off".
    assert state["protection"]["state"] == ("unknown" if row.uncertain or op == "get" else "off")

    delay = retry_in(sidecar, clock)
    first_failures = sidecar.view().failures
    if row.retry == "fast":
        assert 0.0 < delay <= 0.5 * 2 ** (first_failures - 1)
    elif row.retry == "ramp":
        assert 0.5 <= delay <= 1.0  # maybe transient: try again within a second
    else:
        assert 30.0 <= delay <= 60.0  # slowly: no spinning against a refusal
    records = [r for r in caplog.records if r.name == "sidecar.machine" and row.code in r.message]
    assert records
    assert records[-1].levelno == (logging.ERROR if row.retry == "slow" else logging.WARNING)

    await next_attempt(sidecar, clock)  # still failing: the next delay grows (or stays slow)
    assert sidecar.view().failures == first_failures + 1
    later = retry_in(sidecar, clock)
    assert later >= (30.0 if row.retry == "slow" else delay) / 2
    assert (await sidecar.get("/healthz")) == (200, {"status": "ok"})
    assert not sidecar.task.done()  # the reconciler never died


async def check_converges(sidecar: Running, clock: FakeClock) -> None:
    await next_attempt(sidecar, clock)
    _, state = await sidecar.get("/state")
    assert state["protection"]["enabled"] is True
    assert state["protection"]["state"] == "on"
    assert state["protection"]["last_error"] is None
    status, body = await sidecar.post("/busy", {"lease": "job", "wait_seconds": 0})
    assert (status, body["protected"]) == (200, True)


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
async def test_fault_row(aiohttp_client, shared_clock_agent, caplog, row):
    clock, agent = shared_clock_agent
    caplog.set_level(logging.INFO)
    async with running_sidecar(aiohttp_client, agent, clock=clock, backend_timeout=0.3) as sidecar:
        row.inject(agent)
        await check_failing(sidecar, clock, row, caplog)
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
        await check_failing(
            sidecar,
            clock,
            Row("404", heal, heal, "ResourceNotFoundException", "slow"),
            caplog,
            op="get",
        )
        agent.add_task("late-task")
        await check_converges(sidecar, clock)


async def test_agent_down_then_up(aiohttp_client, caplog):
    clock = FakeClock()
    port = free_port()
    agent = FakeAgent(clock)
    uri = f"http://127.0.0.1:{port}/api/task-1"
    caplog.set_level(logging.INFO)
    async with running_sidecar(aiohttp_client, agent, clock=clock, agent_uri=uri) as sidecar:
        await check_failing(
            sidecar, clock, Row("down", heal, heal, "ConnectionError", "fast"), caplog, op="get"
        )
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
        await sidecar.time_moved()
        assert sidecar.view().last_error is not None
        assert agent.tasks["task-1"].enabled
        agent.heal()
        await next_attempt(sidecar, clock)
        assert not agent.tasks["task-1"].enabled
        assert json.loads(agent.calls[-1].body) == {"ProtectionEnabled": False}
