"""What a hostile probe of the sidecar found, each pinned by a test: abandoned waits that
piled up memory, a disable answered "still on", a metadata answer that stopped stop
detection, clients hanging up mid-body, absurd expiries, oversized refusals, bad ECS
URLs, and more than one forced exit."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from sidecar import service as service_module
from sidecar.backends.agent import AgentBackend, parse_answer
from sidecar.backends.base import BackendError, Protection, ProtectionRefusedError, switched
from sidecar.backends.local import LocalBackend
from sidecar.clock import SystemClock, rfc3339
from sidecar.config import Config, ConfigError
from sidecar.machine import Policy
from sidecar.metadata import StopWatcher
from sidecar.server import make_runner
from sidecar.service import ProtectionService
from sidecar.web import Api, build_app
from tests.fakes import agent as fa
from tests.fakes.metadata import FakeMetadata
from tests.sidecar_fixture import running_sidecar
from tests.support import eventually, free_port


@pytest.fixture
async def served_unreachable():
    """A real server (the production runner) whose agent never answers: nothing confirms."""
    backend = AgentBackend(f"http://127.0.0.1:{free_port()}/api/x", timeout=1.0)
    service = ProtectionService(Policy(), backend, SystemClock(), max_leases=100_000)
    runner = make_runner(build_app(Api(service, None)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    task = asyncio.create_task(service.run())
    service.runner = runner  # for tests that watch its connections
    yield service, runner.addresses[0][1]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await runner.cleanup()
    await backend.close()


async def busy_and_hang_up(port: int, lease: str) -> None:
    body = f'{{"lease": "{lease}", "wait_seconds": 300}}'.encode()
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /busy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def test_a_busy_whose_client_hung_up_stops_waiting(served_unreachable):
    """200 clients ask to wait 300 s and hang up: their waits end with them."""
    service, port = served_unreachable
    await asyncio.gather(*(busy_and_hang_up(port, f"gone-{i}") for i in range(200)))
    await eventually(lambda: service.lease_count == 200)
    await eventually(lambda: service._waiting == 0, within=10)


async def test_at_most_max_waiters_wait_at_once(served_unreachable, monkeypatch):
    """Past the cap a /busy answers at once (its lease kept), instead of queueing up."""
    service, _port = served_unreachable
    monkeypatch.setattr(service_module, "MAX_WAITERS", 3)
    waiting = [asyncio.ensure_future(service.busy(f"w{i}", None, 30)) for i in range(3)]
    await eventually(lambda: service._waiting == 3)
    outcome = await asyncio.wait_for(service.busy("one-more", None, 30), 5)
    assert (outcome.status, outcome.kept) == ("unconfirmed", True)
    assert "already waiting" in outcome.reason
    for waiter in waiting:
        waiter.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


def test_a_disable_answered_still_on_is_an_error_not_a_success():
    with pytest.raises(BackendError) as caught:
        switched(False, Protection(True, None))
    assert (caught.value.code, caught.value.retryable) == ("NotDisabled", False)


async def test_a_disable_answered_still_on_is_retried_slowly_not_in_a_loop(aiohttp_client, agent):
    body = '{"protection": {"ExpirationDate": "2099-01-01T00:00:00Z", "ProtectionEnabled": true}}'
    async with running_sidecar(aiohttp_client, agent, policy=Policy(idle_grace=0)) as sidecar:
        await sidecar.post("/busy", {"lease": "job"})
        agent.fail_always(fa.answer(200, body))
        await sidecar.post("/idle", {"lease": "job"})
        await sidecar.settle()
        await eventually(lambda: sidecar.view().last_error is not None)
        await asyncio.sleep(0.05)  # a loop would make dozens of calls in this time
        puts = [c for c in agent.calls if c.method == "PUT"]
        assert len(puts) == 2  # the enable, one disable; the next try in 30-60 s
        error = sidecar.view().last_error
        assert error is not None
        assert error.code == "NotDisabled"


async def test_stop_detection_survives_an_answer_nested_too_deep(caplog):
    metadata = FakeMetadata()
    metadata.raw_once = b"[" * 5000 + b"]" * 5000
    await metadata.start()
    service = ProtectionService(Policy(), LocalBackendForTest(), SystemClock(), max_leases=10)
    polls: list[float] = []

    async def tick(seconds: float) -> None:
        polls.append(seconds)
        if len(polls) == 2:
            metadata.stop_task()

    try:
        await asyncio.wait_for(StopWatcher(metadata.url, service, 1.0, sleep=tick).run(), 10)
    finally:
        await metadata.close()
    assert service.draining
    assert "not a JSON object" in caplog.text


def LocalBackendForTest():  # noqa: N802  (reads like the class it makes)
    from sidecar.backends.local import LocalBackend  # noqa: PLC0415

    return LocalBackend(SystemClock())


async def test_a_client_hanging_up_mid_body_is_not_an_internal_error(served_unreachable, caplog):
    service, port = served_unreachable
    caplog.set_level(logging.DEBUG)
    _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b'POST /busy HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"lease"')
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    assert service.runner.server is not None
    await eventually(lambda: not service.runner.server.connections)  # it saw the hang-up
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert all(r.exc_info is None for r in caplog.records if r.name.startswith("sidecar"))


def test_times_far_outside_the_calendar_are_shown_clamped_not_raised():
    assert rfc3339(253_402_387_139.0) == "9999-12-31T23:59:59.000Z"
    assert rfc3339(-1e12) == "1970-01-01T00:00:00.000Z"
    assert rfc3339(float("nan")) is None


async def test_an_expiry_past_the_year_9999_keeps_state_answering(aiohttp_client, agent):
    body = (
        '{"protection": {"ExpirationDate": "9999-12-31T23:59:59-23:59", "ProtectionEnabled": true}}'
    )
    agent.fail_always(fa.answer(200, body))
    async with running_sidecar(aiohttp_client, agent) as sidecar:
        status, answer = await sidecar.post("/busy", {"lease": "job"})
        assert status == 200
        assert answer["expires_at"] < "2100"  # not believed beyond ECS's 2880 minutes
        assert (await sidecar.get("/state"))[0] == 200


def test_a_failure_reason_of_any_size_or_type_is_cut_short():
    huge = '{"failure": {"Reason": "' + "X" * 60_000 + '", "Detail": {"a": 1}}}'
    with pytest.raises(ProtectionRefusedError) as caught:
        parse_answer(200, huge.encode())
    assert (len(caught.value.reason), caught.value.detail) == (100, None)
    with pytest.raises(ProtectionRefusedError) as caught:
        parse_answer(200, b'{"failure": {"Reason": {"nested": true}}}')
    assert caught.value.reason == "UNKNOWN"


def test_an_answer_nested_too_deep_is_an_invalid_answer_not_a_crash():
    with pytest.raises(BackendError) as caught:
        parse_answer(200, b"[" * 5000 + b"]" * 5000)
    assert caught.value.code == "InvalidResponse"


@pytest.mark.parametrize(
    "uri", ["not a url", "ftp://169.254.170.2/api/x", "http://[::1", "http://h/api?q#f", " "]
)
def test_a_mangled_ecs_agent_uri_is_refused_at_start(uri):
    if not uri.strip():
        assert Config.from_environ({"ECS_AGENT_URI": uri}).agent_uri is None
        return
    with pytest.raises(ConfigError, match="ECS_AGENT_URI"):
        Config.from_environ({"ECS_AGENT_URI": uri})


async def test_the_first_forced_exit_stands():
    clock = SystemClock()
    service = ProtectionService(Policy(), LocalBackend(clock), clock, max_leases=1)
    service.force_exit(143, "second SIGTERM")
    service.force_exit(130, "third signal, SIGINT")
    result = await asyncio.wait_for(service.run(), 10)
    assert (result.code, result.reason) == (143, "second SIGTERM")
