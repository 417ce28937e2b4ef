"""Stop detection: DesiredStatus STOPPED drains the sidecar without exiting it."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from sidecar.backends.local import LocalBackend
from sidecar.machine import DrainingError, Exit, Policy
from sidecar.metadata import StopWatcher, task_identity
from sidecar.service import ProtectionService
from tests.fakes.clock import FakeClock
from tests.fakes.metadata import FakeMetadata


@pytest.fixture
async def metadata():
    fake = FakeMetadata()
    await fake.start()
    yield fake
    await fake.close()


@pytest.fixture
def service():
    clock = FakeClock()
    return ProtectionService(Policy(), LocalBackend(clock), clock, max_leases=10)


async def test_identity(metadata):
    identity = await task_identity(metadata.url)
    assert identity.cluster == "test-cluster"
    assert identity.task_arn.endswith("/abc123")


async def test_running_task_is_not_draining_then_stopped_drains(metadata, service):
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            metadata.stop_task()

    machine = service.machine
    machine.acquire("job", None)
    await StopWatcher(metadata.url, service, 5.0, sleep=record).run()
    assert waits == [5.0, 5.0, 5.0]
    assert metadata.requests == 4
    assert service.draining
    with pytest.raises(DrainingError):
        machine.acquire("new", None)
    machine.release("job")
    assert not isinstance(machine.poll(), Exit)  # drained by stop detection: no exit


async def test_metadata_outage_is_logged_once(metadata, service, caplog):
    metadata.fail_with = 503
    watcher = StopWatcher(metadata.url, service, 1.0)
    async with aiohttp.ClientSession() as session:
        with caplog.at_level(logging.WARNING, "sidecar.metadata"):
            for _ in range(5):
                assert await watcher.check(session) is False
    assert caplog.text.count("stop detection") == 1
    assert not service.draining
