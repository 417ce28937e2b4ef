"""Stop detection: DesiredStatus STOPPED drains the sidecar without exiting it."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import pytest

from sidecar.backends.local import LocalBackend
from sidecar.machine import Policy
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

    await service.busy("job", None, wait=0)
    await StopWatcher(metadata.url, service, 5.0, sleep=record).run()
    assert waits == [5.0, 5.0, 5.0]
    assert metadata.requests == 4
    assert service.draining
    assert (await service.busy("new", None, wait=0)).status == "draining"
    assert service.idle("job") == (True, 0)
    running = asyncio.create_task(service.run())
    await asyncio.wait_for(service.wait_settled(), 10)  # an exit would never settle
    assert not running.done()  # drained by stop detection: no exit
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


async def test_metadata_outage_is_logged_once(metadata, service, caplog):
    metadata.fail_with = 503
    watcher = StopWatcher(metadata.url, service, 1.0)
    async with aiohttp.ClientSession() as session:
        with caplog.at_level(logging.WARNING, "sidecar.metadata"):
            for _ in range(5):
                assert await watcher.check(session) is False
    assert caplog.text.count("stop detection") == 1
    assert not service.draining
