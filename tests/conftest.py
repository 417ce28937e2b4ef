from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.fakes.agent import FakeAgent
from tests.fakes.clock import FakeClock

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


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
