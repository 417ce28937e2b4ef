from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.fakes.agent import FakeAgent
from tests.fakes.clock import FakeClock
from tests.fakes.threaded import ThreadedServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def agent() -> AsyncIterator[FakeAgent]:
    """A fake ECS agent on a loopback port 0 with one task, `task-1`."""
    fake = FakeAgent()
    await fake.start()
    fake.add_task("task-1")
    yield fake
    await fake.close()


@pytest.fixture
def agent_in_thread() -> Iterator[FakeAgent]:
    """The fake agent with `task-1`, served from its own thread, for blocking tests."""
    fake = FakeAgent()

    async def start() -> str:
        url = await fake.start()
        fake.add_task("task-1")
        return url

    with ThreadedServer(start, fake.close):
        yield fake
