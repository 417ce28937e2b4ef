"""A Backend whose answers the test scripts, for driving the reconciler without a network."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from sidecar.backends.base import BackendError, Protection

if TYPE_CHECKING:
    import asyncio

    from tests.fakes.clock import FakeClock


class ScriptedBackend:
    """Protection state like ECS's, with scripted errors and an optional gate per call."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.expires_wall: float | None = None
        self.errors: deque[BackendError] = deque()
        self.calls: list[tuple[str, bool | None, int | None]] = []
        self.gate: asyncio.Event | None = None  # when set to an unset Event, calls block on it

    @property
    def name(self) -> Literal["local"]:
        return "local"

    async def get(self) -> Protection:
        self.calls.append(("get", None, None))
        if self.errors:
            raise self.errors.popleft()
        return self.state()

    async def set(self, enabled: bool, expires_minutes: int) -> Protection:
        self.calls.append(("set", enabled, expires_minutes))
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.popleft()
        self.expires_wall = self.clock.wall() + expires_minutes * 60 if enabled else None
        return self.state()

    def state(self) -> Protection:
        if self.expires_wall is None or self.expires_wall <= self.clock.wall():
            return Protection(False, None)
        return Protection(True, datetime.fromtimestamp(self.expires_wall, UTC))

    async def close(self) -> None:
        return None
