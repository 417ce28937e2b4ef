"""The sidecar's one promise, end to end: `200 protected` means ECS has the task protected
from that moment on, and with no lease held ECS is soon not protected, whatever the agent
does in between (slow calls, lost answers, refusals, a wrong local clock).

ECS's view is the fake agent's task state, sampled continuously after each answer.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from sidecar.machine import Op, Policy
from tests.fakes import agent as fa
from tests.fakes.agent import FakeAgent
from tests.fakes.clock import FakeClock
from tests.sidecar_fixture import running_sidecar
from tests.support import eventually

FAST_GRACE = Policy(idle_grace=0.2)


def disable_in_flight(sidecar) -> bool:
    return sidecar.view().in_flight == Op.DISABLE.value


async def sample(agent: FakeAgent, seconds: float) -> list[bool]:
    """ECS's protection of task-1, every few milliseconds for `seconds`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    samples = []
    while loop.time() < end:
        samples.append(agent.tasks["task-1"].enabled)
        await asyncio.sleep(0.005)
    return samples


async def test_busy_during_a_slow_disable_answers_only_once_protection_is_back(
    aiohttp_client, agent
):
    """The disable lands 1.5 s after a new job's /busy: the 200 waits for the re-enable, and
    from the 200 on ECS never has the task unprotected."""
    loop = asyncio.get_running_loop()
    async with running_sidecar(aiohttp_client, agent, policy=FAST_GRACE) as sidecar:
        assert (await sidecar.post("/busy", {"lease": "a"}))[0] == 200
        agent.ecs_latency = 0.3  # every ECS call takes a while, as with the real agent
        agent.fail(fa.delay(1.5, methods=("PUT",)))  # the next PUT, the disable, is slower
        await sidecar.post("/idle", {"lease": "a"})
        await eventually(lambda: disable_in_flight(sidecar))

        asked = loop.time()
        request = asyncio.ensure_future(sidecar.post("/busy", {"lease": "b"}))
        await sidecar.holds("b")
        _, state = await sidecar.get("/state")
        assert (state["protection"]["enabled"], state["protection"]["state"]) == (
            False,
            "unknown",
        )
        status, body = await request
        answered = loop.time()
        samples = await sample(agent, 2.0)

        assert (status, body["protected"]) == (200, True)
        assert len(samples) > 100
        assert all(samples), f"ECS unprotected {samples.count(False)} times after the 200"
        assert answered - asked >= 1.0  # it waited for the disable and the re-enable
        puts = [p["ProtectionEnabled"] for p in agent.puts()]
        assert puts == [True, False, True]


async def test_a_re_enable_refused_after_the_disable_is_not_reported_as_protected(
    aiohttp_client, agent
):
    """The deployment being guarded against blocks the re-enable: the job hears 503."""
    async with running_sidecar(aiohttp_client, agent, policy=FAST_GRACE) as sidecar:
        await sidecar.post("/busy", {"lease": "a"})
        agent.fail(fa.delay(0.5, methods=("PUT",)))
        agent.fail(fa.failure("DEPLOYMENT_BLOCKED", "deploying", methods=("PUT",)))
        await sidecar.post("/idle", {"lease": "a"})
        await eventually(lambda: disable_in_flight(sidecar))
        status, body = await sidecar.post("/busy", {"lease": "b", "wait_seconds": 3})
        assert (status, body["error"]["code"], body["protected"]) == (
            503,
            "ProtectionUnavailable",
            False,
        )
        assert "DEPLOYMENT_BLOCKED" in body["error"]["message"]
        assert not agent.tasks["task-1"].enabled


async def test_an_enable_that_landed_without_an_answer_is_switched_off_after_the_job(
    aiohttp_client, agent
):
    """Lost answers to the enable: /state says unknown (not off), and once the job ends the
    sidecar disables explicitly instead of leaving ECS protected for the whole expiry."""
    async with running_sidecar(aiohttp_client, agent, policy=FAST_GRACE) as sidecar:
        agent.fail_always(fa.lost_answer())
        status, _ = await sidecar.post("/busy", {"lease": "job", "wait_seconds": 0.3})
        assert status == 503
        assert agent.tasks["task-1"].enabled  # it landed all the same
        _, state = await sidecar.get("/state")
        assert (state["protection"]["enabled"], state["protection"]["state"]) == (
            False,
            "unknown",
        )
        await sidecar.post("/idle", {"lease": "job"})
        agent.heal()
        await eventually(lambda: not agent.tasks["task-1"].enabled, within=10)
        await sidecar.settle()
        _, state = await sidecar.get("/state")
        assert state["protection"]["state"] == "off"
        assert agent.puts()[-1] == {"ProtectionEnabled": False}


async def test_a_504_whose_enable_landed_is_switched_off_after_the_job(aiohttp_client):
    """The agent's 504 deadline while ECS applied the enable: the same, on the agent's clock."""
    clock = FakeClock()
    agent = FakeAgent(clock)
    await agent.start()
    agent.add_task()
    try:
        async with running_sidecar(
            aiohttp_client, agent, clock=clock, policy=FAST_GRACE
        ) as sidecar:
            agent.fail(fa.timeout_504())
            request = asyncio.ensure_future(
                sidecar.post("/busy", {"lease": "job", "wait_seconds": 0})
            )
            await eventually(lambda: clock.sleeping >= 1)  # the agent waits on ECS
            clock.advance(4.0)
            status, _ = await request
            assert status == 503
            await eventually(lambda: sidecar.view().in_flight is None)
            assert sidecar.view().state == "unknown"
            assert agent.tasks["task-1"].enabled
            await sidecar.post("/idle", {"lease": "job"})
            clock.advance(60)  # past the back-off and the grace
            sidecar.service.recheck()
            await eventually(lambda: not agent.tasks["task-1"].enabled)
    finally:
        await agent.close()


class AheadClock:
    """The sidecar's clocks: the same monotonic time, a wall clock hours ahead of ECS's."""

    def __init__(self, clock: FakeClock, ahead: float) -> None:
        self._clock = clock
        self._ahead = ahead

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def wall(self) -> float:
        return self._clock.wall() + self._ahead


async def test_a_local_clock_two_hours_ahead_changes_nothing(aiohttp_client):
    """Remaining protection comes from the agent's Date header: /busy is confirmed, and an
    hour costs one enable and one renewal, not an enable every 10 s."""
    clock = FakeClock()
    agent = FakeAgent(clock)
    await agent.start()
    agent.add_task()
    try:
        async with running_sidecar(aiohttp_client, agent, clock=AheadClock(clock, 7200)) as sidecar:
            status, body = await sidecar.post("/busy", {"lease": "job", "wait_seconds": 1})
            assert (status, body["protected"]) == (200, True)
            ecs_expiry = agent.tasks["task-1"].expires_wall
            assert ecs_expiry is not None
            shown = datetime.fromisoformat(body["expires_at"]).timestamp()
            assert abs(shown - ecs_expiry) <= 1.0  # ECS's own expiry, not a local guess
            for _ in range(60):  # an hour, a minute at a time
                clock.advance(60)
                await sidecar.time_moved()
                assert agent.tasks["task-1"].enabled
            enables = [p for p in agent.puts() if p["ProtectionEnabled"]]
            assert len(enables) == 2
    finally:
        await agent.close()


async def test_a_disable_that_lands_after_the_re_enable_is_not_claimed_away(aiohttp_client, agent):
    """The disable is answered 504 at the agent's 4 s deadline and lands a second later,
    after a new job's enable went out: the job is told `200 protected` only once a read
    after the settle window shows protection is really on, and ECS keeps it from then."""
    policy = Policy(idle_grace=0.2, settle_window=2.0)
    async with running_sidecar(aiohttp_client, agent, policy=policy) as sidecar:
        assert (await sidecar.post("/busy", {"lease": "a"}))[0] == 200
        agent.fail(fa.ecs_lands_late(5.0), times=1)  # the next ECS call: the disable
        await sidecar.post("/idle", {"lease": "a"})
        await eventually(lambda: disable_in_flight(sidecar))
        request = asyncio.ensure_future(sidecar.post("/busy", {"lease": "b", "wait_seconds": 15}))
        status, body = await request
        samples = await sample(agent, 1.0)
        assert (status, body["protected"]) == (200, True)
        assert all(samples), f"ECS unprotected {samples.count(False)} times after the 200"
        calls = [(c.method, c.status) for c in agent.calls]
        assert ("PUT", 504) in calls  # the disable's answer was the deadline
        assert calls[-2:] == [("GET", 200), ("PUT", 200)]  # the settling read, the re-enable
